/**
 * The share servers of one deployment, in server-index order, and the one place
 * where HTTP answers become values or typed errors. Every request names its
 * server by index, so every error says which server failed. Retries (same
 * rules as the command line): transport errors and 5xx are retried for
 * idempotent requests (GETs, and a report posted again under the same id with
 * the same share, which the servers store once); a 429 only when it says when
 * (`Retry-After`, honoured up to 30 s); a seal only when the server asks (503).
 */
import { GuardianError, ServerError, UnreachableError, errorForStatus } from "./errors.js";
import { type Transport, fetchTransport, isNode, nodeTransport } from "./transport.js";

/** A bearer token, or a function giving the current one (so an app can refresh it). */
export type TokenSource = string | undefined | (() => string | undefined | Promise<string | undefined>);

/** Backoff of retried requests. */
export interface RetryPolicy {
  /** Attempts in all, the first one included (default 5). */
  attempts: number;
  /** Delay before the second attempt, in ms (default 200); doubles after each failure. */
  firstDelayMs: number;
  /** Upper bound of one delay, in ms (default 3000). */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, firstDelayMs: 200, maxDelayMs: 3000 };

/** The longest `Retry-After` waited for before retrying on our own. */
const MAX_RETRY_AFTER_MS = 30_000;

/** What may be retried. */
export type Retry = "idempotent" | "when-asked";

/** One request. */
export interface RequestOptions {
  method?: "GET" | "POST" | "DELETE";
  /** JSON body. */
  json?: unknown;
  retry?: Retry;
  /** Budget of each attempt, ms. */
  timeoutMs?: number;
  /** Query parameters (percent-encoded here). */
  query?: Record<string, string>;
}

/** A 2xx answer. */
export interface Answer {
  status: number;
  body: Uint8Array;
}

export interface ClusterOptions {
  token?: TokenSource;
  retry?: Partial<RetryPolicy>;
  /** Budget of one request attempt in ms (default 60 000). */
  timeoutMs?: number;
  /** The `fetch` to use (default: the global one in browsers, `node:http` in Node). */
  fetch?: typeof fetch;
}

export class Cluster {
  readonly urls: string[];
  private readonly token: TokenSource;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly send: Transport;
  /** Set when server i was unreachable after every retry, so that the next
   * requests try once instead of waiting through the backoff again; cleared by
   * its next answer. */
  private readonly down: boolean[];

  constructor(servers: string[], options: ClusterOptions = {}) {
    this.urls = servers.map((s) => s.trim()).filter((s) => s.length > 0).map(checkUrl);
    if (this.urls.length === 0) {
      throw new GuardianError({ code: "no_servers", message: "no share servers given: pass `servers`, every share server's base URL in server-index order" });
    }
    this.token = options.token;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.send =
      options.fetch !== undefined ? fetchTransport(options.fetch) : isNode() ? nodeTransport() : fetchTransport(globalThis.fetch.bind(globalThis));
    this.down = this.urls.map(() => false);
  }

  get length(): number {
    return this.urls.length;
  }

  /** `server 1 (https://…)`, the way every message names a server. */
  describe(index: number): string {
    return `server ${index} (${this.urls[index]})`;
  }

  /** GET a JSON document from server `index`. */
  async getJson<T>(index: number, segments: string[]): Promise<T> {
    return parseJson<T>(await this.request(index, segments), index, this.urls[index]!);
  }

  /** Sends a request to server `index` at the path made of `segments` (each
   * percent-encoded, so a name cannot change the route), retrying as allowed;
   * a non-2xx answer throws the error class of its status. */
  async request(index: number, segments: string[], options: RequestOptions = {}): Promise<Answer> {
    const search = options.query === undefined ? "" : `?${new URLSearchParams(options.query).toString()}`;
    const url = `${this.urls[index]}/${segments.map(encodeURIComponent).join("/")}${search}`;
    const method = options.method ?? "GET";
    const retry = options.retry ?? "idempotent";
    const attempts = this.down[index] ? 1 : Math.max(1, this.retry.attempts);
    const body = options.json === undefined ? undefined : JSON.stringify(options.json);
    for (let attempt = 1; ; attempt++) {
      const headers: Record<string, string> = {};
      const token = typeof this.token === "function" ? await this.token() : this.token;
      if (token !== undefined && token.trim() !== "") headers["authorization"] = `Bearer ${token.trim()}`;
      if (body !== undefined) headers["content-type"] = "application/json";
      let response;
      try {
        const request: Parameters<Transport>[1] = { method, headers, timeoutMs: options.timeoutMs ?? this.timeoutMs };
        if (body !== undefined) request.body = body;
        response = await this.send(url, request);
      } catch (cause) {
        if (retry === "idempotent" && attempt < attempts) {
          await sleep(this.delay(attempt - 1));
          continue;
        }
        this.down[index] = true;
        throw new UnreachableError({
          code: "unreachable",
          message: `${this.describe(index)} could not be reached: ${describeCause(cause)} (is it running, and is the URL right?${isNode() ? "" : " In a browser: does the server allow this page's origin, cors.allowed_origins?"})`,
          server: index,
          url: this.urls[index]!,
        });
      }
      this.down[index] = false;
      const bytes = response.body;
      if (response.status >= 200 && response.status < 300) return { status: response.status, body: bytes };
      const retryAfter = parseRetryAfter(response.retryAfter);
      const retryable =
        response.status === 429
          ? retryAfter !== undefined
          : retry === "idempotent"
            ? response.status >= 500
            : response.status === 503;
      if (retryable && attempt < attempts) {
        await sleep(Math.max(this.delay(attempt - 1), Math.min(retryAfter ?? 0, MAX_RETRY_AFTER_MS)));
        continue;
      }
      throw apiError(response.status, bytes, index, this.urls[index]!, this.describe(index), token !== undefined);
    }
  }

  /** The delay after failed attempt `attempt` (0-based), with jitter so that
   * many clients do not come back in step. */
  private delay(attempt: number): number {
    const base = Math.min(this.retry.firstDelayMs * 2 ** attempt, this.retry.maxDelayMs);
    return base * (0.5 + Math.random() * 0.5);
  }
}

function checkUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new GuardianError({ code: "bad_server_url", message: `${JSON.stringify(text)} is not a URL (expected e.g. https://guardian.example.org)` });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new GuardianError({ code: "bad_server_url", message: `${JSON.stringify(text)} is not an http:// or https:// URL` });
  }
  if (url.search !== "" || url.hash !== "") {
    throw new GuardianError({ code: "bad_server_url", message: `${JSON.stringify(text)} must be a base URL, without ? or #` });
  }
  return url.href.replace(/\/+$/, "");
}

/** `Retry-After` in ms: seconds, or an HTTP date. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const seconds = Number(value.trim());
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = (cause as { cause?: unknown }).cause;
    const more = inner instanceof Error && !cause.message.includes(inner.message) ? `: ${inner.message}` : "";
    return `${cause.message}${more}`;
  }
  return String(cause);
}

/** The typed error for an error answer: the server's `{"error": {code, message, …}}`,
 * or `http_<status>` when the answer is not one of ours (a proxy). */
function apiError(status: number, body: Uint8Array, server: number, url: string, who: string, hasToken: boolean): GuardianError {
  let code = `http_${status}`;
  let message = "";
  let details: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(new TextDecoder().decode(body)) as { error?: Record<string, unknown> };
    if (parsed.error !== null && typeof parsed.error === "object") {
      const { code: c, message: m, ...rest } = parsed.error;
      if (typeof c === "string") code = c;
      if (typeof m === "string") message = m;
      details = rest;
    } else {
      throw new Error("not ours");
    }
  } catch {
    message = new TextDecoder().decode(body).trim().slice(0, 200);
  }
  let sentence = `${who} answered ${status} ${code}: ${message}`;
  if (status === 401) {
    sentence = hasToken
      ? `${who} refused the token (${code}: ${message}); give a valid one (Guardian's \`token\`)`
      : `${who} needs a token (${code}: ${message}); give one (Guardian's \`token\`)`;
  } else if (status === 403 && code !== "plugin_not_approved") {
    sentence = `${who} refused: ${message} (${code}); use a token that carries that role`;
  }
  return errorForStatus(status, { code, message: sentence, server, url, status, details });
}

/** Parses a 2xx answer's body as JSON. */
export function parseJson<T>(answer: Answer, server: number, url: string): T {
  try {
    return JSON.parse(new TextDecoder().decode(answer.body)) as T;
  } catch (e) {
    throw new ServerError({ code: "bad_answer", message: `server ${server} (${url}) gave an unexpected answer (${String(e)})`, server, url });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
