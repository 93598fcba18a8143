// What the views read from a DataplaneOverview ({dataplane, dataplaneInsight, labels}): kind,
// tags, inbound health, certificate, Envoy version, and whether Envoy took its latest config.

import { badge, h } from "./dom.js";
import { lastSubscription, when } from "./format.js";

export const ZONE_LABEL = "zonemesh.io/zone";
export const DISPLAY_NAME_LABEL = "zonemesh.io/display-name";

export function displayName(item) {
  return item.labels?.[DISPLAY_NAME_LABEL] ?? item.name;
}

export function zoneOf(item) {
  return item.labels?.[ZONE_LABEL] ?? null;
}

export function kind(dataplane) {
  const gateway = dataplane?.networking?.gateway;
  if (!gateway) return "Sidecar";
  return String(gateway.type ?? "").toUpperCase() === "BUILTIN" ? "Gateway (builtin)" : "Gateway (delegated)";
}

// Every distinct tag of the inbounds and the gateway, kuma.io/service first.
export function tags(dataplane) {
  const net = dataplane?.networking ?? {};
  const groups = [...(net.inbound ?? []).map((i) => i.tags ?? {}), net.gateway?.tags ?? {}];
  const seen = new Map();
  for (const group of groups) for (const [k, v] of Object.entries(group)) seen.set(`${k}=${v}`, [k, v]);
  return [...seen.values()].sort(([a], [b]) => (a === "kuma.io/service" ? -1 : b === "kuma.io/service" ? 1 : a.localeCompare(b)));
}

export function tagChips(dataplane, limit = 6) {
  const all = tags(dataplane);
  const shown = all.slice(0, limit).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));
  if (all.length > limit) shown.push(h("span", { class: "muted" }, ` +${all.length - limit}`));
  return shown;
}

// An inbound's health as Kuma reads it: state (Ready/NotReady/Ignored), else health.ready.
export function inboundState(inbound) {
  if (inbound.state) return inbound.state;
  if (inbound.health?.ready === false) return "NotReady";
  return "Ready";
}

export function inboundHealth(dataplane) {
  const inbounds = (dataplane?.networking?.inbound ?? []).filter((i) => inboundState(i) !== "Ignored");
  if (!inbounds.length) return "—";
  const ready = inbounds.filter((i) => inboundState(i) === "Ready").length;
  return ready === inbounds.length ? badge(`${ready}/${inbounds.length} ready`, "ok") : badge(`${ready}/${inbounds.length} ready`, "warn");
}

export function envoyVersion(insight) {
  return lastSubscription(insight)?.version?.envoy?.version ?? "—";
}

export function certificateExpiry(insight) {
  const at = insight?.mTLS?.certificateExpirationTime;
  if (!at) return "—";
  const soon = new Date(at).getTime() - Date.now() < 0;
  return soon ? badge("expired", "bad", at) : when(at);
}

const NOT_TYPES = new Set(["lastUpdateTime", "total"]);

// The gist of Envoy's NACK message: Envoy prints the refused resource first and the reason on the
// last line ("...: Proto constraint validation failed (...)").
export function errorSummary(error) {
  const lines = String(error ?? "").split("\n").map((line) => line.trim()).filter(Boolean);
  return lines.length ? lines[lines.length - 1].replace(/^:\s*/, "") : "";
}

// The latest config answer of the newest stream: per xDS type, whether Envoy ACKed or NACKed it,
// Envoy's error and the policies it is due to.
export function configState(insight) {
  const last = lastSubscription(insight);
  const status = last?.status ?? {};
  const types = Object.entries(status).filter(([type]) => !NOT_TYPES.has(type));
  const rejected = types.filter(([, s]) => s.lastResponse === "NACK");
  // An insight from a zone older than lastResponse: a NACK is only known to have happened.
  const legacy = types.filter(([, s]) => s.lastResponse === undefined && Number(s.responsesRejected) > 0 && s.lastError);
  const answered = types.some(([, s]) => Number(s.responsesSent) > 0);
  return {
    at: status.lastUpdateTime ?? null,
    answered,
    nacked: rejected.map(([type, s]) => ({ type, error: s.lastError ?? "", policies: s.lastErrorPolicies ?? [] })),
    earlier: legacy.map(([type, s]) => ({ type, error: s.lastError ?? "", policies: s.lastErrorPolicies ?? [] })),
  };
}

export function configBadge(insight) {
  const state = configState(insight);
  if (state.nacked.length) {
    const first = state.nacked[0];
    const summary = errorSummary(first.error);
    return h(
      "span",
      { class: "nack" },
      badge("NACK", "bad", "Envoy refused the latest config and runs its previous one"),
      " ",
      h("span", { class: "error-text", title: first.error }, `${first.type}: ${summary.slice(0, 160)}${summary.length > 160 ? "…" : ""}`),
    );
  }
  if (state.earlier.length) return badge("NACKed earlier", "warn", errorSummary(state.earlier[0].error));
  if (!state.answered) return badge("no config yet", "muted");
  return h("span", {}, badge("ACK", "ok"), " ", when(state.at));
}
