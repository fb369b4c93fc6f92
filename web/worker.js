// The Web Worker that owns the WebAssembly library: all decoding, inference and Grad-CAM run
// here, off the page's main thread. Messages in: { id, op, ...args }; out: { id, ok, result }
// or { id, ok: false, error }, plus { id, progress: { loaded, total } } while a model downloads.
// A panic of the library aborts its WebAssembly instance: every request in flight is then
// answered { id, ok: false, error, crashed: true }, and the client (client.js) starts a new
// worker with the same model. A loaded model's bytes go back with the load result
// (`modelData`, transferred), for that restart.

import init, { Classifier, classes, version } from "./pkg/pneumoscope.js";

let ready = null; // Promise of the initialised wasm module
let model = null; // the loaded Classifier
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

  async load({ url, bytes, backend, name }, id) {
    const t0 = performance.now();
    ready ??= init();
    await ready;
    const t1 = performance.now();
    const data = bytes ? new Uint8Array(bytes) : await fetchWithProgress(url, id);
    const t2 = performance.now();
    // A model that fails to load leaves the previous one in place.
    let loaded;
    try {
      const limit = backend === "cpu" ? null : await gpuMaxBuffer();
      loaded = await Classifier.load(data, backend || "auto", limit ?? undefined);
    } catch (e) {
      throw new Error(`${name || url || "model file"}: ${messageOf(e)}`);
    }
    model?.free();
    model = loaded;
    const t3 = performance.now();
    return {
      modelData: data.buffer,
      backend: model.backend,
      fallbackReason: model.fallbackReason ?? null,
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
    r.memory = { wasmBytes: (await ready).memory.buffer.byteLength, device: model.memory() };
    return r;
  },
};

// The largest buffer this browser's WebGPU adapter allows (the library refuses WebGPU for a
// model whose largest tensor is bigger, and says so), or null when there is no adapter.
let adapterLimit;
async function gpuMaxBuffer() {
  if (adapterLimit === undefined) {
    adapterLimit = null;
    try {
      const adapter = await navigator.gpu?.requestAdapter();
      if (adapter) {
        adapterLimit = Math.min(adapter.limits.maxStorageBufferBindingSize, adapter.limits.maxBufferSize);
      }
    } catch {
      adapterLimit = null;
    }
  }
  return adapterLimit;
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
