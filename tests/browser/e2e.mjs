// End-to-end tests of the served page in Debian's chromium, for both backends.
//
//   node tests/browser/e2e.mjs --url http://127.0.0.1:PORT/SUB/PATH/ --site DIR --shared ../shared \
//        --pneumoscope target/release/pneumoscope --model web/models/X.pneumoscope --artifacts DIR \
//        [--python VENV/bin/python]   (with pydicom: DICOM uploads are tested too)
//
// Run by `cargo xtask test`, which serves the page first. Real chest X-rays from the shared
// data are uploaded through `#image-input`; the page's probabilities and Grad-CAM maps are
// compared with the native CLI's; every request of every page and worker is recorded and must
// stay inside the site's folder (on loopback) without a body. `cargo xtask test` serves the
// built site (`cargo xtask dist`) under a sub-path with a plain static server, as a host would.

import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { check, correlation, harness, iou, launch, nativeGradcam, nativePredict, parseArgs, readNpy, watchNetwork } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
for (const k of ["url", "site", "shared", "pneumoscope", "model", "artifacts"]) {
  if (!args[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
}
mkdirSync(args.artifacts, { recursive: true });
const WAIT = { timeout: 10 * 60 * 1000 };
const t = harness();

/** A minimal CSV reader (quoted fields, doubled quotes). */
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

/** Real CXRs: a normal, a bacterial and a viral Kermany image, and a frontal COVID-19 X-ray. */
function testImages(shared) {
  const k = join(shared, "data/kermany/chest_xray/test");
  const pick = (dir, re) => join(k, dir, readdirSync(join(k, dir)).sort().find((f) => re.test(f)));
  const cohen = join(shared, "data/covid-chestxray-dataset");
  const [head, ...rows] = parseCsv(readFileSync(join(cohen, "metadata.csv"), "utf8"));
  const col = (n) => head.indexOf(n);
  const covid = rows.find((r) => r[col("finding")]?.includes("COVID-19") && r[col("view")] === "PA" &&
    r[col("modality")] === "X-ray" && /\.(png|jpe?g)$/i.test(r[col("filename")]));
  return [
    pick("NORMAL", /\.jpe?g$/i),
    pick("PNEUMONIA", /bacteria/),
    pick("PNEUMONIA", /virus/),
    join(cohen, "images", covid[col("filename")]),
  ];
}

const images = testImages(args.shared);
const native = new Map(images.map((f) => [f, nativePredict(args.pneumoscope, args.model, f)]));

/** An adult X-ray of NIH ChestX-ray14 (pneumonia, pathogen unknown) that the native CLI
 * answers with a caution: the model saw few adults with the class it predicts. */
function cautionedImage(shared) {
  const nih = join(shared, "data/nih-chestxray14");
  const [, ...rows] = parseCsv(readFileSync(join(nih, "Data_Entry_2017_v2020.csv"), "utf8"));
  const files = rows.filter((r) => r[1]?.includes("Pneumonia")).filter((_, i) => i % 6 === 0).slice(0, 40)
    .map((r) => join(nih, "images", r[0]));
  for (const f of files) {
    const p = nativePredict(args.pneumoscope, args.model, f);
    if (p.caution) {
      native.set(f, p);
      return f;
    }
  }
  return null;
}
const cautioned = cautionedImage(args.shared);

let onScreen = null; // the file last uploaded to the page

async function upload(page, file) {
  onScreen = file;
  await page.evaluate(() => {
    const r = document.getElementById("result");
    delete r.dataset.top;
    document.getElementById("gradcam").removeAttribute("data-class");
    const e = document.getElementById("error");
    e.hidden = true;
    e.textContent = "";
  });
  await page.setInputFiles("#image-input", file);
  // The result, or an error naming the file: a refusal fails at once, not after the timeout.
  const name = file.split("/").pop();
  const outcome = await page.waitForFunction((n) => {
    if ("top" in document.getElementById("result").dataset) return { refused: null };
    const e = document.getElementById("error");
    return !e.hidden && e.textContent.includes(n) ? { refused: e.textContent } : false;
  }, name, WAIT);
  const { refused } = await outcome.jsonValue();
  check(refused === null, `${name}: the page refused it: ${refused}`);
  await page.waitForSelector("#gradcam[data-class]", { state: "attached", ...WAIT });
  return readResult(page);
}

/** The page's result, Grad-CAM, out-of-distribution warning and timings, as shown. */
async function readResult(page) {
  return page.evaluate(() => {
    const r = document.getElementById("result");
    const c = document.getElementById("gradcam");
    const warning = document.getElementById("ood-warning");
    const caution = document.getElementById("caution");
    return {
      caution: r.dataset.caution ?? null,
      cautionShown: caution.hidden ? null : caution.textContent,
      top: r.dataset.top,
      probabilities: JSON.parse(r.dataset.probabilities),
      backend: r.dataset.backend,
      ood: JSON.parse(r.dataset.ood),
      oodWarning: warning.hidden ? null : warning.textContent,
      cam: { cls: c.dataset.class, values: JSON.parse(c.dataset.map), width: +c.dataset.width, height: +c.dataset.height },
      lungShare: r.dataset.lungShare ?? null,
      lungReason: r.dataset.lungReason ?? null,
      lungMask: c.dataset.lungMask ?? null,
      lungText: document.getElementById("lung-share").hidden ? null : document.getElementById("lung-share").textContent,
      outline: c.dataset.outline ?? null,
      timings: document.getElementById("timings").textContent,
      timingsJson: JSON.parse(r.dataset.timings),
      wallMs: Number(r.dataset.wallMs),
      callMs: Number(r.dataset.callMs),
      memory: JSON.parse(r.dataset.memory ?? "null"),
    };
  });
}

/** Clears `#error`, runs `action`, and waits for an error message that names `name`. */
async function expectError(page, name, action) {
  await page.evaluate(() => {
    const e = document.getElementById("error");
    e.hidden = true;
    e.textContent = "";
  });
  await action();
  await page.waitForFunction((n) => {
    const e = document.getElementById("error");
    return !e.hidden && e.textContent.includes(n);
  }, name, WAIT);
  return page.textContent("#error");
}

function compareWithNative(file, got, backend, want = native.get(file)) {
  check(got.backend === backend, `backend ${got.backend}, expected ${backend}`);
  check(got.top === want.top, `${file}: top ${got.top} in the page, ${want.top} natively`);
  for (const [c, p] of Object.entries(want.probabilities)) {
    const d = Math.abs(got.probabilities[c] - p);
    check(d <= 1e-3, `${file}: p(${c}) ${got.probabilities[c]} in the page vs ${p} natively (|d| = ${d})`);
  }
  check(want.ood && got.ood, `${file}: no out-of-distribution score (page ${JSON.stringify(got.ood)}, CLI ${JSON.stringify(want.ood)})`);
  const d = Math.abs(got.ood.score - want.ood.score);
  check(d <= 1e-3 * Math.max(1, want.ood.score), `${file}: OOD score ${got.ood.score} in the page vs ${want.ood.score} natively`);
  check(got.ood.flagged === want.ood.flagged, `${file}: flagged ${got.ood.flagged} in the page, ${want.ood.flagged} natively`);
  if ("oodWarning" in got) {
    const warn = got.ood.flagged || Boolean(got.lungReason);
    check(Boolean(got.oodWarning) === warn, `${file}: warning ${JSON.stringify(got.oodWarning)} for flagged = ${got.ood.flagged}, lung reason ${got.lungReason}`);
  }
  if ("caution" in got) {
    check(got.caution === (want.caution ?? null), `${file}: caution ${JSON.stringify(got.caution)} in the page, ${JSON.stringify(want.caution)} natively`);
    check(got.cautionShown === got.caution, `${file}: #caution shows ${JSON.stringify(got.cautionShown)} for ${JSON.stringify(got.caution)}`);
  }
}

function compareCam(file, cam, tag) {
  const want = nativeGradcam(args.pneumoscope, args.model, file, cam.cls, join(args.artifacts, `native-${tag}.png`));
  check(want.shape[0] === cam.height && want.shape[1] === cam.width,
    `map ${cam.height}x${cam.width} in the page, ${want.shape} natively`);
  const r = correlation(cam.values, want.data);
  check(r >= 0.99, `${file}: Grad-CAM (${cam.cls}) correlation with the native map ${r.toFixed(4)} < 0.99`);
  return { r, native: want.line };
}

/**
 * The lung fields in the page equal the native CLI's for the same model file: the mask over the
 * view (IoU ≥ 0.99), the share of the evidence inside them (±0.01) and the sentence that says it.
 * Returns the page's share and the IoU.
 */
function compareLungs(file, got, native) {
  check("lung_share" in native, `${file}: the native CLI found no lung segmenter in ${args.model}`);
  check(got.lungMask && got.lungShare != null, `${file}: the page shows no lung fields (data-lung-share ${got.lungShare})`);
  const want = readNpy(native.lung_mask_npy);
  const mask = Array.from(got.lungMask, Number);
  const overlap = iou(mask, want.data);
  check(overlap >= 0.99, `${file}: lung mask IoU ${overlap.toFixed(4)} between the page and the native CLI (< 0.99)`);
  check(got.lungReason === (native.lung_reason ?? null), `${file}: lung reason ${JSON.stringify(got.lungReason)} in the page, ${JSON.stringify(native.lung_reason)} natively`);
  const share = got.lungShare === "none" ? null : Number(got.lungShare);
  check((share == null) === (native.lung_share == null), `${file}: lung share ${share} in the page, ${native.lung_share} natively`);
  if (share != null) {
    check(Math.abs(share - native.lung_share) <= 0.01, `${file}: lung share ${share} in the page vs ${native.lung_share} natively`);
  }
  if (native.lung_reason) {
    // Implausible lung fields: neither outlined nor given a share, and the reason said.
    check(got.outline === "withheld", `${file}: outline ${got.outline} over implausible lung fields`);
    check(got.lungText?.startsWith("Lung fields not outlined") && got.lungText.includes(native.lung_reason),
      `${file}: #lung-share says ${JSON.stringify(got.lungText)} for ${native.lung_reason}`);
  } else if (share != null) {
    check(got.outline === "drawn", `${file}: outline ${got.outline}`);
    const pct = `${Math.round(share * 100)} % of the evidence lies in the lung fields`;
    check(got.lungText?.startsWith(pct), `${file}: #lung-share says ${JSON.stringify(got.lungText)}, expected "${pct}…"`);
  }
  return { share, overlap };
}

/**
 * The library's reported end-to-end time covers the call: within 20 % of the wall time the page
 * measured around it (worker round trip included), no longer than the time from choosing the
 * image to the result drawn, and the sum of its parts within its total.
 */
function checkTimings(got) {
  const t = got.timingsJson;
  for (const k of ["preprocess_ms", "inference_ms", "gradcam_ms", "maps_ms", "total_ms"]) {
    check(Number.isFinite(t[k]) && t[k] >= 0, `timings.${k} = ${t[k]}`);
  }
  check(Array.isArray(t.members) && t.members.length >= 1, `timings.members: ${JSON.stringify(t.members)}`);
  const members = t.members.reduce((s, m) => s + m.inference_ms, 0);
  check(Math.abs(members - t.inference_ms) <= 1, `members' inference ${members} vs ${t.inference_ms}`);
  const parts = t.preprocess_ms + t.inference_ms + t.gradcam_ms + t.maps_ms;
  check(parts <= t.total_ms + 1, `parts ${parts} ms exceed the total ${t.total_ms} ms`);
  const wall = got.wallMs;
  check(Number.isFinite(wall) && wall > 0, `data-wall-ms = ${wall}`);
  check(wall >= t.total_ms, `choose → result ${wall} ms is shorter than the library's total ${t.total_ms} ms`);
  const call = got.callMs;
  check(Number.isFinite(call) && call > 0, `data-call-ms = ${call}`);
  check(Math.abs(t.total_ms - call) <= 0.2 * call,
    `reported total ${t.total_ms.toFixed(0)} ms vs ${call.toFixed(0)} ms measured around the call (more than 20 % apart)`);
}

/**
 * A model file rewritten in the earlier format (4 → 1, 5 → 2: the same header and payload
 * without the 32-byte seal after the prefix). Returns the file and its version.
 */
function legacyFile(sealed) {
  const version = sealed.readUInt32LE(12);
  check(version === 4 || version === 5, `not a sealed classifier file: version ${version}`);
  const old = version - 3;
  const hlen = sealed.readUInt32LE(16);
  const text = sealed.subarray(52, 52 + hlen).toString("latin1");
  const header = text.replace(`"format_version": ${version}`, `"format_version": ${old}`);
  check(header !== text, "the header does not state its format version");
  const prefix = Buffer.alloc(20);
  sealed.copy(prefix, 0, 0, 12);
  prefix.writeUInt32LE(old, 12);
  prefix.writeUInt32LE(hlen, 16);
  return [Buffer.concat([prefix, Buffer.from(header, "latin1"), sealed.subarray(52 + hlen)]), old];
}

async function visit(browser, backend, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1500 }, ...options });
  const net = watchNetwork(context, args.url);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  return { context, net, page, errors };
}

async function backendSuite(browser, backend) {
  const { context, net, page, errors } = await visit(browser, backend);
  const t0 = Date.now();
  await t.test(`${backend}: the page loads the default model`, async () => {
    await page.goto(`${args.url}?backend=${backend}`);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    const used = await page.evaluate(() => document.body.dataset.backend);
    check(used === backend, `model runs on ${used}, ${backend} was asked for`);
    console.log(`#   ${backend}: model ready after ${((Date.now() - t0) / 1000).toFixed(1)} s — ${await page.textContent("#model-status")}`);
  });
  for (const file of images) {
    const name = file.split("/").slice(-1)[0];
    await t.test(`${backend}: ${name} equals the native CLI (probabilities, top class, Grad-CAM)`, async () => {
      const got = await upload(page, file);
      compareWithNative(file, got, backend);
      check(got.cam.cls === got.top, `the first Grad-CAM explains ${got.cam.cls}, not the top class ${got.top}`);
      const { r, native: line } = compareCam(file, got.cam, `${backend}-${name}`);
      const lungs = compareLungs(file, got, line);
      console.log(`#   ${name}: top ${got.top}, Grad-CAM r = ${r.toFixed(5)}, lung share ${lungs.share?.toFixed(3)} ` +
        `(native ${line.lung_share?.toFixed(3)}, mask IoU ${lungs.overlap.toFixed(4)}); ${got.timings}`);
      checkTimings(got);
    });
  }
  await t.test(`${backend}: the library's static constructors ran once, not once per call`, async () => {
    // The worker imported the backend's build of the library already (pkg/pneumoscope.js for
    // the CPU, pkg/pneumoscope_webgpu.js for WebGPU): importing it again in the worker's realm
    // gives the same, initialised module.
    const worker = page.workers()[0];
    check(worker, "the page has no worker");
    const module = backend === "webgpu" ? "./pkg/pneumoscope_webgpu.js" : "./pkg/pneumoscope.js";
    const runs = await worker.evaluate(async (m) => (await import(m)).constructorRunsForTest(), module);
    check(runs === 1, `the constructors ran ${runs} times after ${images.length} images: the module is linked command-style`);
  });
  // DICOM decoding is the same Rust code on both backends: tested once, on the CPU backend.
  if (backend === "cpu" && args.python) {
    const dir = join(args.artifacts, "dicom");
    const made = execFileSync(args.python, [join(import.meta.dirname, "../dicom/make_dicom.py"), images[2], dir], { encoding: "utf8" })
      .trim().split("\n");
    for (const name of ["mono1-12bit-window.dcm", "mono2-16bit-rle.dcm"]) {
      const file = made.find((f) => f.endsWith(name));
      await t.test(`${backend}: DICOM ${name} equals the native CLI`, async () => {
        native.set(file, nativePredict(args.pneumoscope, args.model, file));
        const got = await upload(page, file);
        compareWithNative(file, got, backend);
        check(got.top === native.get(images[2]).top, `${name}: ${got.top}, the plain image gives ${native.get(images[2]).top}`);
      });
    }
  }
  // Keyboard use concerns the page, not the backend: tested once, on the CPU backend. Enter on
  // the focused drop zone must activate the file input (the browser's own chooser is not
  // opened: headless Chromium does not reliably report it).
  if (backend === "cpu") await t.test(`${backend}: the keyboard alone opens the image chooser`, async () => {
    await page.evaluate(() => {
      window.__chooserOpened = false;
      document.getElementById("image-input").addEventListener("click", (e) => {
        window.__chooserOpened = true;
        e.preventDefault();
      }, { once: true });
    });
    // The file input itself takes the focus (its label is the visible button; the drop zone
    // around it is not a control of its own, which would nest one control in another).
    await page.focus("#image-input");
    const focused = await page.evaluate(() => document.activeElement?.id);
    check(focused === "image-input", `the file input cannot take the focus (${focused} has it)`);
    await page.keyboard.press("Space");
    check(await page.evaluate(() => window.__chooserOpened), "Space on the file input did not open it");
  });
  await t.test(`${backend}: an adult X-ray of a class rare among adults in training shows the CLI's caution`, async () => {
    check(cautioned, "the native CLI cautions none of 40 adult NIH pneumonia X-rays");
    const got = await upload(page, cautioned);
    compareWithNative(cautioned, got, backend);
    check(/saw only \d+ X-rays of adults/.test(got.cautionShown ?? ""), `#caution shows ${JSON.stringify(got.cautionShown)}`);
    // The saved PNG carries the caution, wrapped inside the image.
    if (backend === "cpu") {
      const saved = await savedResult(page, "saved-caution.png");
      check(saved.text.includes(got.cautionShown), `the saved PNG leaves out the caution: ${saved.text}`);
      const drawn = saved.lines.map((l) => l.text).join(" ");
      check(drawn.includes(got.cautionShown.split(" ").slice(0, 6).join(" ")), `the caution is not drawn: ${drawn}`);
    }
  });
  await t.test(`${backend}: a photo is flagged as out of distribution, with the CLI's score`, async () => {
    const photo = join(args.shared, "fixtures/imagenet/chelsea.png");
    native.set(photo, nativePredict(args.pneumoscope, args.model, photo));
    check(native.get(photo).ood.flagged, `the CLI does not flag ${photo}: ${JSON.stringify(native.get(photo).ood)}`);
    const got = await upload(page, photo);
    compareWithNative(photo, got, backend);
    check(/unlike the chest X-rays/.test(got.oodWarning ?? ""), `no warning shown: ${got.oodWarning}`);
    // The cat has no lung fields worth drawing: no outline, no "n % of the evidence".
    const { native: line } = compareCam(photo, got.cam, `${backend}-photo`);
    check(line.lung_reason, `the CLI finds the cat's lung fields plausible: ${JSON.stringify(line)}`);
    compareLungs(photo, got, line);
    check(!/of the evidence lies in the lung fields/.test(got.lungText ?? ""), `#lung-share: ${got.lungText}`);
    for (const file of images) {
      check(!native.get(file).ood.flagged, `${file}, a chest X-ray, is flagged: ${JSON.stringify(native.get(file).ood)}`);
    }
    await page.screenshot({ path: join(args.artifacts, `${backend}-ood-photo.png`), fullPage: true });
  });
  await t.test(`${backend}: the class selector explains another class`, async () => {
    const file = onScreen;
    const current = await page.evaluate(() => document.getElementById("result").dataset.top);
    const other = current === "viral" ? "bacterial" : "viral";
    await page.evaluate(() => document.getElementById("gradcam").removeAttribute("data-class"));
    await page.selectOption("#cam-class", other);
    await page.waitForSelector(`#gradcam[data-class=${other}]`, { state: "attached", ...WAIT });
    const cam = await page.evaluate(() => {
      const c = document.getElementById("gradcam");
      return { cls: c.dataset.class, values: JSON.parse(c.dataset.map), width: +c.dataset.width, height: +c.dataset.height };
    });
    compareCam(file, cam, `${backend}-class-${other}`);
  });
  await t.test(`${backend}: a screenshot is kept`, async () => {
    await page.screenshot({ path: join(args.artifacts, `page-${backend}.png`), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.screenshot({ path: join(args.artifacts, `page-${backend}-phone.png`), fullPage: true });
    check(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
  });
  await t.test(`${backend}: "open a model file" loads an exported model on the same backend and refuses damaged ones`, async () => {
    await page.evaluate(() => delete document.body.dataset.modelReady);
    await page.setInputFiles("#model-file", args.model);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    const used = await page.evaluate(() => document.body.dataset.backend);
    check(used === backend, `the second model runs on ${used}, not ${backend}`);
    await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
    // Damaged model files: each is refused with its reason, and the loaded model stays.
    const good = readFileSync(args.model);
    const newer = Buffer.from(good);
    newer.writeUInt32LE(99, 12); // the format version after the 12-byte magic
    // Edits of the header by hand: another architecture, the input normalisation, the
    // out-of-distribution threshold. The header's seal refuses each.
    // (In an ensemble the last two lie in a member's header, inside the checksummed payload.)
    const edit = (from, to) => {
      const text = good.toString("latin1");
      check(from.test(text), `the model's header has no ${from}`);
      return Buffer.from(text.replace(from, to), "latin1");
    };
    const foreign = edit(/"arch": "efficientnet_lite0"/, '"arch": "efficientnet_lite9"');
    const mean = edit(/("mean": \[\s*)0\./, "$19.");
    // Same-length edits, so that the seal, not the declared lengths, is what refuses them.
    const threshold = edit(/"threshold": (\d)/, (_, d) => `"threshold": ${d === "9" ? "8" : "9"}`);
    const flipped = Buffer.from(good);
    flipped[good.length - 100] ^= 0xff;
    const damaged = [
      ["truncated.pneumoscope", good.subarray(0, 100000), "truncated"],
      ["newer.pneumoscope", newer, "format version 99"],
      ["foreign.pneumoscope", foreign, "checksum mismatch"],
      ["mean.pneumoscope", mean, "checksum mismatch"],
      ["threshold.pneumoscope", threshold, "checksum mismatch"],
      ["flipped.pneumoscope", flipped, "corrupt"],
      ["photo.pneumoscope", readFileSync(images[0]), "not a Pneumoscope model file"],
    ];
    for (const [name, bytes, reason] of damaged) {
      const file = join(args.artifacts, name);
      writeFileSync(file, bytes);
      const message = await expectError(page, name, () => page.setInputFiles("#model-file", file));
      check(message.includes(reason), `${name}: unclear message: ${message}`);
      const status = await page.textContent("#model-status");
      check(status.includes("still using"), `the previous model should stay in use: ${status}`);
      console.log(`#   error shown: ${message}`);
    }
    // A file of the earlier format (no seal) loads, and the page says its header is not verified.
    const [legacy, old] = legacyFile(good);
    const file = join(args.artifacts, `legacy-v${old}.pneumoscope`);
    writeFileSync(file, legacy);
    await page.evaluate(() => delete document.body.dataset.modelReady);
    await page.setInputFiles("#model-file", file);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    const status = await page.textContent("#model-status");
    check(status.includes(`header not verified (format v${old}`), `the page does not say the header is unverified: ${status}`);
    check((await page.evaluate(() => document.body.dataset.headerVerified)) === "false", "body[data-header-verified] is not false");
    console.log(`#   legacy file: ${status}`);
    // And the current file again, verified.
    await page.evaluate(() => delete document.body.dataset.modelReady);
    await page.setInputFiles("#model-file", args.model);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    check((await page.evaluate(() => document.body.dataset.headerVerified)) === "true", "a sealed file is not marked verified");
  });
  await t.test(`${backend}: a broken file shows a clear #error`, async () => {
    const broken = join(args.artifacts, "broken-upload.png");
    writeFileSync(broken, Buffer.from("this is not a PNG, only text with a .png name\n"));
    const message = await expectError(page, "broken-upload.png", () => page.setInputFiles("#image-input", broken));
    check(message.includes("image") && !message.includes("model"), `the message is not about the image: ${message}`);
    check(!(await page.evaluate(() => "top" in document.getElementById("result").dataset)), "a stale result is still shown");
    console.log(`#   error shown: ${message}`);
  });
  // The hostile-file corpus (tests/hostile/make_corpus.py), on both backends: decoding is the
  // same Rust code, but what an odd image does to the device (a huge or tiny one) is not.
  if (args.python) {
    await t.test(`${backend}: the hostile-file corpus: clear errors for broken files, answers for odd ones, no freeze`, async () => {
      const dir = join(args.artifacts, "hostile");
      execFileSync(args.python, [join(import.meta.dirname, "../hostile/make_corpus.py"), images[1], dir]);
      const cases = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
      const plain = await upload(page, join(dir, "plain.png"));
      for (const c of cases) {
        const file = join(dir, c.file);
        const t1 = Date.now();
        if (c.expect === "error") {
          const message = await expectError(page, c.file, () => page.setInputFiles("#image-input", file));
          check(message.toLowerCase().includes((c.reason ?? "").toLowerCase()), `${c.file}: the message does not say "${c.reason}": ${message}`);
          check(!(await page.evaluate(() => "top" in document.getElementById("result").dataset)), `${c.file}: a stale result is shown`);
        } else {
          const got = await upload(page, file);
          if (c.expect === "same") check(got.top === plain.top, `${c.file}: ${got.top}, the plain image gives ${plain.top}`);
        }
        console.log(`#   ${c.file}: ${c.expect} in ${Date.now() - t1} ms`);
      }
      // Still responsive afterwards: a real X-ray gets the CLI's answer.
      compareWithNative(images[0], await upload(page, images[0]), backend);
    });
  }
  // pydicom's own test files (tests/dicom/pydicom_corpus.py): the page answers each as the
  // native CLI does, or refuses it with the CLI's reason. Decoding only, so on the CPU backend.
  if (backend === "cpu" && args.python) {
    await t.test(`${backend}: pydicom's test files: the CLI's answer or the CLI's refusal, file by file`, async () => {
      const dir = join(args.artifacts, "pydicom");
      execFileSync(args.python, [join(import.meta.dirname, "../dicom/pydicom_corpus.py"), dir]);
      const corpus = JSON.parse(readFileSync(join(dir, "corpus.json"), "utf8"));
      check(corpus.length >= 70, `only ${corpus.length} files in pydicom's corpus`);
      const cli = spawnSync(args.pneumoscope, ["predict", "--model", args.model, ...corpus.map((c) => c.file)], { encoding: "utf8", maxBuffer: 1 << 26 });
      check(!cli.stderr.includes("panicked"), `the CLI panicked: ${cli.stderr}`);
      const answers = new Map(cli.stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)).map((a) => [a.file, a]));
      const refusals = new Map(cli.stderr.split("\n").filter((l) => l.startsWith("error: ")).map((l) => {
        const c = corpus.find((c) => l.startsWith(`error: ${c.file}: `));
        return c ? [c.file, l.slice(`error: ${c.file}: `.length)] : [l, l];
      }));
      let answered = 0, refused = 0;
      for (const c of corpus) {
        const name = c.file.split("/").pop();
        const want = answers.get(c.file), why = refusals.get(c.file);
        check(Boolean(want) !== Boolean(why), `${name}: the CLI answered ${Boolean(want)} and refused ${JSON.stringify(why)}`);
        if (want) {
          compareWithNative(c.file, await upload(page, c.file), backend, want);
          answered++;
        } else {
          const message = await expectError(page, name, () => page.setInputFiles("#image-input", c.file));
          const reason = why.replace(/^cannot read image: /, "");
          check(message.includes(reason), `${name}: the page says ${JSON.stringify(message)}, the CLI ${JSON.stringify(why)}`);
          refused++;
        }
      }
      check(answered >= 35, `only ${answered} of pydicom's files answered`);
      console.log(`#   ${corpus.length} files: ${answered} answered as the CLI answers them, ${refused} refused with the CLI's reason`);
      compareWithNative(images[0], await upload(page, images[0]), backend);
    });
  }
  await t.test(`${backend}: nothing left the machine and no request carried a body`, async () => {
    const bad = net.violations();
    check(bad.length === 0, `requests that break the rule: ${JSON.stringify(bad)}`);
    const urls = net.requests.map((r) => r.url);
    check(urls.some((u) => u.endsWith(".pneumoscope")), "the watcher did not see the worker's model download");
    check(urls.some((u) => u.endsWith(".wasm")), "the watcher did not see the wasm download");
    console.log(`#   ${net.requests.length} requests, all GET on loopback`);
  });
  await t.test(`${backend}: no image data is kept in browser storage`, async () => {
    const stored = await page.evaluate(async () => ({
      local: localStorage.length,
      session: sessionStorage.length,
      indexedDB: (await indexedDB.databases()).length,
      cookies: document.cookie.length,
    }));
    check(Object.values(stored).every((n) => n === 0), `something was stored: ${JSON.stringify(stored)}`);
    // The Cache API holds the service worker's copy of the site, and nothing else.
    await checkCaches(page, [...images, onScreen].filter(Boolean));
  });
  await t.test(`${backend}: no errors in the console`, async () => {
    // The broken upload is reported in #error, not as an uncaught error.
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  });
  await context.close();
}

/**
 * A panic inside the library (the test-only entry point, armed by `?panic-test` for the first
 * image): that image gets a clear error, the page restarts its worker with the model it holds,
 * and the next image gets the CLI's answer on the same backend.
 */
async function restartSuite(browser, backend) {
  await t.test(`${backend}: a panic of the library: a clear error for its image, the worker restarts with the same model, the next image is answered`, async () => {
    const { context, page } = await visit(browser, backend);
    try {
      await page.goto(`${args.url}?backend=${backend}&panic-test`);
      await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
      const name = images[0].split("/").pop();
      const t0 = Date.now();
      const message = await expectError(page, name, () => page.setInputFiles("#image-input", images[0]));
      check(message.includes("a panic on purpose"), `${name}: the error does not give the panic's message: ${message}`);
      check(message.includes("restarts its library"), `${name}: the error does not say the library restarts: ${message}`);
      check(!(await page.evaluate(() => "top" in document.getElementById("result").dataset)), "a result is shown for the image that failed");
      await page.waitForSelector("body[data-worker-restarts='1']", { state: "attached", ...WAIT });
      const restartMs = Date.now() - t0;
      const status = await page.textContent("#model-status");
      check(status.includes(`ready on ${backend}`) && status.includes("restarted after an internal error"), `the status after the restart: ${status}`);
      compareWithNative(images[1], await upload(page, images[1]), backend);
      compareWithNative(images[0], await upload(page, images[0]), backend);
      const restarts = await page.evaluate(() => document.body.dataset.workerRestarts);
      check(restarts === "1", `${restarts} restarts for one panic`);
      console.log(`#   error shown: ${message}`);
      console.log(`#   fault to a reloaded model in ${restartMs} ms; ${status}`);
    } finally {
      await context.close();
    }
  });
}

/** `n` real X-rays of the shared data, children and adults, in a fixed order. */
function soakImages(shared, n) {
  const k = join(shared, "data/kermany/chest_xray/test");
  const kermany = ["NORMAL", "PNEUMONIA"].flatMap((d) => readdirSync(join(k, d)).sort().slice(0, n).map((f) => join(k, d, f)));
  const a = join(shared, "data/adult-normal");
  const adults = existsSync(a) ? readdirSync(a, { recursive: true }).filter((f) => /\.(png|jpe?g)$/i.test(f)).sort().slice(0, n).map((f) => join(a, f)) : [];
  const all = [...kermany, ...adults];
  return Array.from({ length: n }, (_, i) => all[(i * 7) % all.length]);
}

/**
 * Endurance: `n` images in one visit with the light model. The worker's memory (the wasm
 * memory, and on WebGPU the device allocator's reserve) must stop growing: under 5 % over the
 * last two thirds. The latency drift (the last 50 against the 50 after warm-up) is reported,
 * not asserted: these machines are shared. Stops at `budgetMs`, having classified at least 60.
 */
async function soakSuite(browser, backend, n, budgetMs) {
  await t.test(`${backend}: ${n} images in one visit: the worker's memory stops growing`, async () => {
    const { context, page, errors } = await visit(browser, backend);
    try {
      await page.goto(`${args.url}?backend=${backend}&model=efficientnet_lite0-adults-v2.pneumoscope`);
      await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
      const files = soakImages(args.shared, n);
      const samples = [];
      const t0 = Date.now();
      for (const file of files) {
        if (Date.now() - t0 > budgetMs && samples.length >= 60) break;
        const got = await upload(page, file);
        check(got.memory && got.memory.wasmBytes > 0, `${file}: the worker reports no memory: ${JSON.stringify(got.memory)}`);
        check((backend === "webgpu") === (got.memory.device !== null), `${file}: device memory ${JSON.stringify(got.memory.device)} on ${backend}`);
        samples.push({ ms: got.wallMs, wasm: got.memory.wasmBytes, device: got.memory.device?.bytesReserved ?? null });
      }
      const done = samples.length;
      const third = Math.floor(done / 3);
      const growth = (key) => {
        const base = samples[third][key];
        const peak = Math.max(...samples.slice(third).map((s) => s[key]));
        return (peak - base) / base;
      };
      const mb = (b) => (b / 1e6).toFixed(1);
      const wasmGrowth = growth("wasm");
      const warm = Math.min(10, Math.floor(done / 4));
      const window = Math.min(50, Math.floor((done - warm) / 2));
      const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const early = mean(samples.slice(warm, warm + window).map((s) => s.ms));
      const late = mean(samples.slice(done - window).map((s) => s.ms));
      let line = `#   ${backend}: ${done} images in ${((Date.now() - t0) / 1000).toFixed(0)} s; wasm memory ${mb(samples[0].wasm)} MB after the first, ` +
        `${mb(samples[third].wasm)} MB at a third, ${mb(samples[done - 1].wasm)} MB at the end (${(100 * wasmGrowth).toFixed(2)} % over the last two thirds)`;
      if (backend === "webgpu") {
        line += `; device reserve ${mb(samples[third].device)} → ${mb(samples[done - 1].device)} MB (${(100 * growth("device")).toFixed(2)} %)`;
      }
      line += `; latency ${early.toFixed(0)} ms (images ${warm + 1}-${warm + window}) → ${late.toFixed(0)} ms (the last ${window}), ratio ${(late / early).toFixed(2)}`;
      console.log(line);
      check(done >= Math.min(n, 60), `only ${done} images in the time allowed`);
      check(wasmGrowth < 0.05, `the wasm memory grew ${(100 * wasmGrowth).toFixed(2)} % over the last two thirds`);
      if (backend === "webgpu") check(growth("device") < 0.05, `the device memory grew ${(100 * growth("device")).toFixed(2)} % over the last two thirds`);
      check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
    } finally {
      await context.close();
    }
  });
}

async function policySuite(browser) {
  await t.test("the Content-Security-Policy blocks injected scripts and cross-origin requests", async () => {
    const { context, net, page } = await visit(browser, "cpu");
    await page.goto(args.url);
    const outcome = await page.evaluate(async () => {
      const violations = [];
      document.addEventListener("securitypolicyviolation", (e) => violations.push(e.violatedDirective));
      const s = document.createElement("script");
      s.textContent = "window.__injected = true;";
      document.head.append(s);
      let fetched = "not blocked";
      try {
        await fetch("http://192.0.2.1/exfiltrate", { mode: "no-cors" });
      } catch (e) {
        fetched = "blocked";
      }
      const img = new Image();
      const imgLoaded = await new Promise((resolve) => {
        img.onload = () => resolve(true);
        img.onerror = () => resolve(false);
        img.src = "http://192.0.2.1/pixel.png";
      });
      await new Promise((r) => setTimeout(r, 200));
      return { injected: window.__injected === true, fetched, imgLoaded, violations };
    });
    check(!outcome.injected, "an injected inline script ran");
    check(outcome.fetched === "blocked", "a cross-origin fetch was not blocked");
    check(!outcome.imgLoaded, "a cross-origin image loaded");
    for (const d of ["script-src-elem", "connect-src", "img-src"]) {
      check(outcome.violations.includes(d), `no ${d} violation reported: ${outcome.violations}`);
    }
    const foreign = net.requests.filter((r) => r.url.includes("192.0.2.1"));
    check(foreign.every((r) => /csp/i.test(r.failure ?? "")),
      `a foreign request was not stopped by the policy: ${JSON.stringify(foreign)}`);
    await context.close();
  });
}

async function negativeControl(browser) {
  await t.test("the network check catches a leak (negative control)", async () => {
    const { context, net, page } = await visit(browser, "cpu");
    await page.goto(args.url);
    // A same-origin upload with a body (the page's policy allows same-origin requests) ...
    await page.evaluate(() => fetch("leak-check", { method: "POST", body: "pixels" }).catch(() => {}));
    // ... a same-origin request outside the site's folder ...
    await page.evaluate(() => fetch("/outside-the-site").catch(() => {}));
    // ... and a request to another machine, from a page without the policy.
    const other = await context.newPage();
    await other.setContent("<p>control</p>");
    await other.evaluate(() => fetch("http://192.0.2.1/leak", { mode: "no-cors" }).catch(() => {}));
    await page.waitForTimeout(500);
    const bad = net.violations();
    check(bad.some((r) => r.bodyBytes > 0), `a body was not caught: ${JSON.stringify(net.requests)}`);
    check(bad.some((r) => r.url.startsWith("http://192.0.2.1/")), `a foreign address was not caught: ${JSON.stringify(net.requests)}`);
    check(bad.some((r) => r.url.endsWith("/outside-the-site")), `a request outside the site's folder was not caught: ${JSON.stringify(net.requests)}`);
    await context.close();
  });
}

async function embedSuite(browser) {
  await t.test("the embeddable <pneumoscope-classifier> element classifies like the CLI", async () => {
    const { context, net, page, errors } = await visit(browser, "cpu");
    await page.goto(`${args.url}embed.html?backend=cpu`);
    await page.setInputFiles("pneumoscope-classifier input[type=file]", images[1]);
    await page.waitForSelector("pneumoscope-classifier[data-top]", { state: "attached", ...WAIT });
    const got = await page.evaluate(() => {
      const el = document.querySelector("pneumoscope-classifier");
      return { top: el.dataset.top, probabilities: JSON.parse(el.dataset.probabilities), backend: el.dataset.backend,
        ood: JSON.parse(el.dataset.ood), model: el.getAttribute("model"),
        event: document.getElementById("last-event").textContent };
    });
    // The example names a model of web/models/ (the light one): the CLI runs that same file.
    check(got.model?.startsWith("models/"), `the example names no shipped model: ${got.model}`);
    const file = join(dirname(args.model), got.model.slice("models/".length));
    compareWithNative(images[1], got, "cpu", nativePredict(args.pneumoscope, file, images[1]));
    check(got.event === `pneumoscope-result: ${got.top} on cpu`, `the page did not get the event: ${got.event}`);
    await page.screenshot({ path: join(args.artifacts, "embed.png"), fullPage: true });
    check(net.violations().length === 0, `requests that break the rule: ${JSON.stringify(net.violations())}`);
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
    await context.close();
  });
}

/**
 * The example row: every example of `examples/examples.json` is offered, under 100 KB with a
 * licence; choosing one classifies the file the site serves exactly as the CLI does, and the
 * page says what its collection labelled it.
 */
async function exampleSuite(browser) {
  await t.test("an example from the row classifies like the CLI and says its label", async () => {
    const { context, net, page, errors } = await visit(browser, "cpu");
    await page.goto(`${args.url}?backend=cpu`);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    await page.waitForSelector("#examples:not([hidden])", { state: "attached", ...WAIT });
    const dir = join(dirname(args.model), "..", "examples");
    const listed = JSON.parse(readFileSync(join(dir, "examples.json"), "utf8")).examples;
    const offered = await page.$$eval("button[data-example]", (bs) => bs.map((b) => b.dataset.example));
    check(JSON.stringify(offered) === JSON.stringify(listed.map((e) => e.file)), `offered ${offered}, listed ${listed.map((e) => e.file)}`);
    check(listed.length >= 5 && listed.length <= 6, `${listed.length} examples`);
    for (const ex of listed) {
      check(statSync(join(dir, ex.file)).size <= 100_000, `${ex.file} is over 100 KB`);
      check(/^(CC BY|public)/.test(ex.licence), `${ex.file}: licence ${ex.licence}`);
      check(ex.source !== "folder", `${ex.file} comes from the teaching set, which states no licence`);
    }
    for (const file of ["child-viral.jpg", "adult-covid19.jpg"]) {
      const ex = listed.find((e) => e.file === file);
      check(ex, `no example ${file}`);
      await page.evaluate(() => delete document.getElementById("result").dataset.top);
      await page.click(`button[data-example="${file}"]`);
      await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
      const got = await readResult(page);
      const path = join(dir, file);
      compareWithNative(path, got, "cpu", nativePredict(args.pneumoscope, args.model, path));
      const truth = await page.evaluate(() => ({
        label: document.getElementById("result").dataset.exampleLabel,
        text: document.getElementById("example-truth").textContent,
        hidden: document.getElementById("example-truth").hidden,
      }));
      check(truth.label === ex.label && !truth.hidden && truth.text.includes(ex.licence),
        `${file}: ${JSON.stringify(truth)} for ${JSON.stringify(ex)}`);
      console.log(`#   ${file}: labelled ${ex.label}, the page says ${got.top}`);
    }
    // "Save result": a PNG made in the page (nothing sent), the width the page draws it at.
    const saved = await savedResult(page, "saved-result.png");
    check(saved.width === 780, `the saved result is ${saved.width} wide`);
    check(saved.filename === "pneumoscope-adult-covid19.png", `saved as ${saved.filename}`);
    check(saved.text.includes("NOT A DIAGNOSIS") && saved.text.includes("Most probable") && saved.text.includes("Model:"), saved.text);
    // An image of one's own afterwards carries no label.
    await upload(page, images[0]);
    const after = await page.evaluate(() => document.getElementById("result").dataset.exampleLabel ?? null);
    check(after === null, `an uploaded image shows the example's label ${after}`);
    check(net.violations().length === 0, `requests that break the rule: ${JSON.stringify(net.violations())}`);
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
    await context.close();
  });
}

const AXE = readFileSync(join(process.cwd(), "node_modules/axe-core/axe.min.js"), "utf8");

/** Runs axe-core on the page; no serious or critical violation may remain. */
async function axeCheck(page, what) {
  await page.addScriptTag({ content: AXE });
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = r.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  const say = (v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`;
  check(bad.length === 0, `${what}: ${bad.map(say).join("; ")}`);
  console.log(`#   axe-core, ${what}: ${r.violations.length} violations, none serious or critical` +
    (r.violations.length ? ` (${r.violations.map((v) => `${v.id}: ${v.impact}`).join(", ")})` : ""));
}

/**
 * Presses Space on the focused `selector` until the browser reports a file chooser, and returns
 * it. Playwright turns its interception of choosers on without waiting for the browser to
 * confirm it, so a press that reaches the page first opens an unintercepted chooser that headless
 * Chromium drops: the key is pressed again, at most three times, each time with the focus checked
 * to be on `selector`.
 */
async function openChooserFromKeyboard(page, selector) {
  const choosers = [];
  const take = (c) => choosers.push(c);
  page.on("filechooser", take);
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      const focused = await page.evaluate((sel) => document.activeElement?.matches(sel), selector);
      check(focused, `the focus left ${selector} before Space was pressed`);
      await page.keyboard.press("Space");
      for (let waited = 0; waited < 10000 && choosers.length === 0; waited += 100) await page.waitForTimeout(100);
      if (choosers.length > 0) {
        if (attempt > 0) console.log(`#   the file chooser opened on press ${attempt + 1} of Space`);
        return choosers[0];
      }
    }
    throw new Error(`Space on ${selector} never opened a file chooser (3 presses, 10 s each)`);
  } finally {
    page.off("filechooser", take);
  }
}

/**
 * For people: axe-core finds no serious or critical violation on the empty page, a result, an
 * error and the embed example; the whole flow works from the keyboard; the result is announced
 * as text. (axe-core is injected as a script, which the page's policy forbids: this context
 * bypasses the policy, which the policy suite tests on its own.)
 */
async function accessibilitySuite(browser) {
  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1100, height: 1500 } });
  const page = await context.newPage();
  await t.test("accessibility: axe-core on the empty page, a result, an error and the embed example", async () => {
    await page.goto(`${args.url}?backend=cpu`);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    await page.waitForSelector("#examples:not([hidden])", { state: "attached", ...WAIT });
    await axeCheck(page, "empty page");
    await upload(page, images[3]);
    await axeCheck(page, "a result");
    const broken = join(args.artifacts, "broken-a11y.png");
    writeFileSync(broken, "not an image");
    await expectError(page, "broken-a11y.png", () => page.setInputFiles("#image-input", broken));
    await axeCheck(page, "an error");
    await page.goto(`${args.url}embed.html?backend=cpu`);
    await page.setInputFiles("pneumoscope-classifier input[type=file]", images[1]);
    await page.waitForSelector("pneumoscope-classifier[data-top]", { state: "attached", ...WAIT });
    await axeCheck(page, "the embed example with a result");
  });
  await t.test("keyboard: an example, then an image of one's own, without a mouse; the result is announced", async () => {
    await page.goto(`${args.url}?backend=cpu`);
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    await page.waitForSelector("#examples:not([hidden])", { state: "attached", ...WAIT });
    const focusOn = async (selector) => {
      for (let i = 0; i < 60; i++) {
        await page.keyboard.press("Tab");
        if (await page.evaluate((sel) => document.activeElement?.matches(sel), selector)) return;
      }
      throw new Error(`Tab never reaches ${selector}`);
    };
    await focusOn('button[data-example="child-bacterial.jpg"]');
    await page.keyboard.press("Enter");
    await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
    const said = await page.evaluate(() => ({
      text: document.getElementById("announce").textContent,
      live: document.getElementById("announce").getAttribute("aria-live"),
      top: document.getElementById("result").dataset.top,
      p: JSON.parse(document.getElementById("result").dataset.probabilities),
    }));
    const labels = { normal: "Normal", bacterial: "Bacterial pneumonia", viral: "Viral pneumonia", covid19: "COVID-19" };
    const want = `Most probable: ${labels[said.top]}, ${Math.round(said.p[said.top] * 100)} %.`;
    check(said.live === "polite" && said.text.startsWith(want), `announced ${JSON.stringify(said.text)}, expected "${want}…"`);
    // The file chooser opens from the keyboard.
    await page.evaluate(() => delete document.getElementById("result").dataset.top);
    await focusOn("#image-input");
    await (await openChooserFromKeyboard(page, "#image-input")).setFiles(images[2]);
    await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
    // The class selector and the opacity slider are reachable too.
    await focusOn("#cam-class");
    await focusOn("#opacity");
  });
  await context.close();
}

/**
 * The default model's download size is said before it is fetched; a download that fails says
 * why, and "Try again" loads it.
 */
async function downloadSuite(browser) {
  await t.test("the model's size is shown before its download, and a failed download can be tried again", async () => {
    // Without the service worker: once it controls the page, the same download is seen twice
    // here (the page's request and the worker's), and whether it does by the retry is a race.
    // The offline suite covers the worker.
    const { context, page } = await visit(browser, "cpu", { serviceWorkers: "block" });
    const index = JSON.parse(readFileSync(join(args.site, "models/index.json"), "utf8"));
    const entry = index.models.find((m) => m.file === index.default);
    check(entry?.bytes === statSync(join(args.site, "models", index.default)).size, `index.json: ${JSON.stringify(entry)}`);
    const size = `(${(entry.bytes / 1e6).toFixed(1)} MB)`;
    let attempts = 0;
    await context.route("**/models/*.pneumoscope", (route) => (attempts++ === 0 ? route.abort("connectionreset") : route.continue()));
    await page.addInitScript(() => {
      window.__statuses = [];
      new MutationObserver(() => {
        const s = document.getElementById("model-status");
        if (s && window.__statuses.at(-1) !== s.textContent) window.__statuses.push(s.textContent);
      }).observe(document, { subtree: true, childList: true, characterData: true });
    });
    await page.goto(`${args.url}?backend=cpu`);
    await page.waitForSelector("#model-retry:not([hidden])", { state: "attached", ...WAIT });
    const error = await page.textContent("#error");
    check(error.includes(index.default) && /try again/i.test(error), `the error does not name the model and the remedy: ${error}`);
    await page.click("#model-retry");
    await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
    const statuses = await page.evaluate(() => window.__statuses);
    // The first thing said of the model, before any byte of it arrived.
    const first = statuses.find((s) => s.startsWith(`Loading ${index.default}`));
    check(first === `Loading ${index.default} ${size}…`, `first status ${JSON.stringify(first)}; all: ${JSON.stringify(statuses.slice(0, 6))}`);
    check(attempts === 2, `${attempts} download attempts`);
    check(await page.isHidden("#model-retry"), "Try again is still shown after the model loaded");
    const option = await page.textContent(`#model-select option[value="${index.default}"]`);
    check(option.endsWith(size), `the menu does not give the size: ${option}`);
    await context.close();
  });
}

/** Every entry of the page's Cache API: cache name, URL, size and SHA-256 of the body. */
async function cacheEntries(page) {
  return page.evaluate(async () => {
    const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
    const out = [];
    for (const name of await caches.keys()) {
      const cache = await caches.open(name);
      for (const request of await cache.keys()) {
        const body = await (await cache.match(request)).arrayBuffer();
        out.push({ name, url: request.url, bytes: body.byteLength, sha256: hex(await crypto.subtle.digest("SHA-256", body)) });
      }
    }
    return out;
  });
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/**
 * Every Cache API entry is a file of the site, byte for byte, in a cache of the site's own, and
 * none holds the bytes of an image that was uploaded. Returns the entries.
 */
async function checkCaches(page, uploadedFiles) {
  const entries = await cacheEntries(page);
  const uploaded = new Set(uploadedFiles.map((f) => sha256(readFileSync(f))));
  for (const e of entries) {
    check(e.name.startsWith("pneumoscope-"), `a cache that is not the site's: ${e.name}`);
    check(e.url.startsWith(args.url), `a cached response from outside the site: ${e.url}`);
    const rel = decodeURIComponent(e.url.slice(args.url.length).split("?")[0]);
    const onDisk = rel === "" ? join(args.site, "index.html") : join(args.site, rel);
    check(existsSync(onDisk) && statSync(onDisk).isFile(), `a cached entry that is not a file of the site: ${e.url}`);
    check(sha256(readFileSync(onDisk)) === e.sha256, `${e.url}: the cached body is not the site's file`);
    check(!uploaded.has(e.sha256), `${e.url}: the bytes of an uploaded image are cached`);
  }
  return entries;
}

/**
 * Offline after the first visit (the service worker, sw.js): the page reloads with no network
 * and classifies an example as the CLI does; its caches hold only the site's own files, never
 * the bytes of an image the visitor chose; and a new version of the site replaces the old cache.
 */
async function offlineSuite(browser) {
  const { context, page, errors } = await visit(browser, "cpu");
  let cacheName = null;
  await t.test("offline after the first visit: reload with no network and classify an example", async () => {
    await page.goto(`${args.url}?backend=cpu`);
    await page.waitForSelector("body[data-offline=ready]", { state: "attached", ...WAIT });
    cacheName = await page.evaluate(() => document.body.dataset.offlineCache);
    await upload(page, images[2]);
    await context.setOffline(true);
    try {
      await page.reload();
      await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
      await page.waitForSelector("#examples:not([hidden])", { state: "attached", ...WAIT });
      await page.click('button[data-example="child-normal.jpg"]');
      await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
      const got = await readResult(page);
      const file = join(args.site, "examples/child-normal.jpg");
      compareWithNative(file, got, "cpu", nativePredict(args.pneumoscope, args.model, file));
      // An image of one's own, offline too.
      const mine = await upload(page, images[0]);
      compareWithNative(images[0], mine, "cpu");
    } finally {
      await context.setOffline(false);
    }
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  });
  await t.test("the caches hold only the site's own files, never an image the visitor chose", async () => {
    const entries = await checkCaches(page, [images[0], images[2]]);
    check(entries.length > 0, "nothing is cached");
    check(entries.every((e) => e.name === cacheName), `a cache other than the site's: ${entries.map((e) => e.name)}`);
    check(entries.some((e) => e.url.endsWith(".pneumoscope")), `the model is not cached: ${entries.map((e) => e.url)}`);
    // A visit on the CPU never needed the WebGPU build of the library, so it is not kept either.
    check(entries.some((e) => e.url.endsWith("pkg/pneumoscope_bg.wasm")), "the CPU module is not cached");
    check(!entries.some((e) => e.url.includes("pneumoscope_webgpu")), `the WebGPU module was cached: ${entries.map((e) => e.url)}`);
    console.log(`#   ${entries.length} cached files in ${cacheName}, ${(entries.reduce((s, e) => s + e.bytes, 0) / 1e6).toFixed(1)} MB`);
  });
  await t.test("a new version of the site replaces the old cache", async () => {
    const sw = join(args.site, "sw.js");
    const original = readFileSync(sw, "utf8");
    const next = original.replace(/const VERSION = "([^"]*)";/, 'const VERSION = "$1-next";');
    check(next !== original, "sw.js has no version line");
    writeFileSync(sw, next);
    try {
      await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()).update());
      const deadline = Date.now() + 120_000;
      let names = [];
      while (Date.now() < deadline) {
        names = await page.evaluate(() => caches.keys());
        if (names.length === 1 && names[0] === `${cacheName}-next`) break;
        await page.waitForTimeout(250);
      }
      check(names.length === 1 && names[0] === `${cacheName}-next`, `caches after the update: ${names}`);
    } finally {
      writeFileSync(sw, original);
    }
  });
  await context.close();
}

const ARCHS = ["alexnet", "vgg16", "googlenet", "resnet50", "wide_resnet50_2", "resnext50_32x4d", "densenet161",
  "squeezenet1_0", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0"];

/**
 * Every architecture of the registry in the page: an untrained f16 model file of each (made by
 * the CLI, marked as such) is opened through "open a model file" and must give the native CLI's
 * probabilities and Grad-CAM on a real X-ray — on the CPU backend for all twelve (WebGPU on
 * SwiftShader is too slow for the large ones), and on WebGPU for the small ones.
 */
async function architectureSuite(browser, backend, archs) {
  const { context, page, errors } = await visit(browser, backend);
  await page.goto(`${args.url}?backend=${backend}`);
  await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
  const file = images[1];
  for (const arch of archs) {
    await t.test(`${backend}: ${arch} runs in the page and equals the native CLI`, async () => {
      const model = join(args.artifacts, `untrained-${arch}.pneumoscope`);
      // Made afresh by this build of the CLI (no file of an older build is reused).
      execFileSync(args.pneumoscope, ["untrained", "--arch", arch, "--f16", "--out", model], { encoding: "utf8" });
      const t0 = Date.now();
      await page.evaluate(() => {
        delete document.body.dataset.modelReady;
        delete document.getElementById("result").dataset.top;
        document.getElementById("gradcam").removeAttribute("data-class");
      });
      await page.setInputFiles("#model-file", model);
      await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
      const status = await page.textContent("#model-status");
      check(status.includes(arch) && status.includes("UNTRAINED"), `the status does not name ${arch} as untrained: ${status}`);
      const used = await page.evaluate(() => document.body.dataset.backend);
      check(used === backend, `${arch} runs on ${used}, not ${backend}`);
      const loadMs = Date.now() - t0;
      const t1 = Date.now();
      await page.setInputFiles("#image-input", file);
      await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
      await page.waitForSelector("#gradcam[data-class]", { state: "attached", ...WAIT });
      const got = await readResult(page);
      const want = nativePredict(args.pneumoscope, model, file);
      check(got.top === want.top, `${arch}: top ${got.top} in the page, ${want.top} natively`);
      for (const [c, p] of Object.entries(want.probabilities)) {
        const d = Math.abs(got.probabilities[c] - p);
        check(d <= 1e-3, `${arch}: p(${c}) ${got.probabilities[c]} in the page vs ${p} natively`);
      }
      const cam = nativeGradcam(args.pneumoscope, model, file, got.cam.cls, join(args.artifacts, `native-${backend}-${arch}.png`));
      check(cam.shape[0] === got.cam.height && cam.shape[1] === got.cam.width, `${arch}: map ${got.cam.height}x${got.cam.width} vs ${cam.shape}`);
      const r = correlation(got.cam.values, cam.data);
      check(r >= 0.99, `${arch}: Grad-CAM correlation with the native map ${r.toFixed(4)}`);
      console.log(`#   ${arch} (${(statSync(model).size / 1e6).toFixed(1)} MB): loaded in ${loadMs} ms, classified + Grad-CAM in ${Date.now() - t1} ms, r = ${r.toFixed(5)}`);
    });
  }
  await t.test(`${backend}: no errors in the console while switching architectures`, async () => {
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  });
  await context.close();
}

/**
 * Clicks "Save result as PNG" and reads the file back: its size, its `Description` text and the
 * page's layout record (every drawn line and its measured width), which must fit the image.
 */
async function savedResult(page, name) {
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#save-result")]);
  const path = join(args.artifacts, name);
  await download.saveAs(path);
  const png = readFileSync(path);
  check(png.subarray(1, 4).toString() === "PNG", `${name} is not a PNG`);
  const texts = {};
  for (let at = 8; at < png.length;) {
    const n = png.readUInt32BE(at);
    const type = png.subarray(at + 4, at + 8).toString("latin1");
    if (type === "iTXt") {
      const data = png.subarray(at + 8, at + 8 + n);
      const key = data.subarray(0, data.indexOf(0)).toString("latin1");
      // keyword NUL, compression flag and method, language tag NUL, translated keyword NUL
      let p = data.indexOf(0) + 3;
      p = data.indexOf(0, p) + 1;
      p = data.indexOf(0, p) + 1;
      texts[key] = data.subarray(p).toString("utf8");
    }
    at += 12 + n;
  }
  const width = png.readUInt32BE(16);
  check(texts.Description, `${name} carries no Description text`);
  const layout = JSON.parse(texts["Pneumoscope layout"] ?? "null");
  check(layout && layout.width === width, `${name}: layout ${JSON.stringify(layout)?.slice(0, 200)}`);
  for (const l of layout.lines) {
    check(layout.margin + l.width <= width - layout.margin + 0.5, `${name}: "${l.text}" is ${l.width} px wide, past the image's ${width} px`);
  }
  // Every word of the text is drawn: nothing is cut at the right edge.
  const drawn = layout.lines.map((l) => l.text).join(" ");
  check(drawn === texts.Description.replace(/\s+/g, " ").trim(), `${name}: drawn "${drawn}" for "${texts.Description}"`);
  return { width, height: png.readUInt32BE(20), text: texts.Description, lines: layout.lines, filename: download.suggestedFilename() };
}

/** The stored backend choice of the default model, as the page keeps it (localStorage). */
async function storedChoice(page) {
  return page.evaluate(() => {
    const keys = Object.keys(localStorage).filter((k) => k.startsWith("pneumoscope.backend:"));
    return keys.length === 1 ? { key: keys[0], value: JSON.parse(localStorage.getItem(keys[0])) } : { keys };
  });
}

/**
 * Which builds of the library the page's worker downloaded: the CPU module
 * (`pkg/pneumoscope_bg.wasm`, every visit) and the WebGPU one (`pkg/pneumoscope_webgpu_bg.wasm`).
 */
async function modulesFetched(page) {
  const worker = page.workers()[0];
  check(worker, "the page has no worker");
  const names = await worker.evaluate(() => performance.getEntriesByType("resource").map((e) => e.name));
  return {
    cpu: names.some((n) => /\/pkg\/pneumoscope_bg\.wasm/.test(n)),
    webgpu: names.some((n) => /\/pkg\/pneumoscope_webgpu_bg\.wasm/.test(n)),
  };
}

async function readyStatus(page, url) {
  await page.goto(url);
  await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
  return { backend: await page.evaluate(() => document.body.dataset.backend), status: await page.textContent("#model-status") };
}

/** `auto` without `?backend=`: the measured choice, the software adapter, the stored choice. */
async function autoSuite(browser) {
  const { context, page, errors } = await visit(browser, "auto");
  try {
    await t.test("auto: on a software WebGPU adapter the page takes the CPU by itself, says why, and answers like the CLI", async () => {
      const { backend, status } = await readyStatus(page, args.url);
      check(backend === "cpu", `auto chose ${backend} on SwiftShader`);
      check(status.includes("software renderer"), `no reason given: ${status}`);
      const t0 = Date.now();
      const got = await upload(page, images[0]);
      compareWithNative(images[0], got, "cpu");
      console.log(`#   ${status}; first image answered in ${Date.now() - t0} ms`);
      const stored = await storedChoice(page);
      check(stored.keys?.length === 0, `nothing was measured, yet a choice was stored: ${JSON.stringify(stored)}`);
      // Nothing asked for WebGPU, so its build of the library was never downloaded.
      const fetched = await modulesFetched(page);
      check(fetched.cpu && !fetched.webgpu, `modules downloaded: ${JSON.stringify(fetched)}`);
    });
    await t.test("measure: both backends timed on the probe, both times in the status line, the faster kept and remembered", async () => {
      const { backend, status } = await readyStatus(page, `${args.url}?backend=measure`);
      const m = status.match(/CPU ([\d,]+) ms, WebGPU ([\d,]+) ms \(first run ([\d,]+) ms\): using (the CPU|WebGPU)/);
      check(m, `the status line does not give both times: ${status}`);
      const stored = await storedChoice(page);
      check(stored.value, `no choice stored: ${JSON.stringify(stored)}`);
      const { cpuMs, gpuMs, modelSha256, browser: ua } = stored.value;
      check(stored.value.backend === backend, `stored ${stored.value.backend}, using ${backend}`);
      check((backend === "webgpu") === (gpuMs < 0.9 * cpuMs), `chose ${backend} with CPU ${cpuMs} ms, WebGPU ${gpuMs} ms`);
      check(/^[0-9a-f]{64}$/.test(modelSha256) && ua.includes("Chrome"), JSON.stringify(stored.value));
      // The probe needed the WebGPU build of the library as well.
      const fetched = await modulesFetched(page);
      check(fetched.cpu && fetched.webgpu, `modules downloaded: ${JSON.stringify(fetched)}`);
      console.log(`#   ${status}`);
    });
    await t.test("auto: a stored choice is reused for the same model file and browser, and discarded when the file changes", async () => {
      // A stored measurement that found WebGPU faster on this browser: reused without a probe.
      const { key, value } = await storedChoice(page);
      await page.evaluate(([k, v]) => localStorage.setItem(k, JSON.stringify(v)), [key, { ...value, backend: "webgpu", gpuMs: 1, cpuMs: 100 }]);
      let r = await readyStatus(page, args.url);
      check(r.backend === "webgpu", `the stored choice was not reused: ${r.backend}`);
      check(r.status.includes("measured on an earlier visit"), r.status);
      // A forced backend wins over it.
      r = await readyStatus(page, `${args.url}?backend=cpu`);
      check(r.backend === "cpu", `?backend=cpu gave ${r.backend}`);
      // Another model file (its checksum differs): the stored choice no longer holds.
      await page.evaluate(([k, v]) => localStorage.setItem(k, JSON.stringify(v)), [key, { ...value, backend: "webgpu", modelSha256: "0".repeat(64) }]);
      r = await readyStatus(page, args.url);
      check(r.backend === "cpu" && r.status.includes("software renderer"), `${r.backend}: ${r.status}`);
      // Another browser version: the same.
      await page.evaluate(([k, v]) => localStorage.setItem(k, JSON.stringify(v)), [key, { ...value, backend: "webgpu", browser: "Chrome/1.0" }]);
      r = await readyStatus(page, args.url);
      check(r.backend === "cpu" && r.status.includes("software renderer"), `${r.backend}: ${r.status}`);
    });
    await t.test("auto: no errors in the console", async () => {
      check(errors.length === 0, errors.join("\n"));
    });
  } finally {
    await context.close();
  }
}

async function fallbackSuite() {
  const browser = await launch({ webgpu: false });
  try {
    await t.test("without WebGPU, auto falls back to the CPU and says why", async () => {
      const { context, page } = await visit(browser, "auto");
      await page.goto(args.url);
      await page.waitForSelector("body[data-model-ready=true]", { state: "attached", ...WAIT });
      const used = await page.evaluate(() => document.body.dataset.backend);
      check(used === "cpu", `auto chose ${used} without WebGPU`);
      const status = await page.textContent("#model-status");
      check(status.includes("WebGPU unavailable"), `no reason given: ${status}`);
      const got = await upload(page, images[0]);
      compareWithNative(images[0], got, "cpu");
      await context.close();
    });
    await t.test("without WebGPU, a forced webgpu backend gives a clear error", async () => {
      const { context, page } = await visit(browser, "webgpu");
      await page.goto(`${args.url}?backend=webgpu`);
      await page.waitForSelector("#error:not([hidden])", WAIT);
      const message = await page.textContent("#error");
      check(/WebGPU/.test(message), `unclear message: ${message}`);
      console.log(`#   error shown: ${message}`);
      await context.close();
    });
  } finally {
    await browser.close();
  }
}

// `--suites a,b` runs only the named suites (a developer's shortcut; CI runs them all).
const wanted = args.suites ? new Set(args.suites.split(",")) : null;
const want = (suite) => !wanted || wanted.has(suite);
const backends = (args.backends || "cpu,webgpu").split(",");
const browser = await launch({ webgpu: true });
try {
  await t.test("chromium exposes WebGPU with an adapter", async () => {
    const page = await browser.newPage();
    await page.goto(args.url);
    const adapter = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
    await page.close();
    check(adapter, "no WebGPU adapter: the webgpu backend cannot be tested");
  });
  if (want("auto")) await autoSuite(browser);
  if (want("backend")) for (const backend of backends) await backendSuite(browser, backend);
  if (want("restart")) for (const backend of backends) await restartSuite(browser, backend);
  if (want("soak")) {
    for (const backend of backends) {
      await soakSuite(browser, backend, backend === "cpu" ? Number(args["soak-cpu"] ?? 300) : Number(args["soak-webgpu"] ?? 30), 8 * 60 * 1000);
    }
  }
  if (want("architecture") && !args["skip-archs"]) {
    await architectureSuite(browser, "cpu", ARCHS);
    await architectureSuite(browser, "webgpu", ["squeezenet1_0", "shufflenet_v2_x1_0", "mobilenet_v3_large"]);
  }
  if (want("embed")) await embedSuite(browser);
  if (want("example")) await exampleSuite(browser);
  if (want("policy")) await policySuite(browser);
  if (want("negative")) await negativeControl(browser);
  if (want("accessibility")) await accessibilitySuite(browser);
  if (want("download")) await downloadSuite(browser);
  if (want("offline")) await offlineSuite(browser);
} finally {
  await browser.close();
}
if (want("fallback")) await fallbackSuite();
const { failed, passed } = t.summary();
process.exit(failed > 0 || passed === 0 ? 1 : 0);
