// PneumoscopeClient: the page-side handle of the worker (web/worker.js). Every call returns a
// Promise; nothing here touches the image pixels, and nothing is sent over the network except
// the download of the model file from the page's own origin.
//
//   const client = new PneumoscopeClient();
//   const model = await client.load({ url: "models/x.pneumoscope", backend: "auto" },
//                                   (loaded, total) => {});
//   const r = await client.explain(imageBytes);          // class optional: "viral", ...
//   const classes = await client.classes();              // [{ name, label }], from the library

/**
 * The backend asked for in the page address: `?backend=cpu|webgpu` forces one, `measure` times
 * both even on a software adapter and forgets any remembered choice; else "auto" (see
 * [`PneumoscopeClient.load`]).
 */
export function requestedBackend(search = globalThis.location?.search ?? "") {
  const b = new URLSearchParams(search).get("backend");
  return b === "cpu" || b === "webgpu" || b === "measure" ? b : "auto";
}

/** Where the measured backend choice of a model is remembered (localStorage). */
export const choiceKey = (model) => `pneumoscope.backend:${model}`;

/** The remembered choice for `model`, or null (no storage, nothing stored, unreadable). */
function rememberedChoice(model) {
  try {
    const v = globalThis.localStorage?.getItem(choiceKey(model));
    return v ? JSON.parse(v) : null;
  } catch {
    return null;
  }
}

/** Remembers a measured choice (storage may be refused, e.g. in a sandboxed frame: ignored). */
function rememberChoice(model, choice) {
  try {
    const { backend, cpuMs, gpuFirstMs, gpuMs, browser, modelSha256 } = choice;
    const at = new Date().toISOString();
    globalThis.localStorage?.setItem(choiceKey(model), JSON.stringify({ backend, cpuMs, gpuFirstMs, gpuMs, browser, modelSha256, at }));
  } catch {
    // Nothing to do: the next visit measures again.
  }
}

/**
 * How the backend was chosen, in a few words: "CPU 118 ms, WebGPU 1,940 ms (first run 3,200
 * ms): using the CPU, measured in 5.4 s", "… measured on an earlier visit", or "WebGPU not
 * used: the adapter is a software renderer (swiftshader)"; "" when nothing was chosen.
 */
export function choiceText(choice) {
  if (!choice) return "";
  const ms = (v) => `${Math.round(v).toLocaleString("en")} ms`;
  const name = (b) => (b === "webgpu" ? "WebGPU" : "the CPU");
  if (choice.cpuMs != null && choice.gpuMs != null) {
    const first = choice.gpuFirstMs != null ? ` (first run ${ms(choice.gpuFirstMs)})` : "";
    const how = choice.reused ? "measured on an earlier visit" : `measured in ${((choice.probeMs ?? 0) / 1000).toFixed(1)} s`;
    return `CPU ${ms(choice.cpuMs)}, WebGPU ${ms(choice.gpuMs)}${first}: using ${name(choice.backend)}, ${how}`;
  }
  if (choice.reason) return choice.backend === "cpu" ? `WebGPU not used: ${choice.reason}` : choice.reason;
  return "";
}

/**
 * The page-side handle of the worker. When the library faults (a Rust panic aborts its wasm
 * instance), the request that caused it is rejected with the panic's message, and the client
 * starts a new worker and loads the same model into it from the bytes it keeps, by itself;
 * `onRestart(loadResult, error)` is called when that is done (or `onRestart(null, error)` when
 * the reload failed). Requests made meanwhile wait for the new worker.
 */
export class PneumoscopeClient {
  constructor(workerUrl = new URL("./worker.js", import.meta.url)) {
    this.workerUrl = workerUrl;
    this.next = 1;
    this.pending = new Map();
    this.model = null; // { bytes, backend, name } of the loaded model, for a restart
    this.restarting = null; // Promise of the restart under way
    this.restarts = 0;
    this.onRestart = null;
    this.start();
  }

  start() {
    const worker = new Worker(this.workerUrl, { type: "module" });
    this.worker = worker;
    let answered = false; // whether this worker has sent anything: it started
    worker.onmessage = (event) => {
      answered = true;
      const { id, ok, result, error, progress, crashed } = event.data;
      const p = this.pending.get(id);
      if (!p) return;
      if (progress) {
        p.onProgress?.(progress.loaded, progress.total);
        return;
      }
      this.pending.delete(id);
      if (ok) p.resolve(result);
      else p.reject(new Error(error));
      if (crashed && worker === this.worker) this.restart(error);
    };
    worker.onerror = (event) => {
      event.preventDefault();
      if (worker !== this.worker) return;
      const error = `the worker failed: ${event.message || "its script could not be loaded or started"}`;
      if (answered) {
        // An error the worker could not answer for itself: the same as a fault.
        this.restart(error);
        return;
      }
      // A worker that never answered will not start the next time either: no restart.
      for (const p of this.pending.values()) p.reject(new Error(error));
      this.pending.clear();
    };
  }

  /** Replaces a faulted worker by a new one with the same model. */
  restart(error) {
    if (this.restarting) return this.restarting;
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new Error(error));
    this.pending.clear();
    this.restarts++;
    this.start();
    const model = this.model;
    this.restarting = (async () => {
      let result = null;
      try {
        // The bytes travel to the new worker and come back with its load result.
        if (model) result = await this.send("load", { bytes: model.bytes, backend: model.backend, name: model.name }, undefined, [model.bytes]);
        if (result) this.model = { ...model, bytes: takeModelData(result) };
      } catch (e) {
        this.model = null;
        error = `${error}; the model could not be loaded again: ${e.message}`;
      } finally {
        this.restarting = null;
      }
      this.onRestart?.(result, error);
      return result;
    })();
    return this.restarting;
  }

  send(op, args, onProgress, transfer = []) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, ...args }, transfer);
    });
  }

  async call(op, args, onProgress, transfer = []) {
    if (this.restarting) await this.restarting;
    return this.send(op, args, onProgress, transfer);
  }

  /**
   * The classes in the models' output order, as the library names them: `[{ name, label }]`
   * (`"bacterial"`, `"Bacterial pneumonia"`). Asked of the worker once.
   */
  classes() {
    this.classList ??= this.call("classes", {}).catch((e) => {
      this.classList = null;
      throw e;
    });
    return this.classList;
  }

  /**
   * Loads a model from `url` or from `bytes` (an ArrayBuffer). `backend`: `cpu` or `webgpu`
   * force one; `auto` takes the CPU where WebGPU is missing or a software adapter, else the
   * faster of the two on a probe image (WebGPU's first run reported apart), and remembers that
   * choice for this model file and browser (localStorage), so the next visit skips the probe;
   * `measure` always probes. The result's `choice` says what decided.
   */
  async load({ url, bytes, backend = "auto", name }, onProgress) {
    const key = name || (url && String(url));
    const remembered = backend === "auto" && key ? rememberedChoice(key) : null;
    const result = await this.call("load", { url: url && String(url), bytes, backend, name, remembered }, onProgress);
    if (result.choice?.measured && key) rememberChoice(key, result.choice);
    // A restart after a fault keeps the backend this load ended on, without a new probe.
    this.model = { bytes: takeModelData(result), backend: result.backend, name: key };
    return result;
  }

  /** Classifies encoded image bytes (ArrayBuffer or Uint8Array). */
  classify(bytes) {
    return this.call("classify", { bytes: copy(bytes) });
  }

  /**
   * Classifies and explains (Grad-CAM) one class, the predicted one when `cls` is omitted.
   * `options.panicForTest` (tests only) makes the library panic on purpose while reading it.
   */
  explain(bytes, cls, options = {}) {
    return this.call("explain", { bytes: copy(bytes), cls, panicForTest: Boolean(options.panicForTest) });
  }

  terminate() {
    this.worker.terminate();
  }
}

/** The model bytes a load result carries back from the worker, taken out of the result. */
function takeModelData(result) {
  const data = result.modelData;
  delete result.modelData;
  return data;
}

function copy(bytes) {
  return bytes instanceof ArrayBuffer ? bytes.slice(0) : new Uint8Array(bytes).buffer.slice(0);
}

/**
 * Draws the network's view with the Grad-CAM heatmap over it at `opacity` (0..1) and, when the
 * model found the lung fields, their outline in white.
 */
export function drawOverlay(canvas, explanation, opacity) {
  const { size, view, heatmap, lungs } = explanation;
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.putImageData(new ImageData(new Uint8ClampedArray(view), size, size), 0, 0);
  const layer = new OffscreenCanvas(size, size);
  layer.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(heatmap), size, size), 0, 0);
  ctx.globalAlpha = opacity;
  ctx.drawImage(layer, 0, 0);
  ctx.globalAlpha = 1;
  // Lung fields the shape rules find implausible (none, an odd area, one side) are not drawn:
  // an outline over a photo or a lateral view would look like an answer.
  canvas.dataset.outline = !lungs ? "none" : lungs.reason ? "withheld" : "drawn";
  if (lungs && !lungs.reason) {
    const image = ctx.getImageData(0, 0, size, size);
    for (let i = 0; i < lungs.outline.length; i++) {
      if (lungs.outline[i]) image.data.set([255, 255, 255, 255], 4 * i);
    }
    ctx.putImageData(image, 0, 0);
  }
}

/** "62 % of the evidence lies in the lung fields", or why there is no such figure. */
export function lungShareText(lungs, crop = null) {
  if (!lungs) return "";
  const framed = crop ? " The model looks at the lung fields only: the image is cut to them." : "";
  if (lungs.regions === 0) return "No lung fields were found in this image." + framed;
  if (lungs.reason) {
    return `Lung fields not outlined, and no share of the evidence given: ${lungs.reason}.` + framed;
  }
  if (lungs.share == null) return "The Grad-CAM map is empty: no share of evidence to measure." + framed;
  return `${Math.round(lungs.share * 100)} % of the evidence lies in the lung fields (outlined).` + framed;
}

/** Fills `container` with one labelled bar per class of `classes` (from `client.classes()`). */
export function renderBars(container, probabilities, top, classes) {
  container.replaceChildren();
  for (const { name: c, label: text } of classes) {
    const p = probabilities[c];
    const row = document.createElement("div");
    row.className = "bar" + (c === top ? " top" : "");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = text;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", (p * 100).toFixed(1));
    track.setAttribute("aria-label", text);
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(p * 100).toFixed(1)} %`;
    row.append(label, track, value);
    container.append(row);
  }
}

/**
 * The warning shown for an image the out-of-distribution score flags (`ood`: `{score, flagged}`
 * or null), or whose lung fields are unlike a frontal chest X-ray's (`lungReason`); "" when
 * neither holds.
 */
export function oodMessage(ood, lungReason = null) {
  const flagged = Boolean(ood?.flagged);
  if (!flagged && !lungReason) return "";
  const why = [];
  if (flagged) why.push(`out-of-distribution score ${ood.score.toFixed(2)}; above 1 is unusual`);
  if (lungReason) why.push(`${lungReason}`);
  return `This image looks unlike the chest X-rays the model was trained on (${why.join("; ")}). ` +
    `It may be a photo, a CT slice, a lateral view or an image from a very different population: ` +
    `do not trust the result.`;
}
