// The playground: paste a text and see its detected values over the tenant's targets, the
// rewrite beside the original with the differences marked, the scores before and after, the
// shield's decision and the timings; or send a prompt through the tenant's upstream and watch
// the stream's windows being held, released, rewritten or blocked as they arrive.

import { api, session, streamChat, valueList as allValues } from "./api.js";
import { ValueChart } from "./chart.js";
import { diffView } from "./diff.js";
import { clear, errorBox, fmt, h, ms, pct } from "./dom.js";

const IDS = { left: "original-text", right: "rewrite-text" };

function fitRows(before, after) {
  const row = (label, f) => h("tr", {}, h("th", { scope: "row" }, label), h("td", { class: "num" }, f(before)), h("td", { class: "num" }, after ? f(after) : "–"));
  return [
    row("distance to target (lower is better)", (x) => fmt(x.distance)),
    row("cosine to target", (x) => fmt(x.cosine)),
    row("precision", (x) => fmt(x.precision)),
    row("within tolerance", (x) => (x.within_tolerance ? "yes" : "no")),
  ];
}

export async function renderPlayground(main) {
  const values = await allValues();
  const names = Object.fromEntries(values.map((v) => [v.id, v.name]));
  const caller = session.caller();
  let controller = null;
  let ticker = null;
  const stop = () => {
    controller?.abort();
    controller = null;
    clearInterval(ticker);
  };

  // Whose profile: a tenant uses its own; the admin picks one.
  let tenants = [];
  if (caller.kind === "admin") {
    tenants = (await api("GET", "/v1/tenants")).data.filter((t) => t.profile).map((t) => t.id);
  } else {
    tenants = [caller.tenant_id];
  }
  const tenantSel = h("select", { id: "pg-tenant", "aria-label": "Tenant" }, tenants.map((t) => h("option", { value: t }, t)));
  const chart = new ValueChart(values);
  const profileNote = h("p", { class: "hint", id: "pg-profile" });
  let profile = null;
  async function loadProfile() {
    profile = null;
    const id = tenantSel.value;
    if (!id) {
      clear(profileNote, "No tenant has a profile yet: set one in the editor first.");
      return;
    }
    try {
      profile = await api("GET", caller.kind === "admin" ? `/v1/tenants/${encodeURIComponent(id)}/profile` : "/v1/profile");
      chart.setTargets(profile.values);
      clear(profileNote, `Profile v${profile.version}: action ${profile.action}, fallback ${profile.fallback}, streams in ${profile.stream_mode} mode.`);
    } catch (e) {
      chart.setTargets({});
      clear(profileNote, errorBox(e));
    }
  }
  tenantSel.addEventListener("change", loadProfile);

  const decisionLine = (r) =>
    h("p", {}, "Decision: ", h("span", { class: `badge ${r.decision}`, id: "pg-decision" }, r.decision), r.reason ? h("span", { class: "muted" }, ` — ${r.reason}`) : null);
  const detectedList = (detected, after) =>
    h("details", {}, h("summary", {}, "Detected values"), h("ul", {}, values.map((v) => h("li", {}, `${names[v.id]}: ${fmt(detected[v.id])}${after ? ` → ${fmt(after.values[v.id])}` : ""}`))));
  const scoreTable = (before, after, score) =>
    h(
      "table",
      { class: "data scores", id: "pg-scores" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { scope: "col" }, "before"), h("th", { scope: "col" }, "after"))),
      h("tbody", {}, fitRows(before, after), score
        ? [
            h("tr", {}, h("th", { scope: "row" }, "distance to the target closed"), h("td", {}, ""), h("td", { class: "num", id: "pg-progress" }, pct(score.progress))),
            h("tr", {}, h("th", { scope: "row" }, "semantic integrity"), h("td", {}, ""), h("td", { class: "num", id: "pg-integrity" }, fmt(score.integrity))),
            h("tr", {}, h("th", { scope: "row" }, "similarity to the original"), h("td", {}, ""), h("td", { class: "num" }, fmt(score.similarity))),
            h("tr", {}, h("th", { scope: "row" }, "facts kept"), h("td", {}, ""), h("td", { class: "num" }, `${score.facts.kept} of ${score.facts.total}${score.facts.missing.length ? ` (missing: ${score.facts.missing.join(", ")})` : ""}`)),
            h("tr", {}, h("th", { scope: "row" }, "facts of the rewrite in the original"), h("td", {}, ""), h("td", { class: "num" }, `${score.facts.supported} of ${score.facts.rewrite_total}${score.facts.added.length ? ` (added: ${score.facts.added.join(", ")})` : ""}`)),
          ]
        : null),
    );
  const editLabel = (e) => ({ rewritten: "rewritten", dropped: "dropped", inserted: "inserted" })[e.kind] + ` (${e.source})`;
  // Sentence edits: the edited answer beside the original, then each edit and each site with
  // every candidate and why it passed or not.
  function showEdits(r, original, d, detected) {
    const shown = r.decision === "rewritten" ? r.text : r.assembled;
    const after = r.after?.fit;
    chart.setAfter(after ? after.values : null);
    const [left, right] = shown ? diffView(original, shown, IDS) : [h("div", { class: "text" }, original), h("div", { class: "text muted" }, r.refusal || (r.decision === "passed" ? "Nothing to edit." : "No edit passed its checks."))];
    const label = {
      rewritten: "Edited (returned)",
      fallback: "Edits (refused by the shield; the original is returned)",
      blocked: "Edits (refused by the shield; the answer is blocked)",
      passed: "Within tolerance: nothing to edit",
    }[r.decision];
    const budget = r.timing.budget_ms ? ` of a ${ms(r.timing.budget_ms)} budget${r.budget_exhausted ? ", which ran out" : ""}` : "";
    clear(
      result,
      decisionLine(r),
      h("div", { class: "side-by-side" }, h("div", {}, h("h3", {}, "Original"), left), h("div", {}, h("h3", {}, label), right)),
      h(
        "ol",
        { class: "edits", id: "pg-edits" },
        (r.decision === "rewritten" ? r.edits : []).map((e) =>
          h("li", {}, h("strong", {}, editLabel(e)), ": ", e.original ? h("del", {}, e.original) : null, e.original && e.text ? " → " : null, e.text ? h("ins", {}, e.text) : null, h("span", { class: "muted" }, ` — ${e.reason}`)),
        ),
      ),
      scoreTable(r.original, after, r.after),
      h("p", { class: "muted", id: "pg-timing" }, `Timings: detect ${ms(d.timing.total_ms)}, generate ${ms(r.timing.generate_ms)}, score ${ms(r.timing.score_ms)}, edits total ${ms(r.timing.total_ms)}${budget} (${r.sentences} sentences, ${r.generated} model candidates, ${r.backend} rewriter).`),
      h(
        "details",
        {},
        h("summary", {}, `All ${r.sites.length} edit sites and their candidates`),
        h(
          "ol",
          { class: "candidates" },
          r.sites.map((s) =>
            h(
              "li",
              {},
              h("p", {}, `${s.kind === "lower" ? "lower" : "raise"} ${s.values.join(", ")}${s.sentence_text ? ` in: “${s.sentence_text}”` : ""}${s.reason ? ` — ${s.reason}` : ""}`),
              h(
                "ul",
                {},
                s.candidates.map((c, i) =>
                  h("li", { class: i === s.chosen ? "chosen" : "" }, `${i === s.chosen ? "chosen " : ""}${c.kind} by ${c.source}: ${c.text || "(drop the sentence)"} — ${c.passed ? "passed" : "refused"}${c.note ? `: ${c.note}` : ""}`),
                ),
              ),
            ),
          ),
        ),
      ),
      detectedList(detected, after),
    );
  }

  // Text mode.
  const text = h("textarea", { id: "pg-text", rows: 6, "aria-label": "Text to check" });
  const context = h("input", { id: "pg-context", type: "text", "aria-label": "The request the text answers (optional)", placeholder: "The request it answers (optional)" });
  const result = h("div", { id: "pg-result", "aria-live": "polite" });
  const textForm = h(
    "form",
    { class: "card", id: "pg-text-form" },
    h("h2", {}, "Check a text"),
    text,
    context,
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "pg-run" }, "Detect and rewrite")),
  );
  textForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    stop();
    controller = new AbortController();
    const signal = controller.signal;
    const original = text.value;
    clear(result, h("p", { class: "muted" }, "Detecting…"));
    try {
      const d = await api("POST", "/v1/values/detect", { text: original }, { signal });
      const detected = d.data[0].values;
      chart.setAfter(null);
      chart.setDetected(detected);
      clear(result, h("p", { class: "muted" }, `Detected in ${ms(d.timing.total_ms)}. Rewriting (the local model takes a while)…`));
      const body = { text: original };
      if (context.value.trim()) body.context = context.value.trim();
      if (caller.kind === "admin") body.tenant_id = tenantSel.value;
      const r = await api("POST", "/v1/values/rewrite", body, { signal });
      if (r.mode === "edits") {
        showEdits(r, original, d, detected);
        return;
      }
      const best = r.best !== null && r.best !== undefined ? r.candidates[r.best] : null;
      const shown = r.decision === "rewritten" ? r.text : best?.text;
      const after = best?.score?.fit;
      chart.setAfter(after ? after.values : null);
      const [left, right] = shown ? diffView(original, shown, IDS) : [h("div", { class: "text" }, original), h("div", { class: "text muted" }, r.refusal || "No candidate could be scored.")];
      const label = {
        rewritten: "Rewrite (returned)",
        fallback: "Best candidate (refused by the shield; the original is returned)",
        blocked: "Best candidate (refused by the shield; the answer is blocked)",
        passed: "Within tolerance: nothing to rewrite",
      }[r.decision];
      clear(
        result,
        decisionLine(r),
        h("div", { class: "side-by-side" }, h("div", {}, h("h3", {}, "Original"), left), h("div", {}, h("h3", {}, label), right)),
        scoreTable(r.original, after, best?.score),
        h("p", { class: "muted", id: "pg-timing" }, `Timings: detect ${ms(d.timing.total_ms)}, generate ${ms(r.timing.generate_ms)}, score ${ms(r.timing.score_ms)}, rewrite total ${ms(r.timing.total_ms)} (${r.backend} rewriter).`),
        h(
          "details",
          {},
          h("summary", {}, `All ${r.candidates.length} candidates`),
          h(
            "ol",
            { class: "candidates" },
            r.candidates.map((c) =>
              h(
                "li",
                {},
                h("div", { class: "text" }, c.text || "(empty)"),
                c.score
                  ? h("p", { class: "muted" }, `reward ${fmt(c.score.reward)}, distance ${fmt(c.score.fit.distance)} (closed ${pct(c.score.progress)}), integrity ${fmt(c.score.integrity)}`)
                  : h("p", { class: "muted" }, `rejected: ${typeof c.rejected === "string" ? c.rejected : JSON.stringify(c.rejected)}`),
              ),
            ),
          ),
        ),
        detectedList(detected, after),
      );
    } catch (e) {
      if (e.name === "AbortError") return;
      clear(result, errorBox(e));
    }
  });

  // Prompt mode: a streamed completion through the tenant's upstream, window by window.
  const prompt = h("textarea", { id: "pg-prompt", rows: 3, "aria-label": "Prompt" });
  const streamOut = h("div", { class: "stream", id: "pg-stream", "aria-live": "polite" });
  const streamInfo = h("p", { class: "muted", id: "pg-stream-info" });
  const promptForm = h(
    "form",
    { class: "card", id: "pg-prompt-form" },
    h("h2", {}, "Send a prompt (streamed)"),
    caller.kind === "admin"
      ? h("p", { class: "hint" }, "Sign in with a tenant key to send prompts through that tenant's upstream.")
      : [
          prompt,
          h("div", { class: "buttons" }, h("button", { type: "submit", id: "pg-send" }, "Send"), h("button", { type: "button", class: "secondary", onclick: stop }, "Stop")),
          h("p", { class: "hint" }, "Each window is checked before it is released: green passed, blue rewritten, amber fallback (original kept), red blocked."),
          streamInfo,
          streamOut,
        ],
  );
  promptForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (caller.kind === "admin") return;
    stop();
    controller = new AbortController();
    clear(streamOut);
    clear(streamInfo, "Waiting for the first window…");
    const holding = h("span", { class: "holding" });
    streamOut.append(holding);
    let last = performance.now();
    const started = last;
    ticker = setInterval(() => {
      holding.textContent = ` ⏳ holding (${((performance.now() - last) / 1000).toFixed(1)} s)`;
    }, 200);
    try {
      const model = (await api("GET", "/v1/models")).data[0]?.id;
      const meta = await streamChat(
        { model, messages: [{ role: "user", content: prompt.value }] },
        (chunk) => {
          last = performance.now();
          const delta = chunk.choices?.[0]?.delta?.content;
          const w = chunk.visa_window;
          if (w) {
            const title = `window ${w.window}: ${w.action}; distance ${fmt(w.before.distance)}${w.after ? ` → ${fmt(w.after.distance)}` : ""}; held ${w.held_chars} characters; detect ${ms(w.detect_ms)}, rewrite ${ms(w.rewrite_ms)}${w.reason ? `; ${w.reason}` : ""}`;
            holding.before(
              h("sup", { class: `wnum ${w.action}`, "aria-hidden": "true" }, w.window),
              h("span", { class: `window ${w.action}`, title, tabindex: 0, dataset: { action: w.action } }, delta ?? "[withheld]"),
            );
          } else if (delta) {
            holding.before(h("span", { class: "window plain" }, delta));
          }
          if (chunk.choices?.[0]?.finish_reason === "content_filter") {
            holding.before(h("p", { class: "warn" }, "The rest was withheld (content_filter)."));
          }
          if (chunk.visa) {
            clear(streamInfo, `Answer: ${chunk.visa.action}; ${chunk.visa.windows?.length ?? 0} windows; ${ms(chunk.visa.total_ms)} in enforcement.`);
          }
        },
        controller.signal,
      );
      holding.remove();
      streamInfo.append(` Stream mode ${meta.mode || "–"}, done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
    } catch (e) {
      holding.remove();
      if (e.name !== "AbortError") streamOut.append(errorBox(e));
    } finally {
      clearInterval(ticker);
    }
  });

  clear(
    main,
    h("h1", {}, "Playground"),
    h("div", { class: "split" },
      h("section", { class: "card" }, h("label", { for: "pg-tenant" }, "Profile of tenant "), tenantSel, profileNote, chart.el),
      h("div", {}, textForm, promptForm)),
    h("section", { class: "card" }, h("h2", {}, "Result"), result),
  );
  await loadProfile();
  return stop;
}
