// Overview: on global the whole deployment (zones, proxies by kind, meshes, the license); on a zone
// or standalone control plane its own proxies, and on a zone its connection to global.

import { meshPath, withQuery } from "../api.js";
import { badge, h, href, link, problem, replace, section, table } from "../dom.js";
import { count, when } from "../format.js";
import * as license from "../license.js";
import { FAST, NORMAL, SLOW } from "../live.js";
import { kdsStats, zonesTable } from "./zones.js";

function stat(label, value, detail = undefined) {
  return h("div", { class: "stat" }, h("span", { class: "stat-value" }, value), h("span", { class: "stat-label" }, label), detail ? h("span", { class: "stat-detail" }, detail) : null);
}

function onlineOf(status) {
  return status ? `${count(status.online)} online of ${count(status.total)}` : "—";
}

function globalStats(insight) {
  const dp = insight.dataplanes;
  const zones = insight.zones;
  return h(
    "div",
    { class: "stats", role: "group", "aria-label": "totals" },
    stat("Zones", `${zones.controlPlanes.online}/${zones.controlPlanes.total}`, "online"),
    stat("Sidecar proxies", count(dp.standard.total), onlineOf(dp.standard)),
    stat("Builtin gateways", count(dp.gatewayBuiltin.total), onlineOf(dp.gatewayBuiltin)),
    stat("Delegated gateways", count(dp.gatewayDelegated.total), onlineOf(dp.gatewayDelegated)),
    stat("Zone ingresses", count(zones.zoneIngresses.total), onlineOf(zones.zoneIngresses)),
    stat("Zone egresses", count(zones.zoneEgresses.total), onlineOf(zones.zoneEgresses)),
    stat("Services", count(insight.services.total)),
    stat("Meshes", count(insight.meshes.total)),
    stat("Policies", count(insight.policies.total)),
  );
}

// Totals read from list answers (size=1: only the total is used), where no aggregate exists.
function localStats(ctx, container) {
  const counts = {};
  const order = [
    ["Data plane proxies", "/dataplanes?size=1"],
    ["Gateways", "/dataplanes+insights?gateway=true&size=1"],
    ["Zone ingresses", "/zoneingresses?size=1"],
    ["Zone egresses", "/zoneegresses?size=1"],
    ["Meshes", "/meshes?size=1"],
  ];
  const draw = () => replace(container, h("div", { class: "stats", role: "group", "aria-label": "totals" }, order.map(([label]) => stat(label, count(counts[label])))));
  for (const [label, path] of order) {
    ctx.poller.watch(path, SLOW, (body) => {
      counts[label] = body.total;
      draw();
    });
  }
  draw();
}

export function meshesTable(ctx, container) {
  const proxies = {};
  let items = [];
  const draw = () =>
    replace(
      container,
      table({
        caption: "Meshes",
        columns: [
          { title: "Name", cell: (m) => link(href("meshes", m.name), m.name) },
          { title: "mTLS", cell: (m) => (m.mtls?.enabledBackend ? badge(`on (${m.mtls.enabledBackend})`, "ok") : badge("off", "muted")) },
          { title: "Data plane proxies", cell: (m) => link(href("meshes", m.name, "dataplanes"), count(proxies[m.name])), class: "num" },
          { title: "Created", cell: (m) => when(m.creationTime) },
        ],
        rows: items,
        empty: ctx.cp.mode === "zone" ? "No mesh yet: meshes come from the global control plane." : "No mesh.",
      }),
    );
  const watched = new Set();
  ctx.poller.watch("/meshes?size=100", SLOW, (body) => {
    items = body.items;
    for (const m of items.slice(0, 20)) {
      if (watched.has(m.name)) continue;
      watched.add(m.name);
      ctx.poller.watch(withQuery(meshPath(m.name, "dataplanes"), { size: 1 }), SLOW, (page) => {
        proxies[m.name] = page.total;
        draw();
      });
    }
    draw();
  });
}

function kdsCard(kds) {
  return section(
    "Connection to the global control plane",
    h(
      "p",
      {},
      kds.connected
        ? badge("Connected", "ok")
        : kds.leader === false
          ? badge("Held by the zone's leader", "muted")
          : badge("Disconnected", "bad"),
      ` ${kds.globalAddress ?? ""} `,
      kds.leader === false
        ? "this replica does not lead its zone: the zone's leader replica holds the zone's one stream to global"
        : kds.connected ? ["since ", when(kds.connectTime ? new Date(kds.connectTime * 1000).toISOString() : null)] : kds.lastError ? `: ${kds.lastError}` : "",
    ),
    kds.stat ? kdsStats(kds.stat, "Resources exchanged with global on this stream", "global") : null,
  );
}

export default function overview(ctx) {
  ctx.title("Overview");
  const { cp } = ctx;
  const intro =
    cp.mode === "global"
      ? "Everything across all zones, as the global control plane knows it."
      : cp.mode === "zone"
        ? `This is the control plane of zone ${cp.zone}: it shows this zone's proxies and what global sent it. The global control plane's GUI shows every zone.`
        : "A standalone control plane: one zone, no global.";
  const stats = h("div", {}, h("p", { class: "muted" }, "Loading totals…"));
  const zonesBox = h("div", {});
  const kdsBox = h("div", {});
  const licenseBox = h("div", {});
  const meshesBox = h("section", { class: "card" });
  replace(ctx.main, h("h1", {}, "Overview"), h("p", { class: "lead" }, intro), stats, kdsBox, zonesBox, licenseBox, meshesBox);

  if (cp.mode === "global") {
    ctx.poller.watch("/global-insight", SLOW, (insight) => replace(stats, globalStats(insight)), (e) => e && replace(stats, problem(e, "Totals")));
    ctx.poller.watch("/zones+insights", FAST, (body) => replace(zonesBox, section("Zones", zonesTable(body.items))), (e) => e && replace(zonesBox, problem(e, "Zones")));
  } else {
    localStats(ctx, stats);
  }
  if (cp.mode === "zone") {
    ctx.poller.watch("/status/kds", NORMAL, (kds) => replace(kdsBox, kdsCard(kds)), (e) => e && replace(kdsBox, problem(e, "KDS status")));
  }
  ctx.poller.watch("/license", SLOW, (body) => replace(licenseBox, license.card(body)), (e) => {
    if (e?.status === 404) replace(licenseBox, section("License", h("p", {}, "This standalone control plane holds no license: licenses are installed on a global control plane (docs/license.md).")));
    else if (e) replace(licenseBox, problem(e, "License"));
  });
  meshesTable(ctx, meshesBox);
}

