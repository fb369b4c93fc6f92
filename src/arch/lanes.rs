//! Loops of this project's training kernels on the CPU backend, written so that the compiler
//! turns them into SIMD, and outputs written once.
//!
//! - A sum taken one value after another is a chain of dependent additions, which the
//!   compiler may not reorder (floating-point addition is not associative): one addition per
//!   few cycles. [`sum`], [`sum2`] and [`dot`] keep [`LANES`] partial sums side by side, which
//!   become vector registers, and add them up at the end.
//! - `vec![0.0; n]` followed by a pass that overwrites every value writes the buffer twice.
//!   [`map`] and [`zip_map`] write each output value once, into uninitialised memory.
//!
//! Written because the standard library has no vectorised reduction and no safe way to fill a
//! vector in parallel without zeroing it first.

use rayon::prelude::*;

/// Partial sums kept side by side: 16 f32 values (one AVX-512 register, two AVX ones).
pub const LANES: usize = 16;

/// `Σ f(v)` over `x`, with [`LANES`] partial sums in f64.
#[inline]
pub fn sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|v| f(*v)).sum::<f64>()
}

/// `(Σ f(a, b).0, Σ f(a, b).1)` over the pairs of `a` and `b`, with [`LANES`] partial sums of
/// each in f32.
#[inline]
pub fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let (mut s, mut t) = ([0f32; LANES], [0f32; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for i in 0..LANES {
            let (u, v) = f(ca[i], cb[i]);
            s[i] += u;
            t[i] += v;
        }
    }
    let (mut s, mut t) = (s.iter().sum::<f32>(), t.iter().sum::<f32>());
    for (a, b) in ra.iter().zip(rb) {
        let (u, v) = f(*a, *b);
        s += u;
        t += v;
    }
    (s, t)
}

/// `Σ aᵢ·bᵢ`, with [`LANES`] partial sums in f32.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum2(a, b, |a, b| (a * b, 0.0)).0
}

/// `f(k)(v)` for every value `v` of `x`, where `k` numbers the chunks of `chunk` values, on
/// every core.
pub fn map<G: Fn(f32) -> f32>(
    x: &[f32],
    chunk: usize,
    per_chunk: impl Fn(usize) -> G + Sync,
) -> Vec<f32> {
    zip_map(x, x, chunk, |k| {
        let f = per_chunk(k);
        move |v, _| f(v)
    })
}

/// `f(k)(a, b)` for every pair of values of `a` and `b`, where `k` numbers the chunks of
/// `chunk` values, on every core.
pub fn zip_map<G: Fn(f32, f32) -> f32>(
    a: &[f32],
    b: &[f32],
    chunk: usize,
    per_chunk: impl Fn(usize) -> G + Sync,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .zip(a.par_chunks(chunk.max(1)).zip(b.par_chunks(chunk.max(1))))
        .enumerate()
        .for_each(|(k, (o, (a, b)))| {
            let f = per_chunk(k);
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                o.write(f(*a, *b));
            }
        });
    // SAFETY: the chunks of `out`'s first `n` slots pair one to one with the chunks of `a` and
    // `b`, which have the same lengths (`a` and `b` have `n` values each), and every slot of
    // every chunk was written above.
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    /// The sums equal plain sums (up to rounding) at every length around the lane count.
    #[test]
    fn sums_equal_plain_sums() {
        for n in [0, 1, 15, 16, 17, 33, 1000] {
            let (a, b) = (values(n), values(n + 3)[3..].to_vec());
            let plain: f64 = a.iter().map(|v| (*v as f64).powi(2)).sum();
            assert!(
                (sum(&a, |v| (v as f64).powi(2)) - plain).abs() < 1e-9,
                "{n}"
            );
            let d: f64 = a.iter().zip(&b).map(|(a, b)| (*a * *b) as f64).sum();
            assert!((dot(&a, &b) as f64 - d).abs() < 1e-4, "{n}");
            let (s, t) = sum2(&a, &b, |a, b| (a, a - b));
            let t_plain: f64 = a.iter().zip(&b).map(|(a, b)| (*a - *b) as f64).sum();
            assert!((s as f64 - a.iter().map(|v| *v as f64).sum::<f64>()).abs() < 1e-4);
            assert!((t as f64 - t_plain).abs() < 1e-4, "{n}");
        }
    }

    /// Every output value is written, with its chunk's function, for lengths that are and are
    /// not multiples of the chunk.
    #[test]
    fn maps_write_every_value_with_its_chunks_function() {
        for (n, chunk) in [(0, 4), (1, 4), (12, 4), (13, 4), (1 << 17, 1 << 15)] {
            let (a, b) = (values(n), values(n + 1)[1..].to_vec());
            let out = zip_map(&a, &b, chunk, |k| move |a, b| a * b + k as f32);
            let want: Vec<f32> = (0..n).map(|i| a[i] * b[i] + (i / chunk) as f32).collect();
            assert_eq!(out, want);
            let out = map(&a, chunk, |k| move |a| a - k as f32);
            let want: Vec<f32> = (0..n).map(|i| a[i] - (i / chunk) as f32).collect();
            assert_eq!(out, want);
        }
    }
}
