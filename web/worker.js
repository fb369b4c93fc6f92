// The Web Worker that owns the WebAssembly library: all decoding, inference and Grad-CAM run
// here, off the page's main thread. Messages in: { id, op, ...args }; out: { id, ok, result }
// or { id, ok: false, error }, plus { id, progress: { loaded, total } } while a model downloads.

import init, { Classifier, version } from "./pkg/pneumoscope.js";

let ready = null; // Promise of the initialised wasm module
let model = null; // the loaded Classifier

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

  async explain({ bytes, cls }) {
    if (!model) throw new Error("no model is loaded yet");
    const r = await model.explain(new Uint8Array(bytes), cls ?? undefined);
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

self.onmessage = async (event) => {
  const { id, op, ...args } = event.data;
  try {
    if (!(op in ops)) throw new Error(`unknown operation ${op}`);
    const result = await ops[op](args, id);
    const transfer = [];
    if (result && result.view) transfer.push(result.view.buffer, result.heatmap.buffer, result.cam.values.buffer);
    if (result && result.lungs) transfer.push(result.lungs.mask.buffer, result.lungs.outline.buffer);
    post({ id, ok: true, result }, transfer);
  } catch (e) {
    post({ id, ok: false, error: messageOf(e) });
  }
};
