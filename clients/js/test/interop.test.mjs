// Shares made by this client and by the command line (`guardian submit`,
// `guardian shard`) are interchangeable: one batch mixing both unshards to the
// sum of every measurement, read by this client and by `guardian collect`, for
// `sum`, `histogram`, a DP plugin (`dp-sum`, with noise too small to show) and
// a robust one (`prio3-sum`, whose reports carry a public share).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, test } from "node:test";

import { Guardian } from "../dist/index.js";
import { guardian, guardianBin, startDev } from "./harness.mjs";

let dev;
before(async () => {
  dev = await startDev();
});
after(async () => {
  await dev?.stop();
});

const cases = [
  { name: "sums", plugin: "sum", params: { length: 2 }, js: [[1, 2], [3, 4], [5, 6]], cli: [[10, 20], [30, 40]], expected: [49, 72] },
  {
    name: "hist",
    plugin: "histogram",
    params: { buckets: ["red", "green", "blue"] },
    js: ["red", "blue", "red"],
    cli: ["green", "red"],
    expected: { buckets: ["red", "green", "blue"], counts: [3, 1, 1] },
  },
  // Laplace scale length·bound/epsilon = 0.02: the noise is 0 but with
  // probability about e^-50, so the sums are exact.
  { name: "private", plugin: "dp-sum", params: { length: 2, bound: 1, epsilon: 100 }, js: [[1, 0], [1, 1], [0, 1]], cli: [[1, 1], [-1, 1]], expected: (r) => r.sum, sums: [2, 4] },
  { name: "robust", plugin: "prio3-sum", params: { max_measurement: 100 }, js: [7, 8, 9], cli: [50, 1], expected: 75 },
  // Its reports carry a public share (the proof's joint randomness parts).
  { name: "robust-hist", plugin: "prio3-histogram", params: { buckets: 3 }, js: [0, 2, 2], cli: [1, 2], expected: { buckets: ["0", "1", "2"], counts: [1, 1, 3] } },
];

for (const c of cases) {
  test(`${c.plugin}: a batch mixing this client's reports and the command line's`, async () => {
    await dev.createEndpoint(c.name, c.plugin, c.params, { minBatch: 2 });
    const env = { GUARDIAN_SERVERS: dev.urls.join(","), GUARDIAN_TOKEN: dev.token("user") };
    const user = await new Guardian({ servers: dev.urls, token: dev.token("user") }).endpoint(c.name);
    assert.equal(user.robust, c.plugin.startsWith("prio3"));
    const summary = await user.submitMany(c.js.slice(1));
    assert.deepEqual(summary.failed, []);
    // A report the command line made, posted by this client.
    const made = JSON.parse(guardian(["shard", c.name, "--value", JSON.stringify(c.js[0])], env));
    assert.equal(made.public_share !== null, user.shard(c.js[0]).publicShare !== null, "both make a public share, or neither");
    if (c.plugin === "prio3-histogram") assert.notEqual(made.public_share, null);
    await user.post({ reportId: made.report_id, publicShare: made.public_share, shares: made.shares });
    // Reports the command line made and posted.
    const lines = c.cli.map((v) => JSON.stringify(v)).join("\n");
    const out = require_ok(() => guardianWithInput(["submit", c.name, "--file", "-"], lines, env));
    assert.match(out, new RegExp(`stored ${c.cli.length}`));

    const scientist = await new Guardian({ servers: dev.urls, token: dev.token("scientist") }).endpoint(c.name);
    const collected = await scientist.collect();
    const count = c.js.length + c.cli.length;
    assert.equal(collected.count, count);
    assert.equal(collected.rejected, 0);
    const read = (result) => (typeof c.expected === "function" ? c.expected(result) : result);
    assert.deepEqual(read(collected.result), c.sums ?? c.expected);
    const cli = JSON.parse(guardian(["collect", c.name, "--total", "--json"], { ...env, GUARDIAN_TOKEN: dev.token("scientist") }));
    assert.equal(cli.count, count);
    assert.deepEqual(read(cli.result), read(collected.result), "the command line reads the same result");
  });
}

function guardianWithInput(args, input, env) {
  return execFileSync(guardianBin(), args, { input, env: { ...process.env, ...env }, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
}

function require_ok(f) {
  try {
    return f();
  } catch (e) {
    throw new Error(`guardian failed: ${e.stderr ?? e.message}`);
  }
}
