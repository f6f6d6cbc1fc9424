// The live overview: answers passed / rewritten / fallback / blocked per tenant and per value,
// and time per enforcement stage, read from GET /v1/stats every few seconds.

import { api, valueList as allValues } from "./api.js";
import { clear, h } from "./dom.js";

const ACTIONS = ["passed", "rewritten", "fallback", "blocked", "audited"];

function bar(n, max, action) {
  const b = h("span", { class: `bar ${action}` });
  b.style.width = `${max ? Math.max(2, (100 * n) / max) : 0}%`;
  return b;
}

export async function renderOverview(main) {
  const values = await allValues();
  const names = Object.fromEntries(values.map((v) => [v.id, v.name]));
  const body = h("div", { id: "overview" });
  const updated = h("p", { class: "muted", "aria-live": "polite" });
  clear(main, h("h1", {}, "Overview"), updated, body);

  async function refresh() {
    let stats;
    try {
      stats = await api("GET", "/v1/stats");
    } catch (e) {
      clear(updated, `Could not read /v1/stats: ${e.message}`);
      return;
    }
    const max = Math.max(1, ...stats.tenants.flatMap((t) => Object.values(t.actions)));
    const tenantRows = stats.tenants.map((t) =>
      h(
        "tr",
        { dataset: { tenant: t.tenant_id } },
        h("th", { scope: "row" }, t.tenant_id),
        h("td", { class: "num" }, t.requests_admitted),
        ACTIONS.map((a) => h("td", { class: "num", dataset: { action: a } }, h("span", { class: "count" }, t.actions[a] ?? 0), bar(t.actions[a] ?? 0, max, a))),
      ),
    );
    const valueRows = stats.tenants.flatMap((t) =>
      Object.entries(t.values).map(([v, counts]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, `${t.tenant_id} · ${names[v] || v}`),
          ACTIONS.map((a) => h("td", { class: "num" }, counts[a] ?? 0)),
        ),
      ),
    );
    const stageRows = stats.tenants.flatMap((t) =>
      Object.entries(t.stages).map(([stage, s]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, `${t.tenant_id} · ${stage}`),
          [s.count, s.mean_ms, s.p50_ms, s.p95_ms, s.max_ms].map((x) => h("td", { class: "num" }, x)),
        ),
      ),
    );
    const head = (cols) => h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c))));
    clear(
      body,
      h("section", { class: "card" }, h("h2", {}, "Answers per tenant"),
        h("table", { class: "data", id: "ov-tenants" }, head(["Tenant", "Requests", ...ACTIONS]), h("tbody", {}, tenantRows)),
        h("p", { class: "hint" }, "JSON answers count once per choice, streams once per window. Audited: outside tolerance but let through by an audit profile.")),
      h("section", { class: "card" }, h("h2", {}, "Values outside tolerance"),
        valueRows.length ? h("table", { class: "data" }, head(["Tenant · value", ...ACTIONS]), h("tbody", {}, valueRows)) : h("p", { class: "muted" }, "None yet.")),
      h("section", { class: "card" }, h("h2", {}, "Time per stage (ms; percentiles over recent answers)"),
        stageRows.length ? h("table", { class: "data", id: "ov-stages" }, head(["Tenant · stage", "count", "mean", "p50", "p95", "max"]), h("tbody", {}, stageRows)) : h("p", { class: "muted" }, "No enforcement yet.")),
    );
    clear(updated, `Updated ${new Date().toLocaleTimeString()}; proxy up ${Math.round(stats.uptime_s / 60)} min.`);
  }
  await refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}
