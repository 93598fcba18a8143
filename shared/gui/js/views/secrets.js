// A mesh's Secrets: names and types only. Reading them needs an admin (as with zmctl); the values
// the API returns are dropped as soon as they arrive, before anything is drawn, and never shown.

import { meshPath, withQuery } from "../api.js";
import { h, muted, problem, replace, table } from "../dom.js";
import { when } from "../format.js";
import { NORMAL } from "../live.js";
import { meshHeader } from "./meshes.js";

// Only what may be shown: never data.
function described(secret) {
  return { name: secret.name, type: secret.type, creationTime: secret.creationTime, modificationTime: secret.modificationTime };
}

export default function secrets(ctx, mesh) {
  ctx.title(`Secrets · ${mesh}`);
  const box = h("div", {}, muted("Loading…"));
  replace(
    ctx.main,
    meshHeader(mesh, "secrets"),
    h("p", { class: "lead" }, "Names only: the GUI never shows a secret's value. Use zmctl as an admin to read one."),
    box,
  );
  ctx.poller.watch(
    withQuery(meshPath(mesh, "secrets"), { size: 500 }),
    NORMAL,
    (page) => {
      const items = page.items.map(described);
      replace(
        box,
        table({
          caption: `Secrets in mesh ${mesh} (${page.total})`,
          columns: [
            { title: "Name", cell: (s) => s.name },
            { title: "Type", cell: (s) => s.type },
            { title: "Created", cell: (s) => when(s.creationTime) },
            { title: "Modified", cell: (s) => when(s.modificationTime) },
          ],
          rows: items,
          empty: "No secret in this mesh.",
        }),
      );
    },
    (e) =>
      e &&
      replace(
        box,
        problem(e, "Secrets"),
        e.hint ? h("p", {}, h("a", { href: `#/login?back=${encodeURIComponent(location.hash)}` }, "Log in with a token")) : null,
      ),
  );
}
