//! Grad-CAM of the shipped default model against an independent computation: the channel
//! weights from central finite differences of the class logit with respect to the pooled
//! features (for a global-average-pooled head, ∂y/∂A[c,i,j] = (1/HW)·∂y/∂p[c]). For an ensemble,
//! each network is checked so, and the ensemble's map against the mean of the networks'
//! independent maps.

mod common;
use burn::prelude::*;
use pneumoscope::arch::global_avg_pool;
use pneumoscope::inference::{Engine, Network};

#[test]
fn gradcam_matches_finite_differences() {
    let Some(shared) = common::shared() else {
        return;
    };
    let device = Device::flex();
    let engine = Engine::load(
        &std::fs::read(common::default_model()).unwrap(),
        device.clone(),
    )
    .unwrap();
    let mut checked = 0;
    let size = engine.input_size();
    for path in common::sample_images(&shared) {
        let bytes = std::fs::read(&path).unwrap();
        // Per class, the sum of the networks' independent maps (normalised, resized).
        let mut sums = vec![vec![0f32; size * size]; 4];
        for net in &engine.networks {
            checked += check_network(net, &bytes, &path, &mut sums, size);
        }
        if engine.networks.len() > 1 {
            check_ensemble(&engine, &bytes, &path, &sums);
        }
    }
    assert!(checked >= 12, "only {checked} non-empty maps were compared");
}

/// The head, re-implemented in f64 from its weights: Linear → ReLU → Linear.
struct Head64 {
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: Vec<f64>,
}

impl Head64 {
    fn of(net: &Network) -> Self {
        fn f64s<const D: usize>(t: Tensor<D>) -> Vec<f64> {
            t.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        }
        let head = &net.model.head;
        let (fc1, fc2) = (head.fc1.as_ref().unwrap(), head.fc2.as_ref().unwrap());
        Self {
            w1: f64s(fc1.weight.val()),
            b1: f64s(fc1.bias.as_ref().unwrap().val()),
            w2: f64s(fc2.weight.val()),
            b2: f64s(fc2.bias.as_ref().unwrap().val()),
        }
    }

    fn logits(&self, p: &[f64]) -> [f64; 4] {
        let hidden = self.b1.len();
        let b2 = &self.b2;
        let mut y = [b2[0], b2[1], b2[2], b2[3]];
        for j in 0..hidden {
            let mut z = self.b1[j];
            for (k, pk) in p.iter().enumerate() {
                z += pk * self.w1[k * hidden + j];
            }
            for (class, yc) in y.iter_mut().enumerate() {
                *yc += z.max(0.0) * self.w2[j * 4 + class];
            }
        }
        y
    }

    /// Central finite differences of the four logits with respect to each pooled feature.
    fn gradients(&self, pooled: &[f32]) -> Vec<[f64; 4]> {
        let p0: Vec<f64> = pooled.iter().map(|&v| v as f64).collect();
        let eps = 1e-6;
        (0..p0.len())
            .map(|k| {
                let (mut up, mut down) = (p0.clone(), p0.clone());
                up[k] += eps;
                down[k] -= eps;
                let (yu, yd) = (self.logits(&up), self.logits(&down));
                [0, 1, 2, 3].map(|class| (yu[class] - yd[class]) / (2.0 * eps))
            })
            .collect()
    }
}

/// Each class's map of one network against the finite-difference map; adds the normalised,
/// resized independent maps to `sums`. Returns the number of non-empty maps compared.
fn check_network(
    net: &Network,
    bytes: &[u8],
    path: &std::path::Path,
    sums: &mut [Vec<f32>],
    size: usize,
) -> usize {
    let mut checked = 0;
    let x = net.batch(&[net.preprocess(bytes).unwrap()]);
    let act = net.model.feature_map(x); // [1, C, h, w]
    let [_, c, h, w] = act.dims();
    let pooled: Vec<f32> = global_avg_pool(act.clone())
        .into_data()
        .try_to_vec()
        .unwrap();
    let a: Vec<f32> = act.into_data().try_to_vec().unwrap();
    let grads = Head64::of(net).gradients(&pooled);
    for cls in pneumoscope::Class::ALL {
        let class = cls.index();
        let cam = net.explain(bytes, Some(cls)).unwrap().1;
        assert_eq!((cam.width, cam.height), (w, h));
        let mut fd = vec![0f32; h * w];
        for k in 0..c {
            let weight = (grads[k][class] / (h * w) as f64) as f32;
            for i in 0..h * w {
                fd[i] += weight * a[k * h * w + i];
            }
        }
        fd.iter_mut().for_each(|v| *v = v.max(0.0));
        let max = fd.iter().cloned().fold(0f32, f32::max);
        let normalised = pneumoscope::gradcam::CamMap {
            width: w,
            height: h,
            values: fd
                .iter()
                .map(|v| if max > 0.0 { v / max } else { 0.0 })
                .collect(),
            class: cls,
            score: 0.0,
        };
        for (s, u) in sums[class].iter_mut().zip(normalised.upsample(size)) {
            *s += u;
        }
        if fd.iter().all(|&v| v == 0.0) {
            assert!(
                cam.values.iter().all(|&v| v == 0.0),
                "{}: class {class}",
                path.display()
            );
            continue;
        }
        let r = common::correlation(&cam.values, &fd);
        eprintln!(
            "{} class {class}: r = {r:.5}",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(
            r >= 0.99,
            "{}: class {class}: correlation {r}",
            path.display()
        );
        checked += 1;
    }
    checked
}

/// The ensemble's map of each class against the mean of its networks' independent maps.
fn check_ensemble(engine: &Engine, bytes: &[u8], path: &std::path::Path, sums: &[Vec<f32>]) {
    let size = engine.input_size();
    for cls in pneumoscope::Class::ALL {
        let cam = engine.explain(bytes, Some(cls)).unwrap().1;
        assert_eq!((cam.width, cam.height), (size, size));
        let expected = &sums[cls.index()];
        if expected.iter().all(|&v| v == 0.0) {
            assert!(cam.values.iter().all(|&v| v == 0.0));
            continue;
        }
        let r = common::correlation(&cam.values, expected);
        eprintln!(
            "{} ensemble, class {cls}: r = {r:.5}",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(
            r >= 0.99,
            "{}: ensemble, class {cls}: r {r}",
            path.display()
        );
    }
}

#[test]
fn predicted_class_map_is_informative_and_upsamples() {
    let Some(shared) = common::shared() else {
        return;
    };
    let engine = Engine::load(
        &std::fs::read(common::default_model()).unwrap(),
        Device::flex(),
    )
    .unwrap();
    let path = &common::sample_images(&shared)[2];
    let bytes = std::fs::read(path).unwrap();
    let (pred, cam) = engine.explain(&bytes, None).unwrap();
    assert_eq!(cam.class, pred.top);
    let max = cam.values.iter().cloned().fold(0f32, f32::max);
    assert!((max - 1.0).abs() < 1e-6, "normalised to 1");
    let size = engine.input_size();
    let up = cam.upsample(size);
    assert_eq!(up.len(), size * size);
    let (view, _) = engine.view_and_input(&bytes).unwrap();
    let over = pneumoscope::gradcam::overlay(&view, &up, 0.5);
    assert_eq!(over.dimensions(), (size as u32, size as u32));
}
