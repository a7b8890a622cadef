// Real share servers for the tests: `guardian dev` (the binary named by
// GUARDIAN_BIN, which host/tests/js_client.rs sets to the one cargo built) in a
// fresh folder on free ports, tokens minted by its development issuer, and a
// proxy that can spoil one server's answers.
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

export function guardianBin() {
  const bin = process.env.GUARDIAN_BIN;
  if (!bin) {
    throw new Error(
      "GUARDIAN_BIN is not set: run these tests through `cargo test -p guardian --test js_client` (after `cargo xtask prepare`), or set GUARDIAN_BIN to a built guardian binary (cargo build -p guardian)",
    );
  }
  return bin;
}

/** Runs the guardian command line; returns its standard output. */
export function guardian(args, env = {}) {
  return execFileSync(guardianBin(), args, { env: { ...process.env, ...env }, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = netServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/** A base port with `count` free ports from it. */
async function freeBasePort(count) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
  throw new Error("no free ports for guardian dev");
}

/** Tokens (by role and subject) from the development issuer in `issuerDir`. */
function minter(issuerDir) {
  const tokens = {};
  return (role, sub = "dev") =>
    (tokens[`${role}/${sub}`] ??= guardian(["token", "--role", role, "--sub", sub, "--issuer-dir", issuerDir]).trim());
}

/** The deployment's helpers over servers at `urls`. */
function deployment(urls, token) {
  return {
    urls,
    token,
    /** Creates endpoint `name` on every server (or, with `perServer`, each server's own params). */
    async createEndpoint(name, plugin, params, { minBatch = 2, perServer } = {}) {
      for (const [i, url] of urls.entries()) {
        const body = { name, plugin, params: perServer ? perServer[i] : params, min_batch: minBatch };
        const response = await fetch(`${url}/api/v1/endpoints`, {
          method: "POST",
          headers: { authorization: `Bearer ${token("developer")}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        if (!response.ok) throw new Error(`creating ${name} on ${url}: ${response.status} ${await response.text()}`);
      }
    },
    /** Report counts of `name` on every server. */
    async counts(name) {
      return Promise.all(
        urls.map(async (url) => {
          const r = await fetch(`${url}/api/v1/endpoints/${name}`, { headers: { authorization: `Bearer ${token("scientist")}` } });
          return (await r.json()).reports;
        }),
      );
    },
  };
}

/**
 * Two share servers: the `guardian dev` that host/tests/js_client.rs started
 * for every test file (GUARDIAN_DEV_URLS, GUARDIAN_DEV_DIR: one start instead
 * of one per file, each file using endpoints of its own names), or else a
 * fresh one.
 */
export async function startDev() {
  if (process.env.GUARDIAN_DEV_URLS && process.env.GUARDIAN_DEV_DIR) {
    const urls = process.env.GUARDIAN_DEV_URLS.split(",");
    return { ...deployment(urls, minter(join(process.env.GUARDIAN_DEV_DIR, "dev-issuer"))), stop: async () => {} };
  }
  return spawnDev();
}

/** Starts `guardian dev` with `servers` share servers in a fresh folder. */
export async function spawnDev({ servers = 2 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "guardian-js-"));
  const port = await freeBasePort(servers);
  const child = spawn(guardianBin(), ["dev", "--servers", String(servers), "--dir", join(dir, "data"), "--port", String(port)], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`guardian dev did not start within 60 s:\n${output}`)), 60_000);
    const seen = (chunk) => {
      output += chunk;
      if (output.includes("share servers are running")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", seen);
    child.stderr.on("data", (c) => (output += c));
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`guardian dev exited (${code}):\n${output}`));
    });
  });
  const urls = Array.from({ length: servers }, (_, i) => `http://127.0.0.1:${port + i}`);
  return {
    ...deployment(urls, minter(join(dir, "data", "dev-issuer"))),
    dir,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((resolve) => child.once("exit", resolve));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A proxy in front of `target` that calls `spoil(req, body)` for every request:
 * it may return `{status, body}` to answer instead of the server, `"forward-then-fail"`
 * to forward the request and then answer 502 (the server acted, the client did not
 * hear), a function `(bytes) => bytes` rewriting the server's answer, or nothing to
 * pass it through.
 */
export async function startProxy(target, spoil) {
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const action = spoil(req, body);
    if (action && typeof action === "object") {
      res.writeHead(action.status, { "content-type": "application/json", ...(action.headers ?? {}) });
      res.end(action.body ?? "");
      return;
    }
    const upstream = httpRequest(`${target}${req.url}`, { method: req.method, headers: req.headers }, async (answer) => {
      const parts = [];
      for await (const c of answer) parts.push(c);
      let bytes = Buffer.concat(parts);
      if (action === "forward-then-fail") {
        res.writeHead(502, { "content-type": "text/plain" });
        res.end("bad gateway");
        return;
      }
      if (typeof action === "function") bytes = Buffer.from(action(bytes));
      const headers = { ...answer.headers, "content-length": String(bytes.length) };
      delete headers["transfer-encoding"];
      res.writeHead(answer.statusCode ?? 502, headers);
      res.end(bytes);
    });
    upstream.on("error", () => {
      res.writeHead(502);
      res.end();
    });
    upstream.end(body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

/** Debian's Chromium, which `cargo xtask prepare` installs. */
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Launches headless Chromium, failing with the command that installs it. */
export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: run \`cargo xtask prepare\` (it installs Debian's chromium), or set CHROMIUM to a Chromium binary`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

