// End-to-end tests of the web console in headless Chromium against a running proxy with the
// real local models. Started by tests/console.rs, which starts the proxy and a mock upstream
// and passes: VISA_BASE_URL, VISA_ADMIN_KEY, VISA_TENANT (id) and VISA_TENANT_KEY, VISA_OTHER
// (a tenant with a profile the first must not see), VISA_TEXT (an answer far from a caring
// profile), VISA_SCREENSHOTS (folder for the pictures), CHROMIUM (default /usr/bin/chromium).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = process.env.VISA_BASE_URL;
const ADMIN = process.env.VISA_ADMIN_KEY;
const TENANT = process.env.VISA_TENANT;
const TENANT_KEY = process.env.VISA_TENANT_KEY;
const OTHER = process.env.VISA_OTHER;
const TEXT = process.env.VISA_TEXT;
const SHOTS = process.env.VISA_SCREENSHOTS || "console-screenshots";
const SLOW = 240_000;

let browser;
let page;
const pageErrors = [];

async function shot(name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function apiGet(path, key) {
  const r = await fetch(`${BASE}${path}`, { headers: { authorization: `Bearer ${key}` } });
  return { status: r.status, body: await r.json() };
}

async function signIn(key) {
  await page.goto(`${BASE}/`);
  await page.locator("#key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function signOut() {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.locator("#key").waitFor();
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (e) => pageErrors.push(String(e)));
});

after(async () => {
  await browser?.close();
});

test("a wrong key is refused; the admin key signs in and lists the tenants", async () => {
  await signIn("sk-not-a-key");
  await page.getByRole("alert").filter({ hasText: "401" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("visa.key")), null);
  await page.locator("#key").fill(ADMIN);
  await page.getByRole("button", { name: "Sign in" }).click();
  const rows = page.locator("#tenants tbody tr");
  await rows.first().waitFor();
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.tenant));
  assert.ok(ids.includes(TENANT) && ids.includes(OTHER), `tenants: ${ids}`);
  // The other tenant's profile (set by the test harness) shows with its action and version.
  const other = page.locator(`#tenants tr[data-tenant="${OTHER}"]`);
  assert.match(await other.innerText(), /block\s+v1/);
  // The key is in session storage, never in the address.
  assert.ok(!page.url().includes(ADMIN));
  await shot("tenants");
});

test("edit a profile: a validation error at the field, then a save, by numbers and by the chart", async () => {
  await page.locator(`#tenants a`, { hasText: TENANT }).click();
  await page.locator("#profile-form").waitFor();
  assert.match(await page.locator("#version").innerText(), /no profile yet/);
  await page.locator("#on-benevolence").check();
  await page.locator('input[data-param="values.benevolence.target"]').fill("0.85");
  await page.locator("#on-power").check();
  await page.locator('input[data-param="values.power.target"]').fill("1.5");
  await page.locator("#f-action").selectOption("rewrite");
  await page.locator("#f-audit_sample").fill("0.25");
  await page.locator("#save").click();
  const err = page.locator('[data-error-for="values.power.target"]');
  await err.filter({ hasText: "[0, 1]" }).waitFor();
  assert.equal(await page.locator('input[data-param="values.power.target"]').getAttribute("aria-invalid"), "true");
  assert.equal((await apiGet(`/v1/tenants/${TENANT}/profile`, ADMIN)).status, 404, "nothing saved");

  await page.locator('input[data-param="values.power.target"]').fill("0.1");
  // The chart's handle moves with the keyboard: five steps of 0.01 up.
  const handle = page.locator('circle.handle[data-value="benevolence"]');
  await handle.focus();
  for (let i = 0; i < 5; i++) await page.keyboard.press("ArrowUp");
  assert.equal(await page.locator('input[data-param="values.benevolence.target"]').inputValue(), "0.90");
  // The tolerance handle too: Shift+ArrowUp widens the band by 0.1.
  await page.locator('rect.tol-handle[data-tolerance="benevolence"]').focus();
  await page.keyboard.press("Shift+ArrowUp");
  assert.equal(await page.locator('input[data-param="values.benevolence.tolerance"]').inputValue(), "0.25");
  // And by dragging: power's handle dragged outward along its axis.
  const power = page.locator('circle.handle[data-value="power"]');
  const box = await power.boundingBox();
  const centre = await page.locator("svg.value-chart").boundingBox();
  const cx = centre.x + centre.width / 2;
  const cy = centre.y + centre.height / 2;
  const px = box.x + box.width / 2;
  const py = box.y + box.height / 2;
  await page.mouse.move(px, py);
  await page.mouse.down();
  await page.mouse.move(px + (px - cx) * 2, py + (py - cy) * 2, { steps: 5 });
  await page.mouse.up();
  const dragged = Number(await page.locator('input[data-param="values.power.target"]').inputValue());
  assert.ok(dragged > 0.2, `power after the drag: ${dragged}`);
  await page.locator('input[data-param="values.power.target"]').fill("0.1");

  await page.locator("#save").click();
  await page.locator("#save-status .ok").filter({ hasText: "version 1" }).waitFor();
  const saved = (await apiGet(`/v1/tenants/${TENANT}/profile`, ADMIN)).body;
  assert.equal(saved.values.benevolence.target, 0.9);
  assert.equal(saved.values.benevolence.tolerance, 0.25);
  assert.equal(saved.values.power.target, 0.1);
  assert.equal(saved.action, "rewrite");
  assert.equal(saved.audit_sample, 0.25);
  await shot("profile-editor");
});

test("a translated instruction is drawn, applied and saved; history shows it and restores v1", async () => {
  await page.locator("#instruction").fill("less caring, more about status and power");
  await page.getByRole("button", { name: "Propose" }).click();
  await page.locator("#proposal ul.shifts li").first().waitFor();
  assert.ok((await page.locator("svg.value-chart circle.proposed").count()) > 0, "proposal drawn");
  await shot("translator");
  await page.locator("#apply").click();
  const before = (await apiGet(`/v1/tenants/${TENANT}/profile`, ADMIN)).body;
  await page.locator("#save").click();
  await page.locator("#save-status .ok").filter({ hasText: "version 2" }).waitFor();
  const saved = (await apiGet(`/v1/tenants/${TENANT}/profile`, ADMIN)).body;
  assert.ok(saved.values.power.target > before.values.power.target, JSON.stringify(saved.values));
  assert.ok(saved.values.benevolence.target < before.values.benevolence.target, JSON.stringify(saved.values));
  assert.equal(saved.audit_sample, 0.25, "a console save keeps the fields it does not show changed");

  const v2 = page.locator('#history li[data-version="2"]');
  await v2.waitFor();
  assert.match(await v2.innerText(), /Power target: 0\.10 →/);
  await page.getByRole("button", { name: "Restore v1" }).click();
  await page.locator("#save-status .ok").filter({ hasText: "version 3" }).waitFor();
  const restored = (await apiGet(`/v1/tenants/${TENANT}/profile`, ADMIN)).body;
  assert.equal(restored.version, 3);
  assert.equal(restored.values.benevolence.target, 0.9);
  assert.equal(restored.values.power.target, 0.1);
});

test("the playground detects a text, rewrites it and shows both side by side", { timeout: SLOW }, async () => {
  await page.goto(`${BASE}/#/playground`);
  await page.locator("#pg-tenant").selectOption(TENANT);
  await page.locator("#pg-profile").filter({ hasText: "v3" }).waitFor();
  await page.locator("#pg-text").fill(TEXT);
  await page.locator("#pg-run").click();
  await page.locator("#pg-decision").waitFor({ timeout: SLOW });
  const decision = await page.locator("#pg-decision").innerText();
  assert.equal(decision, "rewritten", "the test proxy's shield lets any well-formed candidate through");
  const original = await page.locator("#original-text").innerText();
  const rewrite = await page.locator("#rewrite-text").innerText();
  assert.equal(original.replace(/\s+/g, " ").trim(), TEXT.replace(/\s+/g, " ").trim());
  assert.ok(rewrite.trim().length > 0 && rewrite !== original, rewrite);
  assert.ok((await page.locator("#rewrite-text ins, #original-text del").count()) > 0, "differences marked");
  assert.match(await page.locator("#pg-integrity").innerText(), /^\d\.\d\d$/);
  assert.match(await page.locator("#pg-progress").innerText(), /^-?\d+%$/);
  assert.match(await page.locator("#pg-timing").innerText(), /generate \d+ ms/);
  assert.ok((await page.locator("svg.value-chart polygon.detected").count()) === 1, "detected vector drawn");
  await shot("playground");
});

test("a tenant key sees its own profile only, and streams a prompt window by window", { timeout: SLOW }, async () => {
  await signOut();
  await signIn(TENANT_KEY);
  await page.locator("#profile-form").waitFor();
  assert.match(await page.locator("h1").innerText(), new RegExp(TENANT));
  assert.match(await page.locator("#version").innerText(), /version 3/);

  // Another tenant's profile: the proxy refuses, and nothing of it is shown.
  await page.goto(`${BASE}/#/tenants/${OTHER}`);
  await page.getByRole("alert").filter({ hasText: "403" }).waitFor();
  assert.equal(await page.locator("circle.handle").count(), 0);
  assert.equal((await apiGet(`/v1/tenants/${OTHER}/profile`, TENANT_KEY)).status, 403);

  await page.goto(`${BASE}/#/playground`);
  await page.locator("#pg-prompt").fill(TEXT);
  await page.locator("#pg-send").click();
  await page.locator("#pg-stream-info").filter({ hasText: "done" }).waitFor({ timeout: SLOW });
  const windows = await page.locator("#pg-stream span.window").evaluateAll((s) => s.map((x) => x.dataset.action));
  assert.ok(windows.length >= 2, `windows: ${windows}`);
  assert.ok(windows.every((a) => ["passed", "rewritten", "fallback", "blocked"].includes(a)), `windows: ${windows}`);
  assert.ok(windows.includes("rewritten"), `an off-profile answer gets rewritten: ${windows}`);
  await shot("playground-stream");

  // The overview: this tenant's counts only.
  await page.goto(`${BASE}/#/overview`);
  const rows = page.locator("#ov-tenants tbody tr");
  await rows.first().waitFor();
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.tenant));
  assert.deepEqual(ids, [TENANT]);
  const rewritten = Number(await page.locator('#ov-tenants td[data-action="rewritten"] .count').innerText());
  assert.ok(rewritten >= 1, `rewritten windows counted: ${rewritten}`);
  await page.locator("#ov-stages").waitFor();
  await shot("overview");

  // The decision log: the stream with its rewritten window is there, and only this tenant's.
  await page.goto(`${BASE}/#/decisions`);
  const cards = page.locator("#decisions article.decision");
  await cards.first().waitFor();
  const actions = await cards.evaluateAll((a) => a.map((x) => x.dataset.action));
  assert.ok(actions.every((a) => ["rewritten", "fallback", "blocked"].includes(a)), `decisions: ${actions}`);
  // The stream's action is its most severe window's; the rewritten window is listed in it.
  await page.locator("#decisions article.decision .scores").filter({ hasText: ": rewritten" }).first().waitFor();
  const heads = await page.locator("#decisions article.decision .decision-head strong").allInnerTexts();
  assert.ok(heads.every((t) => t.trim() === TENANT), `tenants: ${heads}`);
  await shot("decisions");
  await page.locator("#d-action").selectOption("blocked");
  await page.locator("#decisions").filter({ hasText: "No decisions match these filters." }).waitFor();
});

test("no script errors on any page", () => {
  assert.deepEqual(pageErrors, []);
});
