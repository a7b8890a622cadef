/**
 * Runs an endpoint's plugin, the very WebAssembly component the servers run, in
 * this JavaScript engine. The component is transpiled at run time with jco's
 * own transpiler (itself a WebAssembly component, `jco-transpile`), because an
 * endpoint may use a plugin uploaded after this code was built: ahead-of-time
 * transpilation would only cover the built-ins. Both contracts are supported:
 * `guardian:plugin@0.1.0` and the robust `@0.2.0` (whose `shard` takes the
 * report id and returns a public share). The plugin's WASI imports (Rust's std
 * links them even when unused) are served by jco's `preview2-shim`.
 */
import { $init, generate } from "@bytecodealliance/jco-transpile/component";
import * as cli from "@bytecodealliance/preview2-shim/cli";
import * as clocks from "@bytecodealliance/preview2-shim/clocks";
import * as filesystem from "@bytecodealliance/preview2-shim/filesystem";
import * as io from "@bytecodealliance/preview2-shim/io";
import * as random from "@bytecodealliance/preview2-shim/random";

import { InvalidError, PluginError } from "./errors.js";

/** What `info` of a plugin says. */
export interface PluginInfo {
  name: string;
  version: string;
  description: string;
  paramsSchema: string;
}

/** A report: what each server receives (share i for server i) and, for robust
 * plugins, the public share every server receives. */
export interface Sharded {
  publicShare: Uint8Array;
  shares: Uint8Array[];
}

/** A plugin loaded here. */
export interface Plugin {
  /** Whether it is a robust plugin (contract 0.2.0). */
  readonly robust: boolean;
  info(): PluginInfo;
  configure(params: string): Uint8Array;
  shard(config: Uint8Array, measurement: string, servers: number, reportId: Uint8Array, seed: Uint8Array): Sharded;
  unshard(config: Uint8Array, aggregates: Uint8Array[], count: number): string;
}

interface Algorithm {
  info(): PluginInfo;
  configure(params: string): Uint8Array;
  shard(...args: unknown[]): unknown;
  unshard(config: Uint8Array, aggregates: Uint8Array[], count: bigint): string;
}

const V1 = "guardian:plugin/algorithm@0.1.0";
const V2 = "guardian:plugin/algorithm@0.2.0";

/** WASI packages by name, as jco's shim exports them. */
const SHIMS: Record<string, Record<string, unknown>> = {
  "wasi:cli": cli,
  "wasi:clocks": clocks,
  "wasi:filesystem": filesystem,
  "wasi:io": io,
  "wasi:random": random,
};

/** Time spent in the last load, for benchmarks and curious apps. */
export interface LoadTimings {
  transpileMs: number;
  instantiateMs: number;
}

/** Transpiles and instantiates the component `wasm`. */
export async function loadPlugin(wasm: Uint8Array, timings?: LoadTimings): Promise<Plugin> {
  const t0 = performance.now();
  await $init;
  let out;
  try {
    out = generate(wasm, {
      name: "plugin",
      instantiation: { tag: "async" },
      noTypescript: true,
      noNodejsCompat: true,
      base64Cutoff: 0,
    });
  } catch (e) {
    throw new PluginError({ code: "plugin_not_loadable", message: `the endpoint's plugin is not a component this client can run: ${errorText(e)}` });
  }
  const exported = new Set(out.exports.map(([name]) => name));
  const robust = exported.has(V2);
  const key = robust ? V2 : exported.has(V1) ? V1 : undefined;
  if (key === undefined) {
    throw new PluginError({ code: "plugin_not_loadable", message: `the endpoint's plugin exports neither ${V1} nor ${V2}` });
  }
  const files = new Map(out.files);
  const js = files.get("plugin.js");
  if (js === undefined) throw new PluginError({ code: "plugin_not_loadable", message: "jco produced no plugin.js" });
  const imports: Record<string, unknown> = {};
  for (const name of out.imports) {
    const [pkg, iface] = name.replace(/@.*$/, "").split("/");
    const shim = SHIMS[pkg ?? ""]?.[camel(iface ?? "")];
    if (shim === undefined) {
      throw new PluginError({ code: "plugin_not_loadable", message: `the plugin imports ${name}, which a browser client cannot provide` });
    }
    imports[name] = shim;
  }
  const t1 = performance.now();
  const module = (await importModule(js)) as {
    instantiate(getCoreModule: (name: string) => Promise<WebAssembly.Module>, imports: Record<string, unknown>): Promise<Record<string, unknown>>;
  };
  const instance = await module.instantiate((name) => {
    const bytes = files.get(name);
    if (bytes === undefined) throw new Error(`missing core module ${name}`);
    return WebAssembly.compile(bytes as BufferSource);
  }, imports);
  const algorithm = instance[key] as Algorithm;
  if (timings !== undefined) {
    timings.transpileMs = t1 - t0;
    timings.instantiateMs = performance.now() - t1;
  }
  return {
    robust,
    info: () => call(() => algorithm.info()),
    configure: (params) => call(() => algorithm.configure(params)),
    shard(config, measurement, servers, reportId, seed) {
      if (robust) {
        return call(() => algorithm.shard(config, measurement, servers, reportId, seed) as Sharded);
      }
      return { publicShare: new Uint8Array(0), shares: call(() => algorithm.shard(config, measurement, servers, seed) as Uint8Array[]) };
    },
    unshard: (config, aggregates, count) => call(() => algorithm.unshard(config, aggregates, BigInt(count))),
  };
}

/** Loads the transpiled ES module: through a Blob URL in a browser, a data URL in Node. */
async function importModule(js: Uint8Array): Promise<unknown> {
  const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";
  if (isNode) {
    const url = `data:text/javascript;base64,${Buffer.from(js).toString("base64")}`;
    return import(/* @vite-ignore */ url);
  }
  const url = URL.createObjectURL(new Blob([js as BlobPart], { type: "text/javascript" }));
  try {
    return await import(/* @vite-ignore */ url);
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** Calls into the plugin, turning its WIT errors (jco's `ComponentError` with a
 * `payload` `{tag, val}`) and traps into typed errors. */
function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    const payload = (e as { payload?: { tag?: string; val?: unknown } }).payload;
    if (payload !== undefined && typeof payload.tag === "string") {
      const code = payload.tag.replace(/-/g, "_");
      const message = String(payload.val ?? "");
      if (code === "invalid_measurement") throw new InvalidError({ code, message });
      throw new PluginError({ code, message: `the plugin refused: ${message} (${code})` });
    }
    throw new PluginError({ code: "plugin_trapped", message: `the plugin failed: ${errorText(e)}` });
  }
}

function camel(name: string): string {
  return name.replace(/-(.)/g, (_, c: string) => c.toUpperCase());
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0] ?? "" : String(e);
}
