// The console's only way to the proxy: its documented REST API, with the key from session
// storage (never in a URL, never logged). Errors come back in OpenAI's shape and are thrown as
// ApiError so views can show them at the field they name.

const KEY = "visa.key";
const CALLER = "visa.caller";

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.param = e.param || null;
    this.code = e.code || null;
    this.type = e.type || null;
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  caller: () => {
    try {
      return JSON.parse(sessionStorage.getItem(CALLER) || "null");
    } catch {
      return null;
    }
  },
  save(key, caller) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(CALLER, JSON.stringify(caller));
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(CALLER);
  },
};

function headers(extra = {}, key = session.key()) {
  const h = { "content-type": "application/json", ...extra };
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** A JSON request; resolves to the parsed body, throws ApiError on a non-2xx answer. */
export async function api(method, path, body, opts = {}) {
  const res = await fetch(path, {
    method,
    headers: headers(opts.headers, opts.key ?? session.key()),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: opts.signal,
  });
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: { message: text.slice(0, 200) } };
    }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** Checks a key and says whose it is (`GET /v1/me`). */
export const whoami = (key) => api("GET", "/v1/me", undefined, { key });

/** The profile routes for this caller: the admin's per-tenant routes, or a tenant's own. */
export function profilePaths(tenantId) {
  const caller = session.caller();
  if (caller && caller.kind === "tenant" && caller.tenant_id === tenantId) {
    return { profile: "/v1/profile", history: "/v1/profile/history" };
  }
  // Another tenant's id with a tenant key goes to the admin route too: the proxy refuses it,
  // and the console shows why.
  const id = encodeURIComponent(tenantId);
  return { profile: `/v1/tenants/${id}/profile`, history: `/v1/tenants/${id}/profile/history` };
}

/**
 * A streamed chat completion: calls `onChunk(json)` for each SSE data event; resolves when the
 * stream ends. `signal` aborts it (the proxy then cancels the work).
 */
export async function streamChat(body, onChunk, signal) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "x-visa-metadata": "true" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!res.ok) {
    let data = null;
    try {
      data = await res.json();
    } catch {
      /* not JSON */
    }
    throw new ApiError(res.status, data);
  }
  const meta = {
    action: res.headers.get("x-visa-action"),
    mode: res.headers.get("x-visa-stream-mode"),
    version: res.headers.get("x-visa-profile-version"),
  };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return meta;
        try {
          onChunk(JSON.parse(data));
        } catch (e) {
          if (e instanceof SyntaxError) continue;
          throw e;
        }
      }
    }
  }
  return meta;
}

let valuesCache = null;

/** The 10 values in circumplex order, with ids, names and definitions (`GET /v1/values`). */
export async function valueList() {
  if (!valuesCache) valuesCache = (await api("GET", "/v1/values")).data;
  return valuesCache;
}
