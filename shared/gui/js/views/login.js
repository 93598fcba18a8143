// Giving the GUI a user token: checked by the API first (a refused one is never kept, and the API's
// reason is shown), then kept in this tab's sessionStorage and sent as a bearer token.

import { request, setToken } from "../api.js";
import { h, problem, replace } from "../dom.js";

export default function login(ctx) {
  ctx.title("Log in");
  const back = ctx.query.get("back") || "#/";
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true, "aria-describedby": "token-help" });
  const status = h("div", { role: "status", "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (event) => {
        event.preventDefault();
        const candidate = input.value.trim();
        try {
          const who = (await request("GET", "/gui/identity", { candidate })).body;
          setToken(candidate);
          input.value = "";
          await ctx.refreshIdentity();
          replace(status, `Signed in as ${who.name}${who.admin ? " (admin)" : " (read-only: not in mesh-system:admin)"}.`);
          location.hash = back.startsWith("#/") && !back.startsWith("#/login") ? back : "#/";
        } catch (error) {
          replace(status, problem(error, "The token was refused"));
        }
      },
    },
    h("label", { for: "token" }, "User token"),
    input,
    h(
      "p",
      { id: "token-help", class: "muted" },
      "A user token of this control plane, as zmctl uses: zmctl generate user-token --name you --group mesh-system:admin --valid-for 8h. ",
      "On the control plane's host, zonemesh-cp admin-token prints the admin token. ",
      "It stays in this browser tab only (sessionStorage) and is sent to this control plane's API as Authorization: Bearer.",
    ),
    h("button", { type: "submit" }, "Log in"),
  );
  replace(ctx.main, h("h1", {}, "Log in"), form, status);
  input.focus();
}
