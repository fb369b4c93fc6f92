// The page: model picker, image input, result, Grad-CAM. All heavy work happens in the worker
// (client.js → worker.js → the Rust library in pkg/).
//
// Contract for tests and embedders: `#image-input` (file input), `#result` with `data-top`,
// `data-probabilities` (JSON) and `data-backend` once a result is shown, `#gradcam` (canvas,
// with `data-class`, `data-width`, `data-height` and `data-map`: the raw Grad-CAM map as JSON),
// `#error` for messages. Also `#result[data-timings]` (JSON, milliseconds: the library's own
// end-to-end `total_ms` and its parts), `#result[data-wall-ms]` (from choosing the image, or the
// class, to the result drawn, as the page measured it), `#result[data-call-ms]` (around the
// library call, worker round trip included), `#result[data-memory]` (JSON: the worker's
// `wasmBytes` and, on WebGPU, the `device` allocator's `bytesInUse`/`bytesReserved`) and, once a model is
// loaded, `body[data-model-ready]`, `body[data-backend]` and `body[data-ready-ms]` (time since
// navigation). `#result[data-ood]` holds `{score, flagged}` as JSON (or `null` when the model has
// no out-of-distribution statistics); `#ood-warning` is shown when the image is flagged.
// `#result[data-caution]` holds the model's caution (too few training images of the predicted
// class from the image's population, child or adult), shown in `#caution`; absent when none.
// When the model file carries a lung segmenter: `#result[data-lung-share]` (the share of the
// Grad-CAM map's mass inside the dilated lung fields, 0..1, or "none" for an empty map), the
// sentence in `#lung-share`, the outline drawn over the heatmap and `#gradcam[data-lung-mask]`
// (the lung mask over the view, one "0"/"1" character a pixel, row-major); all absent otherwise.
// `#result[data-lung-reason]` says why the lung fields are unlike a frontal X-ray's (no lungs,
// an odd area or shape); the reason is added to `#ood-warning`, which it shows by itself too.
// The example row (`examples/examples.json`): one `button[data-example=FILE]` per example; its
// result carries `#result[data-example-label]` (the label in its collection), written out in
// `#example-truth` with the image's source and licence.
// When the library faults on an image (a panic), `#error` names the image and the fault, the
// client restarts the worker with the same model, and `body[data-worker-restarts]` counts the
// restarts. Test-only: `?panic-test` makes the library panic on purpose on the first image.

import { PneumoscopeClient, choiceText, drawOverlay, lungShareText, oodMessage, renderBars, requestedBackend } from "./client.js";

const $ = (id) => document.getElementById(id);
const client = new PneumoscopeClient();
const backend = requestedBackend();

let modelReady = null; // Promise of the current model's load result
let classes = []; // [{ name, label }] in output order, from the library
let classesReady = Promise.resolve(); // Promise of `classes`
const labelOf = (name) => classes.find((c) => c.name === name)?.label ?? name;
let lastGood = null; // the last model that loaded, still in use when another fails
let modelLabel = ""; // its file name
let current = null; // { bytes, name } of the image on screen
let explanation = null; // the last explain() result
let generation = 0; // ignores answers to requests that a newer one superseded
let panicArmed = new URLSearchParams(location.search).has("panic-test"); // test-only, once

// After a fault of the library the client has a new worker with the same model.
client.onRestart = (m, error) => {
  document.body.dataset.workerRestarts = String(client.restarts);
  const status = $("model-status");
  if (m) {
    lastGood = m;
    modelReady = Promise.resolve(m);
    status.textContent = `${m.info.arch} ready on ${m.backend} · restarted after an internal error ` +
      `(${client.restarts} ${client.restarts === 1 ? "time" : "times"} in this visit)`;
  } else {
    lastGood = null;
    modelReady = Promise.reject(new Error(error));
    modelReady.catch(() => {});
    delete document.body.dataset.modelReady;
    status.textContent = "No model loaded: it could not be loaded again after an internal error.";
    showError(error);
  }
};

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

function setBusy(text) {
  $("busy").textContent = text || "";
  $("busy").hidden = !text;
}

function clearResult() {
  const r = $("result");
  r.hidden = true;
  delete r.dataset.top;
  delete r.dataset.probabilities;
  delete r.dataset.backend;
  delete r.dataset.timings;
  delete r.dataset.wallMs;
  delete r.dataset.callMs;
  delete r.dataset.memory;
  delete r.dataset.ood;
  delete r.dataset.caution;
  delete r.dataset.lungShare;
  delete r.dataset.lungReason;
  delete r.dataset.exampleLabel;
  $("example-truth").hidden = true;
  $("announce").textContent = "";
  $("ood-warning").hidden = true;
  $("caution").hidden = true;
  $("lung-share").hidden = true;
  const c = $("gradcam");
  for (const k of ["class", "width", "height", "map", "lungMask"]) delete c.dataset[k];
}

/** " (19.5 MB)", or nothing when the size is not known. */
const sizeText = (bytes) => (bytes ? ` (${(bytes / 1e6).toFixed(1)} MB)` : "");

async function loadModel(source, label, bytes = null) {
  const status = $("model-status");
  const progress = $("model-progress");
  const retry = $("model-retry");
  retry.hidden = true;
  // The download size is said before the download starts.
  status.textContent = `Loading ${label}${sizeText(bytes)}…`;
  progress.hidden = false;
  progress.removeAttribute("value");
  const promise = client.load({ ...source, backend, name: label }, (loaded, total) => {
    if (total) {
      progress.max = total;
      progress.value = loaded;
    }
    const of = total ? ` of ${(total / 1e6).toFixed(1)}` : "";
    status.textContent = `Loading ${label}… ${(loaded / 1e6).toFixed(1)}${of} MB`;
  });
  modelReady = promise;
  try {
    const m = await promise;
    const t = m.timings;
    const chosen = choiceText(m.choice);
    const fallback = chosen ? ` · ${chosen}` : m.fallbackReason ? ` (WebGPU unavailable: ${m.fallbackReason})` : "";
    // A model trained without ImageNet weights says so wherever it is used.
    const randomInit = m.info.weight_source === "random-init" ? " · random-init (no ImageNet weights)" : "";
    const untrained = m.info.training?.untrained ? " · UNTRAINED (deployment test only: its answers mean nothing)" : "";
    // A file of an earlier format has no checksum over its header, and the page says so.
    const unverified = m.info.notice ? ` · ${m.info.notice}` : "";
    document.body.dataset.headerVerified = String(m.info.header_verified);
    status.textContent = `${m.info.arch}${randomInit}${untrained}${unverified} ready on ${m.backend}${fallback} · ${(m.modelBytes / 1e6).toFixed(1)} MB · ` +
      `loaded in ${Math.round(t.wasm_init_ms + t.download_ms + t.model_init_ms)} ms`;
    lastGood = m;
    modelLabel = label;
    if (source.url) keepOffline(source.url);
    document.body.dataset.readyMs = performance.now().toFixed(1);
    document.body.dataset.modelReady = "true";
    document.body.dataset.backend = m.backend;
    if (current) await analyse();
    return m;
  } catch (e) {
    if (lastGood) {
      modelReady = Promise.resolve(lastGood);
      status.textContent = `${label} could not be loaded; still using ${lastGood.info.arch} on ${lastGood.backend}.`;
    } else {
      status.textContent = "No model loaded.";
    }
    showError(e.message);
    if (source.url) {
      // A download that failed (the network, the server) can be tried again.
      retry.hidden = false;
      retry.onclick = () => {
        clearError();
        loadModel(source, label, bytes).catch(() => {});
      };
    }
    throw e;
  } finally {
    progress.hidden = true;
  }
}

/**
 * Offline after the first visit: the service worker (sw.js) keeps the site's files, and is
 * asked to keep the model just loaded. `body[data-offline]` becomes "ready" (with the cache's
 * name in `data-offline-cache`) once it has, "unavailable" where the browser has no service
 * worker for this page (an insecure origin, say); the page works either way.
 */
async function keepOffline(modelUrl) {
  const body = document.body;
  if (!("serviceWorker" in navigator)) {
    body.dataset.offline = "unavailable";
    return;
  }
  try {
    await navigator.serviceWorker.register("sw.js");
    const registration = await navigator.serviceWorker.ready;
    const reply = await new Promise((resolve) => {
      const channel = new MessageChannel();
      channel.port1.onmessage = (e) => resolve(e.data);
      registration.active.postMessage({ keep: new URL(modelUrl, location.href).href }, [channel.port2]);
    });
    if (reply.kept) {
      body.dataset.offline = "ready";
      body.dataset.offlineCache = reply.cache;
    } else {
      body.dataset.offline = "unavailable";
    }
  } catch {
    body.dataset.offline = "unavailable";
  }
}

async function analyse(cls, startedAt = performance.now()) {
  const mine = ++generation;
  clearError();
  if (!cls) clearResult();
  setBusy("Classifying and explaining…");
  try {
    await modelReady;
    await classesReady;
    const callStart = performance.now();
    const panicForTest = panicArmed;
    panicArmed = false;
    const r = await client.explain(current.bytes, cls, { panicForTest });
    const callMs = performance.now() - callStart;
    if (mine !== generation) return;
    explanation = r;
    show(r, startedAt);
    $("result").dataset.callMs = callMs.toFixed(1);
    $("result").dataset.memory = JSON.stringify(r.memory ?? null);
  } catch (e) {
    if (mine !== generation) return;
    clearResult();
    const restart = client.restarting ? "; the page restarts its library with the same model, the next image is answered as usual" : "";
    showError(`${current.name}: ${e.message}${restart}`);
  } finally {
    if (mine === generation) setBusy("");
  }
}

/** "decode 12 ms · 5 networks 480 ms · Grad-CAM 30 ms · maps 8 ms · total 530 ms". */
function timingText(t, wall) {
  const ms = (v) => `${v.toFixed(0)} ms`;
  const nets = t.members?.length > 1 ? `${t.members.length} networks` : "inference";
  return `decode ${ms(t.preprocess_ms)} · ${nets} ${ms(t.inference_ms)} · Grad-CAM ${ms(t.gradcam_ms)}` +
    (t.lungs_ms != null ? ` · lungs ${ms(t.lungs_ms)}` : "") +
    (t.maps_ms != null ? ` · maps ${ms(t.maps_ms)}` : "") +
    ` · total ${ms(t.total_ms)} (${ms(wall)} from choosing to this result)`;
}

/** A 0/1 mask as one "0"/"1" character a pixel (fast: one byte array, decoded once). */
function maskText(mask) {
  const chars = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) chars[i] = mask[i] ? 49 : 48;
  return new TextDecoder().decode(chars);
}

function show(r, startedAt) {
  const result = $("result");
  renderBars($("bars"), r.probabilities, r.top, classes);
  $("top-class").textContent = labelOf(r.top);
  const percent = `${Math.round(r.probabilities[r.top] * 100)} %`;
  $("top-probability").textContent = percent;
  // What a screen reader says when the result arrives.
  $("announce").textContent = `Most probable: ${labelOf(r.top)}, ${percent}.` +
    (r.caution ? ` ${r.caution}` : "") + (r.ood?.flagged ? " Warning: this image is unlike the X-rays the model was trained on." : "");
  $("backend").textContent = r.backend;
  $("cam-class").value = r.cam.class;
  $("cam-class-name").textContent = labelOf(r.cam.class);
  const canvas = $("gradcam");
  drawOverlay(canvas, r, Number($("opacity").value));
  canvas.dataset.class = r.cam.class;
  canvas.dataset.width = r.cam.width;
  canvas.dataset.height = r.cam.height;
  canvas.dataset.map = JSON.stringify(Array.from(r.cam.values));
  const share = $("lung-share");
  share.hidden = !r.lungs;
  share.textContent = lungShareText(r.lungs, r.crop);
  if (r.lungs) {
    result.dataset.lungShare = r.lungs.share == null ? "none" : String(r.lungs.share);
    canvas.dataset.lungMask = maskText(r.lungs.mask);
  } else {
    delete result.dataset.lungShare;
    delete canvas.dataset.lungMask;
  }
  result.dataset.backend = r.backend;
  result.dataset.probabilities = JSON.stringify(r.probabilities);
  result.dataset.timings = JSON.stringify(r.timings);
  result.dataset.ood = JSON.stringify(r.ood ?? null);
  const warning = $("ood-warning");
  const lungReason = r.lungs?.reason ?? null;
  warning.hidden = !r.ood?.flagged && !lungReason;
  warning.textContent = oodMessage(r.ood, lungReason);
  if (lungReason) result.dataset.lungReason = lungReason;
  else delete result.dataset.lungReason;
  const caution = $("caution");
  caution.hidden = !r.caution;
  caution.textContent = r.caution ?? "";
  if (r.caution) result.dataset.caution = r.caution;
  else delete result.dataset.caution;
  const example = current?.example;
  const truth = $("example-truth");
  truth.hidden = !example;
  if (example) {
    truth.textContent = exampleText(example);
    result.dataset.exampleLabel = example.label;
  } else {
    delete result.dataset.exampleLabel;
  }
  result.dataset.top = r.top;
  result.hidden = false;
  const wall = performance.now() - startedAt;
  $("timings").textContent = timingText(r.timings, wall);
  result.dataset.wallMs = wall.toFixed(1);
}

const COLLECTION_NAMES = {
  kermany: "Kermany et al., children aged 1–5",
  nih: "NIH ChestX-ray14",
  cohen: "the COVID-19 image data collection",
};

/** "Labelled viral pneumonia in its collection (…); a test image, never trained on. Image: …". */
function exampleText(ex) {
  return `Labelled ${labelOf(ex.label)} in its collection (${COLLECTION_NAMES[ex.source] ?? ex.source}); ` +
    `a test image the model was never trained or tuned on. Image: ${ex.credit} (${ex.licence}).`;
}

/** The example row, from `examples/examples.json` (none when the site has no examples). */
async function loadExamples() {
  let examples;
  try {
    const response = await fetch("examples/examples.json");
    if (!response.ok) return;
    examples = (await response.json()).examples;
  } catch {
    return;
  }
  const list = $("example-list");
  for (const ex of examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.dataset.example = ex.file;
    button.title = `${ex.title}. ${ex.credit} (${ex.licence})`;
    const img = document.createElement("img");
    img.src = `examples/${ex.file}`;
    img.alt = "";
    const name = document.createElement("span");
    name.textContent = ex.title;
    const licence = document.createElement("small");
    licence.textContent = ex.licence;
    button.append(img, name, licence);
    button.addEventListener("click", () => takeExample(ex));
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  $("examples").hidden = examples.length === 0;
}

async function takeExample(ex) {
  const startedAt = performance.now();
  let blob;
  try {
    const response = await fetch(`examples/${ex.file}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    blob = await response.blob();
  } catch (e) {
    showError(`examples/${ex.file}: cannot load the example (${e.message})`);
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  current = { bytes: await blob.arrayBuffer(), name: ex.file, example: ex };
  await analyse(undefined, startedAt);
}

/** `text` in lines no wider than `width` in `ctx`'s current font (a word longer than the width
 * is cut where it no longer fits). */
function wrapText(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const candidate = line ? `${line} ${word}` : word;
    if (ctx.measureText(candidate).width <= width) {
      line = candidate;
      continue;
    }
    if (line) lines.push(line);
    line = word;
    while (ctx.measureText(line).width > width) {
      let n = line.length - 1;
      while (n > 1 && ctx.measureText(line.slice(0, n)).width > width) n--;
      lines.push(line.slice(0, n));
      line = line.slice(n);
    }
  }
  if (line) lines.push(line);
  return lines;
}

/** A PNG chunk: length, type, data, CRC-32 of type and data. */
function pngChunk(type, data) {
  const body = new Uint8Array(4 + data.length);
  body.set(new TextEncoder().encode(type), 0);
  body.set(data, 4);
  let crc = 0xffffffff;
  for (const byte of body) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(body, 4);
  view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
  return out;
}

/** `png` with international text chunks (`iTXt`, UTF-8) after its header chunk. */
function withText(png, entries) {
  const enc = new TextEncoder();
  const chunks = entries.map(([key, text]) => {
    const k = enc.encode(key);
    const t = enc.encode(text);
    // keyword, NUL, no compression (0, 0), empty language tag and translated keyword (NUL, NUL)
    const data = new Uint8Array(k.length + 5 + t.length);
    data.set(k, 0);
    data.set(t, k.length + 5);
    return pngChunk("iTXt", data);
  });
  const ihdrEnd = 8 + 25; // signature, then IHDR (4 + 4 + 13 + 4)
  const parts = [png.subarray(0, ihdrEnd), ...chunks, png.subarray(ihdrEnd)];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * "Save result": one PNG made here in the browser (nothing is sent): the image, the Grad-CAM
 * overlay, the probabilities, every warning the page shows beside the result (the caution, the
 * out-of-distribution warning, the lung fields), the model and "not a diagnosis", for a slide
 * or a worksheet. Every text is wrapped to the image's width, and the whole text is also in
 * the PNG's `Description` (iTXt), where a screen reader or a script can read it.
 */
async function saveResult() {
  if (!explanation || !lastGood) return;
  const r = explanation;
  const side = 360;
  const width = 2 * side + 60;
  const textWidth = width - 40;
  const paragraphs = [
    { font: "bold 20px sans-serif", color: "#111111", size: 20, text: `Most probable: ${labelOf(r.top)}, ${Math.round(r.probabilities[r.top] * 100)} %` },
    ...classes.map(({ name, label }) => ({ font: "16px sans-serif", color: "#111111", size: 16, text: `${label}: ${(r.probabilities[name] * 100).toFixed(1)} %` })),
  ];
  const warn = (text) => text && paragraphs.push({ font: "bold 16px sans-serif", color: "#8a3b00", size: 16, gap: 8, text });
  warn(r.caution ?? "");
  warn(oodMessage(r.ood, r.lungs?.reason ?? null));
  if (r.lungs) paragraphs.push({ font: "16px sans-serif", color: "#111111", size: 16, gap: 8, text: lungShareText(r.lungs, r.crop) });
  paragraphs.push(
    { font: "16px sans-serif", color: "#111111", size: 16, gap: 12, text: `Grad-CAM for ${labelOf(r.cam.class)}. Model: ${modelLabel} (${lastGood.info.arch})` },
    { font: "16px sans-serif", color: "#111111", size: 16, text: `Pneumoscope ${lastGood.version ?? ""}, ${r.backend} backend, ${new Date().toISOString().slice(0, 10)}` },
    { font: "bold 16px sans-serif", color: "#a00000", size: 16, gap: 8, text: "Pneumoscope, a research and teaching tool: NOT A DIAGNOSIS." },
  );
  // Measure first: the canvas is as tall as its text.
  const measure = document.createElement("canvas").getContext("2d");
  let height = side + 40;
  const laidOut = [];
  for (const p of paragraphs) {
    measure.font = p.font;
    const lines = wrapText(measure, p.text, textWidth);
    height += (p.gap ?? 0);
    for (const line of lines) {
      height += Math.round(p.size * 1.4);
      laidOut.push({ ...p, line, y: height - Math.round(p.size * 0.35), width: measure.measureText(line).width });
    }
  }
  height += 20;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  const preview = $("preview");
  await preview.decode().catch(() => {});
  const scale = Math.min(side / preview.naturalWidth, side / preview.naturalHeight) || 1;
  const [w, h] = [preview.naturalWidth * scale, preview.naturalHeight * scale];
  ctx.drawImage(preview, 20 + (side - w) / 2, 20 + (side - h) / 2, w, h);
  ctx.drawImage($("gradcam"), side + 40, 20, side, side);
  for (const l of laidOut) {
    ctx.font = l.font;
    ctx.fillStyle = l.color;
    ctx.fillText(l.line, 20, l.y);
  }
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const text = paragraphs.map((p) => p.text).join("\n");
  const layout = JSON.stringify({ width, margin: 20, lines: laidOut.map((l) => ({ text: l.line, width: l.width })) });
  const png = withText(new Uint8Array(await blob.arrayBuffer()), [["Description", text], ["Pneumoscope layout", layout]]);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  link.download = `pneumoscope-${current?.name?.replace(/\.[^.]*$/, "") ?? "result"}.png`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function takeImage(file) {
  if (!file) return;
  const startedAt = performance.now();
  const bytes = await file.arrayBuffer();
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  current = { bytes, name: file.name };
  await analyse(undefined, startedAt);
}

async function init() {
  // The class controls, once the library says its classes (a failure to start it is reported
  // by the model's load).
  classesReady = client.classes().then((list) => {
    classes = list;
    for (const c of list) {
      const o = document.createElement("option");
      o.value = c.name;
      o.textContent = c.label;
      $("cam-class").append(o);
    }
  }, () => {});
  $("image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // choosing the same file again runs it again
    takeImage(file);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    takeImage(e.dataTransfer.files[0]);
  });
  $("cam-class").addEventListener("change", (e) => current && analyse(e.target.value));
  $("save-result").addEventListener("click", () => saveResult());
  $("opacity").addEventListener("input", (e) => explanation && drawOverlay($("gradcam"), explanation, Number(e.target.value)));
  $("model-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    clearError();
    loadModel({ bytes: await f.arrayBuffer() }, f.name).catch(() => {});
  });

  loadExamples();
  let index;
  try {
    const response = await fetch("models/index.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    index = await response.json();
  } catch (e) {
    showError(`models/index.json: cannot read the list of models (${e.message})`);
    $("model-status").textContent = "No model loaded.";
    return;
  }
  const select = $("model-select");
  for (const m of index.models) {
    const o = document.createElement("option");
    o.value = m.file;
    o.textContent = (m.description ? `${m.arch} — ${m.description}` : m.arch) + sizeText(m.bytes);
    select.append(o);
  }
  const bytesOf = (file) => index.models.find((m) => m.file === file)?.bytes ?? null;
  const wanted = new URLSearchParams(location.search).get("model");
  select.value = index.models.some((m) => m.file === wanted) ? wanted : index.default;
  select.addEventListener("change", () => {
    clearError();
    loadModel({ url: `models/${select.value}` }, select.value, bytesOf(select.value)).catch(() => {});
  });
  loadModel({ url: `models/${select.value}` }, select.value, bytesOf(select.value)).catch(() => {});
}

init();
