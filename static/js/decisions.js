// The decision log: what enforcement did to answers and why, newest first, from
// GET /v1/decisions (a tenant sees its own, the admin every tenant's), filtered by action and
// value, paged with the API's cursor; where the profile kept the texts, original and final side
// by side with the changed words marked.

import { api, valueList } from "./api.js";
import { clear, fmt, h, ms } from "./dom.js";
import { diffView } from "./diff.js";

const ACTIONS = ["rewritten", "fallback", "blocked", "passed"];

function sideBySide(t) {
  if (t.original.startsWith("sha256:")) {
    return h("p", { class: "muted" }, `Hashes only: original ${t.original.slice(0, 19)}…, final ${(t.final || "none").slice(0, 19)}…`);
  }
  if (!t.final) {
    return h("div", { class: "side-by-side" },
      h("div", {}, h("h4", {}, "Upstream"), h("div", { class: "text" }, t.original)),
      h("div", {}, h("h4", {}, "Sent"), h("p", { class: "muted" }, "Nothing: blocked.")));
  }
  const [left, right] = diffView(t.original, t.final);
  return h("div", { class: "side-by-side" }, h("div", {}, h("h4", {}, "Upstream"), left), h("div", {}, h("h4", {}, "Sent"), right));
}

function decisionCard(d, names) {
  const when = new Date(d.created_at).toLocaleString();
  const edits = (d.choices || []).flatMap((c) => (c.edits || []).map((e) => ({ ...e, choice: c.index })));
  const reasons = [...new Set((d.choices || []).map((c) => c.reason).filter(Boolean))];
  return h(
    "article",
    { class: "card decision", dataset: { id: d.id, action: d.action } },
    h(
      "div",
      { class: "decision-head" },
      h("span", { class: `badge ${d.action}` }, d.action),
      h("strong", {}, ` ${d.tenant_id}`),
      h("span", { class: "muted" }, ` · ${when} · ${d.kind} · profile v${d.profile_version} · ${ms(d.total_ms)} · request ${d.request_id}`),
    ),
    h("p", {}, "Outside tolerance: ", d.values.length ? d.values.map((v) => names[v] || v).join(", ") : "none"),
    (d.choices || []).map((c, k) =>
      h(
        "p",
        { class: "scores" },
        `${d.kind === "stream" ? `Window ${k + 1}, choice ${c.index}` : `Choice ${c.index}`}${c.field ? ` (${c.field})` : ""}: ${c.action}; distance ${fmt(c.before?.distance)}`,
        c.after ? ` → ${fmt(c.after.distance)}` : "",
        c.integrity != null ? `; integrity ${fmt(c.integrity)}` : "",
      ),
    ),
    edits.length
      ? h(
          "ul",
          { class: "edits" },
          edits.map((e) =>
            h("li", {}, `${e.kind} (${e.source}) sentence ${e.sentence ?? "end"}: ${(e.values || []).map((v) => names[v] || v).join(", ")}`, e.original ? ` — “${e.original}”` : "", e.text ? ` → “${e.text}”` : ""),
          ),
        )
      : null,
    reasons.length ? h("p", { class: "hint" }, reasons.join("; ")) : null,
    (d.texts || []).map(sideBySide),
  );
}

export async function renderDecisions(main) {
  const values = await valueList();
  const names = Object.fromEntries(values.map((v) => [v.id, v.name]));
  const action = h("select", { id: "d-action", "aria-label": "Action" }, h("option", { value: "" }, "any action"), ACTIONS.map((a) => h("option", { value: a }, a)));
  const value = h("select", { id: "d-value", "aria-label": "Value" }, h("option", { value: "" }, "any value"), values.map((v) => h("option", { value: v.id }, v.name)));
  const list = h("div", { id: "decisions", "aria-live": "polite" });
  const more = h("button", { type: "button", id: "d-more", hidden: true }, "Older decisions");
  let cursor = null;

  async function load(reset) {
    const q = new URLSearchParams({ limit: "20" });
    if (action.value) q.set("action", action.value);
    if (value.value) q.set("value", value.value);
    if (!reset && cursor) q.set("cursor", cursor);
    const page = await api("GET", `/v1/decisions?${q}`);
    const cards = page.data.map((d) => decisionCard(d, names));
    const empty = action.value || value.value ? "No decisions match these filters." : "No decisions recorded yet.";
    if (reset) clear(list, cards.length ? cards : h("p", { class: "muted" }, empty));
    else list.append(...cards);
    cursor = page.next_cursor || null;
    more.hidden = !cursor;
  }
  action.addEventListener("change", () => load(true));
  value.addEventListener("change", () => load(true));
  more.addEventListener("click", () => load(false));
  clear(
    main,
    h("h1", {}, "Decisions"),
    h("p", { class: "hint" }, "Every answer enforcement changed, blocked or fell back on (every answer when a profile logs all). Texts appear as the profile's log_text keeps them."),
    h("div", { class: "filters" }, action, value),
    list,
    more,
  );
  await load(true);
}
