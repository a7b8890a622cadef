/**
 * How one HTTP request is sent. Browsers use `fetch`. In Node the default is
 * `node:http`/`node:https` with a keep-alive agent: Node's `fetch` costs about
 * four times as much processor time per request, which halves what
 * `submitMany` can post per second. Both are loaded lazily, so the browser
 * bundle never touches a Node module.
 */

/** A request as the cluster sends it. */
export interface TransportRequest {
  method: string;
  headers: Record<string, string>;
  body?: string;
  timeoutMs: number;
}

/** An HTTP answer, whatever its status. */
export interface TransportResponse {
  status: number;
  /** The `Retry-After` header, if any. */
  retryAfter: string | null;
  body: Uint8Array;
}

/** Sends one request; rejects only when there is no HTTP answer. */
export type Transport = (url: string, request: TransportRequest) => Promise<TransportResponse>;

/** A transport over `fetch`. */
export function fetchTransport(fetchImpl: typeof fetch): Transport {
  return async (url, request) => {
    const init: RequestInit = { method: request.method, headers: request.headers, signal: AbortSignal.timeout(request.timeoutMs) };
    if (request.body !== undefined) init.body = request.body;
    const response = await fetchImpl(url, init);
    const body = new Uint8Array(await response.arrayBuffer());
    return { status: response.status, retryAfter: response.headers.get("retry-after"), body };
  };
}

/** Whether this is Node (not a browser, nor a worker). */
export function isNode(): boolean {
  return typeof process !== "undefined" && typeof process.versions?.node === "string";
}

/** A transport over `node:http` and `node:https`, one keep-alive agent each. */
export function nodeTransport(): Transport {
  type Modules = [typeof import("node:http"), typeof import("node:https")];
  let modules: Promise<{ mods: Modules; agents: [import("node:http").Agent, import("node:https").Agent] }> | undefined;
  const load = () =>
    (modules ??= Promise.all([import("node:http"), import("node:https")]).then((mods: Modules) => ({
      mods,
      agents: [new mods[0].Agent({ keepAlive: true }), new mods[1].Agent({ keepAlive: true })],
    })));
  return async (url, request) => {
    const { mods, agents } = await load();
    const https = url.startsWith("https:");
    const send = https ? mods[1].request : mods[0].request;
    const headers: Record<string, string> = { ...request.headers };
    if (request.body !== undefined) headers["content-length"] = String(Buffer.byteLength(request.body));
    // Options rather than a URL string: Node would parse the string again on
    // every request, a noticeable share of the cost of a small POST.
    const target = split(url);
    return new Promise<TransportResponse>((resolve, reject) => {
      const options = { ...target, method: request.method, headers, agent: https ? agents[1] : agents[0] };
      const req = send(options, (res) => {
        const parts: Buffer[] = [];
        res.on("data", (chunk: Buffer) => parts.push(chunk));
        res.on("error", reject);
        res.on("end", () => {
          const retryAfter = res.headers["retry-after"];
          resolve({
            status: res.statusCode ?? 0,
            retryAfter: typeof retryAfter === "string" ? retryAfter : null,
            body: new Uint8Array(Buffer.concat(parts)),
          });
        });
      });
      req.setTimeout(request.timeoutMs, () => req.destroy(new Error(`no answer within ${request.timeoutMs} ms`)));
      req.on("error", reject);
      req.end(request.body);
    });
  };
}

/** Origins already parsed, by their text. */
const origins = new Map<string, { protocol: string; hostname: string; port: string }>();

/** `url` as `node:http` options (the origin parsed once). */
function split(url: string): { protocol: string; hostname: string; port: string; path: string } {
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  const origin = slash < 0 ? url : url.slice(0, slash);
  let parsed = origins.get(origin);
  if (parsed === undefined) {
    const u = new URL(origin);
    parsed = { protocol: u.protocol, hostname: u.hostname.replace(/^\[|\]$/g, ""), port: u.port };
    origins.set(origin, parsed);
  }
  return { ...parsed, path: slash < 0 ? "/" : url.slice(slash) };
}
