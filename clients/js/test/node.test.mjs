// The client in Node against real share servers (`guardian dev`): what it
// refuses before posting anything, idempotent retries, and the typed errors
// that carry the servers' codes and say which server failed.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { AgreementError, AuthenticationError, ConflictError, Guardian, InvalidError, NotFoundError, PermissionError, UnreachableError } from "../dist/index.js";
import { startDev, startProxy } from "./harness.mjs";

const quick = { attempts: 4, firstDelayMs: 10, maxDelayMs: 50 };
let dev;

before(async () => {
  dev = await startDev();
  await dev.createEndpoint("colors", "histogram", { buckets: ["red", "green", "blue"] }, { minBatch: 2 });
});
after(async () => {
  await dev?.stop();
});

function client(servers, role = "user", more = {}) {
  return new Guardian({ servers, token: dev.token(role), retry: quick, ...more });
}

/** Asserts that `promise` rejects with an error of `type` and `code`, for `server`. */
async function refused(promise, type, code, server) {
  const error = await promise.then(
    () => assert.fail(`expected ${type.name} ${code}`),
    (e) => e,
  );
  assert.ok(error instanceof type, `expected ${type.name}, got ${error?.name}: ${error?.message}`);
  assert.equal(error.code, code, error.message);
  if (server !== undefined) assert.equal(error.server, server, error.message);
  return error;
}

async function unbatched(name) {
  return (await dev.counts(name)).map((c) => c.unbatched);
}

describe("refused before anything is posted", () => {
  test("servers that disagree on the endpoint (another config hash)", async () => {
    await dev.createEndpoint("split", "histogram", null, { perServer: [{ buckets: ["a", "b"] }, { buckets: ["a", "b", "c"] }] });
    const error = await refused(client(dev.urls).endpoint("split"), AgreementError, "servers_disagree", 1);
    assert.match(error.message, /disagree on endpoint "split"/);
    assert.deepEqual(await unbatched("split"), [0, 0]);
  });

  test("a server that is down", async () => {
    const before = await unbatched("colors");
    const down = "http://127.0.0.1:9"; // discard port: nothing listens
    const error = await refused(client([dev.urls[0], down]).endpoint("colors"), UnreachableError, "unreachable", 1);
    assert.match(error.message, /server 1 \(http:\/\/127\.0\.0\.1:9\) could not be reached/);
    assert.deepEqual(await unbatched("colors"), before);
  });

  test("plugin bytes that do not match the digest", async () => {
    const before = await unbatched("colors");
    const proxy = await startProxy(dev.urls[0], (req) =>
      req.url.endsWith("/wasm") ? (bytes) => { const copy = Buffer.from(bytes); copy[copy.length - 1] ^= 1; return copy; } : undefined,
    );
    try {
      const error = await refused(client([proxy.url, dev.urls[1]]).endpoint("colors"), AgreementError, "plugin_digest_mismatch", 0);
      assert.match(error.message, /refusing to run it/);
    } finally {
      await proxy.close();
    }
    assert.deepEqual(await unbatched("colors"), before);
  });

  test("servers listed out of index order", async () => {
    await refused(client([dev.urls[1], dev.urls[0]]).endpoint("colors"), AgreementError, "wrong_server_order", 0);
  });

  test("a measurement the plugin refuses", async () => {
    const before = await unbatched("colors");
    const survey = await client(dev.urls).endpoint("colors");
    const error = await refused(survey.submit("pink"), InvalidError, "invalid_measurement");
    assert.match(error.message, /unknown bucket "pink"/);
    assert.deepEqual(await unbatched("colors"), before);
  });
});

describe("retries", () => {
  test("a server that fails the first attempt stores the report once", async () => {
    await dev.createEndpoint("retried", "histogram", { buckets: ["red", "green", "blue"] });
    const seen = new Map();
    // Server 1 stores each report, but the client hears 502 the first time.
    const proxy = await startProxy(dev.urls[1], (req, body) => {
      if (req.method !== "POST") return undefined;
      const { report_id: id } = JSON.parse(body.toString());
      seen.set(id, [...(seen.get(id) ?? []), body.toString()]);
      return seen.get(id).length === 1 ? "forward-then-fail" : undefined;
    });
    try {
      const survey = await client([dev.urls[0], proxy.url]).endpoint("retried");
      const progress = [];
      const summary = await survey.submitMany(["red", "green", "blue", "red"], { concurrency: 2, onProgress: (p) => progress.push(p.done) });
      assert.deepEqual(progress, [1, 2, 3, 4]);
      assert.deepEqual(summary.failed, []);
      assert.equal(summary.sent, 4);
      assert.equal(summary.duplicates, 4, "server 1 answered the retry as a duplicate");
    } finally {
      await proxy.close();
    }
    assert.equal(seen.size, 4);
    for (const bodies of seen.values()) {
      assert.equal(bodies.length, 2);
      assert.equal(bodies[0], bodies[1], "a retry carries the same id and the same share");
    }
    assert.deepEqual(await unbatched("retried"), [4, 4]);
    const result = await (await client(dev.urls, "scientist").endpoint("retried")).collect();
    assert.deepEqual(result.result.counts, [2, 1, 1]);
  });

  test("a 429 is retried after its Retry-After", async () => {
    let limited = 0;
    const proxy = await startProxy(dev.urls[0], (req) => {
      if (req.method === "POST" && limited++ === 0) {
        return { status: 429, headers: { "retry-after": "1" }, body: JSON.stringify({ error: { code: "rate_limited", message: "slow down" } }) };
      }
      return undefined;
    });
    try {
      const survey = await client([proxy.url, dev.urls[1]]).endpoint("colors");
      const start = performance.now();
      await survey.submit("blue");
      assert.ok(performance.now() - start >= 1000, "waited for Retry-After");
      assert.equal(limited, 2);
    } finally {
      await proxy.close();
    }
  });

  test("a 429 without Retry-After (a quota) is final", async () => {
    const proxy = await startProxy(dev.urls[0], (req) =>
      req.method === "POST" ? { status: 429, body: JSON.stringify({ error: { code: "user_quota_exceeded", message: "quota", max_reports_per_user: 1 } }) } : undefined,
    );
    try {
      const survey = await client([proxy.url, dev.urls[1]]).endpoint("colors");
      const error = await refused(survey.submit("blue"), (await import("../dist/index.js")).RateLimitError, "user_quota_exceeded", 0);
      assert.equal(error.details.max_reports_per_user, 1);
    } finally {
      await proxy.close();
    }
  });
});

describe("errors carry the servers' codes", () => {
  test("401: a token the servers refuse", async () => {
    const g = new Guardian({ servers: dev.urls, token: "not-a-token", retry: quick });
    const error = await refused(g.endpoint("colors"), AuthenticationError, "malformed_token");
    assert.equal(error.status, 401);
  });

  test("403: a user token cannot seal", async () => {
    const survey = await client(dev.urls, "user").endpoint("colors");
    const error = await refused(survey.collect(), PermissionError, "missing_role", 0);
    assert.equal(error.status, 403);
  });

  test("409: another share under a stored report id; a batch too small", async () => {
    await dev.createEndpoint("small", "histogram", { buckets: ["red", "green", "blue"] }, { minBatch: 5 });
    const survey = await client(dev.urls).endpoint("small");
    const report = survey.shard("red");
    assert.equal((await survey.post(report)).duplicate, false);
    assert.equal((await survey.post(report)).duplicate, true, "an identical retry is accepted");
    const other = survey.shard("green");
    const error = await refused(survey.post({ ...other, reportId: report.reportId }), ConflictError, "report_conflict", 0);
    assert.equal(error.status, 409);
    const scientist = await client(dev.urls, "scientist").endpoint("small");
    const small = await refused(scientist.collect(), ConflictError, "batch_too_small", 0);
    assert.equal(small.details.agreed, 1);
    assert.equal(small.details.needed, 5);
  });

  test("422: a share the plugin refuses on the server", async () => {
    const survey = await client(dev.urls).endpoint("colors");
    const report = survey.shard("red");
    const error = await refused(survey.post({ ...report, shares: ["AAAA", report.shares[1]] }), InvalidError, "invalid_share", 0);
    assert.equal(error.status, 422);
  });

  test("the token may be a function, asked before every request", async () => {
    let calls = 0;
    const g = new Guardian({ servers: dev.urls, token: async () => (calls++, dev.token("user")) });
    const survey = await g.endpoint("colors");
    const before = calls;
    await survey.submit("green");
    assert.equal(calls - before, 2, "one call per server");
  });
});

describe("reading without sealing", () => {
  test("report ids start with the time they were made (UUIDv7 layout)", async () => {
    const survey = await client(dev.urls).endpoint("colors");
    const before = Date.now();
    const id = survey.shard("red").reportId;
    const made = parseInt(id.slice(0, 12), 16);
    assert.ok(made >= before && made <= Date.now(), `id ${id} made at ${made}, not between ${before} and now`);
    assert.equal(id[12], "7", "version 7");
    assert.ok("89ab".includes(id[16]), "RFC 9562 variant");
  });

  test("latest() and since() read released batches; neither seals", async () => {
    await dev.createEndpoint("reads", "histogram", { buckets: ["red", "green", "blue"] }, { minBatch: 2 });
    const survey = await client(dev.urls).endpoint("reads");
    const scientist = await client(dev.urls, "scientist").endpoint("reads");
    await refused(scientist.latest(), NotFoundError, "no_batch");

    for (const answer of ["red", "red", "blue"]) await survey.submit(answer);
    const first = await scientist.collect();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const between = new Date();
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const answer of ["green", "green"]) await survey.submit(answer);
    const second = await scientist.collect();
    await survey.submit("blue");

    const latest = await scientist.latest();
    assert.equal(latest.batchId, second.batchId);
    assert.equal(latest.count, 2);
    assert.deepEqual(latest.result, second.result);
    assert.deepEqual((await scientist.since(between)).map((b) => [b.batchId, b.count]), [[second.batchId, 2]]);
    const all = await scientist.since("1970-01-01T00:00:00Z");
    assert.deepEqual(all.map((b) => b.batchId), [first.batchId, second.batchId]);
    assert.deepEqual(all[0].result, first.result);
    // Reading sealed nothing: the last answer still waits on every server.
    assert.deepEqual(await unbatched("reads"), [1, 1]);
  });
});
