// <pneumoscope-classifier>: the classifier as one HTML element, for embedding in any page
// served from the same origin as these files (copy the site folder that `cargo xtask dist` builds).
//
//   <script type="module" src="pneumoscope-classifier.js"></script>
//   <pneumoscope-classifier model="models/efficientnet_lite0-adults-v2.pneumoscope"
//                           backend="auto"></pneumoscope-classifier>
//
// Attributes: `model` (URL of a model file; default: the default of models/index.json),
// `backend` (auto | webgpu | cpu | measure; auto measures which is faster here and remembers it,
// the others force one or always measure). After each image the element carries `data-top`,
// `data-probabilities` (JSON), `data-backend` and `data-ood` (JSON `{score, flagged}` or null; a
// flagged image also shows a warning) and `data-caution` (present, and the caution shown, when
// the model saw too few training images of the answer's class from the image's population) and
// `data-lung-share` (when the model carries a lung segmenter: the share of the evidence inside
// the lung fields, whose outline is drawn over the heatmap), and fires a `pneumoscope-result` event whose
// `detail` is the classification; failures fire `pneumoscope-error` and show the message.
// Like the page, it runs everything on the user's device in a Web Worker.

import { PneumoscopeClient, choiceText, drawOverlay, lungShareText, oodMessage, renderBars } from "./client.js";

const TEMPLATE = `
  <link rel="stylesheet" href="${new URL("./pneumoscope-classifier.css", import.meta.url)}">
  <div class="box">
    <p class="note">Research and teaching tool, not a diagnosis. Runs on this device.</p>
    <p class="status" part="status">Loading the model…</p>
    <label class="pick">Choose a chest X-ray…
      <input type="file" accept="image/png,image/jpeg,application/dicom,.png,.jpg,.jpeg,.dcm">
    </label>
    <p class="error" role="alert" hidden></p>
    <div class="result" hidden>
      <p class="ood" role="alert" hidden></p>
      <p class="caution" role="note" hidden></p>
      <canvas width="224" height="224" aria-label="Grad-CAM heatmap"></canvas>
      <div>
        <p class="top"></p>
        <p class="lungs" hidden></p>
        <div class="bars"></div>
        <label>Explain <select class="cam-class"></select></label>
      </div>
    </div>
  </div>`;

class PneumoscopeClassifier extends HTMLElement {
  static get observedAttributes() {
    return ["model", "backend"];
  }

  constructor() {
    super();
    this.attachShadow({ mode: "open" }).innerHTML = TEMPLATE;
    this.client = null;
    this.ready = null;
    this.bytes = null;
    this.name = null;
    this.classes = []; // [{ name, label }] in output order, from the library
    const $ = (s) => this.shadowRoot.querySelector(s);
    this.$ = $;
    $("input[type=file]").addEventListener("change", async (e) => {
      const f = e.target.files[0];
      e.target.value = ""; // choosing the same file again runs it again
      if (!f) return;
      this.bytes = await f.arrayBuffer();
      this.name = f.name;
      this.analyse();
    });
    $(".cam-class").addEventListener("change", (e) => this.bytes && this.analyse(e.target.value));
  }

  connectedCallback() {
    this.load();
  }

  disconnectedCallback() {
    this.client?.terminate();
    this.client = null;
  }

  attributeChangedCallback(name, before, after) {
    if (this.client && before !== after) this.load();
  }

  async modelUrl() {
    const given = this.getAttribute("model");
    if (given) return new URL(given, document.baseURI);
    const indexUrl = new URL("./models/index.json", import.meta.url);
    const index = await (await fetch(indexUrl)).json();
    return new URL(index.default, indexUrl);
  }

  async load() {
    this.client?.terminate();
    this.client = new PneumoscopeClient();
    const status = this.$(".status");
    this.ready = (async () => {
      const classes = this.client.classes();
      classes.catch(() => {}); // a worker that does not start fails the load below too
      const url = await this.modelUrl();
      const m = await this.client.load({ url, backend: this.getAttribute("backend") || "auto" }, (loaded) => {
        status.textContent = `Loading the model… ${(loaded / 1e6).toFixed(1)} MB`;
      });
      this.showClasses(await classes);
      const chosen = choiceText(m.choice);
      status.textContent = `${m.info.arch} on ${m.backend}${chosen ? ` · ${chosen}` : ""}`;
      this.dataset.backend = m.backend;
      return m;
    })();
    try {
      await this.ready;
    } catch (e) {
      status.textContent = "No model loaded.";
      this.fail(e.message);
    }
  }

  /** The class selector's options, from the library's list. */
  showClasses(list) {
    this.classes = list;
    const select = this.$(".cam-class");
    select.replaceChildren();
    for (const c of list) {
      const o = document.createElement("option");
      o.value = c.name;
      o.textContent = c.label;
      select.append(o);
    }
  }

  fail(message) {
    const error = this.$(".error");
    error.textContent = message;
    error.hidden = false;
    this.dispatchEvent(new CustomEvent("pneumoscope-error", { detail: { message } }));
  }

  async analyse(cls) {
    const error = this.$(".error");
    error.hidden = true;
    delete this.dataset.top;
    try {
      await this.ready;
      const r = await this.client.explain(this.bytes, cls);
      this.$(".result").hidden = false;
      const label = this.classes.find((c) => c.name === r.top)?.label ?? r.top;
      this.$(".top").textContent = `Most probable: ${label}`;
      this.$(".cam-class").value = r.cam.class;
      renderBars(this.$(".bars"), r.probabilities, r.top, this.classes);
      drawOverlay(this.$("canvas"), r, 0.45);
      this.dataset.probabilities = JSON.stringify(r.probabilities);
      this.dataset.backend = r.backend;
      this.dataset.ood = JSON.stringify(r.ood ?? null);
      const ood = this.$(".ood");
      const lungReason = r.lungs?.reason ?? null;
      ood.hidden = !r.ood?.flagged && !lungReason;
      ood.textContent = oodMessage(r.ood, lungReason);
      const caution = this.$(".caution");
      caution.hidden = !r.caution;
      caution.textContent = r.caution ?? "";
      if (r.caution) this.dataset.caution = r.caution;
      else delete this.dataset.caution;
      const lungs = this.$(".lungs");
      lungs.hidden = !r.lungs;
      lungs.textContent = lungShareText(r.lungs, r.crop);
      if (r.lungs) this.dataset.lungShare = r.lungs.share == null ? "none" : String(r.lungs.share);
      else delete this.dataset.lungShare;
      this.dataset.top = r.top;
      const { top, probabilities, backend, timings } = r;
      const lungShare = r.lungs ? r.lungs.share : null;
      this.dispatchEvent(new CustomEvent("pneumoscope-result", { detail: { top, probabilities, backend, timings, ood: r.ood ?? null, caution: r.caution ?? null, lungShare } }));
    } catch (e) {
      this.$(".result").hidden = true;
      this.fail(`${this.name}: ${e.message}`);
    }
  }
}

customElements.define("pneumoscope-classifier", PneumoscopeClassifier);
