// Zones (global only): online state, versions and heartbeats; per zone its KDS exchange with
// global (per type sent / ACKed / NACKed, what each side refused and why) and enable/disable.

import { get, put } from "../api.js";
import { badge, facts, h, href, link, muted, pre, problem, replace, section, table } from "../dom.js";
import { count, lastSubscription, onlineBadge, when } from "../format.js";
import { FAST } from "../live.js";
import { toYaml } from "../yaml.js";

function enabled(item) {
  return item.zone?.enabled !== false;
}

function resources(sub) {
  return sub?.zoneStatus?.resources ?? {};
}

function nacks(sub) {
  const total = sub?.status?.total ?? {};
  return (total.responsesRejected ?? 0) + (total.requestsRejected ?? 0);
}

// One row per zone, as the overview and the zones page show them.
export function zonesTable(items) {
  return table({
    label: "Zone control planes",
    columns: [
      { title: "Zone", cell: (z) => link(href("zones", z.name), z.name) },
      { title: "State", cell: (z) => onlineBadge(z.online, { disabled: !enabled(z) }) },
      { title: "Version", cell: (z) => lastSubscription(z.zoneInsight)?.version?.zonemeshCp?.version ?? "—" },
      { title: "Connected since", cell: (z) => (z.online ? when(lastSubscription(z.zoneInsight)?.connectTime) : muted("not connected")) },
      { title: "Last heartbeat", cell: (z) => when(z.zoneInsight?.healthCheck?.time) },
      { title: "Proxies", cell: (z) => count(resources(lastSubscription(z.zoneInsight)).Dataplane ?? 0), class: "num" },
      { title: "Ingresses", cell: (z) => count(resources(lastSubscription(z.zoneInsight)).ZoneIngress ?? 0), class: "num" },
      {
        title: "KDS NACKs",
        cell: (z) => {
          const n = nacks(lastSubscription(z.zoneInsight));
          return n ? badge(count(n), "bad", "messages refused on this stream, by either side") : "0";
        },
        class: "num",
      },
    ],
    rows: items,
    empty: "No zone has connected yet. Issue a zone token (zmctl generate zone-token) and start a zone control plane.",
  });
}

// Per type: what one side sent and the peer answered, and what it received and answered.
export function kdsStats(stat, caption, peer = "zone") {
  const rows = Object.entries(stat ?? {});
  const n = (value) => count(value ?? 0);
  return table({
    caption,
    columns: [
      { title: "Type", cell: ([type]) => type },
      { title: `Sent to ${peer}`, cell: ([, s]) => n(s.responsesSent), class: "num" },
      { title: "ACKed", cell: ([, s]) => n(s.responsesAcknowledged), class: "num" },
      { title: "NACKed", cell: ([, s]) => (s.responsesRejected ? badge(n(s.responsesRejected), "bad") : "0"), class: "num" },
      { title: `Resources refused by ${peer}`, cell: ([, s]) => n(s.resourcesRejected), class: "num" },
      { title: `Received from ${peer}`, cell: ([, s]) => n(s.requestsReceived), class: "num" },
      { title: "NACKed here", cell: ([, s]) => (s.requestsRejected ? badge(n(s.requestsRejected), "bad") : "0"), class: "num" },
      { title: "Resources refused here", cell: ([, s]) => n(s.requestResourcesRejected), class: "num" },
      { title: "Last rejection", cell: ([, s]) => (s.lastRejection ? h("span", { class: "error-text" }, s.lastRejection) : "—") },
    ],
    rows,
    empty: "Nothing exchanged on this stream yet.",
  });
}

export function zones(ctx) {
  ctx.title("Zones");
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  replace(ctx.main, h("h1", {}, "Zones"), box);
  if (ctx.cp.mode !== "global") {
    replace(box, h("p", {}, "Zones are managed on the global control plane. This one is ", ctx.cp.mode === "zone" ? `zone ${ctx.cp.zone}` : "standalone", "."));
    return;
  }
  ctx.poller.watch("/zones+insights", FAST, (body) => replace(box, zonesTable(body.items)), (e) => e && replace(box, problem(e, "Zones")));
}

async function setEnabled(ctx, name, value, status) {
  const verb = value ? "Enable" : "Disable";
  if (!value && !confirm(`Disable zone ${name}? Global closes its KDS stream and refuses it until it is enabled again; its proxies keep their last config.`)) return;
  replace(status, muted(`${verb.replace(/e$/, "")}ing…`));
  try {
    const current = await get(`/zones/${encodeURIComponent(name)}`);
    await put(`/zones/${encodeURIComponent(name)}`, { ...current, enabled: value });
    replace(status, `${name} is ${value ? "enabled" : "disabled"}.`);
  } catch (error) {
    replace(status, problem(error, `${verb} zone ${name}`));
  }
  ctx.poller.refresh();
}

function subscriptionsTable(subs) {
  return table({
    caption: "Streams (newest last)",
    columns: [
      { title: "Connected", cell: (s) => when(s.connectTime) },
      { title: "Disconnected", cell: (s) => (s.disconnectTime ? when(s.disconnectTime) : badge("open", "ok")) },
      { title: "Zone CP instance", cell: (s) => s.zoneInstanceId ?? "—" },
      { title: "Global CP instance", cell: (s) => s.globalInstanceId ?? "—" },
      { title: "Version", cell: (s) => s.version?.zonemeshCp?.version ?? "—" },
      { title: "NACKs", cell: (s) => count(nacks(s)), class: "num" },
    ],
    rows: subs,
  });
}

export function zone(ctx, name) {
  ctx.title(`Zone ${name}`);
  const status = h("p", { role: "status", "aria-live": "polite" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  replace(ctx.main, h("p", { class: "crumbs" }, link("#/zones", "Zones"), " / ", name), h("h1", {}, `Zone ${name}`), status, body);
  ctx.poller.watch(
    `/zones+insights/${encodeURIComponent(name)}`,
    FAST,
    (z) => {
      const insight = z.zoneInsight ?? {};
      const subs = insight.subscriptions ?? [];
      const last = lastSubscription(insight);
      const isEnabled = enabled(z);
      replace(
        body,
        h(
          "div",
          { class: "actions" },
          onlineBadge(z.online, { disabled: !isEnabled }),
          " ",
          h(
            "button",
            { type: "button", onclick: () => setEnabled(ctx, name, !isEnabled, status), "aria-label": `${isEnabled ? "Disable" : "Enable"} zone ${name}` },
            isEnabled ? "Disable zone" : "Enable zone",
          ),
        ),
        facts([
          ["State", z.state],
          ["Version", last?.version?.zonemeshCp?.version],
          ["Connected since", z.online ? when(last?.connectTime) : "not connected"],
          ["Last heartbeat", when(insight.healthCheck?.time)],
          ["Zone CP instance", last?.zoneInstanceId],
          ["Features", (last?.features ?? []).join(", ") || "—"],
          ["Resources the zone holds", Object.entries(resources(last)).map(([type, n]) => `${type}: ${n}`).join(", ") || "—"],
        ]),
        section("KDS exchange on the current stream", kdsStats(last?.status?.stat, "Per resource type: global → zone (sent) and zone → global (received)")),
        section("Streams", subscriptionsTable(subs)),
        last?.config ? h("details", {}, h("summary", {}, "The zone's configuration (as it reported it)"), pre(toYaml(last.config), "zone configuration")) : null,
      );
    },
    (e) => e && replace(body, problem(e, `Zone ${name}`)),
  );
}
