// One data plane proxy: its state, Envoy's latest answer (with its error and the policies it is
// due to when it refused the config), inbounds, the policies that apply to it (Kuma's _rules and
// _policies inspection API, where the control plane serves it) and its Envoy config dump.

import { ApiError, get, meshPath } from "../api.js";
import { badge, facts, h, href, link, muted, pre, problem, replace, section, table } from "../dom.js";
import { count, lastSubscription, onlineBadge, subscriptionOnline, when } from "../format.js";
import { NORMAL, SLOW } from "../live.js";
import { certificateExpiry, configState, displayName, errorSummary, inboundState, kind, ZONE_LABEL } from "../proxy.js";
import { toYaml } from "../yaml.js";
import { meshHeader } from "./meshes.js";

// A policy named in an answer (Kuma's Meta {type, mesh, name}, or "Type/name" as lastErrorPolicies has it).
function policyLink(ctx, type, mesh, name) {
  const found = ctx.types.find((t) => t.name === type);
  return found ? link(href("meshes", mesh, "policies", found.path, name), `${type}/${name}`) : `${type}/${name}`;
}

// kri_<short name>_<mesh>_<zone>_<namespace>_<name>_<section> (names hold no "_").
function kriLink(ctx, kri) {
  const [, short, mesh, , , name] = kri.split("_");
  const found = ctx.types.find((t) => t.shortName === short);
  return found && mesh && name ? link(href("meshes", mesh, "policies", found.path, name), `${found.name}/${name}`) : kri;
}

function origins(ctx, list) {
  const items = (list ?? []).map((o) => {
    const meta = o.resourceMeta ?? o;
    const one = meta.type ? policyLink(ctx, meta.type, meta.mesh, meta.name) : o.kri ? kriLink(ctx, o.kri) : JSON.stringify(o);
    return h("li", {}, one, o.ruleIndex !== undefined ? muted(` (rule ${o.ruleIndex})`) : null);
  });
  return items.length ? h("ol", { class: "origins" }, items) : "—";
}

function matchers(list, everything) {
  if (!list?.length) return everything;
  return list.map((m) => `${m.not ? "not " : ""}${m.key}=${m.value}`).join(" and ");
}

// A Kuma 2.x inbound rule's match (e.g. {spiffeID: {type: "Exact", value: "spiffe://default/web"}}).
function callerMatch(match) {
  return Object.entries(match).map(([key, value]) => h("div", {}, `${key}: ${typeof value === "object" ? Object.values(value).join(" ") : value}`));
}

function conf(value) {
  return pre(toYaml(value), "configuration");
}

function ruleTable(ctx, caption, rules, who, everything) {
  return table({
    caption,
    columns: [
      { title: who, cell: (r) => matchers(r.matchers, everything) },
      { title: "Configuration", cell: (r) => conf(r.conf) },
      { title: "From policies (last wins)", cell: (r) => origins(ctx, r.origin) },
    ],
    rows: rules,
  });
}

function inboundName(inbound) {
  const service = inbound?.tags?.["kuma.io/service"];
  return `inbound :${inbound?.port}${service ? ` (${service})` : ""}`;
}

// Kuma's InspectRules, one block per policy type.
export function renderRules(ctx, answer) {
  const rules = answer.rules ?? [];
  if (!rules.length) return h("p", {}, "No policy configures this proxy.");
  return rules.map((rule) =>
    h(
      "section",
      { class: "rule", "aria-label": `${rule.type} rules` },
      h("h3", {}, rule.type),
      (rule.warnings ?? []).length ? h("ul", { class: "warnings" }, rule.warnings.map((w) => h("li", {}, w))) : null,
      rule.proxyRule ? h("div", {}, h("h4", {}, "Whole proxy"), conf(rule.proxyRule.conf), h("p", {}, "From: "), origins(ctx, rule.proxyRule.origin)) : null,
      (rule.toRules ?? []).length ? ruleTable(ctx, "Outbound (to)", rule.toRules, "Destination", "every destination") : null,
      (rule.fromRules ?? []).map((entry) => ruleTable(ctx, `Inbound (from): ${inboundName(entry.inbound)}`, entry.rules ?? [], "Clients", "every client")),
      (rule.inboundRules ?? []).map((entry) =>
        table({
          caption: `Inbound rules: ${inboundName(entry.inbound)}`,
          columns: [
            { title: "Callers", cell: (r) => (r.match ? callerMatch(r.match) : "every caller") },
            { title: "Configuration", cell: (r) => conf(r.conf) },
            { title: "From policies", cell: (r) => origins(ctx, r.origin) },
          ],
          rows: entry.rules ?? [],
        }),
      ),
    ),
  );
}

export function renderProxyPolicies(ctx, answer) {
  const policies = answer.policies ?? [];
  if (!policies.length) return null;
  return table({
    caption: "Proxy-wide configuration (Kuma's _policies)",
    columns: [
      { title: "Policy type", cell: (p) => p.kind },
      { title: "Configuration", cell: (p) => conf(p.conf) },
      { title: "From policies", cell: (p) => origins(ctx, p.origins) },
    ],
    rows: policies,
  });
}

// A request for an optional endpoint: 404 means this control plane does not serve it; 400 that
// another one does (global names the zone control plane to ask).
async function optional(path) {
  try {
    return { body: await get(path) };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return { missing: true };
    if (error instanceof ApiError && error.status === 400) return { elsewhere: error.detail };
    return { error };
  }
}

function notAvailable(what, path) {
  return h("p", { class: "not-available" }, `${what}: not available on this control plane (it does not serve GET ${path}).`);
}

function answer(what, path, found, draw) {
  if (found.body) return draw(found.body);
  if (found.missing) return notAvailable(what, path);
  if (found.elsewhere) return h("p", { class: "not-available" }, `${what}: ${found.elsewhere}`);
  return problem(found.error, what);
}

function watchPolicies(ctx, mesh, name, box) {
  const rulesPath = meshPath(mesh, "dataplanes", name, "_rules");
  const policiesPath = meshPath(mesh, "dataplanes", name, "_policies");
  let drawn = "";
  const load = async () => {
    const [rules, policies] = await Promise.all([optional(rulesPath), optional(policiesPath)]);
    const key = JSON.stringify([rules, policies]);
    if (key === drawn) return;
    drawn = key;
    replace(
      box,
      answer("Policies that apply", rulesPath, rules, (body) => renderRules(ctx, body)),
      answer("Proxy-wide policies", policiesPath, policies, (body) => renderProxyPolicies(ctx, body)),
    );
  };
  // Not through the poller's ETags: these are computed answers and 404 is an answer here.
  const tick = async () => {
    if (ctx.poller.stopped) return;
    if (!document.hidden) await load().catch((e) => replace(box, problem(e, "Policies that apply")));
    setTimeout(tick, SLOW);
  };
  tick();
}

async function loadConfigDump(ctx, mesh, name, box) {
  replace(box, muted("Loading the config dump…"));
  const path = meshPath(mesh, "dataplanes", name, "_config");
  try {
    const dump = await get(path);
    const xds = dump.xds ?? {};
    replace(
      box,
      dump.versions ? facts(Object.entries(dump.versions).map(([type, version]) => [`${type} version`, version])) : null,
      Object.entries(xds).map(([type, resources]) =>
        h("details", {}, h("summary", {}, `${type} (${count(resources.length ?? Object.keys(resources).length)})`), pre(toYaml(resources), `${type} of the config dump`)),
      ),
    );
  } catch (error) {
    if (error.status === 404) replace(box, notAvailable("Config dump", path));
    else if (error.status === 400) replace(box, h("p", { class: "not-available" }, `Config dump: ${error.detail}`));
    else replace(box, problem(error, "Config dump"), error.hint ? h("a", { href: `#/login?back=${encodeURIComponent(location.hash)}` }, "Log in with a token") : null);
  }
}

function nackAlert(ctx, mesh, state) {
  if (!state.nacked.length) return null;
  return h(
    "div",
    { class: "problem nack-alert", role: "alert" },
    h("h2", {}, "Envoy refused the latest configuration (NACK)"),
    h("p", {}, "It keeps running its previous configuration. Envoy says:"),
    state.nacked.map((n) =>
      h(
        "div",
        { class: "nack-entry" },
        h("h3", {}, n.type),
        h("p", { class: "nack-summary" }, errorSummary(n.error)),
        h("details", {}, h("summary", {}, "Envoy's whole message (the refused resource, then the reason)"), pre(n.error, `Envoy's error for ${n.type}`)),
        n.policies.length
          ? h("p", {}, "Due to: ", n.policies.map((p, i) => [i ? ", " : "", policyLink(ctx, p.split("/")[0], mesh, p.split("/").slice(1).join("/"))]))
          : h("p", {}, muted("No policy is known to have caused it.")),
      ),
    ),
  );
}

function xdsTable(last) {
  const rows = Object.entries(last?.status ?? {}).filter(([type]) => type !== "lastUpdateTime" && type !== "total");
  return table({
    caption: "Envoy's answers per xDS type (this stream)",
    columns: [
      { title: "Type", cell: ([type]) => type },
      { title: "Sent", cell: ([, s]) => count(Number(s.responsesSent ?? 0)), class: "num" },
      { title: "ACKed", cell: ([, s]) => count(Number(s.responsesAcknowledged ?? 0)), class: "num" },
      { title: "NACKed", cell: ([, s]) => (Number(s.responsesRejected) ? badge(count(Number(s.responsesRejected)), "bad") : "0"), class: "num" },
      { title: "Latest", cell: ([, s]) => (s.lastResponse === "NACK" ? badge("NACK", "bad") : s.lastResponse === "ACK" ? badge("ACK", "ok") : "—") },
      { title: "Last error", cell: ([, s]) => (s.lastError ? h("span", { class: "error-text", title: s.lastError }, errorSummary(s.lastError)) : "—") },
      { title: "Due to", cell: ([, s]) => (s.lastErrorPolicies ?? []).join(", ") || "—" },
    ],
    rows,
    empty: "No config sent on this stream yet.",
  });
}

function inboundsTable(dataplane) {
  return table({
    caption: "Inbounds",
    columns: [
      { title: "Port", cell: (i) => i.port, class: "num" },
      { title: "Service port", cell: (i) => i.servicePort ?? "—", class: "num" },
      { title: "Tags", cell: (i) => Object.entries(i.tags ?? {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`)) },
      {
        title: "Health",
        cell: (i) => {
          const state = inboundState(i);
          return badge(state === "NotReady" ? "Not ready" : state, state === "Ready" ? "ok" : state === "Ignored" ? "muted" : "warn");
        },
      },
    ],
    rows: dataplane?.networking?.inbound ?? [],
    empty: "No inbound (a gateway).",
  });
}

export default function dataplane(ctx, mesh, name) {
  ctx.title(`${name} · ${mesh}`);
  const head = h("div", {});
  const status = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const policiesBox = h("div", {}, muted("Loading…"));
  const dumpBox = h("div", {}, h("button", { type: "button", onclick: () => loadConfigDump(ctx, mesh, name, dumpBox) }, "Show the Envoy config dump"), " ", muted("(admin only; private keys are redacted by the control plane)"));
  replace(
    ctx.main,
    meshHeader(mesh, "dataplanes"),
    head,
    status,
    section("Policies that apply", policiesBox),
    section("Envoy config dump", dumpBox),
  );
  let zoneOnline = null;
  let last = null;
  const draw = () => {
    if (!last) return;
    const overview = last;
    const insight = overview.dataplaneInsight ?? {};
    const sub = lastSubscription(insight);
    const zone = overview.labels?.[ZONE_LABEL];
    const state = configState(insight);
    replace(head, h("h2", { class: "proxy-name" }, displayName(overview), zone ? muted(` in zone ${zone}`) : null));
    replace(
      status,
      nackAlert(ctx, mesh, state),
      section(
        "Status",
        facts([
        ["Status", onlineBadge(subscriptionOnline(insight), { zoneOffline: zoneOnline === false })],
        ["Kind", kind(overview.dataplane)],
        ["Address", overview.dataplane?.networking?.address],
        ["Last config", state.nacked.length ? badge("NACK", "bad") : state.answered ? [badge("ACK", "ok"), " ", when(state.at)] : "none yet"],
        ["Envoy", sub?.version?.envoy?.version],
        ["zonemesh-dp", sub?.version?.zonemeshDp?.version],
        ["Certificate expires", certificateExpiry(insight)],
        ["Certificate regenerations", insight.mTLS ? count(insight.mTLS.certificateRegenerations) : "—"],
        ["Connected", sub ? (sub.disconnectTime ? ["disconnected ", when(sub.disconnectTime)] : ["since ", when(sub.connectTime)]) : "never"],
        ["Control plane instance", sub?.controlPlaneInstanceId],
        overview.name !== displayName(overview) ? ["Stored here as", overview.name] : null,
        ]),
      ),
      section(
        "Inbounds and Envoy's answers",
        inboundsTable(overview.dataplane),
        xdsTable(sub),
        h("details", {}, h("summary", {}, "Dataplane resource (YAML)"), pre(toYaml({ type: "Dataplane", mesh: overview.mesh, name: overview.name, labels: overview.labels, ...overview.dataplane }), "Dataplane as YAML")),
      ),
    );
  };
  ctx.poller.watch(meshPath(mesh, "dataplanes+insights", name), NORMAL, (body) => {
    last = body;
    draw();
  }, (e) => e && replace(status, problem(e, `Data plane proxy ${name}`)));
  if (ctx.cp.mode === "global") {
    ctx.poller.watch("/zones+insights", NORMAL, (body) => {
      const zone = last?.labels?.[ZONE_LABEL];
      const found = body.items.find((z) => z.name === zone);
      zoneOnline = found ? found.online : null;
      draw();
    });
  }
  watchPolicies(ctx, mesh, name, policiesBox);
}
