// The page: model picker, image input, result, Grad-CAM. All heavy work happens in the worker
// (client.js → worker.js → the Rust library in pkg/).
//
// Contract for tests and embedders: `#image-input` (file input), `#result` with `data-top`,
// `data-probabilities` (JSON) and `data-backend` once a result is shown, `#gradcam` (canvas,
// with `data-class`, `data-width`, `data-height` and `data-map`: the raw Grad-CAM map as JSON),
// `#error` for messages. Also `#result[data-timings]` (JSON, milliseconds: the library's own
// end-to-end `total_ms` and its parts), `#result[data-wall-ms]` (from choosing the image, or the
// class, to the result drawn, as the page measured it), `#result[data-call-ms]` (around the
// library call, worker round trip included) and, once a model is
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

import { CLASSES, CLASS_LABELS, PneumoscopeClient, drawOverlay, lungShareText, oodMessage, renderBars, requestedBackend } from "./client.js";

const $ = (id) => document.getElementById(id);
const client = new PneumoscopeClient();
const backend = requestedBackend();

let modelReady = null; // Promise of the current model's load result
let lastGood = null; // the last model that loaded, still in use when another fails
let current = null; // { bytes, name } of the image on screen
let explanation = null; // the last explain() result
let generation = 0; // ignores answers to requests that a newer one superseded

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
  delete r.dataset.ood;
  delete r.dataset.caution;
  delete r.dataset.lungShare;
  delete r.dataset.lungReason;
  $("ood-warning").hidden = true;
  $("caution").hidden = true;
  $("lung-share").hidden = true;
  const c = $("gradcam");
  for (const k of ["class", "width", "height", "map", "lungMask"]) delete c.dataset[k];
}

async function loadModel(source, label) {
  const status = $("model-status");
  const progress = $("model-progress");
  status.textContent = `Loading ${label}…`;
  progress.hidden = false;
  progress.removeAttribute("value");
  const promise = client.load({ ...source, backend, name: label }, (loaded, total) => {
    if (total) {
      progress.max = total;
      progress.value = loaded;
    }
    status.textContent = `Loading ${label}… ${(loaded / 1e6).toFixed(1)} MB`;
  });
  modelReady = promise;
  try {
    const m = await promise;
    const t = m.timings;
    const fallback = m.fallbackReason ? ` (WebGPU unavailable: ${m.fallbackReason})` : "";
    // A model trained without ImageNet weights says so wherever it is used.
    const randomInit = m.info.weight_source === "random-init" ? " · random-init (no ImageNet weights)" : "";
    const untrained = m.info.training?.untrained ? " · UNTRAINED (deployment test only: its answers mean nothing)" : "";
    status.textContent = `${m.info.arch}${randomInit}${untrained} ready on ${m.backend}${fallback} · ${(m.modelBytes / 1e6).toFixed(1)} MB · ` +
      `loaded in ${Math.round(t.wasm_init_ms + t.download_ms + t.model_init_ms)} ms`;
    lastGood = m;
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
    throw e;
  } finally {
    progress.hidden = true;
  }
}

async function analyse(cls, startedAt = performance.now()) {
  const mine = ++generation;
  clearError();
  if (!cls) clearResult();
  setBusy("Classifying and explaining…");
  try {
    await modelReady;
    const callStart = performance.now();
    const r = await client.explain(current.bytes, cls);
    const callMs = performance.now() - callStart;
    if (mine !== generation) return;
    explanation = r;
    show(r, startedAt);
    $("result").dataset.callMs = callMs.toFixed(1);
  } catch (e) {
    if (mine !== generation) return;
    clearResult();
    showError(`${current.name}: ${e.message}`);
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
  renderBars($("bars"), r.probabilities, r.top);
  $("top-class").textContent = CLASS_LABELS[r.top];
  $("backend").textContent = r.backend;
  $("cam-class").value = r.cam.class;
  $("cam-class-name").textContent = CLASS_LABELS[r.cam.class];
  const canvas = $("gradcam");
  drawOverlay(canvas, r, Number($("opacity").value));
  canvas.dataset.class = r.cam.class;
  canvas.dataset.width = r.cam.width;
  canvas.dataset.height = r.cam.height;
  canvas.dataset.map = JSON.stringify(Array.from(r.cam.values));
  const share = $("lung-share");
  share.hidden = !r.lungs;
  share.textContent = lungShareText(r.lungs);
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
  result.dataset.top = r.top;
  result.hidden = false;
  const wall = performance.now() - startedAt;
  $("timings").textContent = timingText(r.timings, wall);
  result.dataset.wallMs = wall.toFixed(1);
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
  for (const c of CLASSES) {
    const o = document.createElement("option");
    o.value = c;
    o.textContent = CLASS_LABELS[c];
    $("cam-class").append(o);
  }
  $("image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // choosing the same file again runs it again
    takeImage(file);
  });
  const zone = $("drop-zone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("image-input").click();
    }
  });
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
  $("opacity").addEventListener("input", (e) => explanation && drawOverlay($("gradcam"), explanation, Number(e.target.value)));
  $("model-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    clearError();
    loadModel({ bytes: await f.arrayBuffer() }, f.name).catch(() => {});
  });

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
    o.textContent = m.description ? `${m.arch} — ${m.description}` : m.arch;
    select.append(o);
  }
  const wanted = new URLSearchParams(location.search).get("model");
  select.value = index.models.some((m) => m.file === wanted) ? wanted : index.default;
  select.addEventListener("change", () => {
    clearError();
    loadModel({ url: `models/${select.value}` }, select.value).catch(() => {});
  });
  loadModel({ url: `models/${select.value}` }, select.value).catch(() => {});
}

init();
