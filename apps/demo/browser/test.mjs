// Drives the running demo in headless Chromium the way a person would:
// log in with "remember me", reload, check the cookie's lifetime, count
// visits, fill and change the cart, log out. Usage:
//   BASE_URL=http://127.0.0.1:PORT LIFETIME=2678400 SCREENSHOT=docs/demo-index.png node test.mjs
import { chromium } from "playwright-core";

const base = process.env.BASE_URL;
const lifetime = Number(process.env.LIFETIME ?? 2678400);
const screenshot = process.env.SCREENSHOT;
const results = [];

async function step(name, fn) {
  try {
    await fn();
    results.push([name, null]);
    console.log(`ok   ${name}`);
  } catch (e) {
    results.push([name, e]);
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
const page = await context.newPage();
const text = async (path) => {
  await page.goto(base + path);
  return (await page.textContent("body")).trim();
};
const sessionCookie = async () => (await context.cookies()).find((c) => c.name === "session");

await step("log in with remember me", async () => {
  await page.goto(base + "/");
  await page.fill('input[name="username"]', "alice");
  await page.fill('input[name="password"]', "secret");
  await page.check('input[name="remember"]');
  await Promise.all([page.waitForNavigation(), page.click('#login button[type="submit"]')]);
  expect((await page.textContent("#greeting")).includes("alice"), "no greeting after login");
  expect((await page.textContent("body")).includes("Logged in as alice"), "no flash after login");
});

await step("reload keeps the user", async () => {
  await page.reload();
  expect((await page.textContent("#greeting")).includes("alice"), "greeting lost on reload");
  expect((await page.locator(".flash").count()) === 0, "the login flash was shown twice");
});

await step("cookie expires one PERMANENT_SESSION_LIFETIME away", async () => {
  const cookie = await sessionCookie();
  expect(cookie, "no session cookie");
  const away = cookie.expires - Date.now() / 1000;
  expect(Math.abs(away - lifetime) < 120, `cookie expires in ${away}s, expected ~${lifetime}s`);
  expect(cookie.httpOnly, "cookie is not HttpOnly");
});

await step("visits count to 3", async () => {
  let last = "";
  for (let i = 0; i < 3; i++) last = await text("/visits-counter/");
  expect(last === "Total visits: 3", `got "${last}"`);
});

await step("cart is filled, then changed in place", async () => {
  expect((await text("/session/")).includes("dict_items("), "cart page missing");
  const second = await text("/session/");
  expect(second.includes("'pineapples': '10'"), `first cart not stored: ${second}`);
  const third = await text("/session/");
  expect(third.includes("'pineapples': '100'"), `in-place change not saved: ${third}`);
});

await step("index shows the session", async () => {
  await page.goto(base + "/");
  const table = await page.textContent("#session");
  expect(table.includes("visits") && table.includes("cart_item"), `session table: ${table}`);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
});

await step("log out and the session is gone", async () => {
  await Promise.all([page.waitForNavigation(), page.click('form[action="/logout"] button')]);
  expect((await page.textContent("body")).includes("Logged out"), "no logout flash");
  await page.reload();
  expect(await page.isVisible("#session-empty"), "session not empty after logout");
  expect((await sessionCookie()) === undefined, "session cookie still present");
  expect((await text("/get_session/")) === "没有session数据", "data survived logout");
});

await browser.close();
const failed = results.filter(([, e]) => e).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
