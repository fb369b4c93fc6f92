//! The depthwise convolution's own autodiff operation (`pneumoscope::arch::conv`) against
//! PyTorch: outputs, input gradients and weight gradients of `tests/depthwise/make_fixtures.py`
//! (float64 PyTorch) within 1e-4 of their largest value, for 3x3 and 5x5 kernels, stride 1 and
//! 2, symmetric and TensorFlow "same" padding.

mod common;
use burn::prelude::*;
use common::*;
use pneumoscope::arch::conv::native::depthwise_conv2d;

fn read(path: &std::path::Path) -> Tensor<4> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = f.shape().iter().map(|&d| d as usize).collect();
    let values = f.into_vec::<f32>().unwrap();
    Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        &Device::flex().autodiff(),
    )
}

fn max_rel(got: Tensor<4>, want: Tensor<4>) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale: f32 = want.clone().abs().max().into_scalar();
    let diff: f32 = (got - want).abs().max().into_scalar();
    diff / scale.max(1e-12)
}

#[test]
fn gradients_match_pytorch() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = run_script(&py, "tests/depthwise/make_fixtures.py", &[dir.path()]);
    let geometry = |name: &str| -> ([usize; 2], [(usize, usize); 2]) {
        match name {
            "k3s1" => ([1, 1], [(1, 1), (1, 1)]),
            "k3s2same" => ([2, 2], [(0, 1), (0, 1)]),
            "k5s2same" => ([2, 2], [(1, 2), (1, 2)]),
            "k5s1" => ([1, 1], [(2, 2), (2, 2)]),
            "k3s2" => ([2, 2], [(1, 1), (1, 1)]),
            other => panic!("unknown case {other}"),
        }
    };
    let mut n = 0;
    for name in cases.lines() {
        let f = |tag: &str| read(&dir.path().join(format!("{name}_{tag}.npy")));
        let (stride, pad) = geometry(name);
        let x = f("x").require_grad();
        let w = f("w").require_grad();
        let y = depthwise_conv2d(x.clone(), w.clone(), stride, pad).expect("the CPU backend");
        let grads = (y.clone() * f("g")).sum().backward();
        let (ey, ex, ew) = (
            max_rel(y.detach().without_autodiff(), f("y").without_autodiff()),
            max_rel(x.grad(&grads).unwrap(), f("gx").without_autodiff()),
            max_rel(w.grad(&grads).unwrap(), f("gw").without_autodiff()),
        );
        eprintln!("{name}: output {ey:.2e}, input gradient {ex:.2e}, weight gradient {ew:.2e}");
        assert!(
            ey <= 1e-4 && ex <= 1e-4 && ew <= 1e-4,
            "{name}: output {ey}, input gradient {ex}, weight gradient {ew} (relative)"
        );
        n += 1;
    }
    assert_eq!(n, 5, "cases run: {cases}");
}
