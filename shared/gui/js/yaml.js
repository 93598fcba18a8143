// JSON data as YAML, the way resources are written for zmctl apply. Block style; a string is
// written plain only when no YAML 1.1 reader (PyYAML, Go's yaml.v2) could read it as anything else,
// otherwise double-quoted (JSON's string syntax is valid YAML); multi-line text as a literal block.
// tests/e2e/test_gui_browser.py reads this output back with PyYAML and compares.

const AMBIGUOUS = [
  /^(?:y|yes|n|no|true|false|on|off|null|~)$/i, // YAML 1.1 booleans and null
  /^[-+]?(?:\.\d|\d)[\d_.,:eExXoObB+\-a-fA-F]*$/, // numbers, hex/octal, 1_000, 1:20 (sexagesimal)
  /^[-+]?\.(?:inf|nan)$/i,
  /^\d{4}-\d\d?-\d\d?/, // timestamps
  /^<<$/, // merge key
];

function plain(text) {
  if (text === "" || !/^[A-Za-z0-9_/.][A-Za-z0-9 _\-./:@+=~()^,*%]*$/.test(text)) return false;
  if (/: |\s#|:$|\s$/.test(text)) return false;
  return !AMBIGUOUS.some((pattern) => pattern.test(text));
}

function quoted(text) {
  return plain(text) ? text : JSON.stringify(text);
}

// Multi-line text kept readable as a literal block (|), when its lines allow it.
function literal(text) {
  const trailing = text.length - text.replace(/\n+$/, "").length;
  if (!text.includes("\n") || trailing > 1 || /^[\s]/.test(text) || /[\r\t\u0000-\u0008\u000b-\u001f\u007f\u0085\u2028\u2029\ufeff]/.test(text)) {
    return null;
  }
  const lines = text.replace(/\n$/, "").split("\n");
  if (lines.some((line) => / $/.test(line))) return null; // trailing spaces would be invisible
  return { header: trailing === 1 ? "|" : "|-", lines };
}

function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return String(value);
  if (typeof value === "number") {
    // YAML 1.1 reads 1e-7 as a string: its floats need a dot and a signed exponent (1.0e-7).
    return String(value).replace(/^(-?\d+)e/, "$1.0e").replace(/e(\d)/, "e+$1");
  }
  if (typeof value === "string") return quoted(value);
  if (Array.isArray(value)) return "[]";
  return "{}";
}

function isBlock(value) {
  if (Array.isArray(value)) return value.length > 0;
  return value !== null && typeof value === "object" && Object.keys(value).length > 0;
}

function block(value, indent) {
  return Array.isArray(value) ? sequence(value, indent) : mapping(value, indent);
}

// "<prefix>" followed by the value: nested lines, a literal block, or a scalar on the same line.
function entry(prefix, value, indent) {
  const pad = " ".repeat(indent);
  if (isBlock(value)) return [pad + prefix.trimEnd(), ...block(value, indent + 2)];
  const text = typeof value === "string" ? literal(value) : null;
  if (text) return [pad + prefix + text.header, ...text.lines.map((line) => (line ? " ".repeat(indent + 2) + line : ""))];
  return [pad + prefix + scalar(value)];
}

function mapping(object, indent) {
  return Object.entries(object).flatMap(([key, value]) => entry(`${quoted(key)}: `, value, indent));
}

function sequence(items, indent) {
  const pad = " ".repeat(indent);
  return items.flatMap((item) => {
    if (!isBlock(item)) return entry("- ", item, indent);
    const lines = block(item, indent + 2);
    lines[0] = pad + "- " + lines[0].slice(indent + 2);
    return lines;
  });
}

export function toYaml(value) {
  return (isBlock(value) ? block(value, 0) : [scalar(value)]).join("\n") + "\n";
}
