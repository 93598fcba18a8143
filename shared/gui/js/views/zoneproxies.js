// Zone ingresses and egresses with their insights: where each listens, what it advertises to other
// zones, and whether its proxy is connected.

import { h, muted, problem, replace, section, table } from "../dom.js";
import { count, lastSubscription, onlineBadge, subscriptionOnline, when } from "../format.js";
import { NORMAL } from "../live.js";
import { displayName, zoneOf } from "../proxy.js";

function address(net) {
  if (!net) return "—";
  return `${net.address ?? "?"}:${net.port ?? "?"}`;
}

function watchPair(ctx, box, { title, path, insights, advertised }) {
  let items = null;
  const insightByName = new Map();
  const draw = () => {
    if (!items) return;
    replace(
      box,
      table({
        caption: `${title} (${items.length})`,
        columns: [
          { title: "Name", cell: (r) => displayName(r) },
          { title: "Zone", cell: (r) => r.zone ?? zoneOf(r) ?? "—" },
          { title: "Address", cell: (r) => address(r.networking) },
          advertised ? { title: "Advertised to other zones", cell: (r) => (r.networking?.advertisedAddress ? `${r.networking.advertisedAddress}:${r.networking.advertisedPort}` : "—") } : null,
          advertised ? { title: "Services", cell: (r) => count((r.availableServices ?? []).length), class: "num" } : null,
          { title: "Status", cell: (r) => (insightByName.has(r.name) ? onlineBadge(subscriptionOnline(insightByName.get(r.name))) : muted("no insight")) },
          { title: "Connected", cell: (r) => when(lastSubscription(insightByName.get(r.name))?.connectTime) },
        ].filter(Boolean),
        rows: items,
        empty: `No ${title.toLowerCase()}.`,
      }),
    );
  };
  ctx.poller.watch(`${path}?size=1000`, NORMAL, (page) => {
    items = page.items;
    draw();
  }, (e) => e && replace(box, problem(e, title)));
  ctx.poller.watch(`${insights}?size=1000`, NORMAL, (page) => {
    insightByName.clear();
    for (const insight of page.items) insightByName.set(insight.name, insight);
    draw();
  });
}

export default function zoneProxies(ctx) {
  ctx.title("Zone ingresses & egresses");
  const ingresses = h("div", {}, muted("Loading…"));
  const egresses = h("div", {}, muted("Loading…"));
  replace(
    ctx.main,
    h("h1", {}, "Zone ingresses & egresses"),
    h("p", { class: "lead" }, ctx.cp.mode === "global" ? "Of every zone, as the zones uploaded them." : "Of this zone, and the other zones' ingresses global sent it."),
    section("Zone ingresses", ingresses),
    section("Zone egresses", egresses),
  );
  watchPair(ctx, ingresses, { title: "Zone ingresses", path: "/zoneingresses", insights: "/zone-ingress-insights", advertised: true });
  watchPair(ctx, egresses, { title: "Zone egresses", path: "/zoneegresses", insights: "/zoneegressinsights", advertised: false });
}
