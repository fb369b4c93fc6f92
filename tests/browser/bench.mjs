// In-browser speed of the served page, side by side with onnxruntime-web on the same network,
// in the same headless chromium and the same run.
//
//   node tests/browser/bench.mjs --url http://127.0.0.1:PORT/ --image X.jpeg --onnx M.onnx \
//        --pkg pkg --model web/models/M.pneumoscope [--default-model web/models/D.pneumoscope] \
//        [--runs 8] [--rounds 3] [--cpu-only yes] [--profile-pkg DIR --profile-out F.cpuprofile]
//        [--out bench.json]
//
// Run by `cargo xtask bench-web`, which builds pkg/, serves the page and makes the ONNX file.
// Pneumoscope is measured through the page itself (its worker): navigation → model ready, the
// first and the steady-state (median) inference, and Grad-CAM, and what a person waits for:
// choosing the image → the result drawn (the page's `data-wall-ms`), beside the library's own
// end-to-end `total_ms`; for the light model and, with --default-model, the default one.
// onnxruntime-web runs the ONNX
// export of the same network from node_modules, served on the same origin by the test browser.

import { readFileSync, writeFileSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join, dirname } from "node:path";
import { createRequire } from "node:module";
import { launch, parseArgs } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
for (const k of ["url", "image", "onnx", "pkg", "model"]) {
  if (!args[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
}
const runs = Number(args.runs || 8);
const WAIT = { timeout: 15 * 60 * 1000 };
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const size = (path) => {
  const bytes = readFileSync(path);
  return { raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
};

/** onnxruntime-web's dist/ folder and version, from node_modules. */
function ort() {
  const require = createRequire(import.meta.url);
  const dist = dirname(require.resolve("onnxruntime-web"));
  const version = JSON.parse(readFileSync(join(dist, "..", "package.json"), "utf8")).version;
  return { dist, version };
}

async function pneumoscope(browser, backend, model = args.model) {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The page's own list names the model; the ONNX reference is the same network as the light one.
  await page.goto(`${args.url}?backend=${backend}&model=${encodeURIComponent(model.split("/").pop())}`);
  await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
  const { readyMs, used } = await page.evaluate(() => ({
    readyMs: Number(document.body.dataset.readyMs),
    used: document.body.dataset.backend,
  }));
  if (used !== backend) throw new Error(`the page runs on ${used}, not ${backend}`);
  const timings = [];
  const walls = [];
  for (let i = 0; i < runs; i++) {
    await page.evaluate(() => {
      const r = document.getElementById("result");
      delete r.dataset.timings;
      delete r.dataset.wallMs;
    });
    await page.setInputFiles("#image-input", args.image);
    await page.waitForSelector("#result[data-wall-ms]", { state: "attached", ...WAIT });
    const got = await page.evaluate(() => {
      const r = document.getElementById("result");
      return { timings: JSON.parse(r.dataset.timings), wall: Number(r.dataset.wallMs) };
    });
    timings.push(got.timings);
    walls.push(got.wall);
  }
  await context.close();
  const steady = timings.slice(1);
  return {
    engine: "pneumoscope (Burn, wasm)",
    model: model.split("/").pop(),
    backend,
    wall_first_ms: walls[0],
    wall_ms: median(walls.slice(1)),
    total_ms: median(steady.map((t) => t.total_ms)),
    ready_ms: readyMs,
    first_ms: timings[0].inference_ms,
    steady_ms: median(steady.map((t) => t.inference_ms)),
    gradcam_ms: median(steady.map((t) => t.gradcam_ms)),
    preprocess_ms: median(steady.map((t) => t.preprocess_ms)),
  };
}

/** Answers a routed request with a file from disk, typed by its extension. */
function fulfillFile(route, file) {
  const types = { ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript" };
  const ext = Object.keys(types).find((e) => file.endsWith(e));
  return route.fulfill({ contentType: types[ext] ?? "application/octet-stream", body: readFileSync(file) });
}

/**
 * A V8 profile of the library's CPU inference in the browser: the profiling build (function
 * names kept, no wasm-opt) in a blank page of the site's origin, the light model, `runs × 4`
 * calls of `explain` after one unprofiled call. The page's own worker is out of reach of the
 * DevTools session Playwright opens, so here the library runs in the page's main thread.
 * Writes the profile (`--profile-out`, for Chromium's DevTools) and returns the functions with
 * the most samples.
 */
async function profileLibrary(browser) {
  const context = await browser.newContext();
  await context.route(`${args.url}__profile/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/__profile\//, "");
    if (path === "page.html") return route.fulfill({ contentType: "text/html", body: "<!doctype html><title>profile</title>" });
    const file = path === "model" ? args.model : path === "image" ? args.image : join(args["profile-pkg"], path.replace(/^pkg\//, ""));
    return fulfillFile(route, file);
  });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
  await page.exposeFunction("__profilerStart", () => cdp.send("Profiler.start"));
  await page.goto(`${args.url}__profile/page.html`);
  const calls = runs * 4;
  await page.evaluate(async (calls) => {
    const lib = await import("/__profile/pkg/pneumoscope.js");
    await lib.default({ module_or_path: "/__profile/pkg/pneumoscope_bg.wasm" });
    const model = new Uint8Array(await (await fetch("/__profile/model")).arrayBuffer());
    const image = new Uint8Array(await (await fetch("/__profile/image")).arrayBuffer());
    const classifier = await lib.Classifier.load(model, "cpu");
    await classifier.explain(image.slice());
    await window.__profilerStart();
    for (let i = 0; i < calls; i++) await classifier.explain(image.slice());
  }, calls);
  const { profile } = await cdp.send("Profiler.stop");
  await context.close();
  writeFileSync(args["profile-out"], JSON.stringify(profile));
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const samples = new Map();
  for (const id of profile.samples) {
    // Rust's symbol hash (`::h` and 16 hex digits) says nothing to a reader.
    const name = (nodes.get(id).callFrame.functionName || "(anonymous)").replace(/::h[0-9a-f]{16}$/, "");
    samples.set(name, (samples.get(name) || 0) + 1);
  }
  const total = profile.samples.length;
  const top = [...samples].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([name, n]) => ({ name, share: n / total }));
  return { calls, samples: total, top };
}

async function onnxruntime(browser, ep) {
  const ortDist = ort().dist;
  const context = await browser.newContext();
  // The reference runs on the page's origin but outside its policy: onnxruntime-web is not part
  // of the product, only the yardstick.
  await context.route(`${args.url}__bench/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/__bench\//, "");
    if (path === "page.html") return route.fulfill({ contentType: "text/html", body: "<!doctype html><title>ort</title>" });
    if (path === "model.onnx") return fulfillFile(route, args.onnx);
    const file = join(ortDist, path.replace(/^ort\//, ""));
    return fulfillFile(route, file);
  });
  const page = await context.newPage();
  await page.goto(`${args.url}__bench/page.html`);
  const result = await page.evaluate(async ({ ep, runs }) => {
    const ort = await import(ep === "webgpu" ? "/__bench/ort/ort.webgpu.min.mjs" : "/__bench/ort/ort.wasm.min.mjs");
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = "/__bench/ort/";
    const t0 = performance.now();
    const session = await ort.InferenceSession.create("/__bench/model.onnx", { executionProviders: [ep] });
    const created = performance.now() - t0;
    const data = new Float32Array(3 * 224 * 224);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.5;
    const input = new ort.Tensor("float32", data, [1, 3, 224, 224]);
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      const out = await session.run({ input });
      await out.logits.getData?.();
      times.push(performance.now() - t);
    }
    return { created, times };
  }, { ep, runs });
  await context.close();
  return {
    engine: `onnxruntime-web ${ort().version}`,
    model: "efficientnet_lite0.onnx",
    backend: ep,
    ready_ms: result.created,
    first_ms: result.times[0],
    steady_ms: median(result.times.slice(1)),
    gradcam_ms: null,
    preprocess_ms: null,
  };
}

// The CPU rows run in a browser without the WebGPU flags. With them, this GPU-less machine
// composites the page in SwiftShader on the same two cores as the worker, which slows the
// page's inference by 10-15 ms (measured: 53 vs 40 ms) while onnxruntime-web's blank reference
// page draws nothing; a machine with a GPU composites on the GPU. The page and the reference
// alternate for `--rounds` rounds in the same browser, so each round is one like-for-like ratio.
// Each WebGPU row gets a fresh browser: the default model never became ready on SwiftShader
// after the light model's WebGPU run in the same browser.
const rounds = Number(args.rounds || 3);
const rows = [];
const ratios = [];
let profiled = null;
const cpuBrowser = await launch({ webgpu: false });
const version = cpuBrowser.version();
try {
  for (let round = 1; round <= rounds; round++) {
    const ours = await pneumoscope(cpuBrowser, "cpu");
    const reference = await onnxruntime(cpuBrowser, "wasm");
    for (const r of [ours, reference]) rows.push({ ...r, round });
    ratios.push(reference.steady_ms / ours.steady_ms);
  }
  if (args["default-model"]) rows.push(await pneumoscope(cpuBrowser, "cpu", args["default-model"]));
  if (args["profile-pkg"]) profiled = await profileLibrary(cpuBrowser);
} finally {
  await cpuBrowser.close();
}
if (!args["cpu-only"]) {
  const gpuRows = [
    (b) => pneumoscope(b, "webgpu"),
    ...(args["default-model"] ? [(b) => pneumoscope(b, "webgpu", args["default-model"])] : []),
    (b) => onnxruntime(b, "webgpu"),
  ];
  for (const row of gpuRows) {
    const browser = await launch({ webgpu: true });
    try {
      rows.push(await row(browser));
    } finally {
      await browser.close();
    }
  }
}

const ortDist = ort().dist;
const sizes = {
  "pneumoscope wasm (pkg/pneumoscope_bg.wasm)": size(join(args.pkg, "pneumoscope_bg.wasm")),
  "pneumoscope JS glue (pkg/pneumoscope.js)": size(join(args.pkg, "pneumoscope.js")),
  "pneumoscope wasm with WebGPU (pkg/pneumoscope_webgpu_bg.wasm; only where WebGPU is measured or asked for)": size(join(args.pkg, "pneumoscope_webgpu_bg.wasm")),
  [`model file (${args.model.split("/").pop()})`]: size(args.model),
  "onnxruntime-web wasm (ort-wasm-simd-threaded.wasm)": size(join(ortDist, "ort-wasm-simd-threaded.wasm")),
  "onnxruntime-web wasm + WebGPU (ort-wasm-simd-threaded.jsep.wasm)": size(join(ortDist, "ort-wasm-simd-threaded.jsep.wasm")),
  "ONNX reference model (f32)": size(args.onnx),
};

const fmt = (v) => (v == null ? "—" : v.toFixed(0));
console.log(`\nIn-browser latency, chromium ${version} headless, ${runs} runs (first + median of the rest), ms`);
console.log("WebGPU here is SwiftShader (a CPU emulation of a GPU) unless the machine has a real GPU.\n");
console.log("| round | engine | model | backend | page/session → ready | first inference | steady inference | Grad-CAM | library total | choose → result, first | choose → result, steady |");
console.log("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
for (const r of rows) {
  console.log(`| ${r.round ?? "—"} | ${r.engine} | ${r.model} | ${r.backend} | ${fmt(r.ready_ms)} | ${fmt(r.first_ms)} | ${fmt(r.steady_ms)} | ` +
    `${fmt(r.gradcam_ms)} | ${fmt(r.total_ms)} | ${fmt(r.wall_first_ms)} | ${fmt(r.wall_ms)} |`);
}
console.log(`\nSteady CPU inference, onnxruntime-web wasm ÷ pneumoscope (light model), per round: ` +
  `${ratios.map((x) => `${x.toFixed(2)}x`).join(", ")} (above 1: the page is faster)`);
if (profiled) {
  console.log(`\nV8 profile of the library's CPU inference: light model, ${profiled.calls} explain calls in a page's ` +
    `main thread, ${profiled.samples} samples (the build with function names, no wasm-opt); written: ${args["profile-out"]}`);
  console.log("\n| share of samples | function |");
  console.log("|---:|---|");
  for (const f of profiled.top) console.log(`| ${(100 * f.share).toFixed(1)} % | ${f.name.replace(/\|/g, "\\|")} |`);
}
console.log("\n| file | raw (MB) | gzip (MB) |");
console.log("|---|---:|---:|");
for (const [name, s] of Object.entries(sizes)) {
  console.log(`| ${name} | ${(s.raw / 1e6).toFixed(2)} | ${(s.gzip / 1e6).toFixed(2)} |`);
}
if (args.out) {
  writeFileSync(args.out, JSON.stringify({ chromium: version, runs, rounds, ratios, rows, profile: profiled && profiled.top, sizes, date: new Date().toISOString() }, null, 2));
  console.log(`\nwritten: ${args.out} (${statSync(args.out).size} bytes)`);
}
