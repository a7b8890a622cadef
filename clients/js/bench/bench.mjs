// Benchmarks of the client against a real two-server `guardian dev`
// (GUARDIAN_BIN, by default the workspace's release build: `cargo build
// --release -p guardian`):
//   - in headless Chromium, the survey page: from navigation to the first
//     report acknowledged by both servers (bundle, transpiler and plugin fetch
//     and compile included), then the time of each further report;
//   - in Node, opening an endpoint and `submitMany` of 10,000 reports.
// Run: npm run build && npm run bench   (figures in BENCHMARKS.md)
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "../../..");
process.env.GUARDIAN_BIN ??= join(root, "target/release/guardian");
if (!existsSync(process.env.GUARDIAN_BIN)) {
  console.error(`${process.env.GUARDIAN_BIN} is missing: run \`cargo build --release -p guardian\` (or set GUARDIAN_BIN)`);
  process.exit(2);
}
const { Guardian } = await import("../dist/index.js");
const { serve } = await import("../examples/survey/serve.mjs");
const { launch, startDev } = await import("../test/harness.mjs");

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const dev = await startDev();
try {
  const reports = Number(process.env.REPORTS ?? 10_000);
  // Node.
  const open = [];
  let survey;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    survey = await new Guardian({ servers: dev.urls, token: dev.token("user") }).endpoint("demo");
    open.push(performance.now() - t);
  }
  const values = Array.from({ length: reports }, (_, i) => ["red", "green", "blue"][i % 3]);
  const submit = async (endpoint) => {
    const t0 = performance.now();
    const summary = await endpoint.submitMany(values, { concurrency: 64 });
    if (summary.failed.length > 0) throw summary.failed[0].error;
    return (performance.now() - t0) / 1000;
  };
  // One user's token: the servers let one user post 1,000 reports/s
  // (limits.reports_per_second_per_user), which bounds this run.
  const oneUser = await submit(survey);
  // The client's own pace: the token function hands out 8 users' tokens in turn.
  const users = Array.from({ length: 8 }, (_, i) => dev.token("user", `bench-${i}`));
  let turn = 0;
  const many = await new Guardian({ servers: dev.urls, token: () => users[turn++ % users.length] }).endpoint("demo");
  const seconds = await submit(many);
  const shardStart = performance.now();
  for (let i = 0; i < 1000; i++) survey.shard("red");
  const shardUs = (performance.now() - shardStart);
  console.log(`node: open endpoint ${open.map((x) => x.toFixed(0)).join(", ")} ms (first includes the transpiler's compile); shard ${shardUs.toFixed(0)} µs/report; submitMany ${reports}: one user's token ${oneUser.toFixed(2)} s = ${(reports / oneUser).toFixed(0)} reports/s (the servers' per-user limit), 8 users' tokens ${seconds.toFixed(2)} s = ${(reports / seconds).toFixed(0)} reports/s`);

  // Chromium.
  const app = await serve({ port: 5173, servers: dev.urls, userToken: dev.token("user"), scientistToken: dev.token("scientist"), endpoint: "demo" });
  const browser = await launch();
  try {
    const firsts = [];
    const further = [];
    for (let run = 0; run < 7; run++) {
      const context = await browser.newContext(); // a cold cache each run
      const page = await context.newPage();
      await page.goto(`${app.url}/`);
      await page.waitForSelector("body[data-ready]");
      await page.click('button[data-answer="red"]');
      await page.waitForSelector('#status[data-sent="1"]');
      firsts.push(await page.evaluate(() => performance.now()));
      const perReport = await page.evaluate(async () => {
        const { Guardian } = await import("./guardian.js");
        const config = await (await fetch("config.json")).json();
        const survey = await new Guardian({ servers: config.servers, token: config.userToken }).endpoint(config.endpoint);
        const times = [];
        for (let i = 0; i < 100; i++) {
          const t = performance.now();
          await survey.submit("blue");
          times.push(performance.now() - t);
        }
        return times;
      });
      further.push(median(perReport));
      await context.close();
    }
    console.log(`chromium: navigation to first report acknowledged by both servers: median ${median(firsts).toFixed(0)} ms (runs: ${firsts.map((x) => x.toFixed(0)).join(", ")}); each further report: median ${median(further).toFixed(1)} ms`);
  } finally {
    await browser.close();
    await app.close();
  }
} finally {
  await dev.stop();
}
