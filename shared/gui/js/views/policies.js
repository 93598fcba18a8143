// A mesh's policies by type (the types come from GET /_resources, as zmctl reads them), each
// type's list, and one policy as YAML, the form zmctl get -o yaml and zmctl apply use.

import { meshPath, withQuery } from "../api.js";
import { badge, h, href, link, muted, pre, problem, replace, section, table } from "../dom.js";
import { count, when } from "../format.js";
import { NORMAL, SLOW } from "../live.js";
import { toYaml } from "../yaml.js";
import { meshHeader } from "./meshes.js";

function policyTypesOf(ctx) {
  return ctx.types.filter((t) => t.policy && t.scope === "Mesh");
}

function typeByPath(ctx, path) {
  return ctx.types.find((t) => t.path === path);
}

function targetRef(ref) {
  if (!ref) return "—";
  const rest = [ref.name, ref.sectionName && `section ${ref.sectionName}`, ref.tags && Object.entries(ref.tags).map(([k, v]) => `${k}=${v}`).join(",")]
    .filter(Boolean)
    .join(" ");
  return rest ? `${ref.kind} ${rest}` : ref.kind;
}

function origin(doc) {
  const labels = doc.labels ?? {};
  if (labels["zonemesh.io/origin"] === "zone") return badge(`zone ${labels["zonemesh.io/zone"] ?? ""}`, "neutral");
  if (labels["zonemesh.io/origin"] === "global") return badge("global", "neutral");
  return muted("here");
}

export function policyTypes(ctx, mesh) {
  ctx.title(`Policies · ${mesh}`);
  const box = h("div", {});
  replace(ctx.main, meshHeader(mesh, "policies"), box);
  const types = policyTypesOf(ctx);
  const totals = {};
  const draw = () =>
    replace(
      box,
      table({
        caption: `Policy types in mesh ${mesh}`,
        columns: [
          { title: "Type", cell: (t) => link(href("meshes", mesh, "policies", t.path), t.name) },
          { title: "Policies", cell: (t) => (totals[t.name] === undefined ? muted("…") : count(totals[t.name])), class: "num" },
        ],
        rows: types,
      }),
    );
  draw();
  for (const type of types) {
    ctx.poller.watch(withQuery(meshPath(mesh, type.path), { size: 1 }), SLOW, (page) => {
      totals[type.name] = page.total;
      draw();
    });
  }
}

export function policyList(ctx, mesh, path) {
  const type = typeByPath(ctx, path);
  const name = type?.name ?? path;
  ctx.title(`${name} · ${mesh}`);
  const filter = ctx.query.get("name") ?? "";
  const input = h("input", { type: "search", name: "name", value: filter, placeholder: "part of the name", autocomplete: "off" });
  const form = h(
    "form",
    {
      class: "filters",
      role: "search",
      "aria-label": `Filter ${name} policies`,
      onsubmit: (event) => {
        event.preventDefault();
        const value = input.value.trim();
        location.hash = href("meshes", mesh, "policies", path) + (value ? `?name=${encodeURIComponent(value)}` : "");
      },
    },
    h("label", {}, h("span", {}, "Name"), input),
    h("button", { type: "submit" }, "Filter"),
  );
  const box = h("div", {}, muted("Loading…"));
  replace(ctx.main, meshHeader(mesh, "policies"), h("h2", {}, link(href("meshes", mesh, "policies"), "Policies"), ` / ${name}`), form, box);
  ctx.poller.watch(
    withQuery(meshPath(mesh, path), { name: filter, size: 200 }),
    NORMAL,
    (page) =>
      replace(
        box,
        table({
          caption: `${name} in mesh ${mesh} (${count(page.total)})`,
          columns: [
            { title: "Name", cell: (p) => link(href("meshes", mesh, "policies", path, p.name), p.name) },
            { title: "Target", cell: (p) => targetRef(p.spec?.targetRef) },
            { title: "Origin", cell: origin },
            { title: "Modified", cell: (p) => when(p.modificationTime) },
          ],
          rows: page.items,
          empty: `No ${name} in this mesh.`,
        }),
        page.next ? h("p", { class: "muted" }, `The first ${page.items.length} are shown: filter by name to find others.`) : null,
      ),
    (e) => e && replace(box, problem(e, name)),
  );
}

export function policy(ctx, mesh, path, name) {
  const type = typeByPath(ctx, path);
  const typeName = type?.name ?? path;
  ctx.title(`${typeName} ${name} · ${mesh}`);
  const box = h("div", {}, muted("Loading…"));
  replace(
    ctx.main,
    meshHeader(mesh, "policies"),
    h("h2", {}, link(href("meshes", mesh, "policies"), "Policies"), " / ", link(href("meshes", mesh, "policies", path), typeName), ` / ${name}`),
    box,
  );
  ctx.poller.watch(
    meshPath(mesh, path, name),
    NORMAL,
    (doc) =>
      replace(
        box,
        section(
          `${typeName} ${name}`,
          h("p", {}, "Origin: ", origin(doc), ` · version ${doc.version ?? "—"} · modified `, when(doc.modificationTime)),
          pre(toYaml(doc), `${typeName} ${name} as YAML`),
          h("p", { class: "muted" }, `Change it with: zmctl get ${typeName.toLowerCase()} ${name} -m ${mesh} -o yaml > p.yaml, edit, zmctl apply -f p.yaml`),
        ),
      ),
    (e) => e && replace(box, problem(e, `${typeName} ${name}`)),
  );
}
