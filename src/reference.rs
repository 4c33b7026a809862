//! The float64 CPU reference: GPT-2 forward, loss, and the activation backward that yields
//! Reversed Attention, written as plain loops (only the two matmuls are register-blocked). It is
//! the executable form of PAPER.md §1.1–1.4 and Appendix A, and the oracle the GPU kernels are
//! compared with (`--backend cpu` runs it too).
//!
//! Dimensions follow `model.rs`: T tokens, C = n_embd, NH heads, hs = C / NH, V vocabulary,
//! L layers, P positions, F = n_inner, R = number of loss rows. Every buffer is row-major.
//!
//! One block, row-vector convention (HF Conv1D: y = x·W + b with W stored [in, out]):
//!
//! ```text
//! h_0     = wte[ids] + wpe[0..T)
//! x̃       = LN1(h_l)                                   (T, C)
//! qkv     = x̃·W_attn + b_attn                          (T, 3C)   Q | K | V
//! P_h     = Q_h·K_hᵀ,  A_h = softmax_causal(P_h/√hs)   (T, T)
//! z_h     = s_h·(A_h + η·M_h)·V_h                      (T, hs)   s_h = head_scale, M = patch
//! m       = h_l + z·W_o + b_o
//! h_{l+1} = m + gelu_new(LN2(m)·W_fc + b_fc)·W_fc2 + b_fc2
//! logits  = LN_f(h_L)[loss rows]·wteᵀ                  (R, V)
//! ```
//!
//! The backward computes activation gradients. Per head, with G_h = s_h·∂L/∂z_h:
//! R_h = A_h ⊙ (G_h·V_hᵀ − rowsum(A_h ⊙ G_h·V_hᵀ)·1ᵀ) / √hs = ∂L/∂P_h (the Reversed Attention),
//! dQ_h = R_h·K_h, dK_h = R_hᵀ·Q_h, dV_h = (A_h + η·M_h)ᵀ·G_h.
//!
//! For training (`train_grads`) the same backward also accumulates the weight gradients, next to
//! the activation gradient of each layer: dW += xᵀ·dout and db += Σ_t dout for every linear,
//! dw += Σ_t dout ⊙ x̂ and db += Σ_t dout for every LayerNorm, and wte collects both the
//! embedding rows (dwte[ids[t]] += dh_0[t]) and the tied lm_head (dwte += dlogitsᵀ·LN_f(h_L)).
//! The loss is the batch's mean next-token NLL (`TrainBatch`); `adamw_step` is `optim.rs`'s
//! update in f64.

use std::ops::Range;
use std::time::Instant;

use crate::error::Result;
use crate::loss::{LossPlan, Sequence, TrainBatch};
use crate::model::{GptConfig, LayerWeights, Model, Tensor, Weights};
use crate::optim::{self, AdamW};
use crate::pass::{Backend, ForwardOptions, PassOutput, PassTimings, Readback};

// ---------------------------------------------------------------------------------------------
// Per-layer functions: each forward next to its backward.
// ---------------------------------------------------------------------------------------------

/// Dot product with four partial sums (plain enough to read, fast enough for GPT-2-small shapes).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for u in 0..4 {
            acc[u] += x[u] * y[u];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// out[t] = wte[ids[t]] + wpe[t].
pub fn embedding_forward(
    out: &mut [f64], // (T, C)
    ids: &[u32],     // (T)
    wte: &[f64],     // (V, C)
    wpe: &[f64],     // (P, C)
    c: usize,
) {
    let t_len = ids.len();
    assert_eq!(out.len(), t_len * c, "embedding_forward: out is not (T, C)");
    assert!(
        wpe.len() >= t_len * c,
        "embedding_forward: T exceeds the position table"
    );
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(
            (id + 1) * c <= wte.len(),
            "embedding_forward: token id {id} is outside wte"
        );
        let tok = &wte[id * c..(id + 1) * c];
        let pos = &wpe[t * c..(t + 1) * c];
        for (o, (a, b)) in out[t * c..(t + 1) * c].iter_mut().zip(tok.iter().zip(pos)) {
            *o = a + b;
        }
    }
}

/// Differentiates `out[t] = wte[ids[t]] + wpe[t]`, accumulating:
/// dwte[ids[t]] += dout[t] and dwpe[t] += dout[t] (a token repeated in `ids` sums its rows).
pub fn embedding_backward(
    dwte: &mut [f64], // (V, C)
    dwpe: &mut [f64], // (P, C)
    dout: &[f64],     // (T, C)
    ids: &[u32],      // (T)
    c: usize,
) {
    let t_len = ids.len();
    assert_eq!(
        dout.len(),
        t_len * c,
        "embedding_backward: dout is not (T, C)"
    );
    assert!(
        dwpe.len() >= t_len * c,
        "embedding_backward: T exceeds the position table"
    );
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(
            (id + 1) * c <= dwte.len(),
            "embedding_backward: token id {id} is outside wte"
        );
        let d = &dout[t * c..(t + 1) * c];
        for (g, dv) in dwte[id * c..(id + 1) * c].iter_mut().zip(d) {
            *g += dv;
        }
        for (g, dv) in dwpe[t * c..(t + 1) * c].iter_mut().zip(d) {
            *g += dv;
        }
    }
}

/// out = (x − mean)·rstd ⊙ w + b per row, with rstd = 1/√(biased var + eps).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f64],  // (T, C)
    mean: &mut [f64], // (T)
    rstd: &mut [f64], // (T)
    x: &[f64],        // (T, C)
    w: &[f64],        // (C)
    b: &[f64],        // (C)
    c: usize,
    eps: f64,
) {
    let t_len = mean.len();
    assert!(x.len() == t_len * c && out.len() == t_len * c && rstd.len() == t_len);
    assert!(w.len() == c && b.len() == c);
    for t in 0..t_len {
        let xr = &x[t * c..(t + 1) * c];
        let mu = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            out[t * c + i] = (xr[i] - mu) * rs * w[i] + b[i];
        }
        mean[t] = mu;
        rstd[t] = rs;
    }
}

/// Differentiates `out = x̂ ⊙ w + b`, x̂ = (x − mean)·rstd. With g = dout ⊙ w:
/// dx = dresidual + (g − mean(g) − x̂·mean(g ⊙ x̂))·rstd.
/// dx (T,C) = dresidual + LN backward; `dresidual` may be None (then dx = LN backward only).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dx: &mut [f64],            // (T, C)
    dresidual: Option<&[f64]>, // (T, C)
    dout: &[f64],              // (T, C)
    x: &[f64],                 // (T, C)
    mean: &[f64],              // (T)
    rstd: &[f64],              // (T)
    w: &[f64],                 // (C)
    c: usize,
) {
    let t_len = mean.len();
    assert!(dx.len() == t_len * c && dout.len() == t_len * c && x.len() == t_len * c);
    assert!(rstd.len() == t_len && w.len() == c);
    if let Some(r) = dresidual {
        assert_eq!(r.len(), t_len * c);
    }
    for t in 0..t_len {
        let row = t * c..(t + 1) * c;
        let (xr, dr) = (&x[row.clone()], &dout[row.clone()]);
        let (mu, rs) = (mean[t], rstd[t]);
        let mut mean_g = 0.0;
        let mut mean_gx = 0.0;
        for i in 0..c {
            let g = dr[i] * w[i];
            mean_g += g;
            mean_gx += g * (xr[i] - mu) * rs;
        }
        mean_g /= c as f64;
        mean_gx /= c as f64;
        for i in 0..c {
            let g = dr[i] * w[i];
            let xhat = (xr[i] - mu) * rs;
            let base = dresidual.map_or(0.0, |r| r[t * c + i]);
            dx[t * c + i] = base + (g - mean_g - xhat * mean_gx) * rs;
        }
    }
}

/// Differentiates `out = x̂ ⊙ w + b`, x̂ = (x − mean)·rstd, w.r.t. the affine parameters,
/// accumulating dw (C) += Σ_t dout[t] ⊙ x̂[t] and db (C) += Σ_t dout[t].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_params(
    dw: &mut [f64], // (C)
    db: &mut [f64], // (C)
    dout: &[f64],   // (T, C)
    x: &[f64],      // (T, C)
    mean: &[f64],   // (T)
    rstd: &[f64],   // (T)
    c: usize,
) {
    let t_len = mean.len();
    assert!(dout.len() == t_len * c && x.len() == t_len * c && rstd.len() == t_len);
    assert!(dw.len() == c && db.len() == c);
    for t in 0..t_len {
        let (mu, rs) = (mean[t], rstd[t]);
        for i in 0..c {
            let d = dout[t * c + i];
            dw[i] += d * (x[t * c + i] - mu) * rs;
            db[i] += d;
        }
    }
}

/// out (M,N) = x (M,K) · w (K,N) + b (N)   [HF Conv1D]
///
/// The spec is the triple loop out[i, j] = b[j] + Σ_kk x[i, kk]·w[kk, j]. It runs over blocks of
/// 4 rows × 8 columns whose sums stay in registers, so each loaded w value serves four rows: about
/// 3× faster than plain i-k-j on GPT-2-small shapes, where w does not fit in cache.
pub fn linear_forward(
    out: &mut [f64],   // (M, N)
    x: &[f64],         // (M, K)
    w: &[f64],         // (K, N)
    b: Option<&[f64]>, // (N)
    m: usize,
    k: usize,
    n: usize,
) {
    const MB: usize = 4; // rows of x per block
    const NB: usize = 8; // columns of w per block
    assert!(out.len() == m * n && x.len() == m * k && w.len() == k * n);
    if let Some(b) = b {
        assert_eq!(b.len(), n);
    }
    for j0 in (0..n).step_by(NB) {
        let nj = NB.min(n - j0);
        for i0 in (0..m).step_by(MB) {
            let mi = MB.min(m - i0);
            let mut acc = [[0.0f64; NB]; MB]; // (MB, NB) out[i0.., j0..]
            if mi == MB && nj == NB {
                for kk in 0..k {
                    let wv: &[f64; NB] = w[kk * n + j0..kk * n + j0 + NB].try_into().unwrap();
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let a = x[(i0 + r) * k + kk];
                        for (s, wj) in acc_r.iter_mut().zip(wv) {
                            *s += a * wj;
                        }
                    }
                }
            } else {
                // the ragged edge of the matrix: same sums, variable block size
                for kk in 0..k {
                    let wv = &w[kk * n + j0..kk * n + j0 + nj];
                    for (r, acc_r) in acc.iter_mut().enumerate().take(mi) {
                        let a = x[(i0 + r) * k + kk];
                        for (s, wj) in acc_r.iter_mut().zip(wv) {
                            *s += a * wj;
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(mi) {
                for (jj, s) in acc_r.iter().enumerate().take(nj) {
                    out[(i0 + r) * n + j0 + jj] = b.map_or(0.0, |b| b[j0 + jj]) + s;
                }
            }
        }
    }
}

/// Differentiates `out = x·w + b` w.r.t. x: dx (M,K) = dout (M,N) · wᵀ
///
/// The spec is dx[i, kk] = Σ_j dout[i, j]·w[kk, j] (two contiguous rows). It computes 4 × 4 such
/// dot products at once, each split over 4 lanes, so every loaded value is used four times.
pub fn linear_backward_input(
    dx: &mut [f64], // (M, K)
    dout: &[f64],   // (M, N)
    w: &[f64],      // (K, N)
    m: usize,
    k: usize,
    n: usize,
) {
    const MB: usize = 4; // rows of dout per block
    const KB: usize = 4; // rows of w per block
    const LANES: usize = 4; // partial sums per dot product
    assert!(dx.len() == m * k && dout.len() == m * n && w.len() == k * n);
    let n_main = n / LANES * LANES;
    for i0 in (0..m).step_by(MB) {
        let mi = MB.min(m - i0);
        for k0 in (0..k).step_by(KB) {
            let kq = KB.min(k - k0);
            let mut acc = [[[0.0f64; LANES]; KB]; MB]; // (MB, KB, LANES)
            for j in (0..n_main).step_by(LANES) {
                for (r, acc_r) in acc.iter_mut().enumerate().take(mi) {
                    let d: &[f64; LANES] = dout[(i0 + r) * n + j..(i0 + r) * n + j + LANES]
                        .try_into()
                        .unwrap();
                    for (q, acc_rq) in acc_r.iter_mut().enumerate().take(kq) {
                        let wv: &[f64; LANES] = w[(k0 + q) * n + j..(k0 + q) * n + j + LANES]
                            .try_into()
                            .unwrap();
                        for l in 0..LANES {
                            acc_rq[l] += d[l] * wv[l];
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(mi) {
                for (q, acc_rq) in acc_r.iter().enumerate().take(kq) {
                    let (drow, wrow) = (
                        &dout[(i0 + r) * n..(i0 + r + 1) * n],
                        &w[(k0 + q) * n..(k0 + q + 1) * n],
                    );
                    let tail: f64 = (n_main..n).map(|j| drow[j] * wrow[j]).sum();
                    dx[(i0 + r) * k + k0 + q] =
                        (acc_rq[0] + acc_rq[1]) + (acc_rq[2] + acc_rq[3]) + tail;
                }
            }
        }
    }
}

/// Differentiates `out = x·w + b` w.r.t. the parameters, accumulating
/// dw (K,N) += xᵀ (K,M) · dout (M,N) and db (N) += Σ_i dout[i].
///
/// The spec is dw[kk, j] += Σ_i x[i, kk]·dout[i, j], looped i-kk-j so that a row of dout and a
/// row of dw are both contiguous. Rows of dout that are exactly 0 (no gradient reaches them:
/// padding, positions after the last target) add nothing and are skipped.
pub fn linear_backward_weight(
    dw: &mut [f64],         // (K, N)
    db: Option<&mut [f64]>, // (N)
    x: &[f64],              // (M, K)
    dout: &[f64],           // (M, N)
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(dw.len() == k * n && x.len() == m * k && dout.len() == m * n);
    for i in 0..m {
        let drow = &dout[i * n..(i + 1) * n];
        if drow.iter().all(|&d| d == 0.0) {
            continue;
        }
        for kk in 0..k {
            let a = x[i * k + kk];
            for (g, dv) in dw[kk * n..(kk + 1) * n].iter_mut().zip(drow) {
                *g += a * dv;
            }
        }
    }
    if let Some(db) = db {
        assert_eq!(db.len(), n);
        for i in 0..m {
            for (g, dv) in db.iter_mut().zip(&dout[i * n..(i + 1) * n]) {
                *g += dv;
            }
        }
    }
}

const GELU_K: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_C: f64 = 0.044_715;

/// gelu_new: out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_forward(
    out: &mut [f64], // (T, F), any shape
    x: &[f64],       // (T, F)
) {
    assert_eq!(out.len(), x.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + (GELU_K * (v + GELU_C * v * v * v)).tanh());
    }
}

/// Differentiates gelu_new: dx = dout·(0.5(1+th) + 0.5·x·(1−th²)·√(2/π)·(1 + 3·0.044715·x²)),
/// th = tanh(√(2/π)(x + 0.044715x³)).
pub fn gelu_backward(
    dx: &mut [f64], // (T, F), any shape
    dout: &[f64],   // (T, F)
    x: &[f64],      // (T, F) the forward input
) {
    assert!(dx.len() == x.len() && dout.len() == x.len());
    for i in 0..x.len() {
        let v = x[i];
        let th = (GELU_K * (v + GELU_C * v * v * v)).tanh();
        let local =
            0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * GELU_K * (1.0 + 3.0 * GELU_C * v * v);
        dx[i] = dout[i] * local;
    }
}

/// A finite-difference nudge of one unscaled score P_h[i, j] (used by `forward_loss`).
#[derive(Clone, Copy)]
struct ScoreNudge {
    head: usize,
    i: usize,
    j: usize,
    eps: f64,
}

/// Patch value η·M_h[i, j], or 0 without a patch.
fn patch_at(patch: Option<(&[f64], f64)>, idx: usize) -> f64 {
    patch.map_or(0.0, |(m, eta)| eta * m[idx])
}

#[allow(clippy::too_many_arguments)]
fn attention_forward_impl(
    att: &mut [f64], // (NH, T, T)
    z: &mut [f64],   // (T, C)
    qkv: &[f64],     // (T, 3C)
    t_len: usize,
    c: usize,
    nh: usize,
    patch: Option<(&[f64], f64)>, // (NH, T, T), η
    head_scale: &[f64],           // (NH)
    nudge: Option<ScoreNudge>,
) {
    assert!(c % nh == 0, "attention: C is not divisible by NH");
    assert!(att.len() == nh * t_len * t_len && z.len() == t_len * c && qkv.len() == t_len * 3 * c);
    assert_eq!(head_scale.len(), nh);
    if let Some((m, _)) = patch {
        assert_eq!(
            m.len(),
            nh * t_len * t_len,
            "attention: patch is not (NH, T, T)"
        );
    }
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let c3 = 3 * c;
    let mut scores = vec![0.0f64; t_len]; // (T) one row of S_h
    for h in 0..nh {
        let a_h = &mut att[h * t_len * t_len..(h + 1) * t_len * t_len];
        for i in 0..t_len {
            let q = &qkv[i * c3 + h * hs..i * c3 + (h + 1) * hs];
            // S[i, j] = (P[i, j] + nudge) / √hs for j ≤ i; the mask gives exact zeros for j > i.
            let mut max = f64::NEG_INFINITY;
            for j in 0..=i {
                let k = &qkv[j * c3 + c + h * hs..j * c3 + c + (h + 1) * hs];
                let mut p = dot(q, k);
                if let Some(n) = nudge {
                    if n.head == h && n.i == i && n.j == j {
                        p += n.eps;
                    }
                }
                scores[j] = p * scale;
                max = max.max(scores[j]);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut().take(i + 1) {
                *s = (*s - max).exp();
                sum += *s;
            }
            for j in 0..t_len {
                a_h[i * t_len + j] = if j <= i { scores[j] / sum } else { 0.0 };
            }
        }
        // z_h = s_h·(A_h + η·M_h)·V_h. The patched map is used in full, as HF's `w @ V` does.
        let s_h = head_scale[h];
        for i in 0..t_len {
            let zr = &mut z[i * c + h * hs..i * c + (h + 1) * hs];
            zr.fill(0.0);
            let j_end = if patch.is_some() { t_len } else { i + 1 };
            for j in 0..j_end {
                let idx = h * t_len * t_len + i * t_len + j;
                let w = s_h * (att[idx] + patch_at(patch, idx));
                let v = &qkv[j * c3 + 2 * c + h * hs..j * c3 + 2 * c + (h + 1) * hs];
                for (zd, vd) in zr.iter_mut().zip(v) {
                    *zd += w * vd;
                }
            }
        }
    }
}

/// att (NH,T,T) softmax probabilities (before patch),
/// z (T,C) = head_scale[h] · (att + eta·patch)·V per head.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    att: &mut [f64], // (NH, T, T)
    z: &mut [f64],   // (T, C)
    qkv: &[f64],     // (T, 3C)
    t: usize,
    c: usize,
    nh: usize,
    patch: Option<(&[f64], f64)>, // (NH, T, T), η
    head_scale: &[f64],           // (NH)
) {
    attention_forward_impl(att, z, qkv, t, c, nh, patch, head_scale, None);
}

/// Differentiates `z_h = s_h·(A_h + η·M_h)·V_h` with `A_h = softmax_causal(Q_h·K_hᵀ/√hs)`.
/// From dz (T,C) (= G, gradient at the c_proj input): ra (NH,T,T) = R per head, dqkv (T,3C).
/// G_h is multiplied by head_scale[h]; dV uses (att + eta·patch)ᵀ; RA and dQ/dK use the softmax
/// att. Every element of `ra` and `dqkv` is written.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    ra: &mut [f64],   // (NH, T, T)
    dqkv: &mut [f64], // (T, 3C)
    dz: &[f64],       // (T, C)
    qkv: &[f64],      // (T, 3C)
    att: &[f64],      // (NH, T, T)
    t_len: usize,
    c: usize,
    nh: usize,
    patch: Option<(&[f64], f64)>, // (NH, T, T), η
    head_scale: &[f64],           // (NH)
) {
    assert!(c % nh == 0, "attention: C is not divisible by NH");
    let tt = t_len * t_len;
    assert!(ra.len() == nh * tt && att.len() == nh * tt);
    assert!(dqkv.len() == t_len * 3 * c && qkv.len() == t_len * 3 * c && dz.len() == t_len * c);
    assert_eq!(head_scale.len(), nh);
    if let Some((m, _)) = patch {
        assert_eq!(m.len(), nh * tt, "attention: patch is not (NH, T, T)");
    }
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let c3 = 3 * c;
    let col = |t: usize, block: usize, h: usize| t * c3 + block * c + h * hs; // start of Q/K/V_h[t]
    let mut g = vec![0.0f64; t_len * hs]; // (T, hs) G_h = s_h·dz_h
    let mut da = vec![0.0f64; t_len]; // (T) one row of dA = G_h·V_hᵀ
    for h in 0..nh {
        let s_h = head_scale[h];
        for i in 0..t_len {
            for d in 0..hs {
                g[i * hs + d] = s_h * dz[i * c + h * hs + d];
            }
        }
        // R[i, j] = A[i, j]·(dA[i, j] − Σ_j' A[i, j']·dA[i, j']) / √hs, j ≤ i; exact 0 above.
        for i in 0..t_len {
            let gi = &g[i * hs..(i + 1) * hs];
            let mut r = 0.0;
            for j in 0..=i {
                da[j] = dot(gi, &qkv[col(j, 2, h)..col(j, 2, h) + hs]);
                r += att[h * tt + i * t_len + j] * da[j];
            }
            let row = h * tt + i * t_len;
            for (j, &da_j) in da.iter().enumerate().take(i + 1) {
                ra[row + j] = att[row + j] * (da_j - r) * scale;
            }
            ra[row + i + 1..row + t_len].fill(0.0);
        }
        let r_h = &ra[h * tt..(h + 1) * tt];
        // dQ_h[i] = Σ_j R[i, j]·K_h[j]
        for i in 0..t_len {
            let dq = col(i, 0, h);
            dqkv[dq..dq + hs].fill(0.0);
            for j in 0..=i {
                let rij = r_h[i * t_len + j];
                for d in 0..hs {
                    dqkv[dq + d] += rij * qkv[col(j, 1, h) + d];
                }
            }
        }
        // dK_h[j] = Σ_i R[i, j]·Q_h[i];  dV_h[j] = Σ_i (A + η·M)[i, j]·G_h[i]
        for j in 0..t_len {
            let (dk, dv) = (col(j, 1, h), col(j, 2, h));
            dqkv[dk..dk + hs].fill(0.0);
            dqkv[dv..dv + hs].fill(0.0);
            for i in j..t_len {
                let rij = r_h[i * t_len + j];
                for d in 0..hs {
                    dqkv[dk + d] += rij * qkv[col(i, 0, h) + d];
                }
            }
            let i_start = if patch.is_some() { 0 } else { j };
            for i in i_start..t_len {
                let idx = h * tt + i * t_len + j;
                let w = att[idx] + patch_at(patch, idx);
                for d in 0..hs {
                    dqkv[dv + d] += w * g[i * hs + d];
                }
            }
        }
    }
}

/// loss and dlogits (R,V) for the plan (see loss.rs header):
/// loss = Σ_r lse_scale[r]·logsumexp(logits[r]) + Σ terms coef·logits[row,id].
/// dlogits[r] = lse_scale[r]·softmax(logits[r]) + Σ_{terms in row r} coef·onehot(id).
pub fn loss_forward_backward(
    dlogits: &mut [f64], // (R, V)
    logits: &[f64],      // (R, V)
    plan: &LossPlan,
    v: usize,
) -> f64 {
    let n_rows = plan.n_rows();
    assert!(logits.len() == n_rows * v && dlogits.len() == n_rows * v);
    assert_eq!(
        plan.lse_scale.len(),
        n_rows,
        "loss plan: lse_scale is not (R)"
    );
    let mut loss = 0.0;
    for r in 0..n_rows {
        let row = &logits[r * v..(r + 1) * v];
        let drow = &mut dlogits[r * v..(r + 1) * v];
        let a = plan.lse_scale[r] as f64;
        if a == 0.0 {
            drow.fill(0.0);
            continue;
        }
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
        loss += a * (max + sum.ln());
        for (d, x) in drow.iter_mut().zip(row) {
            *d = a * (x - max).exp() / sum;
        }
    }
    for term in &plan.terms {
        assert!(
            term.row < n_rows && (term.id as usize) < v,
            "loss plan: term out of range"
        );
        let idx = term.row * v + term.id as usize;
        loss += term.coef as f64 * logits[idx];
        dlogits[idx] += term.coef as f64;
    }
    loss
}

/// Next-token cross-entropy of one sequence of a training batch, each target's term weighted by
/// `scale` (1/n, n = the number of targets in the whole batch):
/// loss = scale·Σ_{t: target[t] ≥ 0} (logsumexp(logits[t]) − logits[t, target[t]]).
/// dlogits[t] = scale·(softmax(logits[t]) − onehot(target[t])); exactly 0 on rows with target −1.
pub fn next_token_loss_forward_backward(
    dlogits: &mut [f64], // (T, V)
    logits: &[f64],      // (T, V)
    targets: &[i32],     // (T) target id or −1
    scale: f64,
    v: usize,
) -> f64 {
    let t_len = targets.len();
    assert!(logits.len() == t_len * v && dlogits.len() == t_len * v);
    let mut loss = 0.0;
    for (t, &target) in targets.iter().enumerate() {
        let row = &logits[t * v..(t + 1) * v];
        let drow = &mut dlogits[t * v..(t + 1) * v];
        if target < 0 {
            drow.fill(0.0);
            continue;
        }
        let target = target as usize;
        assert!(
            target < v,
            "next-token loss: target {target} is outside the vocabulary"
        );
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
        loss += scale * (max + sum.ln() - row[target]);
        for (d, x) in drow.iter_mut().zip(row) {
            *d = scale * (x - max).exp() / sum;
        }
        drow[target] -= scale;
    }
    loss
}

// ---------------------------------------------------------------------------------------------
// The whole pass.
// ---------------------------------------------------------------------------------------------

/// Full float64 pass (all tensors f64).
#[derive(Debug, Clone)]
pub struct CpuPass {
    pub loss: f64,
    /// (R, V) logits at the loss rows.
    pub logits: Vec<f64>,
    /// (L, NH, T, T) softmax attention (before any patch).
    pub attention: Vec<f64>,
    /// (L, NH, T, T) R = dL/d(QKᵀ).
    pub reversed_attention: Vec<f64>,
    /// (L+1, T, C): dL/dh_l at block inputs l=0..L-1, then at ln_f input.
    pub hidden_grads: Vec<f64>,
}

/// A nudge applied inside the forward pass, for finite-difference tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Perturbation {
    None,
    /// add eps to the unscaled score P = Q·Kᵀ at (layer, head, i, j) before scaling/masking
    Score {
        layer: usize,
        head: usize,
        i: usize,
        j: usize,
        eps: f64,
    },
    /// add eps to h_l[t, c] (input of block `layer`; layer == L means ln_f input)
    Hidden {
        layer: usize,
        t: usize,
        c: usize,
        eps: f64,
    },
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&x| x as f64).collect()
}

/// One block's weights in f64 (shapes as in `LayerWeights`).
struct LayerF64 {
    ln_1_w: Vec<f64>,      // (C)
    ln_1_b: Vec<f64>,      // (C)
    attn_w: Vec<f64>,      // (C, 3C)
    attn_b: Vec<f64>,      // (3C)
    attn_proj_w: Vec<f64>, // (C, C)
    attn_proj_b: Vec<f64>, // (C)
    ln_2_w: Vec<f64>,      // (C)
    ln_2_b: Vec<f64>,      // (C)
    fc_w: Vec<f64>,        // (C, F)
    fc_b: Vec<f64>,        // (F)
    fc_proj_w: Vec<f64>,   // (F, C)
    fc_proj_b: Vec<f64>,   // (C)
}

/// All weights converted to f64 once.
struct WeightsF64 {
    wte: Vec<f64>, // (V, C)
    wpe: Vec<f64>, // (P, C)
    layers: Vec<LayerF64>,
    ln_f_w: Vec<f64>, // (C)
    ln_f_b: Vec<f64>, // (C)
}

impl WeightsF64 {
    fn new(w: &Weights) -> Self {
        let layer = |l: &LayerWeights| LayerF64 {
            ln_1_w: to_f64(&l.ln_1_w),
            ln_1_b: to_f64(&l.ln_1_b),
            attn_w: to_f64(&l.attn_w),
            attn_b: to_f64(&l.attn_b),
            attn_proj_w: to_f64(&l.attn_proj_w),
            attn_proj_b: to_f64(&l.attn_proj_b),
            ln_2_w: to_f64(&l.ln_2_w),
            ln_2_b: to_f64(&l.ln_2_b),
            fc_w: to_f64(&l.fc_w),
            fc_b: to_f64(&l.fc_b),
            fc_proj_w: to_f64(&l.fc_proj_w),
            fc_proj_b: to_f64(&l.fc_proj_b),
        };
        WeightsF64 {
            wte: to_f64(&w.wte),
            wpe: to_f64(&w.wpe),
            layers: w.layers.iter().map(layer).collect(),
            ln_f_w: to_f64(&w.ln_f_w),
            ln_f_b: to_f64(&w.ln_f_b),
        }
    }

    /// From f64 tensors in `Weights::named()` order, of the shapes `GptConfig::parameter_shapes`
    /// gives.
    fn from_named(config: &GptConfig, params: &[Vec<f64>]) -> Self {
        let shapes = config.parameter_shapes();
        assert_eq!(
            params.len(),
            shapes.len(),
            "expected {} parameter tensors in named() order, got {}",
            shapes.len(),
            params.len()
        );
        for (p, (name, shape)) in params.iter().zip(&shapes) {
            assert_eq!(
                p.len(),
                shape.iter().product::<usize>(),
                "parameter {name} has {} values, its shape is {shape:?}",
                p.len()
            );
        }
        let mut it = params.iter().cloned();
        let mut next = || it.next().expect("count checked");
        let (wte, wpe) = (next(), next());
        let layers = (0..config.n_layer)
            .map(|_| LayerF64 {
                ln_1_w: next(),
                ln_1_b: next(),
                attn_w: next(),
                attn_b: next(),
                attn_proj_w: next(),
                attn_proj_b: next(),
                ln_2_w: next(),
                ln_2_b: next(),
                fc_w: next(),
                fc_b: next(),
                fc_proj_w: next(),
                fc_proj_b: next(),
            })
            .collect();
        let (ln_f_w, ln_f_b) = (next(), next());
        WeightsF64 {
            wte,
            wpe,
            layers,
            ln_f_w,
            ln_f_b,
        }
    }

    /// All zeros in the model's shapes: a gradient accumulator.
    fn zeros(config: &GptConfig) -> Self {
        let zeros: Vec<Vec<f64>> = config
            .parameter_shapes()
            .iter()
            .map(|(_, s)| vec![0.0; s.iter().product()])
            .collect();
        Self::from_named(config, &zeros)
    }

    /// The tensors in `Weights::named()` order.
    fn into_named(self) -> Vec<Vec<f64>> {
        let mut out = vec![self.wte, self.wpe];
        for l in self.layers {
            out.extend([
                l.ln_1_w,
                l.ln_1_b,
                l.attn_w,
                l.attn_b,
                l.attn_proj_w,
                l.attn_proj_b,
                l.ln_2_w,
                l.ln_2_b,
                l.fc_w,
                l.fc_b,
                l.fc_proj_w,
                l.fc_proj_b,
            ]);
        }
        out.push(self.ln_f_w);
        out.push(self.ln_f_b);
        out
    }
}

/// ForwardOptions in f64.
struct Settings {
    head_scale: Vec<f64>,           // (L, NH)
    patch: Option<(Vec<f64>, f64)>, // (L, NH, T, T), η
}

impl Settings {
    fn new(config: &GptConfig, options: &ForwardOptions) -> Self {
        Settings {
            head_scale: options
                .head_scale(config)
                .iter()
                .map(|&s| s as f64)
                .collect(),
            patch: options
                .patch
                .as_ref()
                .map(|p| (p.maps.iter().map(|&m| m as f64).collect(), p.eta as f64)),
        }
    }

    /// Layer l's (NH, T, T) slice of the patch.
    fn patch(&self, l: usize, nh: usize, t_len: usize) -> Option<(&[f64], f64)> {
        let n = nh * t_len * t_len;
        self.patch
            .as_ref()
            .map(|(m, eta)| (&m[l * n..(l + 1) * n], *eta))
    }
}

/// Everything wrong with a request, as a one-line message (None when it can run).
/// What the backward pass needs from one block's forward.
struct LayerCache {
    x: Vec<f64>,        // (T, C) h_l, the block input
    ln1: Vec<f64>,      // (T, C) LN1(h_l), the c_attn input
    ln1_mean: Vec<f64>, // (T)
    ln1_rstd: Vec<f64>, // (T)
    qkv: Vec<f64>,      // (T, 3C)
    att: Vec<f64>,      // (NH, T, T) softmax, before the patch
    z: Vec<f64>,        // (T, C) attention output, the c_proj input
    m: Vec<f64>,        // (T, C) residual after attention
    ln2: Vec<f64>,      // (T, C) LN2(m), the c_fc input
    ln2_mean: Vec<f64>, // (T)
    ln2_rstd: Vec<f64>, // (T)
    fc: Vec<f64>,       // (T, F) pre-activation
}

struct ForwardState {
    layers: Vec<LayerCache>,
    h_final: Vec<f64>,  // (T, C) h_L, the ln_f input
    lnf: Vec<f64>,      // (T, C) LN_f(h_L), the lm_head input
    lnf_mean: Vec<f64>, // (T)
    lnf_rstd: Vec<f64>, // (T)
    rows: Range<usize>, // the R positions whose logits were computed
    logits: Vec<f64>,   // (R, V)
    dlogits: Vec<f64>,  // (R, V)
    loss: f64,
}

/// What the forward pass scores.
#[derive(Clone, Copy)]
enum Objective<'a> {
    /// A request's loss (`Sequence::loss`).
    Plan(&'a LossPlan),
    /// One sequence of a training batch: every row is a logit row, and each next-token target
    /// (−1 = none) is weighted by `scale` = 1/n over the whole batch.
    Targets { targets: &'a [i32], scale: f64 },
}

fn forward(
    config: &GptConfig,
    w: &WeightsF64,
    seq: &Sequence,
    settings: &Settings,
    perturb: &Perturbation,
) -> ForwardState {
    forward_impl(
        config,
        w,
        &seq.ids,
        Objective::Plan(&seq.loss),
        settings,
        perturb,
    )
}

fn forward_impl(
    config: &GptConfig,
    w: &WeightsF64,
    ids: &[u32], // (T)
    objective: Objective,
    settings: &Settings,
    perturb: &Perturbation,
) -> ForwardState {
    let (t_len, c, nh, f, v) = (
        ids.len(),
        config.n_embd,
        config.n_head,
        config.n_inner,
        config.vocab_size,
    );
    let n_layer = config.n_layer;
    let eps = config.layer_norm_epsilon;
    match *perturb {
        Perturbation::None => {}
        Perturbation::Score {
            layer, head, i, j, ..
        } => assert!(
            layer < n_layer && head < nh && i < t_len && j < t_len,
            "Perturbation::Score out of range"
        ),
        Perturbation::Hidden {
            layer, t, c: pc, ..
        } => assert!(
            layer <= n_layer && t < t_len && pc < c,
            "Perturbation::Hidden out of range"
        ),
    }
    let nudge_hidden = |h: &mut [f64], l: usize| {
        if let Perturbation::Hidden {
            layer,
            t,
            c: pc,
            eps,
        } = *perturb
        {
            if layer == l {
                h[t * c + pc] += eps;
            }
        }
    };

    let mut h = vec![0.0; t_len * c]; // (T, C)
    embedding_forward(&mut h, ids, &w.wte, &w.wpe, c);
    let mut layers = Vec::with_capacity(n_layer);
    for (l, lw) in w.layers.iter().enumerate() {
        nudge_hidden(&mut h, l);
        let mut ln1 = vec![0.0; t_len * c]; // (T, C)
        let mut ln1_mean = vec![0.0; t_len]; // (T)
        let mut ln1_rstd = vec![0.0; t_len]; // (T)
        layernorm_forward(
            &mut ln1,
            &mut ln1_mean,
            &mut ln1_rstd,
            &h,
            &lw.ln_1_w,
            &lw.ln_1_b,
            c,
            eps,
        );
        let mut qkv = vec![0.0; t_len * 3 * c]; // (T, 3C)
        linear_forward(
            &mut qkv,
            &ln1,
            &lw.attn_w,
            Some(&lw.attn_b),
            t_len,
            c,
            3 * c,
        );
        let mut att = vec![0.0; nh * t_len * t_len]; // (NH, T, T)
        let mut z = vec![0.0; t_len * c]; // (T, C)
        let nudge = match *perturb {
            Perturbation::Score {
                layer,
                head,
                i,
                j,
                eps,
            } if layer == l => Some(ScoreNudge { head, i, j, eps }),
            _ => None,
        };
        attention_forward_impl(
            &mut att,
            &mut z,
            &qkv,
            t_len,
            c,
            nh,
            settings.patch(l, nh, t_len),
            &settings.head_scale[l * nh..(l + 1) * nh],
            nudge,
        );
        // m = h + z·W_o + b_o
        let mut m = vec![0.0; t_len * c]; // (T, C)
        linear_forward(
            &mut m,
            &z,
            &lw.attn_proj_w,
            Some(&lw.attn_proj_b),
            t_len,
            c,
            c,
        );
        for (mi, hi) in m.iter_mut().zip(&h) {
            *mi += hi;
        }
        let mut ln2 = vec![0.0; t_len * c]; // (T, C)
        let mut ln2_mean = vec![0.0; t_len]; // (T)
        let mut ln2_rstd = vec![0.0; t_len]; // (T)
        layernorm_forward(
            &mut ln2,
            &mut ln2_mean,
            &mut ln2_rstd,
            &m,
            &lw.ln_2_w,
            &lw.ln_2_b,
            c,
            eps,
        );
        let mut fc = vec![0.0; t_len * f]; // (T, F)
        linear_forward(&mut fc, &ln2, &lw.fc_w, Some(&lw.fc_b), t_len, c, f);
        let mut act = vec![0.0; t_len * f]; // (T, F)
        gelu_forward(&mut act, &fc);
        // h_{l+1} = m + act·W_fc2 + b_fc2
        let mut h_next = vec![0.0; t_len * c]; // (T, C)
        linear_forward(
            &mut h_next,
            &act,
            &lw.fc_proj_w,
            Some(&lw.fc_proj_b),
            t_len,
            f,
            c,
        );
        for (hn, mi) in h_next.iter_mut().zip(&m) {
            *hn += mi;
        }
        let x = std::mem::replace(&mut h, h_next);
        layers.push(LayerCache {
            x,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            att,
            z,
            m,
            ln2,
            ln2_mean,
            ln2_rstd,
            fc,
        });
    }
    nudge_hidden(&mut h, n_layer);

    // ln_f on every row (cheap), the tied lm_head only at the loss rows: logits = ln_f(h_L)·wteᵀ.
    let mut lnf = vec![0.0; t_len * c]; // (T, C)
    let mut lnf_mean = vec![0.0; t_len]; // (T)
    let mut lnf_rstd = vec![0.0; t_len]; // (T)
    layernorm_forward(
        &mut lnf,
        &mut lnf_mean,
        &mut lnf_rstd,
        &h,
        &w.ln_f_w,
        &w.ln_f_b,
        c,
        eps,
    );
    let rows = match objective {
        Objective::Plan(plan) => plan.rows.clone(),
        Objective::Targets { targets, .. } => {
            assert_eq!(targets.len(), t_len, "training targets are not (T)");
            0..t_len
        }
    };
    let n_rows = rows.len();
    let mut logits = vec![0.0; n_rows * v]; // (R, V)
    for (r, t) in rows.clone().enumerate() {
        let x = &lnf[t * c..(t + 1) * c];
        for (vi, out) in logits[r * v..(r + 1) * v].iter_mut().enumerate() {
            *out = dot(x, &w.wte[vi * c..(vi + 1) * c]);
        }
    }
    let mut dlogits = vec![0.0; n_rows * v]; // (R, V)
    let loss = match objective {
        Objective::Plan(plan) => loss_forward_backward(&mut dlogits, &logits, plan, v),
        Objective::Targets { targets, scale } => {
            next_token_loss_forward_backward(&mut dlogits, &logits, targets, scale, v)
        }
    };
    ForwardState {
        layers,
        h_final: h,
        lnf,
        lnf_mean,
        lnf_rstd,
        rows,
        logits,
        dlogits,
        loss,
    }
}

/// The activation backward (PAPER.md Appendix A). Returns (RA (L, NH, T, T), dL/dh (L+1, T, C)).
/// With `grads`, it also accumulates (+=) dL/dθ of every parameter into it (shapes as in `w`).
fn backward(
    config: &GptConfig,
    w: &WeightsF64,
    ids: &[u32], // (T)
    settings: &Settings,
    st: &ForwardState,
    mut grads: Option<&mut WeightsF64>,
) -> (Vec<f64>, Vec<f64>) {
    let (t_len, c, nh, f, v) = (
        ids.len(),
        config.n_embd,
        config.n_head,
        config.n_inner,
        config.vocab_size,
    );
    let n_layer = config.n_layer;
    let tc = t_len * c;
    let mut ra = vec![0.0; n_layer * nh * t_len * t_len]; // (L, NH, T, T)
    let mut hidden = vec![0.0; (n_layer + 1) * tc]; // (L+1, T, C)

    // logits = lnf[rows]·wteᵀ  →  dlnf[rows] = dlogits·wte; 0 at the other rows.
    // With grads, the tied lm_head's share of dwte: dwte[vi] += Σ_r dlogits[r, vi]·lnf[row r].
    let mut dlnf = vec![0.0; tc]; // (T, C)
    for (r, t) in st.rows.clone().enumerate() {
        let drow = &mut dlnf[t * c..(t + 1) * c];
        let xrow = &st.lnf[t * c..(t + 1) * c];
        for vi in 0..v {
            let g = st.dlogits[r * v + vi];
            if g != 0.0 {
                for (d, wv) in drow.iter_mut().zip(&w.wte[vi * c..(vi + 1) * c]) {
                    *d += g * wv;
                }
                if let Some(gw) = grads.as_deref_mut() {
                    for (dw, xv) in gw.wte[vi * c..(vi + 1) * c].iter_mut().zip(xrow) {
                        *dw += g * xv;
                    }
                }
            }
        }
    }
    // lnf = LN_f(h_L)
    layernorm_backward(
        &mut hidden[n_layer * tc..],
        None,
        &dlnf,
        &st.h_final,
        &st.lnf_mean,
        &st.lnf_rstd,
        &w.ln_f_w,
        c,
    );
    if let Some(g) = grads.as_deref_mut() {
        layernorm_backward_params(
            &mut g.ln_f_w,
            &mut g.ln_f_b,
            &dlnf,
            &st.h_final,
            &st.lnf_mean,
            &st.lnf_rstd,
            c,
        );
    }

    let mut act = vec![0.0; t_len * f]; // (T, F) gelu(fc), recomputed for dW_fc2
    let mut dact = vec![0.0; t_len * f]; // (T, F)
    let mut dfc = vec![0.0; t_len * f]; // (T, F)
    let mut dln = vec![0.0; tc]; // (T, C) gradient at an LN output
    let mut dm = vec![0.0; tc]; // (T, C)
    let mut dz = vec![0.0; tc]; // (T, C)
    let mut dqkv = vec![0.0; t_len * 3 * c]; // (T, 3C)
    for l in (0..n_layer).rev() {
        let (lw, cache) = (&w.layers[l], &st.layers[l]);
        let mut gl = grads.as_deref_mut().map(|g| &mut g.layers[l]);
        let (below, above) = hidden.split_at_mut((l + 1) * tc);
        let dh_out = &above[..tc]; // (T, C) dL/dh_{l+1}
        let dh_in = &mut below[l * tc..]; // (T, C) dL/dh_l, written below

        // h_{l+1} = m + gelu(fc)·W_fc2 + b_fc2
        linear_backward_input(&mut dact, dh_out, &lw.fc_proj_w, t_len, f, c);
        if let Some(g) = gl.as_deref_mut() {
            gelu_forward(&mut act, &cache.fc);
            linear_backward_weight(
                &mut g.fc_proj_w,
                Some(&mut g.fc_proj_b),
                &act,
                dh_out,
                t_len,
                f,
                c,
            );
        }
        gelu_backward(&mut dfc, &dact, &cache.fc);
        // fc = LN2(m)·W_fc + b_fc
        linear_backward_input(&mut dln, &dfc, &lw.fc_w, t_len, c, f);
        if let Some(g) = gl.as_deref_mut() {
            linear_backward_weight(
                &mut g.fc_w,
                Some(&mut g.fc_b),
                &cache.ln2,
                &dfc,
                t_len,
                c,
                f,
            );
            // ln2 = LN2(m)
            layernorm_backward_params(
                &mut g.ln_2_w,
                &mut g.ln_2_b,
                &dln,
                &cache.m,
                &cache.ln2_mean,
                &cache.ln2_rstd,
                c,
            );
        }
        // m feeds both the residual and LN2
        layernorm_backward(
            &mut dm,
            Some(dh_out),
            &dln,
            &cache.m,
            &cache.ln2_mean,
            &cache.ln2_rstd,
            &lw.ln_2_w,
            c,
        );
        // m = h_l + z·W_o + b_o  →  G = dz = dm·W_oᵀ
        linear_backward_input(&mut dz, &dm, &lw.attn_proj_w, t_len, c, c);
        if let Some(g) = gl.as_deref_mut() {
            // z already carries the head scales (ablated heads give zero rows of dW_o)
            linear_backward_weight(
                &mut g.attn_proj_w,
                Some(&mut g.attn_proj_b),
                &cache.z,
                &dm,
                t_len,
                c,
                c,
            );
        }
        let ra_l = &mut ra[l * nh * t_len * t_len..(l + 1) * nh * t_len * t_len];
        attention_backward(
            ra_l,
            &mut dqkv,
            &dz,
            &cache.qkv,
            &cache.att,
            t_len,
            c,
            nh,
            settings.patch(l, nh, t_len),
            &settings.head_scale[l * nh..(l + 1) * nh],
        );
        // qkv = LN1(h_l)·W_attn + b_attn
        linear_backward_input(&mut dln, &dqkv, &lw.attn_w, t_len, c, 3 * c);
        if let Some(g) = gl {
            linear_backward_weight(
                &mut g.attn_w,
                Some(&mut g.attn_b),
                &cache.ln1,
                &dqkv,
                t_len,
                c,
                3 * c,
            );
            // ln1 = LN1(h_l)
            layernorm_backward_params(
                &mut g.ln_1_w,
                &mut g.ln_1_b,
                &dln,
                &cache.x,
                &cache.ln1_mean,
                &cache.ln1_rstd,
                c,
            );
        }
        // h_l feeds both the residual (into m) and LN1
        layernorm_backward(
            dh_in,
            Some(&dm),
            &dln,
            &cache.x,
            &cache.ln1_mean,
            &cache.ln1_rstd,
            &lw.ln_1_w,
            c,
        );
    }
    // h_0 = wte[ids] + wpe[0..T)
    if let Some(g) = grads {
        embedding_backward(&mut g.wte, &mut g.wpe, &hidden[..tc], ids, c);
    }
    (ra, hidden)
}

fn forward_backward_f64(
    config: &GptConfig,
    w: &WeightsF64,
    seq: &Sequence,
    settings: &Settings,
) -> CpuPass {
    let st = forward(config, w, seq, settings, &Perturbation::None);
    let (reversed_attention, hidden_grads) = backward(config, w, &seq.ids, settings, &st, None);
    CpuPass {
        loss: st.loss,
        attention: collect_attention(&st),
        logits: st.logits,
        reversed_attention,
        hidden_grads,
    }
}

/// (L, NH, T, T) softmax attention of every layer.
fn collect_attention(st: &ForwardState) -> Vec<f64> {
    st.layers
        .iter()
        .flat_map(|lc| lc.att.iter().copied())
        .collect()
}

/// Full float64 pass (all tensors f64). Panics with a one-line message on an invalid request.
pub fn forward_backward(
    config: &GptConfig,
    weights: &Weights,
    seq: &Sequence,
    options: &ForwardOptions,
) -> CpuPass {
    if let Err(e) = crate::pass::validate(config, seq, options) {
        panic!("reference::forward_backward: {e}");
    }
    let w = WeightsF64::new(weights);
    forward_backward_f64(config, &w, seq, &Settings::new(config, options))
}

/// Loss only, with an optional perturbation — used by finite-difference tests.
pub fn forward_loss(
    config: &GptConfig,
    weights: &Weights,
    seq: &Sequence,
    options: &ForwardOptions,
    perturb: &Perturbation,
) -> f64 {
    if let Err(e) = crate::pass::validate(config, seq, options) {
        panic!("reference::forward_loss: {e}");
    }
    let w = WeightsF64::new(weights);
    forward(config, &w, seq, &Settings::new(config, options), perturb).loss
}

// ---------------------------------------------------------------------------------------------
// Training: weight gradients of the next-token loss, and AdamW.
// ---------------------------------------------------------------------------------------------

/// The loss of a training batch and dL/dθ of every parameter.
#[derive(Debug, Clone)]
pub struct ParamGrads {
    /// Mean next-token NLL over the positions with a target (0 when there are none).
    pub loss: f64,
    /// One gradient per parameter in `Weights::named()` order, each the shape of its tensor
    /// (`GptConfig::parameter_shapes`). wte's gradient includes both the embedding rows and the
    /// tied lm_head.
    pub grads: Vec<Vec<f64>>,
}

/// Every parameter in f64, in `Weights::named()` order (the input of `train_grads_f64`).
pub fn params_f64(weights: &Weights) -> Vec<Vec<f64>> {
    weights.named().iter().map(|(_, t)| to_f64(t)).collect()
}

/// Everything wrong with a training batch, as a one-line message (None when it can run).
fn batch_problem(config: &GptConfig, batch: &TrainBatch) -> Option<String> {
    let (b, t) = (batch.b, batch.t);
    if b == 0 || t == 0 {
        return Some(format!("the batch is empty (B = {b}, T = {t})"));
    }
    if batch.ids.len() != b * t || batch.targets.len() != b * t {
        return Some(format!(
            "ids ({}) and targets ({}) are not (B, T) = ({b}, {t})",
            batch.ids.len(),
            batch.targets.len()
        ));
    }
    if t > config.n_positions {
        return Some(format!(
            "T = {t} exceeds n_positions = {}",
            config.n_positions
        ));
    }
    let v = config.vocab_size;
    if let Some(id) = batch.ids.iter().find(|&&id| id as usize >= v) {
        return Some(format!("token id {id} is outside the vocabulary ({v})"));
    }
    if let Some(tg) = batch
        .targets
        .iter()
        .find(|&&tg| tg < -1 || tg as i64 >= v as i64)
    {
        return Some(format!(
            "target {tg} is neither −1 nor a token id (V = {v})"
        ));
    }
    None
}

/// Loss and weight gradients of one batch, from f64 parameters in `Weights::named()` order (so
/// that `adamw_step` can update them in f64). Each sequence runs through the single-sequence
/// forward and backward with every position a logit row and weight 1/n, n = the number of targets
/// in the whole batch; losses and gradients are summed over the sequences. Padding needs no mask:
/// the causal attention keeps it out of the real positions, and a position with target −1 and no
/// target after it gets exactly zero gradient. Panics with a one-line message on a bad batch.
pub fn train_grads_f64(config: &GptConfig, params: &[Vec<f64>], batch: &TrainBatch) -> ParamGrads {
    if let Some(msg) = batch_problem(config, batch) {
        panic!("reference::train_grads: {msg}");
    }
    let w = WeightsF64::from_named(config, params);
    let mut grads = WeightsF64::zeros(config);
    let settings = Settings::new(config, &ForwardOptions::default());
    let scale = 1.0 / batch.n_targets().max(1) as f64;
    let t = batch.t;
    let mut loss = 0.0;
    for b in 0..batch.b {
        let ids = &batch.ids[b * t..(b + 1) * t]; // (T)
        let targets = &batch.targets[b * t..(b + 1) * t]; // (T)
        let objective = Objective::Targets { targets, scale };
        let st = forward_impl(config, &w, ids, objective, &settings, &Perturbation::None);
        backward(config, &w, ids, &settings, &st, Some(&mut grads));
        loss += st.loss;
    }
    ParamGrads {
        loss,
        grads: grads.into_named(),
    }
}

/// `train_grads_f64` on the model's (f32) weights.
pub fn train_grads(config: &GptConfig, weights: &Weights, batch: &TrainBatch) -> ParamGrads {
    train_grads_f64(config, &params_f64(weights), batch)
}

/// The batch loss only (forward passes), from f64 parameters in `Weights::named()` order: what
/// finite-difference tests of `train_grads_f64` differentiate.
pub fn train_loss_f64(config: &GptConfig, params: &[Vec<f64>], batch: &TrainBatch) -> f64 {
    if let Some(msg) = batch_problem(config, batch) {
        panic!("reference::train_loss: {msg}");
    }
    let w = WeightsF64::from_named(config, params);
    let settings = Settings::new(config, &ForwardOptions::default());
    let scale = 1.0 / batch.n_targets().max(1) as f64;
    let t = batch.t;
    (0..batch.b)
        .map(|b| {
            let ids = &batch.ids[b * t..(b + 1) * t]; // (T)
            let targets = &batch.targets[b * t..(b + 1) * t]; // (T)
            let objective = Objective::Targets { targets, scale };
            forward_impl(config, &w, ids, objective, &settings, &Perturbation::None).loss
        })
        .sum()
}

/// One AdamW step (`optim.rs`'s formula, in f64) on every tensor; `step` is 1-based, `shapes`
/// decide which tensors decay (`optim::decays`). `m` and `v` start at zero and are updated in
/// place. Returns ‖g‖₂ over all gradients jointly, before clipping.
///
/// ```text
/// g ← g·min(1, clip/(‖g‖ + 1e-6))      (clip > 0)
/// p ← p − lr·wd·p                       (≥ 2-D tensors only)
/// m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
/// p ← p − lr·(m/(1 − β1ᵗ)) / (√(v/(1 − β2ᵗ)) + eps)
/// ```
pub fn adamw_step(
    params: &mut [Vec<f64>],
    grads: &[Vec<f64>],
    m: &mut [Vec<f64>],
    v: &mut [Vec<f64>],
    shapes: &[Vec<usize>],
    step: u32,
    opt: &AdamW,
) -> f64 {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n && shapes.len() == n,
        "adamw_step: params, grads, m, v and shapes differ in count"
    );
    assert!(step >= 1, "adamw_step: step is 1-based");
    for k in 0..n {
        let len = shapes[k].iter().product::<usize>();
        assert!(
            params[k].len() == len
                && grads[k].len() == len
                && m[k].len() == len
                && v[k].len() == len,
            "adamw_step: tensor {k} is not of shape {:?}",
            shapes[k]
        );
    }
    // ‖g‖ = √(Σ_k ‖g_k‖²), as clip_grad_norm_ takes the norm of the per-tensor norms.
    let norm = grads
        .iter()
        .map(|g| g.iter().map(|x| x * x).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    let clip = opt.grad_clip as f64;
    let coef = if clip > 0.0 {
        (clip / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    let (lr, b1, b2, eps, wd) = (
        opt.lr as f64,
        opt.beta1 as f64,
        opt.beta2 as f64,
        opt.eps as f64,
        opt.weight_decay as f64,
    );
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    for k in 0..n {
        let decay = optim::decays(&shapes[k]);
        for i in 0..params[k].len() {
            let g = grads[k][i] * coef;
            let mut p = params[k][i];
            if decay {
                p -= lr * wd * p;
            }
            m[k][i] = b1 * m[k][i] + (1.0 - b1) * g;
            v[k][i] = b2 * v[k][i] + (1.0 - b2) * g * g;
            p -= lr * (m[k][i] / bc1) / ((v[k][i] / bc2).sqrt() + eps);
            params[k][i] = p;
        }
    }
    norm
}

// ---------------------------------------------------------------------------------------------
// `--backend cpu`
// ---------------------------------------------------------------------------------------------

/// `--backend cpu`: the Backend trait over the reference (converts to f32 PassOutput, respects
/// Readback, fills timings). The f64 weights are converted on the first run and kept.
pub struct CpuReference<'a> {
    model: &'a Model,
    weights: Option<WeightsF64>,
}

impl<'a> CpuReference<'a> {
    pub fn new(model: &'a Model) -> Self {
        CpuReference {
            model,
            weights: None,
        }
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl Backend for CpuReference<'_> {
    fn describe(&self) -> String {
        "cpu reference (f64)".to_string()
    }

    fn run(
        &mut self,
        seq: &Sequence,
        options: &ForwardOptions,
        readback: Readback,
    ) -> Result<PassOutput> {
        let config = &self.model.config;
        crate::pass::validate(config, seq, options)?;
        let t0 = Instant::now();
        let model = self.model;
        let w = self
            .weights
            .get_or_insert_with(|| WeightsF64::new(&model.weights));
        let settings = Settings::new(config, options);
        let t1 = Instant::now();
        let st = forward(config, w, seq, &settings, &Perturbation::None);
        let grads = readback
            .backward
            .then(|| backward(config, w, &seq.ids, &settings, &st, None));
        let t2 = Instant::now();
        let (ra, hidden) = match &grads {
            Some((ra, hidden)) => (
                readback.reversed_attention.then(|| to_f32(ra)),
                readback.hidden_grads.then(|| to_f32(hidden)),
            ),
            None => (None, None),
        };
        let out = PassOutput {
            loss: st.loss,
            logits: to_f32(&st.logits),
            attention: readback.attention.then(|| to_f32(&collect_attention(&st))),
            reversed_attention: ra,
            hidden_grads: hidden,
            timings: PassTimings::default(),
        };
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(PassOutput {
            timings: PassTimings {
                prepare_ms: ms(t0, t1),
                compute_ms: ms(t1, t2),
                readback_ms: ms(t2, t3),
            },
            ..out
        })
    }
}
