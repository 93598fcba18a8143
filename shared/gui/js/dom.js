// Building the page from elements, never from HTML strings: whatever the API returns (names, tags, Envoy's errors)
// becomes text nodes, never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A link inside the GUI: parts are path segments, encoded one by one.
export function href(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

export function link(target, text) {
  return h("a", { href: target }, text);
}

export function badge(text, kind = "neutral", title = undefined) {
  return h("span", { class: `badge badge-${kind}`, title }, text);
}

export function muted(text) {
  return h("span", { class: "muted" }, text);
}

// A table with a caption and column headers. columns: [{title, cell: (row) => node|string, class?}].
export function table({ caption, columns, rows, empty = "None.", label = undefined }) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.title)));
  const body = rows.length
    ? rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.cell(row)))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))];
  return h(
    "table",
    { "aria-label": label },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, head),
    h("tbody", {}, body),
  );
}

// Label/value pairs, as a description list.
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]),
  );
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), children);
}

// An error from the API where data should be: what failed and the control plane's own words.
export function problem(error, what) {
  return h(
    "div",
    { class: "problem", role: "alert" },
    h("strong", {}, what ? `${what}: ` : ""),
    error?.message ?? String(error),
    error?.hint ? h("p", {}, error.hint) : null,
  );
}

export function pre(text, label) {
  return h("pre", { class: "code", tabindex: "0", "aria-label": label }, text);
}
