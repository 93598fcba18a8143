// A mesh's gateways: the MeshGateways (listeners) and MeshGatewayRoutes that configure builtin
// gateways, and the gateway proxies themselves (builtin and delegated), with their state.

import { meshPath, withQuery } from "../api.js";
import { h, href, link, muted, pre, problem, replace, section, table } from "../dom.js";
import { onlineBadge, subscriptionOnline, when } from "../format.js";
import { NORMAL } from "../live.js";
import { configBadge, displayName, kind, tagChips, zoneOf } from "../proxy.js";
import { toYaml } from "../yaml.js";
import { meshHeader } from "./meshes.js";

function selectors(list) {
  return (list ?? []).map((s) => h("span", { class: "tag" }, Object.entries(s.match ?? {}).map(([k, v]) => `${k}=${v}`).join(",")));
}

function yamlDetails(doc) {
  return h("details", {}, h("summary", {}, "YAML"), pre(toYaml(doc), `${doc.type} ${doc.name} as YAML`));
}

export default function gateways(ctx, mesh) {
  ctx.title(`Gateways · ${mesh}`);
  const global = ctx.cp.mode === "global";
  const proxiesBox = h("div", {}, muted("Loading…"));
  const gatewaysBox = h("div", {}, muted("Loading…"));
  const routesBox = h("div", {}, muted("Loading…"));
  replace(
    ctx.main,
    meshHeader(mesh, "gateways"),
    section("Gateway proxies", proxiesBox),
    section("MeshGateways (builtin gateway listeners)", gatewaysBox),
    section("MeshGatewayRoutes", routesBox),
  );
  ctx.poller.watch(
    withQuery(meshPath(mesh, "dataplanes+insights"), { gateway: "true", size: 100 }),
    NORMAL,
    (page) =>
      replace(
        proxiesBox,
        table({
          caption: `Gateway proxies (${page.total})`,
          columns: [
            { title: "Name", cell: (d) => link(href("meshes", mesh, "dataplanes", d.name), displayName(d)) },
            global ? { title: "Zone", cell: (d) => zoneOf(d) ?? "—" } : null,
            { title: "Kind", cell: (d) => kind(d.dataplane) },
            { title: "Tags", cell: (d) => tagChips(d.dataplane) },
            { title: "Status", cell: (d) => onlineBadge(subscriptionOnline(d.dataplaneInsight)) },
            { title: "Last config", cell: (d) => configBadge(d.dataplaneInsight) },
          ].filter(Boolean),
          rows: page.items,
          empty: "No gateway proxy in this mesh.",
        }),
        page.next ? h("p", { class: "muted" }, "More on the data plane proxies tab (kind: gateways).") : null,
      ),
    (e) => e && replace(proxiesBox, problem(e, "Gateway proxies")),
  );
  ctx.poller.watch(
    withQuery(meshPath(mesh, "meshgateways"), { size: 200 }),
    NORMAL,
    (page) =>
      replace(
        gatewaysBox,
        table({
          caption: `MeshGateways (${page.total})`,
          columns: [
            { title: "Name", cell: (g) => g.name },
            { title: "Selects proxies with", cell: (g) => selectors(g.selectors) },
            {
              title: "Listeners",
              cell: (g) => (g.conf?.listeners ?? []).map((l) => h("div", {}, `${l.protocol ?? ""} :${l.port}${l.hostname ? ` ${l.hostname}` : ""}`)),
            },
            { title: "Modified", cell: (g) => when(g.modificationTime) },
            { title: "Definition", cell: yamlDetails },
          ],
          rows: page.items,
          empty: "No MeshGateway in this mesh.",
        }),
      ),
    (e) => e && replace(gatewaysBox, problem(e, "MeshGateways")),
  );
  ctx.poller.watch(
    withQuery(meshPath(mesh, "meshgatewayroutes"), { size: 200 }),
    NORMAL,
    (page) =>
      replace(
        routesBox,
        table({
          caption: `MeshGatewayRoutes (${page.total})`,
          columns: [
            { title: "Name", cell: (r) => r.name },
            { title: "Selects listeners with", cell: (r) => selectors(r.selectors) },
            { title: "Modified", cell: (r) => when(r.modificationTime) },
            { title: "Definition", cell: yamlDetails },
          ],
          rows: page.items,
          empty: "No MeshGatewayRoute in this mesh.",
        }),
      ),
    (e) => e && replace(routesBox, problem(e, "MeshGatewayRoutes")),
  );
}
