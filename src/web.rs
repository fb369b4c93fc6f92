//! The JavaScript API of the WebAssembly build (`pkg/`), made with `wasm-bindgen`.
//!
//! ```js
//! import init, { Classifier } from "./pkg/pneumoscope.js";
//! await init();
//! const model = await Classifier.load(new Uint8Array(modelBytes), "auto"); // or "webgpu", "cpu"
//! model.backend;                       // "webgpu" or "cpu"
//! const r = await model.classify(new Uint8Array(imageBytes));
//! r.top;                               // "normal" | "bacterial" | "viral" | "covid19"
//! r.probabilities;                     // { normal: 0.01, bacterial: 0.9, viral: 0.08, covid19: 0.01 }
//! r.timings;                           // { preprocess_ms, inference_ms }
//! r.ood;                               // { score, flagged } or null: score > 1 = unlike the training X-rays
//! r.population;                        // { adult_probability, population: "child" | "adult" } or null
//! r.caution;                           // a sentence, or null: too few such training images for this answer
//! const e = await model.explain(new Uint8Array(imageBytes), "viral"); // class optional
//! e.cam;                               // { width, height, values (Float32Array), class, score }: the raw map
//! e.size;                              // side of the network input (e.g. 224)
//! e.view;                              // Uint8ClampedArray RGBA: what the network saw
//! e.heatmap;                           // Uint8ClampedArray RGBA: the map, jet colours
//! e.lungs;                             // null, or { share, area_fraction, regions, shape, reason, mask, outline }:
//!                                      // the lung fields, when the model file carries a segmenter
//! ```
//!
//! Everything runs in the calling thread (the page runs it in a Web Worker): the image is
//! decoded, preprocessed, classified and explained by the same Rust code as the native CLI. On
//! WebGPU every read of a result is asynchronous, as browsers require.

use crate::classes::Class;
use crate::gradcam;
use crate::inference::{Engine, Prediction};
use crate::model::{Footprint, footprint};
use crate::model_file::network_archs;
use burn::prelude::*;
use js_sys::{Float32Array, Object, Promise, Reflect, Uint8ClampedArray};
use serde::Serialize;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

unsafe extern "C" {
    /// The module's static constructors (the `inventory` registrations of a dependency of
    /// Burn's WebGPU compiler), synthesised by the linker.
    fn __wasm_call_ctors();
}

/// Runs the static constructors once, shows Rust panics in the browser console instead of
/// "unreachable", and leaves the message in the global `pneumoscopePanic`, where the worker
/// reads it after the trap that follows (a panic aborts in wasm32: the instance is unusable
/// afterwards and the worker starts anew).
///
/// The explicit constructor call matters for speed: a module that never calls
/// `__wasm_call_ctors` itself is linked "command-style", and the linker then wraps every
/// exported function (every call from JavaScript, several per classification) in a call that
/// runs all the constructors again.
#[wasm_bindgen(start)]
pub fn start() {
    run_constructors();
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        let _ = Reflect::set(
            &js_sys::global(),
            &"pneumoscopePanic".into(),
            &message.as_str().into(),
        );
        web_console_error(&message);
    }));
}

/// Runs the module's static constructors, the first time only. [`start`] calls it, and so does
/// every way to WebGPU (whose compiler needs the registrations): a host that never calls the
/// start function, such as `wasm-bindgen-test`'s harness, still gets them, once.
pub fn run_constructors() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the linker's constructor function, run once per instance; the constructors only
    // register static items.
    ONCE.call_once(|| unsafe { __wasm_call_ctors() });
}

/// How many times the module's static constructors have run.
static CONSTRUCTOR_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A static constructor of this crate's own, which counts its runs, so that a test can tell
/// that the constructors run once per instance and not once per call.
#[used]
#[unsafe(link_section = ".init_array")]
static COUNT_CONSTRUCTOR_RUNS: extern "C" fn() = count_constructor_run;

extern "C" fn count_constructor_run() {
    CONSTRUCTOR_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Test-only: how many times the static constructors have run in this instance (1 once
/// started, however many calls followed).
#[wasm_bindgen(js_name = constructorRunsForTest)]
pub fn constructor_runs_for_test() -> u32 {
    CONSTRUCTOR_RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn web_console_error(message: &str);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn now_ms() -> f64;
}

/// Whether this JavaScript global (window or worker) exposes `navigator.gpu`.
#[wasm_bindgen(js_name = hasWebGpu)]
pub fn has_webgpu() -> bool {
    Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|n| Reflect::get(&n, &"gpu".into()))
        .map(|g| !g.is_undefined() && !g.is_null())
        .unwrap_or(false)
}

/// Whether this build of the library carries the WebGPU backend (the `webgpu` feature):
/// `pkg/pneumoscope_webgpu.js` does, `pkg/pneumoscope.js` runs on the CPU only.
#[wasm_bindgen(js_name = hasWebGpuBackend)]
pub fn has_webgpu_backend() -> bool {
    cfg!(feature = "webgpu")
}

/// The version of this library.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// The classes in the models' output order, as `[{ name, label }]` (`"bacterial"`,
/// `"Bacterial pneumonia"`): the page's class controls and labels come from here.
#[wasm_bindgen]
pub fn classes() -> Result<JsValue, JsValue> {
    #[derive(Serialize)]
    struct Named {
        name: &'static str,
        label: &'static str,
    }
    let list = Class::ALL.map(|c| Named {
        name: c.name(),
        label: c.label(),
    });
    to_js(&list)
}

/// A loaded model file, ready to classify and explain chest X-rays.
#[wasm_bindgen]
pub struct Classifier {
    engine: Rc<Engine>,
    backend: &'static str,
    fallback_reason: Option<String>,
}

/// What the JavaScript caller receives as `timings` (milliseconds). `total_ms` runs from the
/// call receiving the bytes to the result object being ready, everything included; the parts
/// are `preprocess_ms` (decoding and preprocessing), `inference_ms` (every network),
/// `gradcam_ms` (every network's Grad-CAM and their average), `maps_ms` (resizing and
/// colouring the map, building the result's arrays), and `members` (per network).
#[derive(Serialize)]
struct Timings {
    preprocess_ms: f64,
    inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gradcam_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maps_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lungs_ms: Option<f64>,
    total_ms: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<crate::inference::MemberTimings>,
}

#[derive(Serialize)]
struct Classification {
    top: Class,
    probabilities: serde_json::Map<String, serde_json::Value>,
    backend: &'static str,
    timings: Timings,
    /// `{ score, flagged }`, or null when the model has no out-of-distribution statistics.
    ood: Option<crate::ood::OodScore>,
    /// `{ adult_probability, population }`, or null when the model has no population estimate.
    population: Option<crate::population::PopulationEstimate>,
    /// Why this answer deserves less trust (too few training images of the predicted class
    /// from the image's population), or null.
    caution: Option<String>,
}

/// The map's metadata; its values go to JavaScript as one `Float32Array` (a plain array of
/// numbers built element by element took 30 s for an ensemble's 260x260 map).
#[derive(Serialize)]
struct CamOut {
    width: usize,
    height: usize,
    class: Class,
    score: f32,
}

/// The lung fields as JavaScript receives them (`lungs` of an explanation): `share` of the
/// Grad-CAM map's mass inside the dilated lung mask (null for an all-zero map),
/// `area_fraction`, `regions` and `shape` of the mask, `reason` (why they are unlike a frontal
/// chest X-ray's, or null) and, both `size`x`size` over the view, `mask` (1 inside the lungs)
/// and `outline` (1 on their edge).
#[derive(Serialize)]
struct LungsOut {
    share: Option<f32>,
    area_fraction: f32,
    regions: usize,
    shape: crate::lungs::LungShape,
    reason: Option<String>,
}

fn lungs_out(
    mask: &crate::lungs::LungMask,
    heat: &[f32],
    size: usize,
    input: &crate::arch::InputConfig,
) -> Result<JsValue, JsValue> {
    let shape = mask.shape();
    let out = to_js(&LungsOut {
        share: mask.share_of_cam(heat, size, input),
        area_fraction: shape.area_fraction,
        regions: shape.regions,
        shape,
        reason: shape.implausible(),
    })?;
    let crop = mask.on_crop(input, size, 0);
    let inside: Vec<u8> = crop.iter().map(|&v| u8::from(v > 0.5)).collect();
    let edge: Vec<u8> = crate::lungs::outline(&crop, size as u32, size as u32)
        .into_iter()
        .map(u8::from)
        .collect();
    Reflect::set(
        &out,
        &"mask".into(),
        &js_sys::Uint8Array::from(&inside[..]).into(),
    )?;
    Reflect::set(
        &out,
        &"outline".into(),
        &js_sys::Uint8Array::from(&edge[..]).into(),
    )?;
    Ok(out)
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(js_error)
}

fn classification(p: &Prediction, backend: &'static str, timings: Timings) -> Classification {
    Classification {
        top: p.top,
        probabilities: Class::ALL
            .iter()
            .map(|c| (c.name().to_string(), p.probabilities[c.index()].into()))
            .collect(),
        backend,
        timings,
        ood: p.ood,
        population: p.population,
        caution: p.caution.clone(),
    }
}

/// One network's header as a plain object, its out-of-distribution statistics summarised.
fn network_info(header: &crate::model_file::ModelHeader) -> Result<serde_json::Value, JsValue> {
    let mut info = serde_json::to_value(header).map_err(js_error)?;
    if let (Some(p), Some(obj)) = (&header.population, info.as_object_mut()) {
        obj.insert(
            "population".into(),
            serde_json::json!({
                "method": p.method,
                "training_counts": p.training_counts,
                "min_training_images": p.min_training_images,
                "fit": p.fit,
            }),
        );
    }
    if let (Some(o), Some(obj)) = (&header.ood, info.as_object_mut()) {
        obj.insert(
            "ood".into(),
            serde_json::json!({
                "method": o.method,
                "dim": o.dim,
                "components": o.components(),
                "threshold": o.threshold,
                "calibration": o.calibration,
            }),
        );
    }
    Ok(info)
}

/// The [`Footprint`] of a model file's networks read from its header: parameters summed, the
/// largest tensor of them all.
fn file_footprint(model: &[u8]) -> crate::Result<Footprint> {
    let mut total: Option<Footprint> = None;
    for arch in network_archs(model)? {
        let f = footprint(&crate::arch::find(&arch)?);
        total = Some(match total {
            None => f,
            Some(t) => Footprint {
                parameters: t.parameters + f.parameters,
                ..if f.largest_tensor_bytes > t.largest_tensor_bytes {
                    f
                } else {
                    t
                }
            },
        });
    }
    total.ok_or_else(|| crate::Error::ModelFile("the file names no network".into()))
}

thread_local! {
    /// The WebGPU device of this thread, once initialised (or why it could not be): the runtime
    /// can be initialised only once, and every model loaded later shares it.
    static WEBGPU: std::cell::RefCell<Option<Result<Device, String>>> = const { std::cell::RefCell::new(None) };
}

/// This thread's WebGPU device, initialised asynchronously on first use; `Err` says why there
/// is none.
pub async fn webgpu_device() -> Result<Device, String> {
    run_constructors();
    if let Some(known) = WEBGPU.with(|w| w.borrow().clone()) {
        return known;
    }
    let result = if has_webgpu() {
        init_webgpu().await
    } else {
        Err("this browser exposes no WebGPU (navigator.gpu is missing)".into())
    };
    WEBGPU.with(|w| *w.borrow_mut() = Some(result.clone()));
    result
}

/// Initialises Burn's WebGPU runtime.
#[cfg(feature = "webgpu")]
async fn init_webgpu() -> Result<Device, String> {
    Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| format!("WebGPU initialisation failed: {e}"))
}

/// This build has no WebGPU backend.
#[cfg(not(feature = "webgpu"))]
async fn init_webgpu() -> Result<Device, String> {
    Err(
        "this build of the library runs on the CPU only (its WebGPU build is \
         pkg/pneumoscope_webgpu.js)"
            .into(),
    )
}

#[wasm_bindgen]
impl Classifier {
    /// Parses, verifies and loads a model file written by `pneumoscope export`.
    ///
    /// `backend` is `"auto"` (WebGPU when it initialises and can hold the model, else the CPU),
    /// `"webgpu"` (an error when WebGPU is unavailable or too small for the model) or `"cpu"`.
    /// `gpu_max_buffer_bytes` is the largest buffer the WebGPU adapter allows
    /// (`min(maxStorageBufferBindingSize, maxBufferSize)`), when the caller knows it: a model
    /// whose largest tensor does not fit runs on the CPU instead, with the reason.
    pub async fn load(
        model: Vec<u8>,
        backend: String,
        gpu_max_buffer_bytes: Option<f64>,
    ) -> Result<Classifier, JsValue> {
        let too_big = match (file_footprint(&model), gpu_max_buffer_bytes) {
            (Ok(f), Some(limit)) => (f.largest_tensor_bytes as f64 > limit).then(|| {
                format!(
                    "the model's largest tensor ({}, {:.0} MB as f32) exceeds this GPU's \
                         largest buffer ({:.0} MB)",
                    f.largest_tensor,
                    f.largest_tensor_bytes as f64 / 1e6,
                    limit / 1e6
                )
            }),
            _ => None,
        };
        let (device, name, fallback_reason) = match (backend.as_str(), too_big) {
            ("cpu", _) => (Device::flex(), "cpu", None),
            ("webgpu", Some(reason)) => {
                return Err(js_error(format!("cannot run on WebGPU: {reason}")));
            }
            ("webgpu", None) => (webgpu_device().await.map_err(js_error)?, "webgpu", None),
            ("auto" | "", Some(reason)) => (Device::flex(), "cpu", Some(reason)),
            ("auto" | "", None) => match webgpu_device().await {
                Ok(device) => (device, "webgpu", None),
                Err(reason) => (Device::flex(), "cpu", Some(reason)),
            },
            (other, _) => {
                return Err(js_error(format!(
                    "unknown backend {other:?} (expected auto, webgpu or cpu)"
                )));
            }
        };
        let engine = Engine::load(&model, device).map_err(js_error)?;
        Ok(Classifier {
            engine: Rc::new(engine),
            backend: name,
            fallback_reason,
        })
    }

    /// Parameter count and largest tensor of a model file's architecture, summed over an
    /// ensemble's networks (the largest tensor decides whether WebGPU can hold it), without
    /// loading its weights.
    pub fn footprint(model: &[u8]) -> Result<JsValue, JsValue> {
        to_js(&file_footprint(model).map_err(js_error)?)
    }

    /// The backend in use: `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.into()
    }

    /// Why `"auto"` fell back to the CPU, if it did.
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason.clone()
    }

    /// What the model file says about itself (architecture, classes, input, training,
    /// metrics, ...), as a plain object. The out-of-distribution statistics are summarised
    /// (method, dimension, components, threshold, calibration), not copied. For an ensemble:
    /// `kind: "ensemble"`, `arch` (`"ensemble of N: a + b + ..."`), `weight_source`,
    /// `weights_dtype`, `combine`, `metrics`, `extra` and `members` (each member's own info).
    /// Either kind adds `format_version`, `header_verified` and `notice` ("header not verified
    /// (format vN)" for a file of an earlier format, `null` otherwise).
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let members = self
            .engine
            .networks
            .iter()
            .map(|n| network_info(&n.header))
            .collect::<Result<Vec<_>, _>>()?;
        let mut info = match &self.engine.ensemble {
            None => members.into_iter().next().expect("one network"),
            Some(e) => serde_json::json!({
                "kind": "ensemble",
                "arch": self.engine.arch(),
                "weight_source": self.engine.weight_source(),
                "weights_dtype": self.engine.weights_dtype(),
                "classes": e.classes,
                "combine": e.combine,
                "metrics": e.metrics,
                "extra": e.extra,
                "created_by": e.created_by,
                "members": members,
            }),
        };
        // Whether the header was verified: a file of an earlier format has no seal.
        info["format_version"] = self.engine.format.version.into();
        info["header_verified"] = self.engine.format.sealed.into();
        info["notice"] = self.engine.notice().into();
        to_js(&info)
    }

    /// Side of the square network input in pixels.
    #[wasm_bindgen(getter, js_name = inputSize)]
    pub fn input_size(&self) -> usize {
        self.engine.input_size()
    }

    /// Classifies an encoded image (PNG, JPEG or DICOM bytes). Resolves to
    /// `{ top, probabilities, backend, timings, ood }`; rejects with a readable message when the
    /// image can't be read.
    pub fn classify(&self, image: Vec<u8>) -> Promise {
        let engine = self.engine.clone();
        let backend = self.backend;
        let t0 = now_ms();
        future_to_promise(async move {
            let x = engine.preprocess_async(&image).await.map_err(js_error)?;
            let t1 = now_ms();
            let p = engine
                .classify_batch_async(&[x])
                .await
                .map_err(js_error)?
                .remove(0);
            let mut timings = Timings {
                preprocess_ms: t1 - t0,
                inference_ms: now_ms() - t1,
                gradcam_ms: None,
                maps_ms: None,
                lungs_ms: None,
                total_ms: 0.0,
                members: Vec::new(),
            };
            timings.total_ms = now_ms() - t0;
            to_js(&classification(&p, backend, timings))
        })
    }

    /// The memory the backend holds for this model, as the device allocator reports it:
    /// `{ bytesInUse, bytesReserved, allocations }` (bytes), or `null` where the backend keeps
    /// no such account (the CPU backend, whose tensors live in the wasm memory itself).
    pub fn memory(&self) -> Result<JsValue, JsValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Usage {
            bytes_in_use: u64,
            bytes_reserved: u64,
            allocations: u64,
        }
        let usage = self.engine.networks[0]
            .device
            .memory_pool_usage()
            .map(|u| Usage {
                bytes_in_use: u.bytes_in_use,
                bytes_reserved: u.bytes_reserved,
                allocations: u.number_allocs,
            });
        to_js(&usage)
    }

    /// Test-only: reads the image as [`Classifier::explain`] does, then panics on purpose
    /// inside the same asynchronous path, so that tests can check how the page survives a
    /// panic of the library (the worker restarts and reloads the model).
    #[wasm_bindgen(js_name = panicForTest)]
    pub fn panic_for_test(&self, image: Vec<u8>) -> Promise {
        let engine = self.engine.clone();
        future_to_promise(async move {
            let _x = engine.preprocess_async(&image).await.map_err(js_error)?;
            panic!("a panic on purpose (the test-only entry point panicForTest)");
        })
    }

    /// Classifies an image and explains one class (the predicted class when `class` is
    /// omitted) with Grad-CAM. Resolves to the classification plus `cam` (the raw map),
    /// `size`, `view` (RGBA of the grey network input) and `heatmap` (RGBA jet colours of the
    /// map resized to the input), both `size`x`size`.
    pub fn explain(&self, image: Vec<u8>, class: Option<String>) -> Promise {
        let engine = self.engine.clone();
        let backend = self.backend;
        let t0 = now_ms();
        future_to_promise(async move {
            let class = class
                .map(|c| c.parse::<Class>())
                .transpose()
                .map_err(js_error)?;
            let e = engine
                .explain_timed_async(&image, class, now_ms)
                .await
                .map_err(js_error)?;
            let t_maps = now_ms();
            let size = engine.input_size();
            let heat = e.cam.at_side(size);
            let lungs_js = match &e.lungs {
                None => JsValue::NULL,
                Some(mask) => lungs_out(mask, &heat, size, &engine.display_network().header.input)?,
            };
            let view_rgba: Vec<u8> = e
                .view
                .pixels()
                .flat_map(|g| [g.0[0], g.0[0], g.0[0], 255])
                .collect();
            let heat_rgba: Vec<u8> = heat
                .iter()
                .flat_map(|&v| {
                    let [r, g, b] = gradcam::jet(v);
                    [r, g, b, 255]
                })
                .collect();
            let cam_out = CamOut {
                width: e.cam.width,
                height: e.cam.height,
                class: e.cam.class,
                score: e.cam.score,
            };
            let cam_js = to_js(&cam_out)?;
            Reflect::set(
                &cam_js,
                &"values".into(),
                &Float32Array::from(&e.cam.values[..]).into(),
            )?;
            let view_js: JsValue = Uint8ClampedArray::from(&view_rgba[..]).into();
            let heat_js: JsValue = Uint8ClampedArray::from(&heat_rgba[..]).into();
            let t = e.timings;
            let mut timings = Timings {
                preprocess_ms: t.preprocess_ms,
                inference_ms: t.inference_ms,
                gradcam_ms: Some(t.gradcam_ms),
                maps_ms: Some(now_ms() - t_maps),
                lungs_ms: t.lungs_ms,
                total_ms: 0.0,
                members: t.members,
            };
            timings.total_ms = now_ms() - t0;
            let out = to_js(&classification(&e.prediction, backend, timings))?;
            let set = |k: &str, v: &JsValue| Reflect::set(&out, &k.into(), v).map(|_| ());
            set("cam", &cam_js)?;
            set("size", &JsValue::from(size as u32))?;
            set("view", &view_js)?;
            set("heatmap", &heat_js)?;
            set("lungs", &lungs_js)?;
            set("crop", &to_js(&e.crop)?)?;
            Ok(Object::from(out).into())
        })
    }
}
