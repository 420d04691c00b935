#!/usr/bin/env node
// node serve.mjs BUNDLE [--port 8000]: serve the page on http://127.0.0.1:PORT/ with the bundle at /bundle/.
// Static files only, from this folder (the page, node_modules), ../node/lib (as /lib) and BUNDLE (as /bundle).
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".mjs": "text/javascript", ".js": "text/javascript",
  ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
  ".png": "image/png", ".map": "application/json" };

/** Start the server; resolves to {server, url}. Listens on 127.0.0.1 only. */
export function serve(bundleDir, port = 0) {
  const roots = [["/bundle/", resolve(bundleDir)], ["/lib/", resolve(HERE, "..", "node", "lib")], ["/", resolve(HERE)]];
  const server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://localhost").pathname);
    const [prefix, root] = roots.find(([p]) => path.startsWith(p));
    const file = normalize(join(root, path.slice(prefix.length) || "index.html"));
    let ok = file === root || file.startsWith(root + sep);
    try { ok = ok && statSync(file).isFile(); } catch { ok = false; }
    if (!ok) {
      response.writeHead(404, { "content-type": "text/plain" }).end(`not found: ${path}\n`);
      return;
    }
    response.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream", "cache-control": "no-store" });
    createReadStream(file).pipe(response);
  });
  return new Promise((done) => server.listen(port, "127.0.0.1", () => done({ server, url: `http://127.0.0.1:${server.address().port}/` })));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const portAt = args.indexOf("--port");
  const port = portAt >= 0 ? Number(args.splice(portAt, 2)[1]) : 8000;
  if (!args[0]) {
    console.error("usage: node serve.mjs BUNDLE [--port 8000]");
    process.exit(2);
  }
  const { url } = await serve(args[0], port);
  console.log(`serving ${args[0]} at ${url} (Ctrl-C stops)`);
}
