// The console's shell: sign-in, navigation and a hash router (#/tenants, #/tenants/ID,
// #/playground, #/overview, #/decisions). Each view renders into <main> and may return a cleanup function.

import { session, whoami } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { renderTenants } from "./tenants.js";
import { renderProfile } from "./profile.js";
import { renderPlayground } from "./playground.js";
import { renderOverview } from "./overview.js";
import { renderDecisions } from "./decisions.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let cleanup = null;
// Each navigation gets a number; a view that finishes loading after a newer navigation began
// is discarded, so two views never share the page.
let generation = 0;

/** Go to `hash` (re-rendering when it is already the current one). */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signIn() {
  const input = h("input", {
    id: "key",
    type: "password",
    autocomplete: "off",
    required: true,
    "aria-describedby": "key-help",
  });
  const status = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card signin" },
    h("h1", {}, "Sign in"),
    h("label", { for: "key" }, "Admin key or tenant API key"),
    input,
    h(
      "p",
      { id: "key-help", class: "hint" },
      "The key stays in this tab's session storage and is sent only to this proxy.",
    ),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(status);
    try {
      const caller = await whoami(input.value.trim());
      session.save(input.value.trim(), caller);
      go(caller.kind === "admin" ? "#/tenants" : `#/tenants/${encodeURIComponent(caller.tenant_id)}`);
    } catch (e) {
      clear(status, errorBox(e));
    }
  });
  clear(main, form);
  input.focus();
}

function drawNav(caller) {
  const link = (href, text) => {
    const current = location.hash.startsWith(href);
    return h("a", { href, "aria-current": current ? "page" : null }, text);
  };
  const own = caller.kind === "tenant" ? `#/tenants/${encodeURIComponent(caller.tenant_id)}` : null;
  clear(
    nav,
    caller.kind === "admin" ? link("#/tenants", "Tenants") : link(own, "Profile"),
    link("#/playground", "Playground"),
    link("#/overview", "Overview"),
    link("#/decisions", "Decisions"),
  );
  clear(
    who,
    h("span", {}, caller.kind === "admin" ? "admin" : `tenant ${caller.tenant_id}`),
    h(
      "button",
      {
        class: "link",
        type: "button",
        onclick: () => {
          session.clear();
          go("#/signin");
        },
      },
      "Sign out",
    ),
  );
}

export async function route() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const caller = session.caller();
  if (!caller || !session.key()) {
    clear(nav);
    clear(who);
    signIn();
    return;
  }
  drawNav(caller);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const own = caller.kind === "tenant" ? caller.tenant_id : null;
  const mine = ++generation;
  // The view renders into its own element, shown only if no newer navigation began meanwhile.
  const host = document.createElement("div");
  try {
    let done;
    switch (parts[0]) {
      case "tenants":
        done = parts[1] ? await renderProfile(host, parts[1]) : await renderTenants(host);
        break;
      case "playground":
        done = await renderPlayground(host);
        break;
      case "overview":
        done = await renderOverview(host);
        break;
      case "decisions":
        done = await renderDecisions(host);
        break;
      default:
        go(own ? `#/tenants/${encodeURIComponent(own)}` : "#/tenants");
        return;
    }
    if (mine !== generation) {
      done?.();
      return;
    }
    cleanup = done || null;
    main.replaceChildren(host);
  } catch (e) {
    if (mine !== generation) return;
    if (e.status === 401) {
      session.clear();
      signIn();
      return;
    }
    clear(main, errorBox(e));
  }
}

window.addEventListener("hashchange", route);
route();
