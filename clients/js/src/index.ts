/**
 * Privacy Guardian client for browsers and Node.
 *
 * ```ts
 * const g = new Guardian({ servers: ["https://s0…", "https://s1…"], token });
 * const survey = await g.endpoint("colors");   // every server agrees; plugin loaded
 * await survey.submit("red");                   // shard locally, post share i to server i
 * const r = await survey.collect();             // scientist: seal, fetch, unshard
 * ```
 *
 * Layout: `http` (the servers, retries, errors as values), `plugin` (the
 * endpoint's WebAssembly component, transpiled at run time with jco), `errors`
 * (typed errors with the servers' codes), and here the endpoint: the checks
 * before anything is posted, sharding, posting and collecting.
 */
import { base64, hex } from "@scure/base";

import { AgreementError, GuardianError, NotApprovedError, NotFoundError, ServerError } from "./errors.js";
import { Cluster, type RetryPolicy, type TokenSource } from "./http.js";
import { type LoadTimings, type Plugin, type PluginInfo, loadPlugin } from "./plugin.js";

export * from "./errors.js";
export type { RetryPolicy, TokenSource } from "./http.js";
export type { LoadTimings, PluginInfo } from "./plugin.js";

/** Options of [`Guardian`]. */
export interface GuardianOptions {
  /** Every share server's base URL, in server-index order (entry i is server i). */
  servers: string[];
  /** Access token with the role the calls need (`user` to submit, `scientist` to
   * collect), or a function returning the current one: it is called before
   * every request, so an app can refresh tokens. */
  token?: TokenSource;
  /** Backoff of retried requests. */
  retry?: Partial<RetryPolicy>;
  /** Budget of one request attempt in ms (default 60 000). */
  timeoutMs?: number;
  /** The `fetch` to use (default: the global one in browsers, `node:http` in Node). */
  fetch?: typeof fetch;
}

/** A report as posted: the same `reportId` (32 hex digits) to every server,
 * share i (base64) to server i, and the public share (base64) of robust plugins. */
export interface Report {
  reportId: string;
  publicShare: string | null;
  shares: string[];
}

/** What became of a posted report. */
export interface Posted {
  reportId: string;
  /** True when a server already held it (a retry whose first attempt had landed). */
  duplicate: boolean;
}

/** Options of `submitMany`. */
export interface SubmitManyOptions {
  /** Reports in flight at once (default 32). */
  concurrency?: number;
  /** Called after each report, posted or failed. */
  onProgress?: (progress: { done: number; total: number; failed: number }) => void;
}

/** Counts of a `submitMany`. */
export interface Summary {
  sent: number;
  /** Stored by every server. */
  stored: number;
  /** Already held by a server and now held by all. */
  duplicates: number;
  /** The reports that failed, by index in the input, with why. A report that
   * reached only some servers is never counted: it stays out of every batch and expires. */
  failed: { index: number; error: GuardianError }[];
}

/** A combined result. */
export interface Collected {
  endpoint: string;
  /** The sealed batch (`collect`). */
  batchId?: string;
  /** Number of released batches merged (`total`). */
  batches?: number;
  /** Reports in the result. */
  count: number;
  /** Reports the seal rejected because their validity proofs failed (robust endpoints). */
  rejected: number;
  /** What the plugin's `unshard` returned. */
  result: unknown;
}

/** An endpoint as `GET /api/v1/endpoints/{name}` describes it. */
export interface EndpointInfo {
  name: string;
  plugin: string;
  plugin_digest: string;
  approved?: boolean;
  params: unknown;
  min_batch: number;
  max_reports_per_user?: number | null;
  config_hash: string;
  reports?: { unbatched?: number; batched?: number; batches?: number };
}

/** One deployment of share servers. */
export class Guardian {
  private readonly cluster: Cluster;

  constructor(options: GuardianOptions) {
    const clusterOptions: ConstructorParameters<typeof Cluster>[1] = { token: options.token };
    if (options.retry !== undefined) clusterOptions.retry = options.retry;
    if (options.timeoutMs !== undefined) clusterOptions.timeoutMs = options.timeoutMs;
    if (options.fetch !== undefined) clusterOptions.fetch = options.fetch;
    this.cluster = new Cluster(options.servers, clusterOptions);
  }

  /** Opens endpoint `name`: checks that the servers are listed in index order
   * and are all of the deployment, that every server has the same definition
   * (plugin digest, configuration hash), fetches the plugin from server 0,
   * checks its SHA-256 against the digest, loads it here, configures it and
   * checks the configuration hash. Throws [`AgreementError`] otherwise. */
  async endpoint(name: string): Promise<Endpoint> {
    const cluster = this.cluster;
    if (cluster.length < 2) {
      throw new AgreementError({
        code: "too_few_servers",
        message: "only one server is given: measurements are split among at least two share servers, list every one in server-index order",
      });
    }
    const indexes = [...Array(cluster.length).keys()];
    // Asked of every server at once; the error reported is the first in
    // server order (as the command line, which asks one after the other).
    const [ready, described] = await Promise.all([
      Promise.allSettled(indexes.map((i) => checkReady(cluster, i))),
      Promise.allSettled(indexes.map((i) => cluster.getJson<EndpointInfo>(i, ["api", "v1", "endpoints", name]))),
    ]);
    for (const outcome of [...ready, ...described]) {
      if (outcome.status === "rejected") throw outcome.reason;
    }
    const views = described.map((d) => (d as PromiseFulfilledResult<EndpointInfo>).value);
    const zero = views[0]!;
    views.forEach((info, i) => {
      if (info.plugin_digest !== zero.plugin_digest || info.config_hash !== zero.config_hash) {
        throw new AgreementError({
          code: "servers_disagree",
          message: `the servers disagree on endpoint ${JSON.stringify(name)}: ${cluster.describe(0)} has plugin ${zero.plugin} (${zero.plugin_digest.slice(0, 12)}) with params ${JSON.stringify(zero.params)} and min batch ${zero.min_batch} (config hash ${zero.config_hash.slice(0, 12)}), ${cluster.describe(i)} has plugin ${info.plugin} (${info.plugin_digest.slice(0, 12)}) with params ${JSON.stringify(info.params)} and min batch ${info.min_batch} (config hash ${info.config_hash.slice(0, 12)}); delete it and create it again on every server`,
          server: i,
          url: cluster.urls[i]!,
        });
      }
    });
    const answer = await cluster.request(0, ["api", "v1", "plugins", zero.plugin_digest, "wasm"]);
    const wasm = answer.body;
    const digest = hex.encode(new Uint8Array(await crypto.subtle.digest("SHA-256", wasm as BufferSource)));
    if (digest !== zero.plugin_digest) {
      throw new AgreementError({
        code: "plugin_digest_mismatch",
        message: `${cluster.describe(0)} sent plugin code whose SHA-256 is ${digest}, not the endpoint's plugin digest ${zero.plugin_digest}: refusing to run it`,
        server: 0,
        url: cluster.urls[0]!,
      });
    }
    const timings: LoadTimings = { transpileMs: 0, instantiateMs: 0 };
    const plugin = await loadPlugin(wasm, timings);
    const params = canonicalJson(zero.params);
    const config = plugin.configure(params);
    const hash = hex.encode(new Uint8Array(await crypto.subtle.digest("SHA-256", configHashInput(zero, config) as BufferSource)));
    if (hash !== zero.config_hash) {
      throw new AgreementError({
        code: "config_hash_mismatch",
        message: `the plugin configured here gives config hash ${hash}, but the servers have ${zero.config_hash} for endpoint ${JSON.stringify(name)}: refusing to shard with another configuration than theirs`,
      });
    }
    return new Endpoint(cluster, name, views, plugin, config, timings);
  }
}

/** An endpoint every server agrees on, with its plugin loaded here. */
export class Endpoint {
  /** The endpoint's name. */
  readonly name: string;
  /** How every server described it, in server-index order. */
  readonly views: readonly EndpointInfo[];
  /** What the plugin says of itself. */
  readonly info: PluginInfo;
  /** Whether the plugin is robust (its reports carry validity proofs). */
  readonly robust: boolean;
  /** How long transpiling and instantiating the plugin took here. */
  readonly loadTimings: LoadTimings;

  /** @internal */
  constructor(
    private readonly cluster: Cluster,
    name: string,
    views: EndpointInfo[],
    private readonly plugin: Plugin,
    private readonly config: Uint8Array,
    timings: LoadTimings,
  ) {
    this.name = name;
    this.views = views;
    this.info = plugin.info();
    this.robust = plugin.robust;
    this.loadTimings = timings;
  }

  /** Shards `value` (any JSON value the plugin takes) under a fresh random
   * report id (the time, then random bits) and seed (`crypto.getRandomValues`), without posting it. Refuses
   * unless every server approves the endpoint's plugin. */
  shard(value: unknown): Report {
    this.checkApproved();
    const servers = this.cluster.length;
    // One draw for both: the report id (16 bytes) and the plugin's seed (32).
    const random = crypto.getRandomValues(new Uint8Array(48));
    const id = random.subarray(0, 16);
    // The id starts with the time (big-endian Unix milliseconds, 48 bits; UUIDv7
    // layout): servers take a report only while that time is within their window.
    let now = Date.now();
    for (let i = 5; i >= 0; i--) {
      id[i] = now % 256;
      now = Math.floor(now / 256);
    }
    id[6] = 0x70 | (id[6]! & 0x0f);
    id[8] = 0x80 | (id[8]! & 0x3f);
    const seed = random.subarray(16);
    const sharded = this.plugin.shard(this.config, JSON.stringify(value), servers, id, seed);
    if (sharded.shares.length !== servers) {
      throw new ServerError({ code: "plugin_bad_shard", message: `the plugin made ${sharded.shares.length} shares for ${servers} servers` });
    }
    return {
      reportId: hex.encode(id),
      publicShare: sharded.publicShare.length > 0 ? base64.encode(sharded.publicShare) : null,
      shares: sharded.shares.map((s) => base64.encode(s)),
    };
  }

  /** Posts share i of `report` to server i, in index order, stopping at the
   * first server that does not take it. Transient failures are retried with
   * the same id and share, which the servers store once. */
  async post(report: Report): Promise<Posted> {
    let duplicate = false;
    for (let i = 0; i < report.shares.length; i++) {
      const body: Record<string, string> = { report_id: report.reportId, share: report.shares[i]! };
      if (report.publicShare !== null) body["public_share"] = report.publicShare;
      const answer = await this.cluster.request(i, ["api", "v1", "endpoints", this.name, "reports"], { method: "POST", json: body });
      duplicate ||= answer.status === 200;
    }
    return { reportId: report.reportId, duplicate };
  }

  /** Shards `value` and posts it: one random report id, share i to server i. */
  async submit(value: unknown): Promise<Posted> {
    return this.post(this.shard(value));
  }

  /** Submits every value, `concurrency` reports in flight; failures are counted, not thrown. */
  async submitMany(values: readonly unknown[], options: SubmitManyOptions = {}): Promise<Summary> {
    this.checkApproved();
    const summary: Summary = { sent: 0, stored: 0, duplicates: 0, failed: [] };
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < values.length) {
        const index = next++;
        try {
          const posted = await this.submit(values[index]);
          if (posted.duplicate) summary.duplicates++;
          else summary.stored++;
        } catch (e) {
          summary.failed.push({ index, error: asGuardianError(e) });
        }
        summary.sent++;
        options.onProgress?.({ done: summary.sent, total: values.length, failed: summary.failed.length });
      }
    };
    const workers = Math.max(1, Math.min(options.concurrency ?? 32, values.length));
    await Promise.all(Array.from({ length: workers }, worker));
    summary.failed.sort((a, b) => a.index - b.index);
    return summary;
  }

  /** Scientist: asks server 0 to seal a batch of the reports every server
   * holds, fetches every server's released share, checks that they describe
   * the same batch, and combines them with the plugin's `unshard`. */
  async collect(): Promise<Collected> {
    const sealed = await this.cluster
      .request(0, ["api", "v1", "endpoints", this.name, "batches"], { method: "POST", retry: "when-asked", timeoutMs: 600_000 })
      .then((a) => JSON.parse(new TextDecoder().decode(a.body)) as { batch_id: string; count: number; rejected?: number });
    const shares = await Promise.all(
      this.indexes().map(async (i) => {
        const batch = await this.cluster.getJson<{ batch_id: string; count: number; server_index: number; share: string }>(i, ["api", "v1", "endpoints", this.name, "batches", sealed.batch_id]);
        if (batch.batch_id !== sealed.batch_id || batch.count !== sealed.count) {
          throw new AgreementError({
            code: "servers_disagree",
            message: `${this.cluster.describe(i)} describes batch ${batch.batch_id} with ${batch.count} reports, but server 0 sealed batch ${sealed.batch_id} with ${sealed.count}: the servers disagree, do not use this result`,
            server: i,
            url: this.cluster.urls[i]!,
          });
        }
        this.checkIndex(i, batch.server_index);
        return base64.decode(batch.share);
      }),
    );
    return {
      endpoint: this.name,
      batchId: sealed.batch_id,
      count: sealed.count,
      rejected: sealed.rejected ?? 0,
      result: this.combine(shares, sealed.count),
    };
  }

  /** Scientist: the result over every released batch (nothing is sealed). */
  async total(): Promise<Collected> {
    const totals = await Promise.all(
      this.indexes().map((i) =>
        this.cluster.getJson<{ batches: number; count: number; rejected?: number; server_index: number; share: string }>(i, ["api", "v1", "endpoints", this.name, "total"]),
      ),
    );
    const zero = totals[0]!;
    totals.forEach((t, i) => {
      this.checkIndex(i, t.server_index);
      if (t.batches !== zero.batches || t.count !== zero.count) {
        throw new AgreementError({
          code: "totals_differ",
          message: `the servers' totals differ: server 0 has ${zero.batches} batches with ${zero.count} reports, ${this.cluster.describe(i)} has ${t.batches} with ${t.count}; a seal may still be completing, try again in a moment`,
          server: i,
          url: this.cluster.urls[i]!,
        });
      }
    });
    return {
      endpoint: this.name,
      batches: zero.batches,
      count: zero.count,
      rejected: zero.rejected ?? 0,
      result: this.combine(totals.map((t) => base64.decode(t.share)), zero.count),
    };
  }

  /** Scientist: the newest released batch, without sealing (e.g. one the
   * servers sealed on their schedule). Fails with `NotFoundError` `no_batch`
   * when none is. */
  async latest(): Promise<Collected> {
    const listed = await this.listBatches();
    const last = listed[listed.length - 1];
    if (last === undefined) {
      throw new NotFoundError({
        code: "no_batch",
        message: `endpoint ${this.name} has no released batch yet: wait for its next scheduled seal, or seal one with collect()`,
      });
    }
    return this.readBatch(last);
  }

  /** Scientist: every batch sealed at or after `time`, oldest first, each
   * combined on its own, without sealing. */
  async since(time: Date | string): Promise<Collected[]> {
    const since = typeof time === "string" ? time : time.toISOString();
    const listed = await this.listBatches(since);
    const read: Collected[] = [];
    for (const batch of listed) read.push(await this.readBatch(batch));
    return read;
  }

  /** Server 0's batches (sealed since `since`, if given), oldest first, every page. */
  private async listBatches(since?: string): Promise<{ batch_id: string; count: number; rejected?: number }[]> {
    type Page = { batches: { batch_id: string; count: number; rejected?: number }[]; next: string | null };
    const batches: Page["batches"] = [];
    let after: string | null = null;
    do {
      const query: Record<string, string> = { limit: "1000" };
      if (since !== undefined) query.since = since;
      if (after !== null) query.after = after;
      const answer = await this.cluster.request(0, ["api", "v1", "endpoints", this.name, "batches"], { query });
      const page = JSON.parse(new TextDecoder().decode(answer.body)) as Page;
      batches.push(...page.batches);
      after = page.next;
    } while (after !== null);
    return batches;
  }

  /** Every server's share of a listed batch, checked to agree, combined. */
  private async readBatch(listed: { batch_id: string; count: number; rejected?: number }): Promise<Collected> {
    const shares = await Promise.all(
      this.indexes().map(async (i) => {
        const batch = await this.cluster.getJson<{ batch_id: string; count: number; server_index: number; share: string }>(i, ["api", "v1", "endpoints", this.name, "batches", listed.batch_id]);
        if (batch.count !== listed.count) {
          throw new AgreementError({
            code: "servers_disagree",
            message: `${this.cluster.describe(i)} describes batch ${listed.batch_id} with ${batch.count} reports, but server 0 lists it with ${listed.count}: the servers disagree, do not use this result`,
            server: i,
            url: this.cluster.urls[i]!,
          });
        }
        this.checkIndex(i, batch.server_index);
        return base64.decode(batch.share);
      }),
    );
    return {
      endpoint: this.name,
      batchId: listed.batch_id,
      count: listed.count,
      rejected: listed.rejected ?? 0,
      result: this.combine(shares, listed.count),
    };
  }

  /** Report counts per server, in server-index order (fresh from the servers). */
  async counts(): Promise<{ unbatched: number; batched: number; batches: number }[]> {
    const views = await Promise.all(this.indexes().map((i) => this.cluster.getJson<EndpointInfo>(i, ["api", "v1", "endpoints", this.name])));
    return views.map((v) => ({ unbatched: v.reports?.unbatched ?? 0, batched: v.reports?.batched ?? 0, batches: v.reports?.batches ?? 0 }));
  }

  private combine(shares: Uint8Array[], count: number): unknown {
    const text = this.plugin.unshard(this.config, shares, count);
    try {
      return JSON.parse(text);
    } catch {
      throw new ServerError({ code: "plugin_bad_result", message: "the plugin's unshard did not return JSON" });
    }
  }

  private indexes(): number[] {
    return [...Array(this.cluster.length).keys()];
  }

  private checkIndex(position: number, index: number): void {
    if (index !== position) {
      throw new AgreementError({
        code: "wrong_server_order",
        message: `${this.cluster.describe(position)} says it is server ${index}: list the servers in server-index order`,
        server: position,
        url: this.cluster.urls[position]!,
      });
    }
  }

  /** A plugin's `shard` decides what each server sees, and no server can vouch
   * for what the others receive: every operator must approve it. */
  private checkApproved(): void {
    this.views.forEach((view, i) => {
      if (view.approved !== true) {
        throw new NotApprovedError({
          code: "plugin_not_approved",
          message: `${this.cluster.describe(i)} ${view.approved === false ? "has not approved" : "does not say that it approved"} plugin ${view.plugin} (${view.plugin_digest}) of endpoint ${JSON.stringify(this.name)}: refusing to shard. That server's operator approves it by adding the digest to plugins.approved and restarting it`,
          server: i,
          url: this.cluster.urls[i]!,
        });
      }
    });
  }
}

/** Checks that server `index` says it is server `index` of a deployment of as
 * many servers as are listed (fewer would hand a server more than its share). */
async function checkReady(cluster: Cluster, index: number): Promise<void> {
  const ready = await cluster.getJson<{ server_index: number; servers: number }>(index, ["readyz"]);
  if (ready.servers !== cluster.length) {
    throw new AgreementError({
      code: "wrong_server_count",
      message: `${cluster.describe(index)} belongs to a deployment of ${ready.servers} share servers, but ${cluster.length} are listed: give every server's URL, in server-index order`,
      server: index,
      url: cluster.urls[index]!,
    });
  }
  if (ready.server_index !== index) {
    throw new AgreementError({
      code: "wrong_server_order",
      message: `${cluster.describe(index)} says it is server ${ready.server_index}, but it is at position ${index}: list the servers in server-index order`,
      server: index,
      url: cluster.urls[index]!,
    });
  }
}

/** The bytes the servers hash into an endpoint's `config_hash` (host/src/server/routes.rs `config_hash`). */
function configHashInput(info: EndpointInfo, config: Uint8Array): Uint8Array {
  const max = info.max_reports_per_user ?? null;
  const tag = new TextEncoder().encode(max === null ? "guardian:endpoint:v1\0" : "guardian:endpoint:v2\0");
  const numbers = new DataView(new ArrayBuffer(max === null ? 8 : 16));
  numbers.setBigUint64(0, BigInt(info.min_batch), true);
  if (max !== null) numbers.setBigUint64(8, BigInt(max), true);
  const parts = [tag, hex.decode(info.plugin_digest), new Uint8Array(numbers.buffer), config];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** JSON with object keys sorted, as the servers give params to `configure`. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value);
}

function asGuardianError(e: unknown): GuardianError {
  if (e instanceof GuardianError) return e;
  return new GuardianError({ code: "internal", message: e instanceof Error ? e.message : String(e) });
}
