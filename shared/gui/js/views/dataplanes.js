// A mesh's data plane proxies, a page at a time: filtered and paged by the API
// (dataplanes+insights with name, tag, zone label and gateway filters), so 10,000 proxies cost
// what one page of them costs.

import { meshPath, withQuery } from "../api.js";
import { h, href, link, problem, replace, table } from "../dom.js";
import { count, onlineBadge, subscriptionOnline } from "../format.js";
import { NORMAL } from "../live.js";
import { certificateExpiry, configBadge, displayName, envoyVersion, inboundHealth, kind, tagChips, ZONE_LABEL, zoneOf } from "../proxy.js";
import { meshHeader } from "./meshes.js";

const PAGE_SIZES = [25, 50, 100, 200];
const KINDS = [
  ["", "All kinds"],
  ["false", "Sidecars"],
  ["true", "Gateways"],
  ["builtin", "Builtin gateways"],
  ["delegated", "Delegated gateways"],
];

// Offsets of the pages before this one, per filter (offsets are opaque: etcd's are keys).
const previous = new Map();

function target(mesh, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) query.set(k, v);
  const text = query.toString();
  return `${href("meshes", mesh, "dataplanes")}${text ? `?${text}` : ""}`;
}

function filterForm(ctx, mesh, params, zones) {
  const field = (label, control) => h("label", {}, h("span", {}, label), control);
  const name = h("input", { type: "search", name: "name", value: params.name ?? "", placeholder: "part of the name", autocomplete: "off" });
  const tag = h("input", { type: "search", name: "tag", value: params.tag ?? "", placeholder: "kuma.io/service:web", autocomplete: "off" });
  const gateway = h("select", { name: "gateway" }, KINDS.map(([value, text]) => h("option", { value, selected: (params.gateway ?? "") === value }, text)));
  const size = h("select", { name: "size" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: Number(params.size ?? 50) === n }, String(n))));
  const zone = ctx.cp.mode === "global"
    ? h("select", { name: "zone" }, h("option", { value: "" }, "All zones"), zones.map((z) => h("option", { value: z, selected: params.zone === z }, z)))
    : null;
  const form = h(
    "form",
    {
      class: "filters",
      role: "search",
      "aria-label": "Filter data plane proxies",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = target(mesh, { name: name.value.trim(), tag: tag.value.trim(), zone: zone?.value, gateway: gateway.value, size: size.value });
      },
    },
    field("Name", name),
    field("Tag", tag),
    zone ? field("Zone", zone) : null,
    field("Kind", gateway),
    field("Per page", size),
    h("button", { type: "submit" }, "Filter"),
  );
  return form;
}

export default function dataplanes(ctx, mesh) {
  ctx.title(`Data plane proxies · ${mesh}`);
  const params = Object.fromEntries(ctx.query.entries());
  const global = ctx.cp.mode === "global";
  const size = PAGE_SIZES.includes(Number(params.size)) ? Number(params.size) : 50;
  const filterKey = JSON.stringify([mesh, params.name, params.tag, params.zone, params.gateway, size]);
  const stack = previous.get(filterKey) ?? [];
  previous.clear();
  previous.set(filterKey, stack);

  const formBox = h("div", {});
  const summary = h("p", { class: "summary", role: "status", "aria-live": "polite" });
  const rows = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading…"));
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  replace(ctx.main, meshHeader(mesh, "dataplanes"), formBox, summary, rows, pager);

  const zoneOnline = new Map();
  let zoneNames = [];
  const drawForm = () => replace(formBox, filterForm(ctx, mesh, params, zoneNames));
  drawForm();

  const path = withQuery(meshPath(mesh, "dataplanes+insights"), {
    name: params.name,
    tag: params.tag,
    gateway: params.gateway,
    [`filter[labels.${ZONE_LABEL}]`]: global ? params.zone : undefined,
    size,
    offset: params.offset,
  });

  let last = null;
  const columns = [
    { title: "Name", cell: (d) => link(href("meshes", mesh, "dataplanes", d.name), displayName(d)), class: "nowrap" },
    global ? { title: "Zone", cell: (d) => zoneOf(d) ?? "—", class: "nowrap" } : null,
    { title: "Kind", cell: (d) => kind(d.dataplane), class: "nowrap" },
    { title: "Tags", cell: (d) => tagChips(d.dataplane) },
    { title: "Address", cell: (d) => d.dataplane?.networking?.address ?? "—" },
    {
      title: "Status",
      cell: (d) => {
        const zone = zoneOf(d);
        const zoneDown = global && zone !== null && zoneOnline.has(zone) && !zoneOnline.get(zone);
        return onlineBadge(subscriptionOnline(d.dataplaneInsight), { zoneOffline: zoneDown });
      },
    },
    { title: "Inbounds", cell: (d) => inboundHealth(d.dataplane) },
    { title: "Certificate expires", cell: (d) => certificateExpiry(d.dataplaneInsight) },
    { title: "Envoy", cell: (d) => envoyVersion(d.dataplaneInsight) },
    { title: "Last config", cell: (d) => configBadge(d.dataplaneInsight) },
  ].filter(Boolean);

  const draw = () => {
    if (!last) return;
    const positional = /^[0-9]+$/.test(params.offset ?? "0"); // SQLite and memory stores: a position
    const start = positional ? Number(params.offset ?? 0) : null;
    summary.textContent = !last.total
      ? ""
      : start !== null && last.items.length
        ? `${count(start + 1)}–${count(start + last.items.length)} of ${count(last.total)} data plane proxies`
        : `${count(last.items.length)} on this page, ${count(last.total)} in all`;
    replace(rows, table({ caption: `Data plane proxies in mesh ${mesh}`, columns, rows: last.items, empty: "No data plane proxy matches." }));
    const nextOffset = last.next ? new URL(last.next, location.origin).searchParams.get("offset") : null;
    replace(
      pager,
      stack.length
        ? h("a", { href: target(mesh, { ...params, offset: stack[stack.length - 1] }), onclick: () => stack.pop() }, "← Previous")
        : params.offset
          ? h("a", { href: target(mesh, { ...params, offset: "" }) }, "← First page")
          : null,
      nextOffset ? h("a", { href: target(mesh, { ...params, offset: nextOffset }), onclick: () => stack.push(params.offset ?? "") }, "Next →") : null,
    );
  };
  ctx.poller.watch(path, NORMAL, (body) => {
    last = body;
    draw();
  }, (e) => e && replace(rows, problem(e, "Data plane proxies")));
  if (global) {
    ctx.poller.watch("/zones+insights", NORMAL, (body) => {
      zoneOnline.clear();
      for (const z of body.items) zoneOnline.set(z.name, z.online);
      const names = body.items.map((z) => z.name);
      if (names.join() !== zoneNames.join()) {
        zoneNames = names;
        drawForm();
      }
      draw();
    });
  }
}

