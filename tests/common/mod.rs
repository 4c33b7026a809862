//! Helpers shared by the integration tests: a deterministic RNG, comparisons that print their
//! max differences, and the GPU context.
#![allow(dead_code)]

use revattn::gpu::{BackendChoice, GpuContext};

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// max |a − b| / max|b|: prints it and fails when above `rel_tol`.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], rel_tol: f64) {
    assert_close_at_scale(name, got, want, rel_tol, 0.0);
}

/// max |a − b| / max(max|b|, `scale`): for results that are differences of larger terms (`scale`
/// their magnitude), whose f32 rounding error follows the terms, not the result — which can be
/// exactly 0 in the reference while a GPU that fuses a multiply into the subtraction (FMA) leaves
/// the rounding error of the product.
pub fn assert_close_at_scale(name: &str, got: &[f32], want: &[f64], rel_tol: f64, scale: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs {}",
        got.len(),
        want.len()
    );
    let max_ref = want
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(scale)
        .max(1e-30);
    let (mut max_diff, mut at) = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        if d > max_diff || d.is_nan() {
            max_diff = d;
            at = i;
        }
        assert!(!g.is_nan(), "{name}: NaN at {i}");
    }
    let rel = max_diff / max_ref;
    println!("{name:<44} max|Δ| {max_diff:.3e}  max|ref| {max_ref:.3e}  rel {rel:.2e}");
    assert!(
        rel <= rel_tol,
        "{name}: relative difference {rel:.3e} > {rel_tol:.1e} (at index {at}: got {} want {})",
        got[at],
        want[at]
    );
}

/// The GPU the tests run on: lavapipe in CI (`.ci/run` installs it), any adapter locally.
/// `REVATTN_TEST_BACKEND=gl|vulkan|…` picks one.
pub fn gpu() -> GpuContext {
    let choice = match std::env::var("REVATTN_TEST_BACKEND").as_deref() {
        Ok("gl") => BackendChoice::Gl,
        Ok("vulkan") => BackendChoice::Vulkan,
        Ok("metal") => BackendChoice::Metal,
        Ok("dx12") => BackendChoice::Dx12,
        _ => BackendChoice::Auto,
    };
    GpuContext::new(choice).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

/// A tensor of a golden safetensors file as f64 (stored as F32 or F64).
pub fn st_f64(st: &safetensors::SafeTensors, name: &str) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        other => panic!("golden tensor {name}: dtype {other:?}, expected F32 or F64"),
    }
}

/// An I32 tensor of a golden safetensors file.
pub fn st_i32(st: &safetensors::SafeTensors, name: &str) -> Vec<i32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::I32, "golden tensor {name}");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The string metadata of a safetensors file.
pub fn st_metadata(bytes: &[u8]) -> std::collections::HashMap<String, String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).expect("safetensors header");
    meta.metadata().clone().unwrap_or_default()
}
