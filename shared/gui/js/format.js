// Times, counts and states as the views show them.

import { badge, h } from "./dom.js";

export function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  return h("time", { datetime: at.toISOString(), title: at.toISOString() }, ago(at));
}

// "12 s ago", "in 29 d": relative to now, rounded to the unit that matters.
export function ago(at) {
  const seconds = Math.round((Date.now() - at.getTime()) / 1000);
  const future = seconds < 0;
  const span = Math.abs(seconds);
  const text =
    span < 60 ? `${span} s` : span < 3600 ? `${Math.floor(span / 60)} min` : span < 172800 ? `${Math.floor(span / 3600)} h` : `${Math.floor(span / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

export function count(n) {
  return typeof n === "number" ? n.toLocaleString("en") : n ?? "—";
}

export function onlineBadge(online, { zoneOffline = false, disabled = false } = {}) {
  if (disabled) return badge("Disabled", "muted", "Zone.enabled is false: its sync is stopped");
  if (zoneOffline) return badge("Unknown", "warn", "its zone control plane is offline: this is the last state it reported");
  return online ? badge("Online", "ok") : badge("Offline", "bad");
}

// The last subscription of an insight (the newest stream), or null.
export function lastSubscription(insight) {
  const subs = insight?.subscriptions ?? [];
  return subs.length ? subs[subs.length - 1] : null;
}

export function subscriptionOnline(insight) {
  const last = lastSubscription(insight);
  return Boolean(last && !last.disconnectTime);
}
