// The profile editor: the circumplex chart and a table of targets, tolerances and weights kept
// in step; action, fallback and stream mode; save with the proxy's validation errors shown at
// the field they name; the translator box; the version history with differences and restore.

import { api, profilePaths, session, valueList as allValues } from "./api.js";
import { ValueChart } from "./chart.js";
import { clear, errorBox, fmt, h } from "./dom.js";

const DEFAULTS = { target: 0.5, weight: 1, tolerance: 0.15 };
const ACTIONS = ["audit", "rewrite", "block"];
const FALLBACKS = ["original", "block"];
const STREAM_MODES = ["window", "buffer"];

function specOf(profile) {
  const p = profile || {};
  const values = {};
  for (const [id, t] of Object.entries(p.values || {})) values[id] = { ...t };
  return {
    values,
    action: p.action || "audit",
    fallback: p.fallback || "original",
    stream_mode: p.stream_mode || "window",
    // Kept as loaded so that a save from the console does not reset them.
    steer: Boolean(p.steer),
    max_added_ms: p.max_added_ms ?? null,
    audit_sample: p.audit_sample ?? null,
    log_decisions: p.log_decisions || "changes",
    log_text: p.log_text || "none",
  };
}

/** What changed from `older` to `newer` (either may be null: no profile). */
export function changes(older, newer, names) {
  if (!newer) return ["profile deleted"];
  if (!older) return ["profile created"];
  const out = [];
  for (const k of ["action", "fallback", "stream_mode", "steer", "max_added_ms", "audit_sample", "log_decisions", "log_text"]) {
    const a = older[k] ?? "default";
    const b = newer[k] ?? "default";
    if (a !== b) out.push(`${k}: ${a} → ${b}`);
  }
  const ids = new Set([...Object.keys(older.values || {}), ...Object.keys(newer.values || {})]);
  for (const id of ids) {
    const a = older.values?.[id];
    const b = newer.values?.[id];
    const name = names[id] || id;
    if (!a) out.push(`${name} constrained: target ${fmt(b.target)}`);
    else if (!b) out.push(`${name} no longer constrained`);
    else {
      for (const f of ["target", "tolerance", "weight"]) {
        if (a[f] !== b[f]) out.push(`${name} ${f}: ${fmt(a[f])} → ${fmt(b[f])}`);
      }
    }
  }
  return out.length ? out : ["no change"];
}

export async function renderProfile(main, tenantId) {
  const values = await allValues();
  const names = Object.fromEntries(values.map((v) => [v.id, v.name]));
  const caller = session.caller();
  const paths = profilePaths(tenantId);
  const readOnly = caller.kind === "tenant" && !caller.self_manage_profile;

  let loaded = null;
  try {
    loaded = await api("GET", paths.profile);
  } catch (e) {
    if (e.status !== 404 || e.code !== "profile_not_found") throw e;
  }
  let spec = specOf(loaded);

  const heading = h("h1", {}, `Profile: ${tenantId}`);
  const version = h("span", { class: "version", id: "version" });
  const status = h("div", { class: "status", "aria-live": "polite", id: "save-status" });
  const rows = h("tbody");
  const chart = new ValueChart(values, {
    editable: !readOnly,
    onChange: (id, field, value) => {
      const input = rows.querySelector(`input[data-param="values.${id}.${field}"]`);
      if (input) input.value = value.toFixed(2);
      spec.values[id][field] = value;
    },
    onAdd: (id) => {
      spec.values[id] = { ...DEFAULTS };
      draw();
    },
  });

  const num = (id, field) => {
    const param = `values.${id}.${field}`;
    const input = h("input", {
      type: "number",
      step: "0.01",
      min: field === "weight" ? "0" : "0",
      max: field === "weight" ? null : "1",
      value: spec.values[id][field],
      "data-param": param,
      "aria-label": `${names[id]} ${field}`,
      disabled: readOnly,
    });
    input.addEventListener("input", () => {
      const n = input.value.trim() === "" ? NaN : Number(input.value);
      // An unparsable entry goes to the proxy as typed, so its message names the problem.
      spec.values[id][field] = Number.isFinite(n) ? n : input.value;
      fieldError(param, null);
      if (field !== "weight" && Number.isFinite(n)) chart.setTargets(spec.values);
    });
    return h("td", {}, input, h("div", { class: "field-error", "data-error-for": param }));
  };

  function draw() {
    clear(
      rows,
      values.map((v) => {
        const on = v.id in spec.values;
        const box = h("input", {
          type: "checkbox",
          id: `on-${v.id}`,
          checked: on,
          disabled: readOnly,
          "data-param": `values.${v.id}`,
        });
        box.addEventListener("change", () => {
          if (box.checked) spec.values[v.id] = { ...DEFAULTS };
          else delete spec.values[v.id];
          draw();
        });
        return h(
          "tr",
          { class: on ? "on" : "off", dataset: { value: v.id } },
          h(
            "th",
            { scope: "row" },
            h("label", { for: `on-${v.id}`, title: v.definition }, box, " ", v.name),
            h("div", { class: "field-error", "data-error-for": `values.${v.id}` }),
          ),
          on ? [num(v.id, "target"), num(v.id, "tolerance"), num(v.id, "weight")] : h("td", { colspan: 3, class: "muted" }, "unconstrained"),
        );
      }),
    );
    chart.setTargets(spec.values);
    for (const [k, sel] of Object.entries(selects)) sel.value = spec[k];
    sampleInput.value = spec.audit_sample ?? "";
    clear(version, loaded ? `version ${loaded.version}` : "no profile yet");
  }

  const select = (name, options, label) => {
    const sel = h(
      "select",
      { id: `f-${name}`, "data-param": name, disabled: readOnly },
      options.map((o) => h("option", { value: o }, o)),
    );
    sel.addEventListener("change", () => {
      spec[name] = sel.value;
      fieldError(name, null);
    });
    return [
      h("label", { for: `f-${name}` }, label),
      sel,
      h("div", { class: "field-error", "data-error-for": name }),
    ];
  };
  const selects = {};
  const actionField = select("action", ACTIONS, "Action");
  const fallbackField = select("fallback", FALLBACKS, "Fallback when a rewrite fails the shield");
  const streamField = select("stream_mode", STREAM_MODES, "Streams");
  selects.action = actionField[1];
  selects.fallback = fallbackField[1];
  selects.stream_mode = streamField[1];
  // The share of an audit's answers measured (after they were sent); empty: every answer.
  const sampleInput = h("input", {
    id: "f-audit_sample",
    type: "number",
    min: "0",
    max: "1",
    step: "0.05",
    placeholder: "every answer",
    "data-param": "audit_sample",
    disabled: readOnly,
  });
  sampleInput.addEventListener("input", () => {
    const n = Number.parseFloat(sampleInput.value);
    spec.audit_sample = sampleInput.value === "" ? null : Number.isFinite(n) ? n : sampleInput.value;
    fieldError("audit_sample", null);
  });
  const sampleField = [
    h("label", { for: "f-audit_sample" }, "Audit sample (share, audit only)"),
    sampleInput,
    h("div", { class: "field-error", "data-error-for": "audit_sample" }),
  ];

  const form = h("form", { class: "editor", id: "profile-form", novalidate: true });
  function fieldError(param, message) {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(param)}"]`);
    const input = form.querySelector(`[data-param="${CSS.escape(param)}"]`);
    if (slot) slot.textContent = message || "";
    if (input) {
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
    return Boolean(slot);
  }
  const clearErrors = () => {
    for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  };

  async function save(body, what) {
    clearErrors();
    clear(status, "Saving…");
    try {
      // Written only over the version on screen: a change saved meanwhile (another tab, another
      // admin) is not overwritten unseen; the proxy answers 412 and nothing is written.
      const opts = loaded ? { headers: { "if-match": `"${loaded.version}"` } } : {};
      loaded = await api("PUT", paths.profile, body, opts);
      spec = specOf(loaded);
      draw();
      clear(status, h("p", { class: "ok" }, `${what}: version ${loaded.version}.`));
      await drawHistory();
    } catch (e) {
      const placed = e.param && fieldError(e.param, e.message);
      clear(status, errorBox(e));
      if (placed) form.querySelector(`[data-param="${CSS.escape(e.param)}"]`)?.focus();
    }
  }

  form.append(
    h(
      "table",
      { class: "data values-table" },
      h("thead", {}, h("tr", {}, ["Value", "Target", "Tolerance", "Weight"].map((c) => h("th", { scope: "col" }, c)))),
      rows,
    ),
    h("div", { class: "fields" }, h("div", {}, actionField), h("div", {}, fallbackField), h("div", {}, streamField), h("div", {}, sampleField)),
    h(
      "div",
      { class: "buttons" },
      h("button", { type: "submit", id: "save", disabled: readOnly }, "Save"),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: () => {
            spec = specOf(loaded);
            clearErrors();
            chart.setProposed(null);
            draw();
          },
        },
        "Reset",
      ),
    ),
    readOnly ? h("p", { class: "hint" }, "This tenant may not change its own profile; ask an admin.") : "",
    status,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    save(spec, "Saved");
  });

  // Translator: an instruction proposes a shift, drawn on the chart; apply or discard.
  const instruction = h("input", {
    id: "instruction",
    type: "text",
    placeholder: "more caring, less about status",
    "aria-label": "Instruction",
  });
  const proposal = h("div", { id: "proposal", "aria-live": "polite" });
  const translator = h(
    "form",
    { class: "card", id: "translator" },
    h("h2", {}, "Translator"),
    h("p", { class: "hint" }, "Describe a change in words; the proposal is drawn on the chart and saved only when you apply it and save."),
    h("div", { class: "row" }, instruction, h("button", { type: "submit" }, "Propose")),
    proposal,
  );
  translator.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(proposal, "Translating…");
    try {
      const r = await api("POST", "/v1/profiles/translate", { instruction: instruction.value, profile: spec });
      const proposed = Object.fromEntries(Object.entries(r.profile.values).map(([id, t]) => [id, t.target]));
      chart.setProposed(proposed);
      const shifts = r.shifts.map((s) =>
        h(
          "li",
          { dataset: { value: s.value } },
          h("strong", {}, `${names[s.value] || s.value} ${s.delta > 0 ? "+" : ""}${fmt(s.delta)}`),
          s.evidence ? ` — “${s.evidence.phrase}” matched “${s.evidence.matched}” (similarity ${fmt(s.evidence.similarity)})` : "",
        ),
      );
      clear(
        proposal,
        r.unrelated ? h("p", { class: "warn" }, "The instruction does not seem to be about values.") : null,
        shifts.length ? h("ul", { class: "shifts" }, shifts) : h("p", { class: "muted" }, "No value shift found."),
        r.unmatched?.length ? h("p", { class: "muted" }, `Not understood: ${r.unmatched.map((u) => u.phrase || u).join(", ")}`) : null,
        h(
          "div",
          { class: "buttons" },
          h(
            "button",
            {
              type: "button",
              id: "apply",
              disabled: readOnly || !shifts.length,
              onclick: () => {
                spec.values = r.profile.values;
                chart.setProposed(null);
                draw();
                clear(proposal, h("p", { class: "ok" }, "Applied to the editor; save to keep it."));
              },
            },
            "Apply",
          ),
          h(
            "button",
            {
              type: "button",
              class: "secondary",
              onclick: () => {
                chart.setProposed(null);
                clear(proposal);
              },
            },
            "Discard",
          ),
        ),
      );
    } catch (e) {
      clear(proposal, errorBox(e));
    }
  });

  const historyList = h("ol", { class: "history", id: "history" });
  async function drawHistory() {
    try {
      const entries = (await api("GET", `${paths.history}?limit=50`)).data;
      clear(
        historyList,
        entries.map((e, i) => {
          const older = entries[i + 1]?.profile ?? null;
          const restorable = e.profile && loaded && e.version !== loaded.version;
          return h(
            "li",
            { dataset: { version: e.version } },
            h("div", { class: "row" }, h("strong", {}, `v${e.version}`), h("time", {}, new Date(e.updated_at * 1000).toLocaleString()),
              e.profile ? h("span", { class: `badge ${e.profile.action}` }, e.profile.action) : null,
              restorable && !readOnly
                ? h("button", { type: "button", class: "secondary small", onclick: () => save(specOf(e.profile), `Restored v${e.version}`) }, `Restore v${e.version}`)
                : null),
            h(
              "ul",
              { class: "changes" },
              (i + 1 < entries.length || e.version === 1 ? changes(older, e.profile, names) : ["earlier versions not listed"]).map((c) => h("li", {}, c)),
            ),
          );
        }),
      );
      if (!entries.length) clear(historyList, h("li", { class: "muted" }, "No versions yet."));
    } catch (e) {
      clear(historyList, errorBox(e));
    }
  }

  clear(
    main,
    h("div", { class: "title-row" }, heading, version),
    h("div", { class: "split" }, h("section", { class: "card" }, chart.el, h("p", { class: "hint" }, readOnly ? "" : "Drag a round handle along its axis to set the target, a square one to set the tolerance (or focus either and use the arrow keys; Shift for steps of 0.1). Click a grey value's name to constrain it.")), h("section", { class: "card" }, form)),
    h("div", { class: "split" }, translator, h("section", { class: "card" }, h("h2", {}, "History"), historyList)),
  );
  draw();
  await drawHistory();
}
