//! The core library inside a real browser (Chromium, in a dedicated worker as on the page), with
//! `wasm-bindgen-test`: the shipped model classifies and explains real chest X-rays on the CPU
//! backend and on WebGPU with the same answers, every read is asynchronous, and bad inputs are
//! refused with readable errors.
//!
//! Run by `cargo xtask test` (`cargo test --release --target wasm32-unknown-unknown --features webgpu --test wasm`
//! with chromedriver). The images are compiled in from the shared data beside the workspace.
#![cfg(target_arch = "wasm32")]

mod common;
use burn::prelude::*;
use pneumoscope::Class;
use pneumoscope::inference::{Engine, Network};
use pneumoscope::preprocess;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

const MODEL: &[u8] = include_bytes!("../web/models/efficientnet_lite0-frozen-v1.pneumoscope");
const NORMAL: &[u8] =
    include_bytes!("../../shared/data/kermany/chest_xray/test/NORMAL/IM-0129-0001.jpeg");
const VIRAL: &[u8] = include_bytes!(
    "../../shared/data/kermany/chest_xray/test/PNEUMONIA/person1018_virus_1706.jpeg"
);
const COVID: &[u8] = include_bytes!(
    "../../shared/data/covid-chestxray-dataset/images/auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg"
);

async fn webgpu() -> Device {
    pneumoscope::web::webgpu_device()
        .await
        .expect("WebGPU initialises in the test browser (chromium --enable-unsafe-webgpu)")
}

/// This harness never calls the library's start function: the way to WebGPU runs the static
/// constructors itself (the WebGPU compiler needs their registrations), and only once.
#[wasm_bindgen_test]
async fn static_constructors_run_once_without_the_start_function() {
    webgpu().await;
    pneumoscope::web::run_constructors();
    assert_eq!(pneumoscope::web::constructor_runs_for_test(), 1);
}

#[wasm_bindgen_test]
async fn cpu_and_webgpu_agree_on_real_xrays() {
    let cpu = Network::load(MODEL, Device::flex()).unwrap();
    let gpu = Network::load(MODEL, webgpu().await).unwrap();
    for (name, image) in [("normal", NORMAL), ("viral", VIRAL), ("covid", COVID)] {
        let x = cpu.preprocess(image).unwrap();
        let a = cpu
            .classify_batch_async(std::slice::from_ref(&x))
            .await
            .unwrap()
            .remove(0);
        let b = gpu.classify_batch_async(&[x]).await.unwrap().remove(0);
        assert_eq!(a.top, b.top, "{name}: top class differs between backends");
        for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
            assert!((p - q).abs() <= 1e-3, "{name}: {a:?} vs {b:?}");
        }
        let s: f32 = a.probabilities.iter().sum();
        assert!((s - 1.0).abs() < 1e-4, "{name}: probabilities sum to {s}");
    }
    // The shipped model gets these three right.
    let engine = Engine::load(MODEL, Device::flex()).unwrap();
    assert_eq!(
        engine.classify_async(NORMAL).await.unwrap().top,
        Class::Normal
    );
    assert_eq!(
        engine.classify_async(COVID).await.unwrap().top,
        Class::Covid19
    );
}

#[wasm_bindgen_test]
async fn grad_cam_agrees_between_backends() {
    let cpu = Network::load(MODEL, Device::flex()).unwrap();
    let gpu = Network::load(MODEL, webgpu().await).unwrap();
    let x = cpu.preprocess(VIRAL).unwrap();
    for class in Class::ALL {
        let a = pneumoscope::gradcam::grad_cam_async(
            &cpu.model,
            cpu.batch(std::slice::from_ref(&x)),
            class,
        )
        .await
        .unwrap();
        let b = pneumoscope::gradcam::grad_cam_async(
            &gpu.model,
            gpu.batch(std::slice::from_ref(&x)),
            class,
        )
        .await
        .unwrap();
        assert_eq!((a.width, a.height), (7, 7));
        assert_eq!((a.width, a.height), (b.width, b.height));
        assert!((a.score - b.score).abs() < 1e-2, "{class}: logits differ");
        let r = common::correlation(&a.values, &b.values);
        assert!(r >= 0.99, "{class}: maps correlate at {r}");
    }
}

#[wasm_bindgen_test]
async fn the_js_api_classifies_explains_and_refuses_bad_input() {
    let model = pneumoscope::web::Classifier::load(MODEL.to_vec(), "cpu".into(), None)
        .await
        .unwrap();
    assert_eq!(model.backend(), "cpu");
    assert_eq!(model.input_size(), 224);
    let r = JsFuture::from(model.explain(VIRAL.to_vec(), Some("covid19".into())))
        .await
        .unwrap();
    let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).unwrap();
    let cam = get(&r, "cam");
    assert_eq!(get(&cam, "class").as_string().unwrap(), "covid19");
    assert_eq!(
        js_sys::Uint8ClampedArray::from(get(&r, "heatmap")).length(),
        224 * 224 * 4
    );
    let probabilities = get(&r, "probabilities");
    let total: f64 = ["normal", "bacterial", "viral", "covid19"]
        .iter()
        .map(|c| get(&probabilities, c).as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4);

    let err = JsFuture::from(model.classify(b"not an image at all".to_vec()))
        .await
        .unwrap_err();
    let message = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(message.contains("image"), "unclear error: {message}");

    let err =
        pneumoscope::web::Classifier::load(MODEL[..MODEL.len() / 2].to_vec(), "cpu".into(), None)
            .await
            .err()
            .expect("a truncated model file is refused");
    let message = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(message.contains("truncated"), "unclear error: {message}");

    let err = pneumoscope::web::Classifier::load(MODEL.to_vec(), "tpu".into(), None)
        .await
        .err()
        .expect("an unknown backend is refused");
    assert!(
        js_sys::Error::from(err)
            .message()
            .as_string()
            .unwrap()
            .contains("unknown backend")
    );
}

#[wasm_bindgen_test]
fn the_network_view_is_the_model_input() {
    let cpu = Network::load(MODEL, Device::flex()).unwrap();
    let img = preprocess::decode(VIRAL).unwrap();
    let view = preprocess::eval_view(&img, &cpu.header.input);
    assert_eq!(view.dimensions(), (224, 224));
    assert_eq!(
        preprocess::normalize_gray(&view, &cpu.header.input),
        cpu.preprocess(VIRAL).unwrap()
    );
}

/// A model whose largest tensor does not fit the GPU's largest buffer: `auto` runs it on the
/// CPU and says why, `webgpu` refuses with the reason (the limit is passed in as the page's
/// worker reads it from the adapter).
#[wasm_bindgen_test]
async fn a_model_too_big_for_the_gpu_falls_back_to_the_cpu_with_the_reason() {
    let limit = 1_000_000.0; // 1 MB: Lite0's head convolution (1.6 MB as f32) does not fit
    let model = pneumoscope::web::Classifier::load(MODEL.to_vec(), "auto".into(), Some(limit))
        .await
        .unwrap();
    assert_eq!(model.backend(), "cpu");
    let reason = model.fallback_reason().unwrap();
    assert!(
        reason.contains("largest tensor")
            && reason.contains("conv_head")
            && reason.contains("1 MB"),
        "{reason}"
    );
    let err = pneumoscope::web::Classifier::load(MODEL.to_vec(), "webgpu".into(), Some(limit))
        .await
        .err()
        .expect("webgpu is refused for a model it cannot hold");
    let message = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(message.contains("cannot run on WebGPU"), "{message}");
    // With room enough, auto keeps WebGPU when the browser has it (or says why not).
    let model = pneumoscope::web::Classifier::load(MODEL.to_vec(), "auto".into(), Some(1e10))
        .await
        .unwrap();
    if model.backend() == "cpu" {
        assert!(!model.fallback_reason().unwrap().contains("largest tensor"));
    }
    let f = pneumoscope::web::Classifier::footprint(MODEL).unwrap();
    let bytes = js_sys::Reflect::get(&f, &"largest_tensor_bytes".into())
        .unwrap()
        .as_f64()
        .unwrap();
    assert_eq!(bytes, (4 * 320 * 1280) as f64);
}

/// The page's class controls and labels come from the library: the four classes in the models'
/// output order, each with its name and its label.
#[wasm_bindgen_test]
fn the_class_list_is_the_output_order_with_labels() {
    let list = js_sys::Array::from(&pneumoscope::web::classes().unwrap());
    assert_eq!(list.length() as usize, Class::ALL.len());
    for (i, class) in Class::ALL.iter().enumerate() {
        let item = list.get(i as u32);
        let field = |key: &str| {
            js_sys::Reflect::get(&item, &key.into())
                .unwrap()
                .as_string()
                .unwrap()
        };
        assert_eq!(field("name"), class.name());
        assert_eq!(field("label"), class.label());
    }
    assert_eq!(Class::Bacterial.label(), "Bacterial pneumonia");
}
