// The Web Worker that owns the WebAssembly library: all decoding, inference and Grad-CAM run
// here, off the page's main thread. Messages in: { id, op, ...args }; out: { id, ok, result }
// or { id, ok: false, error }, plus { id, progress: { loaded, total } } while a model downloads.
// A panic of the library aborts its WebAssembly instance: every request in flight is then
// answered { id, ok: false, error, crashed: true }, and the client (client.js) starts a new
// worker with the same model. A loaded model's bytes go back with the load result
// (`modelData`, transferred), for that restart.
//
// The library comes in two builds: `pkg/pneumoscope.js` (the CPU backend only, a fraction of the
// size), imported by every visit, and `pkg/pneumoscope_webgpu.js` (with WebGPU), imported only
// when WebGPU is measured (a hardware adapter), remembered or asked for.

import init, { Classifier, classes, version } from "./pkg/pneumoscope.js";

let ready = null; // Promise of the initialised CPU module
let webgpuReady = null; // Promise of the WebGPU module: { Classifier, wasm }
let model = null; // the loaded Classifier
let modelWasm = null; // the wasm instance's exports that hold it (for its memory)
let crashed = null; // the message of the fault that ended the wasm instance
const inFlight = new Set(); // ids of the requests not yet answered

function post(message, transfer = []) {
  self.postMessage(message, transfer);
}

async function fetchWithProgress(url, id) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot download the model ${url} (${messageOf(e)}): check the connection and try again`);
  }
  if (!response.ok) {
    throw new Error(`cannot download the model ${url}: HTTP ${response.status}`);
  }
  const total = Number(response.headers.get("content-length")) || 0;
  if (!response.body) {
    return new Uint8Array(await response.arrayBuffer());
  }
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    let part;
    try {
      part = await reader.read();
    } catch (e) {
      throw new Error(`the download of the model ${url} broke off after ${(loaded / 1e6).toFixed(1)} MB (${messageOf(e)}): try again`);
    }
    const { done, value } = part;
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    post({ id, progress: { loaded, total } });
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  return bytes;
}

const ops = {
  /** The library's classes in output order: `[{ name, label }]`. */
  async classes() {
    ready ??= init();
    await ready;
    return classes();
  },

  async load({ url, bytes, backend, name, remembered }, id) {
    const t0 = performance.now();
    ready ??= init();
    await ready;
    const t1 = performance.now();
    const data = bytes ? new Uint8Array(bytes) : await fetchWithProgress(url, id);
    const t2 = performance.now();
    // A model that fails to load leaves the previous one in place.
    let loaded;
    let choice = null;
    let fallbackReason = null;
    try {
      if (backend === "cpu" || backend === "webgpu") {
        loaded = await loadOn(data, backend);
      } else {
        ({ loaded, choice, fallbackReason = null } = await chooseBackend(data, backend, remembered));
      }
      // On WebGPU the first image would compile every pipeline of the forward and the
      // Grad-CAM passes: that is done here, on the probe image, while the model loads.
      if (loaded.backend === "webgpu") {
        const w = performance.now();
        await loaded.explain(probeImage());
        (choice ??= { backend: "webgpu" }).warmupMs = performance.now() - w;
      }
    } catch (e) {
      throw new Error(`${name || url || "model file"}: ${messageOf(e)}`);
    }
    model?.free();
    model = loaded;
    modelWasm = loaded.backend === "webgpu" ? (await webgpuReady).wasm : await ready;
    const t3 = performance.now();
    return {
      modelData: data.buffer,
      backend: model.backend,
      fallbackReason: model.fallbackReason ?? fallbackReason,
      choice,
      info: model.info,
      inputSize: model.inputSize,
      version: version(),
      modelBytes: data.length,
      timings: { wasm_init_ms: t1 - t0, download_ms: t2 - t1, model_init_ms: t3 - t2 },
    };
  },

  async classify({ bytes }) {
    if (!model) throw new Error("no model is loaded yet");
    return await model.classify(new Uint8Array(bytes));
  },

  async explain({ bytes, cls, panicForTest }) {
    if (!model) throw new Error("no model is loaded yet");
    // Test-only: the library panics on purpose while reading this image.
    if (panicForTest) return await model.panicForTest(new Uint8Array(bytes));
    const r = await model.explain(new Uint8Array(bytes), cls ?? undefined);
    // What the worker holds after this image: the wasm memory, and on WebGPU the device
    // buffers of the backend's allocator (null on the CPU backend).
    r.memory = { wasmBytes: modelWasm.memory.buffer.byteLength, device: model.memory() };
    return r;
  },
};

/** The WebGPU build of the library, imported and initialised on first use. */
function webgpuLibrary() {
  webgpuReady ??= (async () => {
    const lib = await import("./pkg/pneumoscope_webgpu.js");
    const wasm = await lib.default();
    return { Classifier: lib.Classifier, wasm };
  })();
  return webgpuReady;
}

/**
 * Loads `data` on `backend`: `"cpu"` with the CPU module, `"webgpu"` with the WebGPU module
 * (told the adapter's largest buffer, so a model too big for it is refused with the reason).
 */
async function loadOn(data, backend) {
  if (backend === "cpu") return await Classifier.load(data, "cpu");
  const limit = await gpuMaxBuffer();
  const lib = await webgpuLibrary();
  return await lib.Classifier.load(data, backend, limit ?? undefined);
}

// The largest buffer this browser's WebGPU adapter allows (the library refuses WebGPU for a
// model whose largest tensor is bigger, and says so), or null when there is no adapter.
async function gpuMaxBuffer() {
  const adapter = await gpuAdapter();
  return adapter ? Math.min(adapter.limits.maxStorageBufferBindingSize, adapter.limits.maxBufferSize) : null;
}

let adapterPromise;
/** This browser's WebGPU adapter, or null. */
function gpuAdapter() {
  adapterPromise ??= (async () => {
    try {
      return (await navigator.gpu?.requestAdapter()) ?? null;
    } catch {
      return null;
    }
  })();
  return adapterPromise;
}

/** Whether the adapter says it is a fallback (software) adapter, such as SwiftShader. */
function isSoftware(adapter) {
  return Boolean(adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter);
}

// The probe image: a 64x64 grey PNG (two dark fields on a bright ground), decoded, resized and
// classified like any X-ray; the same input on both backends.
const PROBE_PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAAAAACPAi4CAAABsklEQVR42u2XQXqjMAyFnyTngKWdU4bSa8yZgiXNIgYcixjm6xZpgfwjHg8HcKC/+F0wLoFL4BIAgBTIZAYwDyd5cDDOj/kxP+bxJG8F7qXvMd9P8VZgnLcYT/BWYJpzldMhD5M45zlnM4DNQXzIWwff+TW+D3hwkHPOWdWdTADmfMBbB1NWVc0lVTVPXR4clC51wASURbXL9wRMTc0ABqnoJrDL20v4UdOldyl/Ojw4UDMzW8/0HHR4ELA1qlGHBwE382c6GZmbm3mHhzkwd2vSrcOjgzWqusPjjVR2ldz63vFWwOHLpirf8933gVcH+QkeBAgEqrZH/EWg7KKtaztoj0cHRES09JVBj7c/I61R1R0eBJiIiYmdvVRE3OFxDpipSaYOjw5K1DV3eBCQ5y4BOdE6eM/DJXwIi4hwSRFh+ejw+EoTERYTEEClt8v3BJI5yADmJKkS2OXhRhqSiEgqKSJp6PK4sKRkhuVMKaV0wMPD9Jle4/OAx8X1Zg5SdyKRW7od8vA4D7dU5XDIAVDzwXEvyzin9OcMDwIYtVj9OseDwP/+S6Prm+kSuAQAAP8AvUhdqsZ9aGYAAAAASUVORK5CYII=";
function probeImage() {
  return Uint8Array.from(atob(PROBE_PNG), (c) => c.charCodeAt(0));
}

/** Milliseconds of one classification of the probe image by `classifier`. */
async function timeProbe(classifier) {
  const t = performance.now();
  await classifier.classify(probeImage());
  return performance.now() - t;
}

/** Hex SHA-256 of the model bytes: a remembered choice holds only for the same file. */
async function sha256(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// WebGPU must be this much faster in steady state to be chosen (a margin against noise), and
// a first run (pipeline compilation) this many times slower than the CPU's run marks an
// adapter whose every new pipeline (Grad-CAM's, a new image size) would cost the visit more
// than the steady gain returns.
const STEADY_MARGIN = 0.9;
const FIRST_RUN_LIMIT = 20;

/**
 * The backend for `auto` (and `measure`), with what decided it: no WebGPU adapter (the
 * library's fallback), the choice remembered for this model file and browser, a software
 * adapter (the CPU without a probe), or the probe image timed on both backends (steady time;
 * WebGPU's first run reported apart). `measure` always probes. Returns the loaded classifier and `choice`:
 * `{ backend, measured, reason, cpuMs, gpuFirstMs, gpuMs, probeMs, reused, browser, modelSha256 }`.
 */
async function chooseBackend(data, backend, remembered) {
  const browser = navigator.userAgent;
  const modelSha256 = await sha256(data);
  const base = { browser, modelSha256, measured: false, reused: false };
  const adapter = await gpuAdapter();
  if (!adapter) {
    // No WebGPU here: the CPU, with the reason beside it, and no choice to report.
    const fallbackReason = self.navigator.gpu
      ? "this browser's WebGPU offers no adapter"
      : "this browser exposes no WebGPU (navigator.gpu is missing)";
    return { loaded: await loadOn(data, "cpu"), choice: null, fallbackReason };
  }
  if (
    backend !== "measure" &&
    remembered &&
    remembered.modelSha256 === modelSha256 &&
    remembered.browser === browser &&
    (remembered.backend === "cpu" || remembered.backend === "webgpu")
  ) {
    try {
      const loaded = await loadOn(data, remembered.backend);
      const { cpuMs, gpuFirstMs, gpuMs } = remembered;
      return { loaded, choice: { ...base, backend: loaded.backend, cpuMs, gpuFirstMs, gpuMs, reused: true } };
    } catch {
      // The remembered backend no longer loads here (a lost device, say): decide afresh.
    }
  }
  if (backend !== "measure" && isSoftware(adapter)) {
    const loaded = await loadOn(data, "cpu");
    const reason = `the adapter is a software renderer${adapter.info?.architecture ? ` (${adapter.info.architecture})` : ""}`;
    return { loaded, choice: { ...base, backend: "cpu", reason } };
  }
  const t0 = performance.now();
  const cpu = await loadOn(data, "cpu");
  await timeProbe(cpu); // the first CPU run: allocations, caches
  const cpuMs = await timeProbe(cpu);
  let gpu;
  try {
    // The WebGPU module's download and start count in the probe's time (`probeMs`).
    gpu = await loadOn(data, "webgpu");
  } catch (e) {
    const choice = { ...base, backend: "cpu", measured: true, cpuMs, reason: messageOf(e), probeMs: performance.now() - t0 };
    return { loaded: cpu, choice };
  }
  const gpuFirstMs = await timeProbe(gpu);
  const gpuMs = await timeProbe(gpu);
  const useGpu = gpuMs < STEADY_MARGIN * cpuMs && gpuFirstMs < FIRST_RUN_LIMIT * cpuMs;
  const [loaded, other] = useGpu ? [gpu, cpu] : [cpu, gpu];
  other.free();
  const choice = { ...base, backend: loaded.backend, measured: true, cpuMs, gpuFirstMs, gpuMs, probeMs: performance.now() - t0 };
  return { loaded, choice };
}

function messageOf(e) {
  if (e instanceof Error) return e.message;
  return String(e);
}

/**
 * The end of the wasm instance: a trap (a Rust panic aborts) thrown into a call, or, for a
 * panic inside an asynchronous call, into the microtask that ran it. Every request in flight is
 * answered with the panic's message; the client replaces this worker.
 */
function fault(e) {
  const panic = self.pneumoscopePanic;
  crashed ??= `the library stopped on an internal error${panic ? ` (${panic})` : e ? ` (${messageOf(e)})` : ""}`;
  for (const id of inFlight) post({ id, ok: false, error: crashed, crashed: true });
  inFlight.clear();
}

const isTrap = (e) => e instanceof WebAssembly.RuntimeError || self.pneumoscopePanic !== undefined;

self.addEventListener("error", (event) => {
  if (!isTrap(event.error)) return;
  event.preventDefault();
  fault(event.error);
});
self.addEventListener("unhandledrejection", (event) => {
  if (!isTrap(event.reason)) return;
  event.preventDefault();
  fault(event.reason);
});

self.onmessage = async (event) => {
  const { id, op, ...args } = event.data;
  if (crashed) {
    post({ id, ok: false, error: crashed, crashed: true });
    return;
  }
  inFlight.add(id);
  try {
    if (!(op in ops)) throw new Error(`unknown operation ${op}`);
    const result = await ops[op](args, id);
    const transfer = [];
    if (result && result.view) transfer.push(result.view.buffer, result.heatmap.buffer, result.cam.values.buffer);
    if (result && result.lungs) transfer.push(result.lungs.mask.buffer, result.lungs.outline.buffer);
    if (result && result.modelData) transfer.push(result.modelData);
    if (inFlight.delete(id)) post({ id, ok: true, result }, transfer);
  } catch (e) {
    if (isTrap(e)) fault(e);
    else if (inFlight.delete(id)) post({ id, ok: false, error: messageOf(e) });
  }
};
