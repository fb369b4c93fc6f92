//! Int8 weights: a model payload's matrices and kernels stored as 8-bit integers with one f32
//! scale per output channel, expanded back to f32 when the file loads.
//!
//! A payload is a Burn record (burnpack bytes). [`quantize`] rewrites every floating-point
//! tensor of two or more dimensions as `q = round(w / s_c)` in `[-127, 127]`, `s_c = max |w| /
//! 127` over output channel `c`, and stores the scales beside it as an f32 vector named
//! `<tensor>`[`SCALE_SUFFIX`]; vectors (biases, batch norms) keep their dtype. [`expand`] gives
//! back a record of f32 tensors `q · s_c` that Burn loads as any other. No integer arithmetic
//! runs: the networks compute in f32 with the expanded weights. The output channel is the
//! first axis of a convolution kernel (`[out, in, kh, kw]`) and the last of a Burn `Linear`
//! weight (`[in, out]`).
//!
//! Written because Burn 0.22's record has no per-channel int8 storage that loads into f32
//! modules; drop it when it does.

use crate::error::{Error, Result};
use burn::store::{ModuleRecord, RecordError};
use burn::tensor::{Bytes, DType, TensorData};
use burn_pack::{Reader, Tensor, Writer};
use std::collections::HashMap;

/// What a tensor's scale vector is named: the tensor's name followed by this.
pub const SCALE_SUFFIX: &str = ".int8_scale";

/// The largest magnitude of a quantized value (symmetric: -127..=127).
const LEVELS: f32 = 127.0;

/// A burnpack error as this crate's record error, `what` naming the step.
fn pack_error(what: &str) -> impl FnOnce(burn_pack::Error) -> Error + '_ {
    move |e| Error::Record {
        what: what.to_string(),
        source: RecordError::from(e),
    }
}

/// The tensors of a payload.
fn tensors(payload: &[u8], what: &str) -> Result<Vec<Tensor>> {
    Reader::from_bytes(Bytes::from_bytes_vec(payload.to_vec()))
        .and_then(Reader::into_tensors)
        .map_err(pack_error(what))
}

/// Burnpack bytes of `tensors`.
fn write(tensors: Vec<Tensor>, what: &str) -> Result<Vec<u8>> {
    Ok(Writer::new(tensors)
        .into_bytes()
        .map_err(pack_error(what))?
        .to_vec())
}

/// The axis of a weight's output channels: the last of a matrix (a Burn `Linear` weight is
/// `[in, out]`), the first of a kernel (`[out, in, kh, kw]`).
fn channel_axis(rank: usize) -> usize {
    if rank == 2 { 1 } else { 0 }
}

/// `(channels, inner)`: a row-major tensor of `dims` seen as `[outer, channels, inner]` along
/// `axis`, and the channel of flat index `i` is `(i / inner) % channels`.
fn layout(dims: &[usize], axis: usize) -> (usize, usize) {
    (dims[axis], dims[axis + 1..].iter().product())
}

/// A tensor's data, its length checked against its shape and dtype (a refusal names it).
fn data(name: &str, bytes: Bytes, shape: burn::tensor::Shape, dtype: DType) -> Result<TensorData> {
    TensorData::try_from_bytes(bytes, shape, dtype)
        .map_err(|e| Error::ModelFile(format!("tensor {name}: {e}")))
}

/// Whether `dtype` is a floating-point type the record stores weights in.
fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
}

/// `values` of shape `dims` as int8 with one scale per output channel.
pub fn quantize_values(values: &[f32], dims: &[usize]) -> (Vec<i8>, Vec<f32>) {
    let (channels, inner) = layout(dims, channel_axis(dims.len()));
    let channel = |i: usize| (i / inner) % channels;
    let mut peak = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel(i);
        peak[c] = peak[c].max(v.abs());
    }
    let scales: Vec<f32> = peak.iter().map(|p| p / LEVELS).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = scales[channel(i)];
            if s > 0.0 {
                (v / s).round().clamp(-LEVELS, LEVELS) as i8
            } else {
                0
            }
        })
        .collect();
    (q, scales)
}

/// The f32 values of int8 `q` of shape `dims` with per-channel `scales`.
pub fn expand_values(q: &[i8], dims: &[usize], scales: &[f32]) -> Vec<f32> {
    let (channels, inner) = layout(dims, channel_axis(dims.len()));
    q.iter()
        .enumerate()
        .map(|(i, &v)| f32::from(v) * scales[(i / inner) % channels])
        .collect()
}

/// A payload with its floating-point tensors of two or more dimensions stored as int8 and a
/// scale per output channel. Fails on a payload that holds int8 tensors already.
pub fn quantize(payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for t in tensors(payload, "unreadable weights")? {
        let (name, dtype, shape, id, bytes) =
            t.into_parts().map_err(pack_error("unreadable weights"))?;
        if dtype == DType::I8 || name.ends_with(SCALE_SUFFIX) {
            return Err(Error::ModelFile(format!(
                "tensor {name} is int8 already: the weights are quantized"
            )));
        }
        if shape.num_dims() < 2 || !is_float(dtype) {
            out.push(Tensor::new(name, dtype, shape, id, bytes));
            continue;
        }
        let values: Vec<f32> = data(&name, bytes, shape.clone(), dtype)?
            .iter::<f32>()
            .collect();
        let (q, scales) = quantize_values(&values, shape.as_slice());
        let n = scales.len();
        let (q_bytes, _, _) = TensorData::new(q, shape.clone()).into_parts();
        let (s_bytes, _, _) = TensorData::new(scales, [n]).into_parts();
        out.push(Tensor::new(
            format!("{name}{SCALE_SUFFIX}"),
            DType::F32,
            [n],
            None,
            s_bytes,
        ));
        out.push(Tensor::new(name, DType::I8, shape, id, q_bytes));
    }
    write(out, "cannot write the int8 weights")
}

/// The payload [`quantize`] made, with its int8 tensors expanded to f32 (`q · s_c`): a record
/// Burn loads. An int8 tensor without its scales, scales without their tensor or of the wrong
/// length are refused, naming the tensor.
pub fn expand(payload: &[u8]) -> Result<Vec<u8>> {
    const WHAT: &str = "unreadable int8 weights";
    let mut scales: HashMap<String, Vec<f32>> = HashMap::new();
    let mut rest = Vec::new();
    for t in tensors(payload, WHAT)? {
        match t.name.strip_suffix(SCALE_SUFFIX) {
            Some(of) => {
                let of = of.to_string();
                let (name, dtype, shape, _, bytes) = t.into_parts().map_err(pack_error(WHAT))?;
                if dtype != DType::F32 || shape.num_dims() != 1 {
                    return Err(Error::ModelFile(format!(
                        "scales {name} are {dtype:?} of shape {:?}, not an f32 vector",
                        shape.as_slice()
                    )));
                }
                let values = data(&name, bytes, shape, dtype)?;
                scales.insert(of, values.iter::<f32>().collect());
            }
            None => rest.push(t),
        }
    }
    let mut out = Vec::with_capacity(rest.len());
    for t in rest {
        let (name, dtype, shape, id, bytes) = t.into_parts().map_err(pack_error(WHAT))?;
        if dtype != DType::I8 {
            out.push(Tensor::new(name, dtype, shape, id, bytes));
            continue;
        }
        let s = scales.remove(&name).ok_or_else(|| {
            Error::ModelFile(format!(
                "int8 tensor {name} has no scales ({name}{SCALE_SUFFIX})"
            ))
        })?;
        let dims = shape.as_slice();
        if dims.len() < 2 || s.len() != dims[channel_axis(dims.len())] {
            return Err(Error::ModelFile(format!(
                "int8 tensor {name} of shape {dims:?} has {} scales, not one per output channel",
                s.len()
            )));
        }
        let q: Vec<i8> = data(&name, bytes, shape.clone(), dtype)?
            .iter::<i8>()
            .collect();
        let (f_bytes, _, _) =
            TensorData::new(expand_values(&q, dims, &s), shape.clone()).into_parts();
        out.push(Tensor::new(name, DType::F32, shape, id, f_bytes));
    }
    if let Some(name) = scales.keys().next() {
        return Err(Error::ModelFile(format!(
            "scales {name}{SCALE_SUFFIX} belong to no int8 tensor"
        )));
    }
    write(out, "cannot expand the int8 weights")
}

/// A payload as a Burn record, its int8 tensors (if any) expanded to f32 first ([`expand`]):
/// what every loader of weights reads, so that an int8 tensor is never taken as plain values.
/// `what` names the weights in the error.
pub fn record(payload: &[u8], what: &str) -> Result<ModuleRecord> {
    let int8 = tensors(payload, what)?
        .iter()
        .any(|t| t.dtype == DType::I8 || t.name.ends_with(SCALE_SUFFIX));
    let bytes = if int8 {
        expand(payload)?
    } else {
        payload.to_vec()
    };
    ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|source| Error::Record {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value is within half a step of its channel's scale, a zero channel stays zero,
    /// and the extremes map to ±127.
    #[test]
    fn values_round_trip_within_half_a_step_per_channel() {
        // A [2, 3] matrix (output channels along the last axis) and a [3, 1, 2, 2] kernel.
        for dims in [vec![2usize, 3], vec![3, 1, 2, 2]] {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.013)
                .collect();
            let mut values = values;
            // Channel 1 all zero.
            let axis = channel_axis(dims.len());
            let (channels, inner) = layout(&dims, axis);
            for (i, v) in values.iter_mut().enumerate() {
                if (i / inner) % channels == 1 {
                    *v = 0.0;
                }
            }
            let (q, scales) = quantize_values(&values, &dims);
            assert_eq!(scales.len(), dims[axis]);
            assert_eq!(scales[1], 0.0);
            assert!(q.iter().any(|v| v.abs() == 127), "{q:?}");
            let back = expand_values(&q, &dims, &scales);
            for (i, (a, b)) in values.iter().zip(&back).enumerate() {
                let s = scales[(i / inner) % channels];
                assert!(
                    (a - b).abs() <= s / 2.0 + 1e-9,
                    "{dims:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
