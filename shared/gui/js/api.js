// The control plane's HTTP API, as zmctl uses it: same paths, same bearer user tokens.
//
// The token lives in this tab's sessionStorage only (gone when the tab closes, never in a URL or a
// cookie), and goes out as "Authorization: Bearer" on requests to this same origin. Without one, the
// API decides what this browser may do (loopback admin, or read-only).

const TOKEN_KEY = "zonemesh.userToken";
// Dispatched on window when the API refuses the stored token (event.detail: the API's reason).
export const TOKEN_REFUSED = "zonemesh:token-refused";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// The claims of the stored token, for display only (the API checks the signature on every request).
export function tokenClaims() {
  const value = token();
  if (!value) return null;
  try {
    const payload = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail && detail !== title ? `${title}: ${detail}` : title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
    if (status === 401 || status === 403) {
      this.hint = "This needs an admin: log in with a user token of the mesh-system:admin group (zmctl generate user-token).";
    }
  }
}

// One request; resolves to {status, etag, body} (body null on 304), rejects with ApiError.
// candidate: a token to try instead of the stored one (the login form's).
export async function request(method, path, { body, etag, candidate } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = candidate ?? token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (etag) headers["If-None-Match"] = etag;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", // the page decides about ETags itself: a 304 must reach it
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    throw new ApiError(0, "The control plane is unreachable", String(error.message ?? error));
  }
  if (response.status === 304) return { status: 304, etag, body: null };
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // plain text (a token, an error page): kept as is
  }
  if (!response.ok) {
    const title = data?.title ?? response.statusText;
    const detail = data?.detail ?? (typeof data === "string" ? data : "");
    if (response.status === 401 && bearer && !candidate && detail.startsWith("invalid token")) {
      // expired, revoked, its key rotated out: forget it; the shell signs the tab out and says why
      clearToken();
      window.dispatchEvent(new CustomEvent(TOKEN_REFUSED, { detail }));
    }
    throw new ApiError(response.status, title, detail);
  }
  return { status: response.status, etag: response.headers.get("ETag"), body: data };
}

export async function get(path) {
  return (await request("GET", path)).body;
}

export async function put(path, body) {
  return (await request("PUT", path, { body })).body;
}

// A path with a query string, leaving out empty values.
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of [value].flat()) query.append(key, String(one));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export function meshPath(mesh, ...rest) {
  return ["", "meshes", mesh, ...rest].map((part, i) => (i === 0 ? part : encodeURIComponent(part))).join("/");
}
