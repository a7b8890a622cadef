// Serves the example survey app: the person's page (index.html), the
// scientist's page (scientist.html), the client's browser bundle (dist/browser)
// and config.json, which tells the pages the share servers and tokens. Run it
// after `guardian dev`, in a terminal where its `export` lines were pasted:
//
//   npm run build && npm run example     # then open http://127.0.0.1:5173/
//
// GUARDIAN_SERVERS (default http://127.0.0.1:8000,http://127.0.0.1:8001),
// USER_TOKEN (the person's), GUARDIAN_TOKEN (the scientist's), SURVEY_ENDPOINT
// (default demo, a histogram), PORT (default 5173: `guardian dev` allows
// http://127.0.0.1:5173 and http://localhost:5173 as origins).
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, "../../dist/browser");

/** Starts the app's server; resolves to its URL and a `close`. */
export async function serve({ port = 5173, servers, userToken, scientistToken, endpoint = "demo" }) {
  const config = JSON.stringify({ servers, userToken, scientistToken, endpoint });
  const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".map": "application/json" };
  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/config.json") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(config);
      return;
    }
    const name = path === "/" ? "index.html" : normalize(path.slice(1));
    if (name.startsWith("..") || name.includes("/")) {
      res.writeHead(404).end();
      return;
    }
    const file = ["index.html", "scientist.html", "app.css"].includes(name) ? join(here, name) : join(bundle, name);
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(name)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end(name.startsWith("guardian") || name.endsWith(".wasm") ? "not built yet: run `npm run build` in clients/js" : "not found");
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(e.code === "EADDRINUSE" ? new Error(`port ${port} is taken: stop what uses it, or set PORT (and allow that origin on the servers)`) : e),
    );
    server.listen(port, "127.0.0.1", resolve);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const userToken = process.env.USER_TOKEN;
  const scientistToken = process.env.GUARDIAN_TOKEN;
  if (!userToken || !scientistToken) {
    console.error("USER_TOKEN and GUARDIAN_TOKEN are not set: start `guardian dev` (cargo run -- dev), paste the export lines it prints into this terminal, and run `npm run example` again.");
    process.exit(2);
  }
  const servers = (process.env.GUARDIAN_SERVERS ?? "http://127.0.0.1:8000,http://127.0.0.1:8001").split(",");
  const app = await serve({ port: Number(process.env.PORT ?? 5173), servers, userToken, scientistToken, endpoint: process.env.SURVEY_ENDPOINT ?? "demo" });
  console.log(`The survey: ${app.url}/   the scientist's page: ${app.url}/scientist.html   (Ctrl-C stops)`);
}
