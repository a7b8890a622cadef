// The example survey app in real headless Chromium (Debian's, through
// playwright-core) against a real two-server `guardian dev`: a person clicks N
// answers, the scientist seals and reads the result, which must equal the
// answers exactly; the page's network log must show each server got one share
// per answer and never the answer itself.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { serve } from "../examples/survey/serve.mjs";
import { launch, startDev } from "./harness.mjs";

let dev;
let app;
let browser;

before(async () => {
  dev = await startDev();
  app = await serve({ port: 5173, servers: dev.urls, userToken: dev.token("user"), scientistToken: dev.token("scientist"), endpoint: "demo" });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await app?.close();
  await dev?.stop();
});

test("answers clicked in the page are sealed and counted exactly, and only shares leave it", async () => {
  const answers = ["red", "green", "blue", "red", "red", "blue", "green", "red", "blue", "red"];
  const page = await browser.newPage();
  const posted = [];
  page.on("request", (request) => {
    if (request.method() === "POST" && request.url().includes("/reports")) {
      posted.push({ url: request.url(), body: request.postData() ?? "" });
    }
  });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(`${app.url}/`);
  await page.waitForSelector("body[data-ready]");
  assert.equal(await page.getAttribute("body", "data-ready"), "true", await page.textContent("#loading"));
  for (const [i, answer] of answers.entries()) {
    await page.click(`button[data-answer="${answer}"]`);
    await page.waitForSelector(`#status[data-sent="${i + 1}"]`, { timeout: 10_000 }).catch(async () => {
      throw new Error(`answer ${i + 1} was not confirmed: ${await page.textContent("#status")}`);
    });
  }
  // What the person is shown: one random-looking share per server.
  assert.equal(await page.locator("#shares tr").count(), 2);
  assert.deepEqual(problems, []);

  // The network log: per server, one POST per answer, carrying only a report id and a share.
  for (const [i, url] of dev.urls.entries()) {
    const mine = posted.filter((p) => p.url.startsWith(`${url}/`));
    assert.equal(mine.length, answers.length, `server ${i} got ${mine.length} posts for ${answers.length} answers`);
    for (const { body } of mine) {
      const json = JSON.parse(body);
      assert.deepEqual(Object.keys(json).sort(), ["report_id", "share"]);
      assert.match(json.report_id, /^[0-9a-f]{32}$/);
      for (const color of ["red", "green", "blue"]) assert.ok(!body.includes(`"${color}"`), `the answer ${color} left the page: ${body}`);
    }
  }
  const ids = (i) => posted.filter((p) => p.url.startsWith(`${dev.urls[i]}/`)).map((p) => JSON.parse(p.body).report_id);
  assert.deepEqual(ids(0), ids(1), "each report goes to every server under one id");
  assert.equal(new Set(ids(0)).size, answers.length, "one fresh id per answer");
  const shares = posted.map((p) => JSON.parse(p.body).share);
  assert.equal(new Set(shares).size, shares.length, "no two shares alike");

  // The scientist seals a batch and reads the result.
  const scientist = await browser.newPage();
  await scientist.goto(`${app.url}/scientist.html`);
  await scientist.waitForSelector("body[data-ready]");
  assert.equal(await scientist.getAttribute("body", "data-ready"), "true", await scientist.textContent("#loading"));
  await scientist.click("#seal");
  await scientist.waitForSelector(`#status[data-sealed="${answers.length}"]`, { timeout: 30_000 }).catch(async () => {
    throw new Error(`no batch of ${answers.length} was sealed: ${await scientist.textContent("#status")}`);
  });
  await scientist.waitForSelector(`body[data-count="${answers.length}"]`);
  for (const color of ["red", "green", "blue"]) {
    const shown = await scientist.textContent(`tr[data-answer="${color}"] .count`);
    assert.equal(Number(shown), answers.filter((a) => a === color).length, `count of ${color}`);
  }
});
