// The tenants list (admin): each tenant with its upstreams, its profile's action and version,
// and its request count; a tenant key sees only itself.

import { api, session } from "./api.js";
import { clear, h } from "./dom.js";

export async function renderTenants(main) {
  const caller = session.caller();
  let rows;
  if (caller.kind === "admin") {
    rows = (await api("GET", "/v1/tenants")).data;
  } else {
    let profile = null;
    try {
      profile = await api("GET", "/v1/profile");
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    rows = [{ id: caller.tenant_id, upstreams: caller.upstreams, profile, admitted_total: null }];
  }
  const body = rows.map((t) =>
    h(
      "tr",
      { dataset: { tenant: t.id } },
      h("th", { scope: "row" }, h("a", { href: `#/tenants/${encodeURIComponent(t.id)}` }, t.id)),
      h("td", {}, (t.upstreams || []).join(", ")),
      h("td", {}, t.profile ? h("span", { class: `badge ${t.profile.action}` }, t.profile.action) : h("span", { class: "muted" }, "no profile")),
      h("td", { class: "num" }, t.profile ? `v${t.profile.version}` : "–"),
      h("td", { class: "num" }, t.admitted_total ?? "–"),
    ),
  );
  clear(
    main,
    h("h1", {}, "Tenants"),
    h(
      "table",
      { class: "data", id: "tenants" },
      h(
        "thead",
        {},
        h("tr", {}, ["Tenant", "Upstreams", "Action", "Version", "Requests"].map((c) => h("th", { scope: "col" }, c))),
      ),
      h("tbody", {}, body),
    ),
  );
}
