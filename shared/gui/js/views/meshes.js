// Meshes: the list, and one mesh's page with its tabs (proxies, gateways, policies, secrets).

import { meshPath } from "../api.js";
import { facts, h, href, link, pre, problem, replace, section } from "../dom.js";
import { count, when } from "../format.js";
import { SLOW } from "../live.js";
import { toYaml } from "../yaml.js";
import { meshesTable } from "./overview.js";

const TABS = [
  ["", "Mesh"],
  ["dataplanes", "Data plane proxies"],
  ["gateways", "Gateways"],
  ["policies", "Policies"],
  ["secrets", "Secrets"],
];

// The heading and tabs every page of a mesh starts with.
export function meshHeader(mesh, current) {
  return h(
    "div",
    { class: "mesh-header" },
    h("p", { class: "crumbs" }, link("#/meshes", "Meshes"), " / ", mesh),
    h("h1", {}, `Mesh ${mesh}`),
    h(
      "nav",
      { class: "tabs", "aria-label": `Mesh ${mesh}` },
      h(
        "ul",
        {},
        TABS.map(([tab, text]) =>
          h("li", {}, h("a", { href: tab ? href("meshes", mesh, tab) : href("meshes", mesh), "aria-current": tab === current ? "page" : undefined }, text)),
        ),
      ),
    ),
  );
}

export function meshes(ctx) {
  ctx.title("Meshes");
  const box = h("div", {});
  replace(ctx.main, h("h1", {}, "Meshes"), box);
  meshesTable(ctx, box);
}

export function mesh(ctx, name) {
  ctx.title(`Mesh ${name}`);
  const counts = h("div", {});
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  replace(ctx.main, meshHeader(name, ""), counts, body);
  const totals = {};
  const order = [
    ["Data plane proxies", meshPath(name, "dataplanes") + "?size=1"],
    ["Gateways", meshPath(name, "dataplanes+insights") + "?gateway=true&size=1"],
    ["MeshGateways", meshPath(name, "meshgateways") + "?size=1"],
  ];
  const draw = () =>
    replace(counts, facts(order.map(([label]) => [label, count(totals[label])])));
  for (const [label, path] of order) {
    ctx.poller.watch(path, SLOW, (page) => {
      totals[label] = page.total;
      draw();
    });
  }
  ctx.poller.watch(
    meshPath(name),
    SLOW,
    (doc) =>
      replace(
        body,
        section(
          "Configuration",
          facts([
            ["mTLS", doc.mtls?.enabledBackend ? `on, backend ${doc.mtls.enabledBackend}` : "off"],
            ["Created", when(doc.creationTime)],
            ["Modified", when(doc.modificationTime)],
          ]),
          pre(toYaml(doc), `Mesh ${name} as YAML`),
        ),
      ),
    (e) => e && replace(body, problem(e, `Mesh ${name}`)),
  );
}

