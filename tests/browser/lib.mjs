// Shared helpers of the browser tests and the browser benchmark: launching Debian's chromium
// through playwright-core, watching the network, reading .npy files, the native CLI.

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Parses `--key value` arguments. */
export function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) out[argv[i].slice(2)] = argv[i + 1];
    i++;
  }
  return out;
}

/**
 * Launches headless chromium. With `webgpu`, WebGPU is enabled (on this kind of machine it runs
 * on SwiftShader, the CPU); without it, the page must fall back to the CPU backend.
 */
export async function launch({ webgpu = true } = {}) {
  const args = [
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
  ];
  if (webgpu) args.push("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader", "--use-webgpu-adapter=swiftshader");
  else args.push("--disable-webgpu", "--disable-gpu");
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args,
  });
}

/**
 * Records every request of a browser context (pages and their workers): URL, method, body
 * size and, for a request that never completed, why (e.g. net::ERR_BLOCKED_BY_CSP). `violations()` lists the ones that break the privacy rule:
 * a non-loopback address, or any body at all.
 */
export function watchNetwork(context, site = null) {
  const requests = [];
  const byRequest = new Map();
  context.on("request", (r) => {
    const body = r.postDataBuffer();
    const entry = { url: r.url(), method: r.method(), bodyBytes: body ? body.length : 0, failure: null };
    byRequest.set(r, entry);
    requests.push(entry);
  });
  context.on("requestfailed", (r) => {
    const entry = byRequest.get(r);
    if (entry) entry.failure = r.failure()?.errorText ?? "failed";
  });
  return {
    requests,
    violations() {
      return requests.filter((r) => !isLoopbackUrl(r.url) || (site && !insideSite(r.url, site)) || r.bodyBytes > 0 ||
        !["GET", "HEAD"].includes(r.method));
    },
  };
}

/** Whether a URL lies inside the site's folder (`site`: its address, ending in "/") or never
 * touches the network. */
export function insideSite(url, site) {
  const u = new URL(url);
  if (["blob:", "data:", "about:"].includes(u.protocol)) return true;
  return url.startsWith(site);
}

/** Whether a URL stays on this machine (loopback host) or never touches the network. */
export function isLoopbackUrl(url) {
  const u = new URL(url);
  if (["blob:", "data:", "about:"].includes(u.protocol)) return true;
  const h = u.hostname.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\./.test(h);
}

/** Reads a little-endian float32 .npy file: { shape, data }. */
export function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${path}: not a .npy file`);
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + hlen;
  const header = buf.toString("latin1", major === 1 ? 10 : 12, start);
  if (!header.includes("<f4")) throw new Error(`${path}: not float32 (${header})`);
  const shape = header.match(/\(([^)]*)\)/)[1].split(",").filter((s) => s.trim()).map(Number);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length));
  return { shape, data: Array.from(data) };
}

/** Pearson correlation of two equal-length arrays (1 when both are constant and equal). */
export function correlation(a, b) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  const n = a.length;
  const ma = a.reduce((s, v) => s + v, 0) / n;
  const mb = b.reduce((s, v) => s + v, 0) / n;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) ** 2;
    sbb += (b[i] - mb) ** 2;
  }
  if (saa === 0 && sbb === 0) return a.every((v, i) => Math.abs(v - b[i]) < 1e-6) ? 1 : 0;
  return sab / Math.sqrt(saa * sbb);
}

/** Native `pneumoscope predict` of one file: { top, probabilities }. */
export function nativePredict(bin, model, file) {
  const out = execFileSync(bin, ["predict", "--model", model, file], { encoding: "utf8" });
  return JSON.parse(out.trim().split("\n")[0]);
}

/** Native `pneumoscope gradcam` of one file for one class: the raw map, and the CLI's JSON line
 * (`line`; with `lung_share` and `lung_mask_npy` when the model carries a lung segmenter). */
export function nativeGradcam(bin, model, file, cls, outPng) {
  const out = execFileSync(bin, ["gradcam", "--model", model, "--class", cls, "--out", outPng, file], { encoding: "utf8" });
  const line = JSON.parse(out.trim().split("\n").pop());
  return { ...readNpy(outPng.replace(/\.png$/, ".npy")), line };
}

/** Intersection over union of two equal-length binary masks (1 when both are empty). */
export function iou(a, b) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let inter = 0, union = 0;
  for (let i = 0; i < a.length; i++) {
    const p = a[i] > 0.5, q = b[i] > 0.5;
    if (p && q) inter++;
    if (p || q) union++;
  }
  return union === 0 ? 1 : inter / union;
}

/** A small test harness printing `ok - name` / `not ok - name: reason` lines. */
export function harness() {
  let passed = 0;
  let failed = 0;
  return {
    async test(name, fn) {
      const t0 = Date.now();
      try {
        await fn();
        passed++;
        console.log(`ok - ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
      } catch (e) {
        failed++;
        console.log(`not ok - ${name}: ${e && e.stack ? e.stack : e}`);
      }
    },
    summary() {
      console.log(`browser tests: ${passed} passed, ${failed} failed`);
      return { passed, failed };
    },
  };
}

/** Throws with `message` unless `cond`. */
export function check(cond, message) {
  if (!cond) throw new Error(message);
}
