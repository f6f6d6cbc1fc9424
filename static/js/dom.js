// Small DOM helpers: build elements from data without innerHTML, so nothing a user or a model
// wrote can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const fmt = (x, digits = 2) =>
  typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";

/** A share as a whole percentage ("-12%", "40%"). */
export const pct = (x) => (typeof x === "number" && Number.isFinite(x) ? `${Math.round(x * 100)}%` : "–");

export const ms = (x) => (typeof x === "number" ? `${Math.round(x)} ms` : "–");

/** An error box for an ApiError or any Error. */
export function errorBox(e) {
  const where = e.param ? ` (field ${e.param})` : "";
  const status = e.status ? `${e.status}: ` : "";
  return h("p", { class: "error", role: "alert" }, `${status}${e.message}${where}`);
}
