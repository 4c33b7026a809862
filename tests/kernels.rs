//! Every WGSL layer, forward and backward, against the float64 CPU reference on random shapes:
//! odd sizes, head sizes other than 64, T = 1, T not a multiple of any tile.
//! Tolerance: max|Δ| / max|reference| ≤ 2e-5 (f32 arithmetic against f64).

mod common;

use common::{assert_close, assert_close_at_scale, gpu, to_f64, Rng};
use revattn::gpu::GpuContext;
use revattn::layers::attention::{Attention, AttentionBuffers, AttentionShape};
use revattn::layers::cross_entropy::{gpu_terms, CrossEntropy};
use revattn::layers::embedding::{Embedding, VocabChunk, WteSource};
use revattn::layers::gelu::Gelu;
use revattn::layers::layernorm::{LayerNorm, LayerNormSaved};
use revattn::layers::linear::{
    block_weights, texel_format, weights_fit_textures, Activation, Gemm, GemmKernels, GemmOp,
    Linear, Operand, Weight,
};
use revattn::layers::lm_head::{self, LmHead, LmHeadBuffers, WteChunk};
use revattn::layers::{
    execute, max_scratch_texels, PlanBuilder, ScratchTexture, TextureBinding, WeightFormat,
};
use revattn::loss::{LossKind, Sequence};
use revattn::model::f16_bits;
use revattn::reference;

const REL_TOL: f64 = 2e-5;

/// Every GEMM family: the CPU adapters' fastest first (on adapters without 8-lane subgroups the
/// first two fall back to the portable kernels), then the real GPUs' tiled kernels.
const FAMILIES: [GemmKernels; 4] = [
    GemmKernels::Texture,
    GemmKernels::Subgroup,
    GemmKernels::Portable,
    GemmKernels::Tiled,
];

fn read(ctx: &GpuContext, buf: &wgpu::Buffer, n: usize) -> Vec<f32> {
    ctx.read_f32(&[(buf, n)]).unwrap().remove(0)
}

fn run(ctx: &GpuContext, build: impl FnOnce(&mut PlanBuilder)) {
    let mut plan = PlanBuilder::new(ctx);
    build(&mut plan);
    execute(ctx, &plan.finish()).unwrap();
}

#[test]
fn linear_forward_and_backward_match_reference() {
    check_linear_every_family(WeightFormat::F32);
}

/// The same GEMMs reading W as packed f16 (`--weights f16`), against the reference on the
/// f16-rounded W: the unpacking is exact, so the tolerance is the f32 one.
#[test]
fn linear_with_f16_weights_matches_reference() {
    check_linear_every_family(WeightFormat::F16);
}

/// `check_linear` for each GEMM family, W stored as `format`.
fn check_linear_every_family(format: WeightFormat) {
    let ctx = gpu();
    for kernels in FAMILIES {
        println!(
            "{kernels:?} kernels (subgroups of 8: {})",
            ctx.subgroups_of_8
        );
        check_linear(&ctx, &Linear::with_kernels(&ctx, kernels, format), format);
    }
}

/// `data` as `format` stores it: the buffer and the values the kernels see.
fn upload_weights(
    ctx: &GpuContext,
    data: &[f32],
    format: WeightFormat,
) -> (wgpu::Buffer, Vec<f32>) {
    match format {
        WeightFormat::F32 => (ctx.upload("w", data), data.to_vec()),
        WeightFormat::F16 => {
            let bits = f16_bits(data);
            let seen = bits
                .iter()
                .map(|&h| half::f16::from_bits(h).to_f32())
                .collect();
            (ctx.upload("w f16", &bits), seen)
        }
    }
}

/// `seen` (values exactly representable in `format`) as `format` stores them.
fn weight_bytes(seen: &[f32], format: WeightFormat) -> Vec<u8> {
    match format {
        WeightFormat::F32 => bytemuck::cast_slice(seen).to_vec(),
        WeightFormat::F16 => bytemuck::cast_slice(&f16_bits(seen)).to_vec(),
    }
}

fn check_linear(ctx: &GpuContext, linear: &Linear, format: WeightFormat) {
    let mut rng = Rng(1);
    // Shapes that are multiples of 4 take the subgroup kernels where the adapter has them.
    let shapes = [
        (1, 1, 1),
        (1, 15, 45),
        (7, 33, 5),
        (13, 64, 97),
        (37, 29, 130),
        (64, 96, 64),
        (3, 12, 8),
        (9, 40, 132),
        (17, 100, 260),
        (33, 68, 36),
        (5, 768, 2304),
        (1, 3072, 768),
        // a few rows with K unaligned (the lm_head backward's one-row kernel)
        (1, 37, 20),
        (5, 101, 36),
        (8, 13, 4),
        // 64-row tiles: M ≥ 64, ragged in M and N
        (70, 36, 132),
        (131, 64, 20),
        (64, 8, 68),
        // texture kernels: 8 rows and more, M ragged against the 16-row tile, K = 4, odd K in Aᵀ·B
        (8, 4, 4),
        (21, 44, 52),
        (11, 20, 36),
        (23, 132, 8),
        // over two tiles of the tiled kernels in M and N, ragged, whole and split along K
        (129, 24, 131),
        (150, 520, 140),
    ];
    for &(m, k, n) in &shapes {
        let x = rng.vec(m * k, 1.0);
        let (wb, w) = upload_weights(ctx, &rng.vec(k * n, 0.5), format);
        let b = rng.vec(n, 0.3);
        let res = rng.vec(m * n, 1.0);
        let (xb, bb, rb) = (
            ctx.upload("x", &x),
            ctx.upload("b", &b),
            ctx.upload("r", &res),
        );
        let out = ctx.storage("out", 4 * (m * n) as u64);
        let dx = ctx.storage("dx", 4 * (m * k) as u64);
        let (dw, db) = (
            ctx.storage("dw", 4 * (k * n) as u64),
            ctx.storage("db", 4 * n as u64),
        );
        let dout = rng.vec(m * n, 1.0);
        let doutb = ctx.upload("dout", &dout);
        run(ctx, |p| {
            linear.forward(p, &out, &xb, (&wb).into(), Some(&bb), Some(&rb), (m, k, n));
            linear.backward_input(p, &dx, &doutb, (&wb).into(), (m, k, n));
            // Weight gradients are f32-only (training keeps f32 weights).
            if format == WeightFormat::F32 {
                linear.backward_weights(p, &dw, &db, &xb, &doutb, (m, k, n));
            }
        });
        let mut want = vec![0.0; m * n];
        reference::linear_forward(
            &mut want,
            &to_f64(&x),
            &to_f64(&w),
            Some(&to_f64(&b)),
            m,
            k,
            n,
        );
        want.iter_mut().zip(&res).for_each(|(o, r)| *o += *r as f64);
        let tag = format.as_str();
        assert_close(
            &format!("linear forward M{m} K{k} N{n} ({tag} W)"),
            &read(ctx, &out, m * n),
            &want,
            REL_TOL,
        );
        let mut want_dx = vec![0.0; m * k];
        reference::linear_backward_input(&mut want_dx, &to_f64(&dout), &to_f64(&w), m, k, n);
        assert_close(
            &format!("linear backward_input M{m} K{k} N{n} ({tag} W)"),
            &read(ctx, &dx, m * k),
            &want_dx,
            REL_TOL,
        );
        // W kept in a texture, as inference engines on CPU adapters keep it (any M), all rows;
        // then a span of rows at their own positions (the last block at the loss rows) from either
        // weight: the rows in it as above, every other output row untouched (zero in fresh buffers).
        let texture = (linear.has_texture_kernels()
            && weights_fit_textures(k, n, max_scratch_texels(ctx)))
        .then(|| {
            let blocked = weight_bytes(&block_weights(&w, k, n), format);
            ctx.upload_texels("w texture", &blocked, texel_format(format))
        });
        let span = 1..m.saturating_sub(1);
        let in_span = |want: &[f64], cols: usize| -> Vec<f64> {
            (0..m * cols)
                .map(|i| {
                    if span.contains(&(i / cols)) {
                        want[i]
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let (want_span, want_dx_span) = (in_span(&want, n), in_span(&want_dx, k));
        let mut checks = Vec::new();
        if let Some(wt) = &texture {
            checks.push(("texture", Weight::Texture(wt), 0..m, &want, &want_dx));
        }
        if m >= 3 {
            checks.push((
                "buffer",
                Weight::Buffer(&wb),
                span.clone(),
                &want_span,
                &want_dx_span,
            ));
            if let Some(wt) = &texture {
                checks.push((
                    "texture",
                    Weight::Texture(wt),
                    span.clone(),
                    &want_span,
                    &want_dx_span,
                ));
            }
        }
        for (kind, weight, rows, want, want_dx) in checks {
            let out = ctx.storage("out", 4 * (m * n) as u64);
            let dx = ctx.storage("dx", 4 * (m * k) as u64);
            run(ctx, |p| {
                linear.forward(
                    p,
                    &out,
                    &xb,
                    weight,
                    Some(&bb),
                    Some(&rb),
                    (rows.clone(), k, n),
                );
                linear.backward_input(p, &dx, &doutb, weight, (rows.clone(), k, n));
            });
            let tag = format!("{tag} W in a {kind}, rows {rows:?}");
            assert_close(
                &format!("linear forward M{m} K{k} N{n} ({tag})"),
                &read(ctx, &out, m * n),
                want,
                REL_TOL,
            );
            assert_close(
                &format!("linear backward_input M{m} K{k} N{n} ({tag})"),
                &read(ctx, &dx, m * k),
                want_dx,
                REL_TOL,
            );
        }
        if format != WeightFormat::F32 {
            continue;
        }
        let (mut want_dw, mut want_db) = (vec![0.0; k * n], vec![0.0; n]);
        reference::linear_backward_weight(
            &mut want_dw,
            Some(&mut want_db),
            &to_f64(&x),
            &to_f64(&dout),
            m,
            k,
            n,
        );
        assert_close(
            &format!("linear backward_weight M{m} K{k} N{n}"),
            &read(ctx, &dw, k * n),
            &want_dw,
            REL_TOL,
        );
        assert_close(
            &format!("linear backward_bias M{m} K{k} N{n}"),
            &read(ctx, &db, n),
            &want_db,
            REL_TOL,
        );
    }
}

/// c_fc with GPT-2's activation in the GEMM epilogue (`forward_gelu`) and the backward through
/// both (`backward_input_gelu`), every family, W in a buffer and (texture family) in a texture.
#[test]
fn gelu_epilogues_match_reference() {
    let ctx = gpu();
    let mut rng = Rng(9);
    for kernels in FAMILIES {
        let linear = Linear::with_kernels(&ctx, kernels, WeightFormat::F32);
        // (9, 256, 40) and (130, 96, 132) with K long enough for the tiled kernels to split it
        // (sum_k_slices applies the epilogue)
        for &(m, k, n) in &[
            (1, 8, 12),
            (5, 13, 7),
            (21, 36, 44),
            (70, 64, 132),
            (9, 256, 40),
            (140, 24, 136),
            (130, 96, 132),
        ] {
            let x = rng.vec(m * k, 1.0);
            let w = rng.vec(k * n, 0.5);
            let b = rng.vec(n, 0.3);
            let dout = rng.vec(m * n, 1.0); // dact of c_proj's backward: (m, n) · Wᵀ → (m, k)
            let pre_in = rng.vec(m * k, 2.0);
            let (xb, wb, bb) = (
                ctx.upload("x", &x),
                ctx.upload("w", &w),
                ctx.upload("b", &b),
            );
            let (doutb, pre_inb) = (ctx.upload("dout", &dout), ctx.upload("pre", &pre_in));
            let wt = (linear.has_texture_kernels()
                && weights_fit_textures(k, n, max_scratch_texels(&ctx)))
            .then(|| {
                ctx.upload_texels(
                    "w",
                    bytemuck::cast_slice(&block_weights(&w, k, n)),
                    texel_format(WeightFormat::F32),
                )
            });
            let mut weights = vec![("buffer", Weight::Buffer(&wb))];
            if let Some(view) = &wt {
                weights.push(("texture", Weight::Texture(view)));
            }
            let mut pre_want = vec![0.0; m * n];
            reference::linear_forward(
                &mut pre_want,
                &to_f64(&x),
                &to_f64(&w),
                Some(&to_f64(&b)),
                m,
                k,
                n,
            );
            let mut act_want = vec![0.0; m * n];
            reference::gelu_forward(&mut act_want, &pre_want);
            let mut dact = vec![0.0; m * k];
            reference::linear_backward_input(&mut dact, &to_f64(&dout), &to_f64(&w), m, k, n);
            let mut dpre_want = vec![0.0; m * k];
            reference::gelu_backward(&mut dpre_want, &dact, &to_f64(&pre_in));
            for (where_, weight) in weights {
                let pre = ctx.storage("pre", 4 * (m * n) as u64);
                let act = ctx.storage("act", 4 * (m * n) as u64);
                let dpre = ctx.storage("dpre", 4 * (m * k) as u64);
                run(&ctx, |p| {
                    linear.forward_gelu(p, &pre, &act, &xb, weight, Some(&bb), (m, k, n));
                    linear.backward_input_gelu(p, &dpre, &doutb, weight, &pre_inb, (m, k, n));
                });
                let tag = format!("M{m} K{k} N{n} ({kernels:?}, W in a {where_})");
                assert_close(
                    &format!("c_fc pre {tag}"),
                    &read(&ctx, &pre, m * n),
                    &pre_want,
                    REL_TOL,
                );
                assert_close(
                    &format!("gelu act {tag}"),
                    &read(&ctx, &act, m * n),
                    &act_want,
                    REL_TOL,
                );
                assert_close(
                    &format!("gelu dpre {tag}"),
                    &read(&ctx, &dpre, m * k),
                    &dpre_want,
                    REL_TOL,
                );
            }
        }
    }
}

/// An MLP whose hidden activation and its gradient pass between the GEMMs in a scratch texture
/// (`Activation::Texture`, the texture tiles' TEXTURE_OUT): y = gelu(x·W1 + b1)·W2 + b2 + x and
/// dx = ((dy·W2ᵀ) ⊙ gelu'(pre))·W1ᵀ, against the reference, with the weights in buffers and in
/// textures, at all rows and at a span of them (the others left untouched).
#[test]
fn mlp_chained_through_a_texture_matches_reference() {
    let ctx = gpu();
    let linear = Linear::with_kernels(&ctx, GemmKernels::Texture, WeightFormat::F32);
    if !linear.has_texture_kernels() {
        println!("no texture kernels on this adapter: nothing to chain");
        return;
    }
    const HIDDEN: ScratchTexture = ScratchTexture {
        slot: 30,
        format: wgpu::TextureFormat::Rgba32Float,
    };
    let hidden = Activation::Texture(HIDDEN);
    let mut rng = Rng(31);
    let mut checked = 0;
    // (rows of the buffers, rows computed, C, F)
    for (m_all, rows, k, f) in [
        (1, 0..1, 8, 12),
        (9, 0..9, 12, 20),
        (21, 0..21, 36, 44),
        (70, 0..70, 64, 132),
        (30, 7..26, 16, 64),
    ] {
        let m = rows.len();
        let x = rng.vec(m_all * k, 1.0);
        let (w1, b1) = (rng.vec(k * f, 0.5), rng.vec(f, 0.3));
        let (w2, b2) = (rng.vec(f * k, 0.5), rng.vec(k, 0.3));
        let dy = rng.vec(m_all * k, 1.0);
        let (xb, dyb) = (ctx.upload("x", &x), ctx.upload("dy", &dy));
        let (w1b, b1b, w2b, b2b) = (
            ctx.upload("w1", &w1),
            ctx.upload("b1", &b1),
            ctx.upload("w2", &w2),
            ctx.upload("b2", &b2),
        );
        let texture = |w: &[f32], rows: usize, cols: usize| {
            let blocked = block_weights(w, rows, cols);
            let format = texel_format(WeightFormat::F32);
            ctx.upload_texels("w", bytemuck::cast_slice(&blocked), format)
        };
        let (w1t, w2t) = (texture(&w1, k, f), texture(&w2, f, k));
        // the reference at the computed rows
        let at_rows = |v: &[f32], width: usize| to_f64(&v[rows.start * width..rows.end * width]);
        let (xr, dyr) = (at_rows(&x, k), at_rows(&dy, k));
        let mut pre = vec![0.0; m * f];
        reference::linear_forward(&mut pre, &xr, &to_f64(&w1), Some(&to_f64(&b1)), m, k, f);
        let mut act = vec![0.0; m * f];
        reference::gelu_forward(&mut act, &pre);
        let mut y = vec![0.0; m * k];
        reference::linear_forward(&mut y, &act, &to_f64(&w2), Some(&to_f64(&b2)), m, f, k);
        y.iter_mut().zip(&xr).for_each(|(y, x)| *y += x);
        let mut dact = vec![0.0; m * f];
        reference::linear_backward_input(&mut dact, &dyr, &to_f64(&w2), m, f, k);
        let mut dpre = vec![0.0; m * f];
        reference::gelu_backward(&mut dpre, &dact, &pre);
        let mut dx = vec![0.0; m * k];
        reference::linear_backward_input(&mut dx, &dpre, &to_f64(&w1), m, k, f);
        for (where_, w1, w2) in [
            ("buffers", Weight::Buffer(&w1b), Weight::Buffer(&w2b)),
            ("textures", Weight::Texture(&w1t), Weight::Texture(&w2t)),
        ] {
            let chains = [
                linear.chains(&ctx, w1, (m, k, f), false),
                linear.chains(&ctx, w2, (m, f, k), false),
                linear.chains(&ctx, w2, (m, f, k), true),
                linear.chains(&ctx, w1, (m, k, f), true),
            ];
            if chains.contains(&false) {
                // buffer weights: below 8 rows the one-row kernels take them
                assert!(m < 8 && where_ == "buffers", "M{m} C{k} F{f}: {chains:?}");
                continue;
            }
            let sentinel = vec![7.0f32; m_all * k];
            let pre_b = ctx.storage("pre", 4 * (m_all * f) as u64);
            let (y_b, dx_b) = (ctx.upload("y", &sentinel), ctx.upload("dx", &sentinel));
            run(&ctx, |p| {
                let span = || rows.clone();
                linear.forward_gelu(p, &pre_b, hidden, &xb, w1, Some(&b1b), (span(), k, f));
                linear.forward(p, &y_b, hidden, w2, Some(&b2b), Some(&xb), (span(), f, k));
                linear.backward_input_gelu(p, hidden, &dyb, w2, &pre_b, (span(), f, k));
                linear.backward_input(p, &dx_b, hidden, w1, (span(), k, f));
            });
            let tag = format!("rows {rows:?} of {m_all}, C{k} F{f}, W in {where_}");
            let pre_got = read(&ctx, &pre_b, m_all * f);
            let pre_got = &pre_got[rows.start * f..rows.end * f];
            assert_close(&format!("chained pre {tag}"), pre_got, &pre, REL_TOL);
            for (name, buf, want) in [("y", &y_b, &y), ("dx", &dx_b, &dx)] {
                let got = read(&ctx, buf, m_all * k);
                let outside = (0..m_all * k).filter(|i| !rows.contains(&(i / k)));
                assert!(
                    outside.into_iter().all(|i| got[i] == 7.0),
                    "{name} {tag}: rows outside touched"
                );
                let got = &got[rows.start * k..rows.end * k];
                assert_close(&format!("chained {name} {tag}"), got, want, REL_TOL);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 9, "every case but one-row buffer weights chains");
}

/// The lm_head's use of the GEMMs: row offsets, leading dimensions, vocabulary chunks, accumulation.
#[test]
fn lm_head_gemms_over_vocab_chunks_match_reference() {
    let ctx = gpu();
    for (kernels, c, r) in [
        (GemmKernels::Texture, 16, 1),
        (GemmKernels::Texture, 36, 1),
        (GemmKernels::Texture, 16, 3),
        (GemmKernels::Texture, 16, 9),
        (GemmKernels::Texture, 15, 3),
        (GemmKernels::Portable, 16, 9),
        (GemmKernels::Tiled, 16, 1),
        (GemmKernels::Tiled, 15, 9),
    ] {
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let linear = Linear::with_kernels(&ctx, kernels, format);
            for staged in [false, true] {
                check_lm_head(&ctx, &linear, c, r, format, staged);
            }
        }
    }
}

fn check_lm_head(
    ctx: &GpuContext,
    linear: &Linear,
    c: usize,
    r: usize,
    format: WeightFormat,
    staged: bool,
) {
    let mut rng = Rng(2);
    let (t, v, row0) = (14, 203, 4);
    let x = rng.vec(t * c, 1.0); // (T, C) ln_f output
    let wte = rng.vec(v * c, 0.5); // (V, C)
                                   // what the kernels see of wte (f16-rounded for WeightFormat::F16)
    let wte = upload_weights(ctx, &wte, format).1;
    let dlogits = rng.vec(r * v, 1.0); // (R, V)
    let chunks: Vec<(usize, usize)> = vec![(0, 64), (64, 64), (128, 64), (192, 11)];
    let xb = ctx.upload("x", &x);
    let dlb = ctx.upload("dlogits", &dlogits);
    let chunk_bufs: Vec<_> = chunks
        .iter()
        .map(|&(s, n)| upload_weights(ctx, &wte[s * c..(s + n) * c], format).0)
        .collect();
    let logits = ctx.storage("logits", 4 * (r * v) as u64);
    let dx = ctx.storage("dx", 4 * (r * c) as u64);
    run(ctx, |p| {
        // As the engine does at a few loss rows: each chunk staged once, read by both GEMMs.
        let staged: Vec<_> = chunks
            .iter()
            .zip(&chunk_bufs)
            .enumerate()
            .map(|(i, (&(_, n), buf))| {
                staged
                    .then(|| linear.stage_weights(p, 2 + i as u8, buf, n * c))
                    .flatten()
                    .map(TextureBinding::Scratch)
            })
            .collect();
        for ((&(s, n), buf), staged) in chunks.iter().zip(&chunk_bufs).zip(&staged) {
            linear.gemm_with_staged_b(
                p,
                "lm_head_forward",
                &Gemm {
                    m: r,
                    n,
                    k: c,
                    a: Operand::new(&xb, c).at(row0 * c),
                    b: Operand::new(buf, c),
                    op: GemmOp::NT,
                    c: Operand::new(&logits, v).at(s),
                    bias: None,
                    residual: None,
                    accumulate: false,
                    gelu: None,
                    a_texture: None,
                    out_texture: None,
                },
                staged.clone(),
            );
        }
        for (i, ((&(s, n), buf), staged)) in chunks.iter().zip(&chunk_bufs).zip(&staged).enumerate()
        {
            linear.gemm_with_staged_b(
                p,
                "lm_head_backward",
                &Gemm {
                    m: r,
                    n: c,
                    k: n,
                    a: Operand::new(&dlb, v).at(s),
                    b: Operand::new(buf, c),
                    op: GemmOp::NN,
                    c: Operand::new(&dx, c),
                    bias: None,
                    residual: None,
                    accumulate: i > 0,
                    gelu: None,
                    a_texture: None,
                    out_texture: None,
                },
                staged.clone(),
            );
        }
    });
    let mut want = vec![0.0; r * v];
    for i in 0..r {
        for j in 0..v {
            want[i * v + j] = (0..c)
                .map(|q| x[(row0 + i) * c + q] as f64 * wte[j * c + q] as f64)
                .sum();
        }
    }
    assert_close(
        &format!(
            "lm_head logits = x[rows]·wteᵀ (4 chunks) C{c} R{r} ({} wte, staged {staged})",
            format.as_str()
        ),
        &read(ctx, &logits, r * v),
        &want,
        REL_TOL,
    );
    let mut want_dx = vec![0.0; r * c];
    reference::linear_forward(
        &mut want_dx,
        &to_f64(&dlogits),
        &to_f64(&wte),
        None,
        r,
        v,
        c,
    );
    assert_close(
        &format!(
            "lm_head dx = dlogits·wte (accumulated) C{c} R{r} ({} wte, staged {staged})",
            format.as_str()
        ),
        &read(ctx, &dx, r * c),
        &want_dx,
        REL_TOL,
    );
}

#[test]
fn layernorm_forward_and_backward_match_reference() {
    let ctx = gpu();
    for (row_kernels, staged) in [(true, true), (true, false), (false, false)] {
        println!("row kernels: {row_kernels}, staged reads: {staged}");
        check_layernorm(&ctx, &LayerNorm::with_kernels(&ctx, row_kernels, staged));
    }
}

fn check_layernorm(ctx: &GpuContext, ln: &LayerNorm) {
    let mut rng = Rng(3);
    // C a multiple of 4 takes the subgroup kernels where the adapter has them
    for &(rows, c) in &[
        (1, 1),
        (1, 15),
        (5, 7),
        (17, 64),
        (33, 130),
        (3, 769),
        (9, 36),
        (2, 768),
        (70, 132),
    ] {
        let x: Vec<f32> = rng.vec(rows * c, 2.0).iter().map(|v| v + 0.5).collect();
        let w: Vec<f32> = rng.vec(c, 0.3).iter().map(|v| v + 1.0).collect();
        let b = rng.vec(c, 0.2);
        let dout_rows = if rows > 2 { 1..rows - 1 } else { 0..rows };
        let dout = rng.vec(dout_rows.len() * c, 1.0);
        let dres = rng.vec(rows * c, 1.0);
        let (xb, wb, bb) = (
            ctx.upload("x", &x),
            ctx.upload("w", &w),
            ctx.upload("b", &b),
        );
        let (doutb, dresb) = (ctx.upload("dout", &dout), ctx.upload("dres", &dres));
        let out = ctx.storage("out", 4 * (rows * c) as u64);
        let mean = ctx.storage("mean", 4 * rows as u64);
        let rstd = ctx.storage("rstd", 4 * rows as u64);
        let dx = ctx.storage("dx", 4 * (rows * c) as u64);
        let dx_nores = ctx.storage("dx", 4 * (rows * c) as u64);
        run(ctx, |p| {
            ln.forward(p, &out, &mean, &rstd, &xb, &wb, &bb, (rows, c), 1e-5);
            let saved = LayerNormSaved {
                x: &xb,
                mean: &mean,
                rstd: &rstd,
                w: &wb,
            };
            ln.backward(
                p,
                &dx,
                Some(&dresb),
                &doutb,
                dout_rows.clone(),
                &saved,
                (rows, c),
            );
            ln.backward(
                p,
                &dx_nores,
                None,
                &doutb,
                dout_rows.clone(),
                &saved,
                (rows, c),
            );
        });
        let (mut o, mut m, mut r) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        reference::layernorm_forward(
            &mut o,
            &mut m,
            &mut r,
            &to_f64(&x),
            &to_f64(&w),
            &to_f64(&b),
            c,
            1e-5,
        );
        assert_close(
            &format!("layernorm forward rows{rows} C{c}"),
            &read(ctx, &out, rows * c),
            &o,
            REL_TOL,
        );
        assert_close(
            &format!("layernorm mean rows{rows} C{c}"),
            &read(ctx, &mean, rows),
            &m,
            REL_TOL,
        );
        assert_close(
            &format!("layernorm rstd rows{rows} C{c}"),
            &read(ctx, &rstd, rows),
            &r,
            REL_TOL,
        );
        // dout is zero outside dout_rows
        let mut full_dout = vec![0.0; rows * c];
        full_dout[dout_rows.start * c..dout_rows.end * c].copy_from_slice(&to_f64(&dout));
        let mut want = vec![0.0; rows * c];
        reference::layernorm_backward(
            &mut want,
            Some(&to_f64(&dres)),
            &full_dout,
            &to_f64(&x),
            &m,
            &r,
            &to_f64(&w),
            c,
        );
        // dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)) with dx̂ = dout ⊙ w: the terms' size is
        // rstd·max|dout ⊙ w| (at C = 1 they cancel exactly, and rstd = 1/√eps ≈ 316)
        let max_dxhat = full_dout
            .chunks(c)
            .flat_map(|row| row.iter().zip(&w).map(|(d, &g)| (d * g as f64).abs()))
            .fold(0.0f64, f64::max);
        let scale = r.iter().fold(0.0f64, |a, &b| a.max(b)) * max_dxhat;
        assert_close_at_scale(
            &format!("layernorm backward+residual rows{rows} C{c}"),
            &read(ctx, &dx, rows * c),
            &want,
            REL_TOL,
            scale,
        );
        reference::layernorm_backward(
            &mut want,
            None,
            &full_dout,
            &to_f64(&x),
            &m,
            &r,
            &to_f64(&w),
            c,
        );
        assert_close_at_scale(
            &format!("layernorm backward rows{rows} C{c}"),
            &read(ctx, &dx_nores, rows * c),
            &want,
            REL_TOL,
            scale,
        );
    }
}

#[test]
fn gelu_forward_and_backward_match_reference() {
    let ctx = gpu();
    let gelu = Gelu::new(&ctx);
    let mut rng = Rng(4);
    for &n in &[1usize, 63, 1000, 4099] {
        let mut x = rng.vec(n, 4.0);
        x[0] = if n > 1 { 30.0 } else { -30.0 }; // saturated tanh must not produce NaN
        let dy = rng.vec(n, 1.0);
        let (xb, dyb) = (ctx.upload("x", &x), ctx.upload("dy", &dy));
        let (y, dx) = (
            ctx.storage("y", 4 * n as u64),
            ctx.storage("dx", 4 * n as u64),
        );
        run(&ctx, |p| {
            gelu.forward(p, &y, &xb, n);
            gelu.backward(p, &dx, &dyb, &xb, n);
        });
        let mut want = vec![0.0; n];
        reference::gelu_forward(&mut want, &to_f64(&x));
        assert_close(
            &format!("gelu forward n{n}"),
            &read(&ctx, &y, n),
            &want,
            REL_TOL,
        );
        reference::gelu_backward(&mut want, &to_f64(&dy), &to_f64(&x));
        assert_close(
            &format!("gelu backward n{n}"),
            &read(&ctx, &dx, n),
            &want,
            REL_TOL,
        );
    }
}

/// The embedding over 3 vocab chunks, wte in buffers (C odd) and, on CPU adapters, in textures
/// (inference engines keep it there); and the buffers `buffer_from_texels` makes from those
/// textures, byte for byte the buffers the engine would upload: chunks of less than one texture
/// row (1024 texels) and of more (whole rows, then part of one).
#[test]
fn embedding_over_vocab_chunks_matches_reference() {
    let ctx = gpu();
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let emb = Embedding::for_weights(&ctx, format);
        check_embedding(&ctx, &emb, format, 15, false);
        if emb.reads_textures(12) {
            check_embedding(&ctx, &emb, format, 12, true);
        } else {
            println!("texture embedding skipped: not a CPU adapter with 8-lane subgroups");
        }
    }
}

fn check_embedding(
    ctx: &GpuContext,
    emb: &Embedding,
    format: WeightFormat,
    c: usize,
    textures: bool,
) {
    let mut rng = Rng(5);
    let (v, ranges) = if textures {
        // C = 12: 1200, 1344 and 156 texels
        (900, [(0, 400), (400, 448), (848, 52)])
    } else {
        (150, [(0, 64), (64, 64), (128, 22)])
    };
    let (p, t) = (20, 11);
    let wte = upload_weights(ctx, &rng.vec(v * c, 1.0), format).1;
    let wpe = rng.vec(p * c, 1.0);
    let ids: Vec<u32> = (0..t)
        .map(|i| {
            if i == 0 {
                v as u32 - 1
            } else {
                rng.below(v) as u32
            }
        })
        .collect();
    let chunks: Vec<VocabChunk> = ranges
        .iter()
        .map(|&(row0, rows)| VocabChunk {
            buffer: upload_weights(ctx, &wte[row0 * c..(row0 + rows) * c], format).0,
            row0,
            rows,
        })
        .collect();
    let texture_chunks: Vec<WteChunk> = if textures {
        ranges
            .iter()
            .map(|&(row0, rows)| {
                let bytes = weight_bytes(&wte[row0 * c..(row0 + rows) * c], format);
                WteChunk {
                    texture: TextureBinding::View(ctx.upload_texels(
                        "wte chunk",
                        &bytes,
                        texel_format(format),
                    )),
                    row0,
                    rows,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let (idb, wpeb) = (ctx.upload("ids", &ids), ctx.upload("wpe", &wpe));
    let out = ctx.storage("out", 4 * (t * c) as u64);
    run(ctx, |pl| {
        let source = if textures {
            WteSource::Textures(&texture_chunks)
        } else {
            WteSource::Buffers(&chunks)
        };
        emb.forward(pl, &out, &idb, source, &wpeb, (1, t, c))
    });
    let mut want = vec![0.0; t * c];
    reference::embedding_forward(&mut want, &ids, &to_f64(&wte), &to_f64(&wpe), c);
    let source = if textures { "textures" } else { "buffers" };
    assert_close(
        &format!(
            "embedding forward (3 vocab chunks, {} wte in {source}, C = {c})",
            format.as_str()
        ),
        &read(ctx, &out, t * c),
        &want,
        REL_TOL,
    );
    for (chunk, texture) in chunks.iter().zip(&texture_chunks) {
        let TextureBinding::View(view) = &texture.texture else {
            unreachable!("the chunks are views")
        };
        let bytes = (chunk.rows * c * format.bytes_per_weight()) as u64;
        let copied = ctx.buffer_from_texels("wte chunk", view, bytes);
        assert_eq!(
            copied.size(),
            chunk.buffer.size(),
            "buffer_from_texels: size"
        );
        let words = copied.size() as usize / 4;
        let got = ctx
            .read_f32(&[(&copied, words), (&chunk.buffer, words)])
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert!(
            bits(&got[0]) == bits(&got[1]),
            "buffer_from_texels: chunk at row {} differs from its upload",
            chunk.row0
        );
    }
}

#[test]
fn attention_forward_and_backward_match_reference() {
    let ctx = gpu();
    for row_kernels in [true, false] {
        println!("row kernels: {row_kernels}");
        check_attention(&ctx, &Attention::with_row_kernels(&ctx, row_kernels));
    }
}

fn check_attention(ctx: &GpuContext, attn: &Attention) {
    let mut rng = Rng(6);
    // (T, NH, hs): T = 1, odd head sizes, T not a multiple of the 64-wide (or 8-wide) workgroups
    for &(t, nh, hs) in &[
        (1, 1, 4),
        (1, 3, 5),
        (7, 3, 5),
        (13, 2, 8),
        (70, 2, 3),
        (33, 4, 16),
        // the subgroup kernels' second quad per lane (hs > 32) and T not a multiple of 8
        (21, 2, 64),
        (9, 3, 36),
        (66, 1, 20),
    ] {
        let c = nh * hs;
        let n_layers = 2;
        let layer = 1;
        let qkv = rng.vec(t * 3 * c, 1.5);
        let dz = rng.vec(t * c, 1.0);
        let patch = rng.vec(nh * t * t, 1.0);
        let mut head_scale = vec![1.0f32; n_layers * nh];
        if nh > 1 {
            head_scale[layer * nh + 1] = 0.0; // ablate head 1 of layer 1
        }
        let (qkvb, dzb, patchb, hsb) = (
            ctx.upload("qkv", &qkv),
            ctx.upload("dz", &dz),
            ctx.upload("patch", &patch),
            ctx.upload("head_scale", &head_scale),
        );
        for eta in [None, Some(0.3f32)] {
            let att = ctx.storage("att", 4 * (nh * t * t) as u64);
            let z = ctx.storage("z", 4 * (t * c) as u64);
            let ra = ctx.storage("ra", 4 * (nh * t * t) as u64);
            let dqkv = ctx.storage("dqkv", 4 * (t * 3 * c) as u64);
            let shape = AttentionShape {
                b: 1,
                t,
                c,
                nh,
                layer,
            };
            run(ctx, |p| {
                let b = AttentionBuffers {
                    qkv: &qkvb,
                    att: &att,
                    head_scale: &hsb,
                    patch: eta.map(|e| (&patchb, e)),
                };
                attn.forward(p, &z, &b, shape);
                attn.backward(p, (&ra, Some(&dqkv)), &dzb, &b, shape);
            });
            let hs64 = to_f64(&head_scale[layer * nh..(layer + 1) * nh]);
            let patch64 = to_f64(&patch);
            let patch_arg = eta.map(|e| (patch64.as_slice(), e as f64));
            let (mut a_ref, mut z_ref) = (vec![0.0; nh * t * t], vec![0.0; t * c]);
            reference::attention_forward(
                &mut a_ref,
                &mut z_ref,
                &to_f64(&qkv),
                t,
                c,
                nh,
                patch_arg,
                &hs64,
            );
            let (mut r_ref, mut dqkv_ref) = (vec![0.0; nh * t * t], vec![0.0; t * 3 * c]);
            reference::attention_backward(
                &mut r_ref,
                &mut dqkv_ref,
                &to_f64(&dz),
                &to_f64(&qkv),
                &a_ref,
                t,
                c,
                nh,
                patch_arg,
                &hs64,
            );
            let tag = format!("T{t} NH{nh} hs{hs} patch {eta:?}");
            let got_att = read(ctx, &att, nh * t * t);
            assert_close(&format!("attention A {tag}"), &got_att, &a_ref, REL_TOL);
            assert_close(
                &format!("attention Z {tag}"),
                &read(ctx, &z, t * c),
                &z_ref,
                REL_TOL,
            );
            let got_ra = read(ctx, &ra, nh * t * t);
            assert_close(&format!("attention RA {tag}"), &got_ra, &r_ref, REL_TOL);
            assert_close(
                &format!("attention dQKV {tag}"),
                &read(ctx, &dqkv, t * 3 * c),
                &dqkv_ref,
                REL_TOL,
            );
            // exact zeros above the diagonal, in A and in R
            for h in 0..nh {
                for i in 0..t {
                    for j in i + 1..t {
                        assert_eq!(got_att[(h * t + i) * t + j], 0.0, "A above the diagonal");
                        assert_eq!(got_ra[(h * t + i) * t + j], 0.0, "RA above the diagonal");
                    }
                }
            }
        }
    }
}

/// The three RA losses of a 4-token prompt with a 3-token `target` (and foil 17), and a training
/// batch (many rows, a target on some of them); ids below 1031.
fn every_loss(target: &[u32]) -> Vec<(String, revattn::loss::LossPlan)> {
    let batch = revattn::loss::TrainBatch {
        b: 2,
        t: 5,
        ids: vec![0; 10],
        targets: vec![3, -1, 1030, 7, -1, -1, 0, 5, -1, 12],
    };
    let mut cases: Vec<(String, revattn::loss::LossPlan)> =
        [LossKind::Nll, LossKind::Ce, LossKind::LogitDiff]
            .into_iter()
            .map(|kind| {
                let seq = Sequence::from_ids(vec![1, 2, 3, 4], kind, target, Some(17));
                (kind.name().to_string(), seq.loss)
            })
            .collect();
    cases.push(("training batch".to_string(), batch.loss_plan()));
    cases
}

#[test]
fn loss_kernel_matches_reference_for_every_loss() {
    let ctx = gpu();
    let ce = CrossEntropy::new(&ctx);
    let mut rng = Rng(7);
    let v = 1031;
    for (name, plan) in &every_loss(&[5, 900, 5]) {
        let r = plan.n_rows();
        let logits = rng.vec(r * v, 6.0);
        let (terms, term_start) = gpu_terms(&plan.terms, r);
        let (lb, sb, tb, ts) = (
            ctx.upload("logits", &logits),
            ctx.upload("lse", &plan.lse_scale),
            ctx.upload("terms", &terms),
            ctx.upload("term_start", &term_start),
        );
        let (dl, lr) = (
            ctx.storage("dlogits", 4 * (r * v) as u64),
            ctx.storage("loss", 4 * r as u64),
        );
        run(&ctx, |p| {
            ce.forward_backward(p, &lr, &dl, &lb, &sb, (&tb, &ts), (r, v))
        });
        let mut want = vec![0.0; r * v];
        let loss = reference::loss_forward_backward(&mut want, &to_f64(&logits), plan, v);
        assert_close(
            &format!("dlogits {name}"),
            &read(&ctx, &dl, r * v),
            &want,
            REL_TOL,
        );
        let got: f64 = read(&ctx, &lr, r).iter().map(|&x| x as f64).sum();
        assert_close(&format!("loss {name}"), &[got as f32], &[loss], REL_TOL);
    }
}

/// The fused lm_head and loss (CPU adapters): logits = x·wteᵀ, the loss and dx = dlogits·wte in one
/// pass over wte, against the reference for every loss, with wte split into chunks that are not
/// multiples of the kernel's 128-row blocks, the terms' ids in different chunks, rows of C values
/// not a multiple of the 8 lanes' 32, loss rows at an offset, f16 weights, and forward-only.
#[test]
fn fused_lm_head_matches_reference_for_every_loss() {
    let ctx = gpu();
    if !revattn::layers::linear::texture_gemms_available(&ctx) {
        println!("skipped: the fused lm_head runs on CPU adapters with 8-lane subgroups only");
        return;
    }
    let mut rng = Rng(11);
    let v = 1031;
    let chunks = [0..300, 300..700, 700..v];
    // targets and foil in different chunks
    let cases = every_loss(&[5, 900, 350]);
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for c in [36, 64, 100] {
            let head = LmHead::new(&ctx, format, c);
            let (_, wte) = upload_weights(&ctx, &rng.vec(v * c, 0.5), format);
            let textures: Vec<wgpu::TextureView> = chunks
                .iter()
                .map(|rows| {
                    let bytes = weight_bytes(&wte[rows.start * c..rows.end * c], format);
                    ctx.upload_texels("wte chunk", &bytes, texel_format(format))
                })
                .collect();
            let wte_chunks: Vec<WteChunk> = chunks
                .iter()
                .zip(&textures)
                .map(|(rows, t)| WteChunk {
                    texture: TextureBinding::View(t.clone()),
                    row0: rows.start,
                    rows: rows.len(),
                })
                .collect();
            let chunk_rows: Vec<usize> = chunks.iter().map(|r| r.len()).collect();
            let nb = lm_head::blocks(&chunk_rows);
            for (name, plan) in &cases {
                let r = plan.n_rows();
                // two rows before the loss rows: x_off = 2·C
                let x = rng.vec((r + 2) * c, 1.0);
                let (terms, term_start) = gpu_terms(&plan.terms, r);
                let (xb, sb, tb, ts) = (
                    ctx.upload("x", &x),
                    ctx.upload("lse", &plan.lse_scale),
                    ctx.upload("terms", &terms),
                    ctx.upload("term_start", &term_start),
                );
                let mut want_logits = vec![0.0; r * v];
                for (i, l) in want_logits.iter_mut().enumerate() {
                    let (row, id) = (i / v, i % v);
                    let xr = &x[(row + 2) * c..(row + 3) * c];
                    *l = xr
                        .iter()
                        .zip(&wte[id * c..(id + 1) * c])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                }
                let mut dlogits = vec![0.0; r * v];
                let loss = reference::loss_forward_backward(&mut dlogits, &want_logits, plan, v);
                let mut want_dx = vec![0.0; r * c];
                for (i, d) in want_dx.iter_mut().enumerate() {
                    let (row, col) = (i / c, i % c);
                    *d = (0..v)
                        .map(|id| dlogits[row * v + id] * wte[id * c + col] as f64)
                        .sum();
                }
                for with_grad in [true, false] {
                    let logits = ctx.storage("logits", 4 * (r * v) as u64);
                    let loss_rows = ctx.storage("loss", 4 * r as u64);
                    let dx = ctx.storage("dx", 4 * (r * c) as u64);
                    let stats = ctx.storage("stats", 8 * (r * nb) as u64);
                    let acc = ctx.storage("acc", 4 * (r * nb * c) as u64);
                    let chunk_terms = ctx.storage("chunk terms", 4 * (r * chunks.len() * c) as u64);
                    let buffers = LmHeadBuffers {
                        x: &xb,
                        x_off: 2 * c,
                        lse_scale: &sb,
                        terms: &tb,
                        term_start: &ts,
                        logits: &logits,
                        loss_rows: &loss_rows,
                        dx: &dx,
                        with_grad,
                        block_stats: &stats,
                        block_acc: &acc,
                        chunk_terms: &chunk_terms,
                    };
                    run(&ctx, |p| {
                        head.forward_backward(p, &buffers, &wte_chunks, (r, c, v))
                    });
                    let tag = format!("{name}, C{c}, {} wte, grad {with_grad}", format.as_str());
                    assert_close(
                        &format!("fused lm_head logits ({tag})"),
                        &read(&ctx, &logits, r * v),
                        &want_logits,
                        REL_TOL,
                    );
                    let got: f64 = read(&ctx, &loss_rows, r).iter().map(|&x| x as f64).sum();
                    assert_close(
                        &format!("fused lm_head loss ({tag})"),
                        &[got as f32],
                        &[loss],
                        REL_TOL,
                    );
                    if with_grad {
                        assert_close(
                            &format!("fused lm_head dx ({tag})"),
                            &read(&ctx, &dx, r * c),
                            &want_dx,
                            REL_TOL,
                        );
                    }
                }
            }
        }
    }
}

/// Readback in chunks through one staging buffer (what lets R of GPT-2 XL at T = 1024, larger
/// than any buffer, come back): groups of buffers of odd lengths, chunk boundaries inside
/// buffers and between them, every value where it belongs.
#[test]
fn chunked_readback_returns_every_group_whole() {
    let ctx = gpu();
    let mut rng = Rng(17);
    let lengths: [&[usize]; 3] = [&[5, 1, 12], &[0], &[33, 7]];
    let data: Vec<Vec<Vec<f32>>> = lengths
        .iter()
        .map(|g| g.iter().map(|&n| rng.vec(n, 1.0)).collect())
        .collect();
    let buffers: Vec<Vec<wgpu::Buffer>> = data
        .iter()
        .map(|g| {
            g.iter()
                .map(|v| ctx.upload("readback source", &[v.as_slice(), &[0.0]].concat()))
                .collect()
        })
        .collect();
    let pairs: Vec<Vec<(&wgpu::Buffer, usize)>> = buffers
        .iter()
        .zip(&data)
        .map(|(bs, vs)| bs.iter().zip(vs).map(|(b, v)| (b, v.len())).collect())
        .collect();
    let groups: Vec<&[(&wgpu::Buffer, usize)]> = pairs.iter().map(|g| g.as_slice()).collect();
    let want: Vec<Vec<f32>> = data.iter().map(|g| g.concat()).collect();
    for chunk in [8, 24, 56, 1 << 20] {
        let got = ctx.read_f32_groups_in_chunks(&groups, chunk).unwrap();
        assert_eq!(got, want, "readback in chunks of {chunk} bytes");
    }
    println!("chunked readback: 58 values in 3 groups, chunks of 8, 24, 56 bytes and 1 MiB, exact");
    // one large group (over the 16 MiB that the copy splits across threads), in chunks that
    // end inside its buffers
    let big: Vec<Vec<f32>> = [3_000_001, 2_000_003].map(|n| rng.vec(n, 1.0)).to_vec();
    let big_buffers: Vec<wgpu::Buffer> = big.iter().map(|v| ctx.upload("big", v)).collect();
    let pairs: Vec<(&wgpu::Buffer, usize)> = big_buffers
        .iter()
        .zip(&big)
        .map(|(b, v)| (b, v.len()))
        .collect();
    for chunk in [7 << 20, 64 << 20] {
        let got = ctx.read_f32_groups_in_chunks(&[&pairs], chunk).unwrap();
        assert!(
            got[0] == big.concat(),
            "20 MB readback in chunks of {chunk} bytes"
        );
    }
    println!("chunked readback: 5000004 values in one group, chunks of 7 and 64 MiB, exact");
}

/// How the tiled kernels split a GEMM along K: the slices cover K exactly, each a whole number of
/// the kernel's 16-step K tiles, their partial products fit the buffer; GEMMs with many tiles
/// or a short K stay whole. (check_linear's (5, 768, 2304), (1, 3072, 768) and (150, 520, 140)
/// take splits.)
#[test]
fn split_k_slices_cover_k_and_fit_their_buffer() {
    use revattn::layers::linear::{split_k, SPLIT_K_PARTIAL_BYTES};
    for (m, k, n) in [(5, 768, 2304), (1, 3072, 768), (150, 520, 140)] {
        assert!(split_k(m, n, k).is_some(), "M{m} K{k} N{n}");
    }
    assert_eq!(split_k(7, 5, 33), None, "K of 3 steps stays whole");
    assert_eq!(split_k(4096, 3072, 768), None, "3072 tiles of C stay whole");
    let mut rng = Rng(23);
    for _ in 0..2000 {
        let (m, n, k) = (
            1 + rng.below(300),
            1 + rng.below(5000),
            1 + rng.below(60000),
        );
        if let Some((slices, k_slice)) = split_k(m, n, k) {
            let (slices, k_slice) = (slices as usize, k_slice as usize);
            let tag = format!("M{m} N{n} K{k}: {slices}×{k_slice}");
            assert!(slices >= 2 && k_slice % 16 == 0, "{tag}");
            assert!((slices - 1) * k_slice < k && k <= slices * k_slice, "{tag}");
            assert!(
                (slices * m * n * 4) as u64 <= SPLIT_K_PARTIAL_BYTES,
                "{tag}"
            );
        }
    }
}
