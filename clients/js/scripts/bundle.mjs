// Builds the browser bundle: dist/browser/guardian.js (ESM, every dependency
// inside, jco's browser WASI shim) and, beside it, the WebAssembly of jco's
// transpiler, which the bundle fetches relative to its own URL at load.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "dist/browser");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(root, "dist/index.js")],
  outfile: join(out, "guardian.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  // jco reads its wasm with node:fs only when it runs in Node.
  external: ["node:*"],
  logLevel: "warning",
});
const vendor = join(root, "node_modules/@bytecodealliance/jco-transpile/vendor");
for (const file of ["js-component-bindgen-component.core.wasm", "js-component-bindgen-component.core2.wasm"]) {
  copyFileSync(join(vendor, file), join(out, file));
}
const size = (f) => statSync(join(out, f)).size;
const kb = (n) => `${(n / 1024).toFixed(0)} KiB`;
const js = size("guardian.js");
const wasm = size("js-component-bindgen-component.core.wasm") + size("js-component-bindgen-component.core2.wasm");
console.log(`dist/browser: guardian.js ${kb(js)}, transpiler wasm ${kb(wasm)} (total ${kb(js + wasm)})`);
