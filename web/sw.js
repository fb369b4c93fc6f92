// The service worker: after the first visit the page works offline. It keeps the site's own
// files in the Cache API: the page, the library's CPU module and the examples when it installs,
// and each model, and the library's WebGPU module, when the visitor first loads them. An image
// the visitor chooses never passes through it (the page reads it from the file input and sends
// it nowhere), and it stores nothing else.
//
// `cargo xtask dist` writes a checksum of the site's other files into VERSION, so a new
// version of the site installs a new worker, whose cache replaces the old one.

const VERSION = "dev";
const CACHE = `pneumoscope-${VERSION}`;
const PREFIX = "pneumoscope-";

/** What the page needs to start, relative to this file. */
const SHELL = [
  "./",
  "index.html",
  "embed.html",
  "app.js",
  "client.js",
  "worker.js",
  "embed.js",
  "pneumoscope-classifier.js",
  "pneumoscope-classifier.css",
  "style.css",
  "favicon.svg",
  "pkg/pneumoscope.js",
  "pkg/pneumoscope_bg.wasm",
  "models/index.json",
];

const scope = () => self.registration.scope;

/**
 * What is kept only once it is first loaded: the models, and the library's WebGPU module (most
 * visits never need it: no adapter, a software one, or the CPU measured faster).
 */
const ON_DEMAND = /^(models\/[^/]+\.pneumoscope|pkg\/pneumoscope_webgpu(_bg\.wasm|\.js))$/;

/** Whether this worker keeps the answer to `url`: the shell, the models and the examples. */
function kept(url) {
  if (!url.startsWith(scope())) return false;
  const path = url.slice(scope().length).split(/[?#]/)[0];
  return SHELL.includes(path) || path === "" || /^(models|examples)\/[^/]+$/.test(path) || ON_DEMAND.test(path);
}

async function install() {
  const cache = await caches.open(CACHE);
  await cache.addAll(SHELL);
  // The examples, as examples.json lists them (a site may have none).
  const response = await fetch("examples/examples.json");
  if (response.ok) {
    const list = await response.clone().json();
    await cache.put("examples/examples.json", response);
    await cache.addAll(list.examples.map((e) => `examples/${e.file}`));
  }
}

self.addEventListener("install", (event) => {
  event.waitUntil(install().then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

async function answer(request) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(request, { ignoreSearch: true });
  if (hit) return hit;
  const response = await fetch(request);
  // A model, or the WebGPU module, the visitor loaded is kept for the next visit.
  if (response.ok && ON_DEMAND.test(request.url.slice(scope().length).split(/[?#]/)[0])) {
    await cache.put(request, response.clone());
  }
  return response;
}

self.addEventListener("fetch", (event) => {
  const { request } = event;
  if (request.method !== "GET" || !kept(request.url)) return;
  event.respondWith(answer(request));
});

// The page names the model it loaded (its first load may have come before this worker took
// control of the page), so that it is there offline too.
self.addEventListener("message", (event) => {
  const url = event.data?.keep;
  if (typeof url !== "string" || !kept(url) || !/\.pneumoscope$/.test(url)) return;
  const reply = event.ports[0];
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    try {
      if (!(await cache.match(url))) await cache.add(url);
      reply?.postMessage({ kept: url, cache: CACHE });
    } catch (e) {
      reply?.postMessage({ failed: url, reason: String(e) });
    }
  })());
});
