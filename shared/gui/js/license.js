// The license (GET /license): the warnings the control plane carries, shown on every page, plus
// one of the GUI's own before the limit is reached: from NEAR_LIMIT of the allowed proxies on, so
// that an operator sees it while a proxy can still join.

import { count, when } from "./format.js";
import { badge, facts, h, section, table } from "./dom.js";

export const NEAR_LIMIT = 0.8;

export function nearLimit(license) {
  const allowed = license?.allowedDataplaneProxies;
  const active = license?.activeDataplaneProxies;
  if (!Number.isInteger(allowed) || !Number.isInteger(active) || allowed <= 0) return null;
  if (active > allowed || active < Math.ceil(allowed * NEAR_LIMIT)) return null; // over: the CP's own warning says so
  const kind = license.demo ? "demo license" : "license";
  const left = allowed - active;
  const outcome =
    license.enforcement === "warn"
      ? "proxies over the limit still join, with a warning"
      : "proxies over the limit will be refused";
  const room = left === 0 ? "the limit is reached" : `room for ${left} more`;
  return `${active} of the ${allowed} data plane proxies the ${kind} allows are active (${room}): ${outcome}. Remove proxies or install a license that allows more.`;
}

export function warnings(license) {
  const found = [...(license?.warnings ?? [])];
  const near = nearLimit(license);
  if (near) found.push(near);
  return found;
}

// The banner above every view.
export function banner(license) {
  const found = warnings(license);
  if (!found.length) return null;
  return h(
    "div",
    { class: "banner banner-warn", role: "alert", id: "license-warnings" },
    h("strong", {}, "License: "),
    found.length === 1 ? found[0] : h("ul", {}, found.map((text) => h("li", {}, text))),
    " ",
    h("a", { href: "#/" }, "details"),
  );
}

function daysLeft(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return null;
  return Math.floor((at.getTime() - Date.now()) / 86400000);
}

// The overview's license card: allowed vs active, expiry, demo, every warning, each zone's quota.
export function card(license) {
  const allowed = license.allowedDataplaneProxies;
  const active = license.activeDataplaneProxies;
  const left = daysLeft(license.expirationDate);
  const usage =
    Number.isInteger(allowed) && Number.isInteger(active)
      ? h(
          "span",
          {},
          h("meter", { min: 0, max: allowed, low: Math.ceil(allowed * NEAR_LIMIT) - 0.5, high: allowed - 0.5, optimum: 0, value: Math.min(active, allowed), "aria-label": "active of allowed proxies" }),
          ` ${count(active)} active of ${count(allowed)} allowed`,
        )
      : "not known yet";
  const found = warnings(license);
  const zone = license.zone;
  return section(
    "License",
    found.length
      ? h("ul", { class: "warnings", "aria-label": "license warnings" }, found.map((text) => h("li", {}, text)))
      : h("p", { class: "ok-text" }, "No warnings."),
    facts([
      ["Data plane proxies", usage],
      ["Expires", license.expirationDate ? [when(license.expirationDate), left !== null ? ` (${license.expirationDate}, ${left} days left)` : ""] : "—"],
      ["Kind", license.demo ? badge("Demo", "warn") : badge("Issued", "neutral")],
      ["Enforcement", license.enforcement ?? "—"],
      ["Customer", license.customer || "—"],
      ["Source", license.source ?? "—"],
      zone ? [`Zone ${zone.name}`, `${count(zone.activeDataplaneProxies)} connected proxies hold slots; ${count(zone.quota?.grantedSlots)} slots granted by global`] : null,
    ]),
    license.quota && Object.keys(license.quota).length
      ? table({
          caption: "Slots granted to zones (strict enforcement)",
          columns: [
            { title: "Zone", cell: ([name]) => name },
            { title: "Granted", cell: ([, q]) => count(q.grantedSlots), class: "num" },
            { title: "Wanted", cell: ([, q]) => count(q.wantedSlots), class: "num" },
          ],
          rows: Object.entries(license.quota),
        })
      : null,
  );
}
