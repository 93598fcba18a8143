// The GUI's shell: which control plane this is, who the API takes us for, navigation, the license
// banner, and a hash router that gives each view the main area and a fresh poller.

import { clearToken, get, TOKEN_REFUSED } from "./api.js";
import { badge, h, replace } from "./dom.js";
import * as license from "./license.js";
import { NORMAL, onPoll, Poller, SLOW } from "./live.js";
import dataplane from "./views/dataplane.js";
import dataplanes from "./views/dataplanes.js";
import gateways from "./views/gateways.js";
import login from "./views/login.js";
import { mesh, meshes } from "./views/meshes.js";
import overview from "./views/overview.js";
import { policy, policyList, policyTypes } from "./views/policies.js";
import secrets from "./views/secrets.js";
import zoneProxies from "./views/zoneproxies.js";
import { zone, zones } from "./views/zones.js";

const ROUTES = [
  [/^$/, overview],
  [/^zones$/, zones],
  [/^zones\/([^/]+)$/, zone],
  [/^meshes$/, meshes],
  [/^meshes\/([^/]+)$/, mesh],
  [/^meshes\/([^/]+)\/dataplanes$/, dataplanes],
  [/^meshes\/([^/]+)\/dataplanes\/([^/]+)$/, dataplane],
  [/^meshes\/([^/]+)\/gateways$/, gateways],
  [/^meshes\/([^/]+)\/policies$/, policyTypes],
  [/^meshes\/([^/]+)\/policies\/([^/]+)$/, policyList],
  [/^meshes\/([^/]+)\/policies\/([^/]+)\/([^/]+)$/, policy],
  [/^meshes\/([^/]+)\/secrets$/, secrets],
  [/^zone-proxies$/, zoneProxies],
  [/^login$/, login],
];

const state = { cp: null, identity: null, types: [], poller: null, shell: null };

function describeCp(cp) {
  if (cp.mode === "global") return "Global control plane";
  if (cp.mode === "zone") return `Zone control plane: ${cp.zone}`;
  return "Standalone control plane";
}

function navigation() {
  const links = [["#/", "Overview"]];
  if (state.cp.mode === "global") links.push(["#/zones", "Zones"]);
  links.push(["#/meshes", "Meshes"], ["#/zone-proxies", "Zone ingresses & egresses"]);
  const current = location.hash || "#/";
  return h(
    "ul",
    {},
    links.map(([target, text]) => {
      const active = target === "#/" ? current === "#/" || current === "" : current.startsWith(target);
      return h("li", {}, h("a", { href: target, "aria-current": active ? "page" : undefined }, text));
    }),
  );
}

function identityView() {
  const who = state.identity;
  if (!who) return "";
  const back = encodeURIComponent(location.hash || "#/");
  if (who.source === "token") {
    return h(
      "span",
      {},
      `Signed in as ${who.name}`,
      who.admin ? badge("admin", "ok") : badge("read-only", "muted", "this token's groups do not include mesh-system:admin"),
      " ",
      h("button", { type: "button", class: "link", onclick: logout }, "Log out"),
    );
  }
  const label = who.admin ? ["Admin ", badge("loopback, no token", "neutral", "a direct loopback client is the admin while api_localhost_is_admin is on")] : ["Read-only ", badge("no token", "muted", who.whyNotAdmin ?? "")];
  return h("span", {}, label, " ", h("a", { href: `#/login?back=${back}` }, "Log in with a token"));
}

async function logout() {
  clearToken();
  showBanner("token", null);
  await loadIdentity();
  route();
}

async function loadIdentity() {
  try {
    state.identity = await get("/gui/identity");
  } catch {
    state.identity = null; // a refused token: TOKEN_REFUSED follows, which loads it again
  }
  replace(document.getElementById("identity"), identityView());
}

// The API refused the stored token on some request: api.js forgot it; say so, and who we are now.
function onTokenRefused(event) {
  showBanner("token", h("div", { class: "banner banner-bad", role: "alert" }, `The API refused your token (${event.detail}): you are signed out.`));
  loadIdentity();
}

const banners = new Map();

function showBanner(key, node) {
  banners.set(key, node);
  replace(document.getElementById("banners"), [...banners.values()].filter(Boolean));
}

// Shown on every page: the license's warnings, and a zone's lost connection to global.
function watchBanners(shell) {
  shell.watch("/license", SLOW, (body) => showBanner("license", license.banner(body)), (error) => {
    if (error?.status === 404) showBanner("license", null); // standalone: no license here
  });
  if (state.cp.mode === "zone") {
    shell.watch("/status/kds", NORMAL, (kds) => {
      showBanner(
        "kds",
        kds.connected || kds.leader === false // a replica that does not lead: its zone's leader holds the stream
          ? null
          : h("div", { class: "banner banner-bad", role: "alert" }, `Not connected to the global control plane (${kds.globalAddress ?? "no address"})`, kds.lastError ? `: ${kds.lastError}` : ""),
      );
    });
  }
}

function watchLiveness() {
  const live = document.getElementById("live");
  onPoll((result) => {
    live.className = result.ok ? "live live-ok" : "live live-bad";
    live.textContent = result.ok ? "Live" : `Connection problem, retrying: ${result.error?.message ?? ""}`;
    live.title = `last poll ${result.at.toLocaleTimeString()}`;
  });
}

function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  state.poller?.stop();
  state.poller = new Poller();
  const main = document.getElementById("main");
  replace(document.getElementById("nav"), navigation());
  for (const [pattern, view] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    replace(main);
    const ctx = {
      main,
      poller: state.poller,
      cp: state.cp,
      identity: state.identity,
      types: state.types,
      query: new URLSearchParams(search),
      refreshIdentity: loadIdentity,
      title: (text) => (document.title = `${text} · zonemesh`),
    };
    try {
      view(ctx, ...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      replace(main, h("p", { class: "problem", role: "alert" }, `This view failed: ${error.message}`));
      console.error(error);
    }
    return;
  }
  replace(main, h("h1", {}, "Not found"), h("p", {}, "No such page. "), h("a", { href: "#/" }, "Overview"));
}

async function start() {
  try {
    state.cp = await get("/");
    state.types = (await get("/_resources")).resources;
  } catch (error) {
    replace(document.getElementById("main"), h("p", { class: "problem", role: "alert" }, `The control plane's API does not answer: ${error.message}`));
    return;
  }
  document.getElementById("cp-badge").textContent = `${describeCp(state.cp)} · ${state.cp.version}`;
  document.body.dataset.mode = state.cp.mode;
  watchLiveness();
  await loadIdentity();
  state.shell = new Poller();
  watchBanners(state.shell);
  window.addEventListener("hashchange", route);
  window.addEventListener(TOKEN_REFUSED, onTokenRefused);
  route();
}

start();

