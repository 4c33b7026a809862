//! The scheduler: uploads a model once, allocates the activations once per batch shape, and
//! records the whole forward + backward as one plan of dispatches (one encoder, one submit; one
//! compute pass, split only where a GEMM's operands are staged into textures). Only the tensors the
//! caller asks for are read back.
//!
//! prompt → `loss::Sequence` → embedding → L × (LN1 → c_attn → attention → c_proj + residual →
//! LN2 → c_fc with gelu in its epilogue → c_proj + residual) → ln_f → lm_head at the loss rows → loss →
//! the same layers backward → R per layer and head.
//!
//! Training (`run_batch` with gradients) runs the same plan on B right-padded sequences, with the
//! loss on every position that has a target, and adds the weight gradients to the backward: each
//! layer's weight gradient is recorded right after its input gradient, from the same buffers.

use std::ops::Range;
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::layers::attention::{Attention, AttentionBuffers, AttentionShape};
use crate::layers::cross_entropy::{gpu_terms, CrossEntropy};
use crate::layers::embedding::{token_index, Embedding, EmbeddingGrads, VocabChunk, WteSource};
use crate::layers::layernorm::{LayerNorm, LayerNormSaved};
use crate::layers::linear::{
    block_weights, chainable, texture_gemms_available, weights_fit_textures, Activation, Gemm,
    GemmOp, Linear, Operand, Weight,
};
use crate::layers::lm_head::{self, LmHead, LmHeadBuffers, WteChunk};
use crate::layers::{
    max_scratch_texels, Plan, PlanBuilder, ScratchTexture, TextureBinding, WeightFormat,
};
use crate::loss::{LossPlan, Sequence, TrainBatch};
use crate::model::{f16_bits, GptConfig, Model, Tensor, Weights};
use crate::pass::{Backend, ForwardOptions, PassOutput, PassTimings, Readback};

/// Up to this many loss rows, the lm_head reads wte's chunks from textures (kept by an inference
/// engine, else staged once per pass): fused with the loss (`lm_head.wgsl`), or, where wte's
/// gradient needs dlogits, as one-row kernels (`Linear::gemm_with_staged_b`). More rows take the
/// tile GEMMs.
const LM_HEAD_STAGED_ROWS: usize = 8;

/// The scratch texture the MLP's hidden activation (and in the backward its gradient) passes
/// through from one GEMM to the next (`mlp_through_texture`). Slots in use: 0–1 the GEMMs'
/// operands, 2… wte's chunks, 10–13 attention, 20–21 LayerNorm.
const MLP_HIDDEN_TEXTURE: ScratchTexture = ScratchTexture {
    slot: 30,
    format: wgpu::TextureFormat::Rgba32Float,
};

/// Every kernel, compiled once per engine.
pub struct Kernels {
    /// Reads wte in the weights' format.
    pub embedding: Embedding,
    pub layernorm: LayerNorm,
    /// GEMMs on f32 operands (the weight gradients).
    pub linear: Linear,
    /// GEMMs whose operand B is a weight matrix, when the weights are not stored as f32.
    weight_linear: Option<Linear>,
    pub attention: Attention,
    pub cross_entropy: CrossEntropy,
    /// The lm_head and the loss fused (CPU adapters, where wte sits in textures).
    pub lm_head: Option<LmHead>,
}

impl Kernels {
    /// Kernels for `cfg`'s model with weights stored as `weights`.
    pub fn new(ctx: &GpuContext, cfg: &GptConfig, weights: WeightFormat) -> Result<Self> {
        let k = Kernels {
            embedding: Embedding::for_weights(ctx, weights),
            layernorm: LayerNorm::new(ctx),
            linear: Linear::new(ctx),
            weight_linear: (weights != WeightFormat::F32)
                .then(|| Linear::for_weights(ctx, weights)),
            attention: Attention::new(ctx),
            cross_entropy: CrossEntropy::new(ctx),
            lm_head: (crate::layers::linear::texture_gemms_available(ctx)
                && lm_head::fits(cfg.n_embd, 0))
            .then(|| LmHead::new(ctx, weights, cfg.n_embd)),
        };
        ctx.check("compiling the WGSL kernels")?;
        Ok(k)
    }

    /// The GEMMs for x·W, dy·Wᵀ and the lm_head, reading W in the weights' format.
    pub fn weight_gemms(&self) -> &Linear {
        self.weight_linear.as_ref().unwrap_or(&self.linear)
    }

    /// Bytes the kernels hold on the adapter for the engine's lifetime.
    pub fn held_bytes(&self) -> u64 {
        self.linear.held_bytes() + self.weight_linear.as_ref().map_or(0, Linear::held_bytes)
    }
}

/// A Conv1D weight matrix on the adapter, in the weights' format.
enum Matrix {
    /// A storage buffer: every GEMM family reads it, and training updates it.
    Buffer(wgpu::Buffer),
    /// A texture in the texture GEMMs' layout (inference engines on CPU adapters), read in place
    /// instead of being copied into a scratch texture by every GEMM of every pass.
    Texture { view: wgpu::TextureView, bytes: u64 },
}

impl Matrix {
    fn weight(&self) -> Weight<'_> {
        match self {
            Matrix::Buffer(b) => Weight::Buffer(b),
            Matrix::Texture { view, .. } => Weight::Texture(view),
        }
    }

    /// The buffer of a trainable engine's matrix (`Engine::new` keeps every matrix in one).
    fn buffer(&self) -> &wgpu::Buffer {
        match self {
            Matrix::Buffer(b) => b,
            Matrix::Texture { .. } => unreachable!("only inference engines hold weight textures"),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Matrix::Buffer(b) => b.size(),
            Matrix::Texture { bytes, .. } => *bytes,
        }
    }
}

struct GpuLayer {
    ln_1_w: wgpu::Buffer,      // (C)
    ln_1_b: wgpu::Buffer,      // (C)
    attn_w: Matrix,            // (C, 3C)
    attn_b: wgpu::Buffer,      // (3C)
    attn_proj_w: Matrix,       // (C, C)
    attn_proj_b: wgpu::Buffer, // (C)
    ln_2_w: wgpu::Buffer,      // (C)
    ln_2_b: wgpu::Buffer,      // (C)
    fc_w: Matrix,              // (C, F)
    fc_b: wgpu::Buffer,        // (F)
    fc_proj_w: Matrix,         // (F, C)
    fc_proj_b: wgpu::Buffer,   // (C)
}

/// A row range of wte (V, C): one chunk of `GpuWeights`' wte buffers and textures.
#[derive(Debug, Clone, Copy)]
struct VocabSpan {
    row0: usize,
    rows: usize,
    /// rows · C weights in the weights' format
    bytes: u64,
}

struct GpuWeights {
    /// wte's row chunks, each fitting one binding.
    wte_spans: Vec<VocabSpan>,
    /// The chunks as buffers. An inference engine on a CPU adapter keeps wte as textures only
    /// (below; `wte_in_textures`) and makes these, copied from the textures, when a pass first
    /// needs them: the lm_head at more than `LM_HEAD_STAGED_ROWS` loss rows (a long
    /// teacher-forced target, a batch). RA at fewer loss rows (`nll`, `logit-diff`, a short `ce`
    /// target) never does, which saves wte's size (147 MiB for GPT-2 in f32). Once made they are
    /// kept: the next such pass would copy them again. Use `wte_buffers`.
    wte: OnceLock<Vec<VocabChunk>>,
    /// The same chunks as textures, row by row, for the embedding and the lm_head's one-row
    /// kernels (inference engines on CPU adapters; empty otherwise): no per-pass staging of wte.
    wte_textures: Vec<Matrix>,
    wpe: wgpu::Buffer, // (P, C)
    layers: Vec<GpuLayer>,
    ln_f_w: wgpu::Buffer, // (C)
    ln_f_b: wgpu::Buffer, // (C)
}

impl GpuLayer {
    /// The 12 tensors in `LayerWeights::named` order (a trainable engine's: all buffers).
    fn buffers(&self) -> [&wgpu::Buffer; 12] {
        [
            &self.ln_1_w,
            &self.ln_1_b,
            self.attn_w.buffer(),
            &self.attn_b,
            self.attn_proj_w.buffer(),
            &self.attn_proj_b,
            &self.ln_2_w,
            &self.ln_2_b,
            self.fc_w.buffer(),
            &self.fc_b,
            self.fc_proj_w.buffer(),
            &self.fc_proj_b,
        ]
    }

    fn bytes(&self) -> u64 {
        let vectors = [
            &self.ln_1_w,
            &self.ln_1_b,
            &self.attn_b,
            &self.attn_proj_b,
            &self.ln_2_w,
            &self.ln_2_b,
            &self.fc_b,
            &self.fc_proj_b,
        ];
        let matrices = [&self.attn_w, &self.attn_proj_w, &self.fc_w, &self.fc_proj_w];
        vectors.iter().map(|b| b.size()).sum::<u64>()
            + matrices.iter().map(|m| m.bytes()).sum::<u64>()
    }
}

impl GpuWeights {
    /// wte's chunks as buffers: uploaded with the weights, or, for an engine that keeps wte as
    /// textures only, copied from the textures on the adapter the first time a pass needs them,
    /// and kept.
    fn wte_buffers(&self, ctx: &GpuContext) -> &[VocabChunk] {
        self.wte.get_or_init(|| {
            self.wte_spans
                .iter()
                .zip(self.wte_views())
                .map(|(span, view)| VocabChunk {
                    buffer: ctx.buffer_from_texels("wte chunk", view, span.bytes),
                    row0: span.row0,
                    rows: span.rows,
                })
                .collect()
        })
    }

    /// wte's chunks as the embedding and the fused lm_head read them from textures (empty
    /// unless the engine keeps wte as textures).
    fn wte_texture_chunks(&self) -> Vec<WteChunk> {
        self.wte_spans
            .iter()
            .zip(self.wte_views())
            .map(|(span, view)| WteChunk {
                texture: TextureBinding::View(view.clone()),
                row0: span.row0,
                rows: span.rows,
            })
            .collect()
    }

    /// wte's chunks' textures (none unless the engine keeps wte as textures).
    fn wte_views(&self) -> impl Iterator<Item = &wgpu::TextureView> {
        self.wte_textures.iter().map(|texture| match texture {
            Matrix::Texture { view, .. } => view,
            Matrix::Buffer(_) => unreachable!("wte's textures are textures"),
        })
    }

    /// Every parameter buffer in `Weights::named` order (wte as one buffer: training requires a
    /// single chunk).
    fn buffers(&self) -> Vec<&wgpu::Buffer> {
        let wte = self
            .wte
            .get()
            .expect("a trainable engine uploads wte's buffers");
        let mut out = vec![&wte[0].buffer, &self.wpe];
        for layer in &self.layers {
            out.extend(layer.buffers());
        }
        out.push(&self.ln_f_w);
        out.push(&self.ln_f_b);
        out
    }

    /// Bytes of every buffer and texture, wte's chunks included (its buffers once made).
    fn bytes(&self) -> u64 {
        let wte: u64 = self.wte.get().map_or(0, |chunks| {
            chunks.iter().map(|c| c.buffer.size()).sum::<u64>()
        }) + self.wte_textures.iter().map(Matrix::bytes).sum::<u64>();
        let layers: u64 = self.layers.iter().map(GpuLayer::bytes).sum();
        wte + layers + self.wpe.size() + self.ln_f_w.size() + self.ln_f_b.size()
    }

    /// Zero-filled buffers of the same shapes and chunking (the gradients).
    fn zeros_like(ctx: &GpuContext, w: &GpuWeights, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd;
        let z = |label: &str, b: &wgpu::Buffer| ctx.storage(label, b.size());
        let zm = |label: &str, m: &Matrix| Matrix::Buffer(z(label, m.buffer()));
        let layers = w
            .layers
            .iter()
            .map(|l| GpuLayer {
                ln_1_w: z("grad ln_1.weight", &l.ln_1_w),
                ln_1_b: z("grad ln_1.bias", &l.ln_1_b),
                attn_w: zm("grad attn.c_attn.weight", &l.attn_w),
                attn_b: z("grad attn.c_attn.bias", &l.attn_b),
                attn_proj_w: zm("grad attn.c_proj.weight", &l.attn_proj_w),
                attn_proj_b: z("grad attn.c_proj.bias", &l.attn_proj_b),
                ln_2_w: z("grad ln_2.weight", &l.ln_2_w),
                ln_2_b: z("grad ln_2.bias", &l.ln_2_b),
                fc_w: zm("grad mlp.c_fc.weight", &l.fc_w),
                fc_b: z("grad mlp.c_fc.bias", &l.fc_b),
                fc_proj_w: zm("grad mlp.c_proj.weight", &l.fc_proj_w),
                fc_proj_b: z("grad mlp.c_proj.bias", &l.fc_proj_b),
            })
            .collect();
        GpuWeights {
            wte_textures: Vec::new(),
            wte_spans: w
                .wte_spans
                .iter()
                .map(|span| VocabSpan {
                    bytes: (4 * span.rows * c) as u64,
                    ..*span
                })
                .collect(),
            wte: OnceLock::from(
                w.wte_spans
                    .iter()
                    .map(|span| VocabChunk {
                        buffer: ctx.storage("grad wte chunk", (4 * span.rows * c) as u64),
                        row0: span.row0,
                        rows: span.rows,
                    })
                    .collect::<Vec<_>>(),
            ),
            wpe: z("grad wpe", &w.wpe),
            layers,
            ln_f_w: z("grad ln_f.weight", &w.ln_f_w),
            ln_f_b: z("grad ln_f.bias", &w.ln_f_b),
        }
    }

    /// Uploads the weights, the matrices (wte and the Conv1D weights) in `format`; the Conv1D
    /// matrices as textures where `textures` (an inference engine on a CPU adapter).
    fn upload(
        ctx: &GpuContext,
        model: &Model,
        format: WeightFormat,
        textures: bool,
    ) -> Result<Self> {
        let w = &model.weights;
        let store = |name: &str, data: &[f32], as_format: WeightFormat| match as_format {
            WeightFormat::F32 => ctx.upload(name, data),
            WeightFormat::F16 => ctx.upload(name, &f16_bits(data)),
        };
        // Once a tensor is on the adapter its pages of the mapped checkpoint can go.
        let put = |name: &str, t: &Tensor, as_format: WeightFormat| {
            let buffer = store(name, t.data(), as_format);
            t.release_resident_pages();
            buffer
        };
        let up = |name: &str, t: &Tensor| put(name, t, WeightFormat::F32);
        let matrix = |name: &str, t: &Tensor| {
            if !textures {
                return Matrix::Buffer(put(name, t, format));
            }
            let texel_format = crate::layers::linear::texel_format(format);
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let view = match format {
                WeightFormat::F32 => ctx.upload_texels(
                    name,
                    bytemuck::cast_slice(&block_weights(t.data(), rows, cols)),
                    texel_format,
                ),
                WeightFormat::F16 => ctx.upload_texels(
                    name,
                    bytemuck::cast_slice(&block_weights(&f16_bits(t.data()), rows, cols)),
                    texel_format,
                ),
            };
            t.release_resident_pages();
            Matrix::Texture {
                view,
                bytes: texture_bytes(t.data().len(), format),
            }
        };
        let c = model.config.n_embd;
        let max_rows = vocab_chunk_rows(ctx.max_binding_bytes(), c, format);
        let v = model.config.vocab_size;
        let wte_spans: Vec<VocabSpan> = (0..v)
            .step_by(max_rows)
            .map(|row0| {
                let rows = max_rows.min(v - row0);
                let bytes = (rows * c * format.bytes_per_weight()) as u64;
                VocabSpan { row0, rows, bytes }
            })
            .collect();
        let rows_of = |span: &VocabSpan| &w.wte.data()[span.row0 * c..(span.row0 + span.rows) * c];
        // an inference engine's embedding and lm_head read wte's chunks from textures (row by
        // row), and its buffers wait until a pass needs them (`wte_buffers`)
        let max_texels = crate::layers::max_scratch_texels(ctx);
        let in_textures = wte_in_textures(
            textures,
            wte_spans.iter().map(|span| span.rows),
            c,
            max_texels,
        );
        let wte = if in_textures {
            OnceLock::new()
        } else {
            let chunks = wte_spans
                .iter()
                .map(|span| VocabChunk {
                    buffer: store("wte chunk", rows_of(span), format),
                    row0: span.row0,
                    rows: span.rows,
                })
                .collect::<Vec<VocabChunk>>();
            OnceLock::from(chunks)
        };
        let wte_textures = if in_textures {
            wte_spans
                .iter()
                .map(|span| {
                    let data = rows_of(span);
                    let texel_format = crate::layers::linear::texel_format(format);
                    let view = match format {
                        WeightFormat::F32 => {
                            ctx.upload_texels("wte chunk", bytemuck::cast_slice(data), texel_format)
                        }
                        WeightFormat::F16 => ctx.upload_texels(
                            "wte chunk",
                            bytemuck::cast_slice(&f16_bits(data)),
                            texel_format,
                        ),
                    };
                    Matrix::Texture {
                        view,
                        bytes: texture_bytes(data.len(), format),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        w.wte.release_resident_pages();
        ctx.flush_uploads()?;
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let layer = GpuLayer {
                    ln_1_w: up("ln_1.weight", &l.ln_1_w),
                    ln_1_b: up("ln_1.bias", &l.ln_1_b),
                    attn_w: matrix("attn.c_attn.weight", &l.attn_w),
                    attn_b: up("attn.c_attn.bias", &l.attn_b),
                    attn_proj_w: matrix("attn.c_proj.weight", &l.attn_proj_w),
                    attn_proj_b: up("attn.c_proj.bias", &l.attn_proj_b),
                    ln_2_w: up("ln_2.weight", &l.ln_2_w),
                    ln_2_b: up("ln_2.bias", &l.ln_2_b),
                    fc_w: matrix("mlp.c_fc.weight", &l.fc_w),
                    fc_b: up("mlp.c_fc.bias", &l.fc_b),
                    fc_proj_w: matrix("mlp.c_proj.weight", &l.fc_proj_w),
                    fc_proj_b: up("mlp.c_proj.bias", &l.fc_proj_b),
                };
                ctx.flush_uploads().map(|()| layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = GpuWeights {
            wte_spans,
            wte,
            wte_textures,
            wpe: up("wpe", &w.wpe),
            layers,
            ln_f_w: up("ln_f.weight", &w.ln_f_w),
            ln_f_b: up("ln_f.bias", &w.ln_f_b),
        };
        ctx.check("uploading the weights")?;
        Ok(weights)
    }
}

/// The parts one after the other, copied slice by slice into one allocation (`flatten().collect()`
/// pushes value by value: seconds for the 151 M values of R at T = 1024).
fn concat_parts(parts: impl Iterator<Item = Vec<f32>>) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = parts.collect();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in &parts {
        out.extend_from_slice(part);
    }
    out
}

/// Bytes of the texture `GpuContext::upload_texels` makes for `weights` weights of `format`.
fn texture_bytes(weights: usize, format: WeightFormat) -> u64 {
    let texel = 4 * format.bytes_per_weight() as u64;
    let row = texel * crate::layers::TEXTURE_ROW_TEXELS;
    (weights as u64 * format.bytes_per_weight() as u64)
        .div_ceil(row)
        .max(1)
        * row
}

/// Whether an engine whose Conv1D weights are in `textures` (an inference engine on a CPU
/// adapter) keeps wte's chunks of `chunk_rows` rows of `c` as textures only, its buffers made from
/// them when a pass first needs them (`GpuWeights::wte_buffers`); otherwise wte is buffers only.
/// Every chunk must fit a texture, and rows must be whole texels (the embedding's texture
/// kernel; `weights_fit_textures` already asks C % 4 = 0 of texture engines). The engine and the
/// memory estimate ask this.
fn wte_in_textures(
    textures: bool,
    chunk_rows: impl IntoIterator<Item = usize>,
    c: usize,
    max_texels: u64,
) -> bool {
    textures && c % 4 == 0 && wte_chunks_fit_textures(chunk_rows, c, max_texels)
}

/// Whether every wte chunk of `chunk_rows` rows of `c` fits one texture (as staged or kept
/// weights): what the fused lm_head and an engine keeping wte in textures need.
fn wte_chunks_fit_textures(
    chunk_rows: impl IntoIterator<Item = usize>,
    c: usize,
    max_texels: u64,
) -> bool {
    chunk_rows
        .into_iter()
        .all(|rows| crate::layers::linear::staged_weight_texels(rows * c, max_texels).is_some())
}

/// Rows per wte chunk: as many as one binding holds, a multiple of 64 rows.
fn vocab_chunk_rows(max_binding: u64, c: usize, format: WeightFormat) -> usize {
    let row_bytes = (format.bytes_per_weight() * c) as u64;
    ((max_binding / row_bytes) as usize / 64 * 64).max(64)
}

/// What a plan depends on; a new key means new buffers and a new plan.
#[derive(Debug, Clone, PartialEq)]
struct PlanKey {
    /// Sequences in the batch (1 for RA on one prompt).
    b: usize,
    /// Tokens per sequence.
    t: usize,
    /// Rows of the (B·T) row space whose logits the loss reads.
    rows: LossRows,
    /// Room for this many loss terms (the count itself changes from batch to batch).
    terms_capacity: usize,
    /// η when patching (η is baked into the plan's parameters).
    patch: Option<f32>,
    backward: bool,
    /// Also the gradient of every parameter (training).
    weight_grads: bool,
    /// The backward goes on below block 0's attention scores to dL/dh_0 (hidden_grads asked
    /// for, or training); RA alone stops at layer 0's R.
    input_grad: bool,
}

impl PlanKey {
    /// The rows the last block's attention projection and MLP run on, where that is not all of
    /// them: the loss rows of one prompt (`LossRows::Range`) when no weight gradient is asked for.
    /// Only those rows of its output reach the loss (its attention still reads every row's keys
    /// and values), so the other rows' work in the forward and the backward is skipped: 9 of the
    /// block's 12·C² multiply-adds per row each way, about 6% of a pass's GEMMs.
    fn top_rows(&self) -> Option<Range<usize>> {
        match &self.rows {
            LossRows::Range(rows) if !self.weight_grads => Some(rows.clone()),
            _ => None,
        }
    }
}

/// Which rows the lm_head and the loss run on.
#[derive(Debug, Clone, PartialEq)]
enum LossRows {
    /// Consecutive rows (one prompt: the last position, or the target span of `ce`).
    Range(Range<usize>),
    /// Rows listed per call (a batch's answer positions), gathered out of ln_f's output; room
    /// for `capacity` of them (unused slots carry no loss).
    Gather { capacity: usize },
}

impl LossRows {
    fn len(&self) -> usize {
        match self {
            LossRows::Range(r) => r.len(),
            LossRows::Gather { capacity } => *capacity,
        }
    }
}

/// LayerNorm statistics of one LayerNorm instance.
struct LnStats {
    mean: wgpu::Buffer, // (B·T)
    rstd: wgpu::Buffer, // (B·T)
}

/// A per-layer activation that only the weight gradients read again: one buffer per layer when
/// they are computed, else one scratch buffer every layer overwrites.
struct LayerSlots(Vec<wgpu::Buffer>);

impl LayerSlots {
    fn new(ctx: &GpuContext, label: &str, floats: usize, layers: usize, keep: bool) -> Self {
        let n = if keep { layers } else { 1 };
        LayerSlots(
            (0..n)
                .map(|_| ctx.storage(label, 4 * floats as u64))
                .collect(),
        )
    }

    fn at(&self, layer: usize) -> &wgpu::Buffer {
        &self.0[layer.min(self.0.len() - 1)]
    }
}

/// Buffers for one (model, plan key), allocated once and reused by every call with that key.
/// Only what the activation backward reads is kept per layer; the rest is shared scratch.
/// N = B·T rows.
struct Workspace {
    key: PlanKey,
    // per-call inputs
    ids: wgpu::Buffer,         // (N) u32
    head_scale: wgpu::Buffer,  // (L, NH)
    lse_scale: wgpu::Buffer,   // (R)
    terms: wgpu::Buffer,       // (terms_capacity) GpuTerm, grouped by row
    term_start: wgpu::Buffer,  // (R + 1) u32: row r's terms are terms[start[r]..start[r + 1]]
    patch: Vec<wgpu::Buffer>,  // L × (B, NH, T, T), only when patching
    token_start: wgpu::Buffer, // (V + 1) u32, ids grouped by token (weight gradients only)
    token_rows: wgpu::Buffer,  // (N) u32
    row_ids: wgpu::Buffer,     // (R) u32 the gathered loss rows (LossRows::Gather)
    row_slot: wgpu::Buffer,    // (N) i32 each row's index into them, or −1
    // forward, kept for the backward
    hidden: Vec<wgpu::Buffer>, // L+1 × (N, C): input of block l; hidden[L] is ln_f's input
    ln_1: Vec<LnStats>,        // L
    qkv: Vec<wgpu::Buffer>,    // L × (N, 3C)
    att: Vec<wgpu::Buffer>,    // L × (B, NH, T, T)
    mid: Vec<wgpu::Buffer>,    // L × (N, C) residual stream after attention
    ln_2: Vec<LnStats>,        // L
    fc_pre: Vec<wgpu::Buffer>, // L × (N, F) c_fc output, gelu's input
    ln_f: LnStats,
    // forward inputs of the four Conv1Ds, per layer only when their weight gradients are needed
    ln_1_out: LayerSlots,    // (N, C) LN1 output, c_attn's input
    z: LayerSlots,           // (N, C) concatenated head outputs, attn c_proj's input
    ln_2_out: LayerSlots,    // (N, C) LN2 output, c_fc's input
    fc_act: LayerSlots,      // (N, F) gelu output, mlp c_proj's input
    ln_f_out: wgpu::Buffer,  // (N, C) ln_f's output
    ln_f_rows: wgpu::Buffer, // (R, C) its loss rows, when gathered: the lm_head's input
    // loss
    logits: wgpu::Buffer,    // (R, V)
    dlogits: wgpu::Buffer,   // (R, V), unused by the fused lm_head
    loss_rows: wgpu::Buffer, // (R)
    // the fused lm_head's partial sums (`fused_lm_head`), NB blocks of wte rows
    block_stats: wgpu::Buffer, // (R, NB, 2)
    block_acc: wgpu::Buffer,   // (R, NB, C)
    chunk_terms: wgpu::Buffer, // (R, chunks, C)
    /// The lm_head and the loss run fused (`lm_head.wgsl`).
    fused_lm_head: bool,
    /// fc_act and d_fc_pre pass through `MLP_HIDDEN_TEXTURE`; their buffers hold one float and
    /// no step of the plan binds them.
    mlp_through_texture: bool,
    // backward
    dln_f_rows: wgpu::Buffer,   // (R, C)
    dhidden: Vec<wgpu::Buffer>, // L+1 × (N, C): dL/dhidden[l]
    d_fc_pre: wgpu::Buffer,     // (N, F)
    d_ln: wgpu::Buffer,         // (N, C) gradient at a LayerNorm's output
    dmid: wgpu::Buffer,         // (N, C)
    dz: wgpu::Buffer,           // (N, C) G, the gradient at c_proj's input
    dqkv: wgpu::Buffer,         // (N, 3C)
    // the last block's d_ln and dz when it runs at the loss rows only (`top_rows`): written at
    // those rows alone, so every other row keeps the zero it was created with
    d_ln_top: wgpu::Buffer, // (N, C)
    dz_top: wgpu::Buffer,   // (N, C)
    ra: Vec<wgpu::Buffer>,  // L × (B, NH, T, T)
    plan: Plan,
    /// Bytes of all the buffers above.
    bytes: u64,
}

/// Whether a plan for `key` runs the lm_head and the loss fused (`lm_head.wgsl`): on CPU adapters,
/// at up to `LM_HEAD_STAGED_ROWS` loss rows, without weight gradients (wte's needs dlogits), with
/// every wte chunk fitting a texture and rows the kernels take.
fn fused_lm_head(
    ctx: &GpuContext,
    k: &Kernels,
    w: &GpuWeights,
    cfg: &GptConfig,
    key: &PlanKey,
) -> bool {
    let c = cfg.n_embd;
    let x_off = match &key.rows {
        LossRows::Range(rows) => rows.start * c,
        LossRows::Gather { .. } => 0,
    };
    let max_texels = max_scratch_texels(ctx);
    k.lm_head.is_some()
        && !key.weight_grads
        && key.rows.len() <= LM_HEAD_STAGED_ROWS
        && lm_head::fits(c, x_off)
        && wte_chunks_fit_textures(w.wte_spans.iter().map(|span| span.rows), c, max_texels)
}

/// Whether a plan for `key` passes the MLP's hidden activation gelu(x·W_fc + b_fc) (N, F) from c_fc
/// to the MLP's c_proj, and in the backward its gradient d_fc_pre from c_proj's backward to c_fc's,
/// in a scratch texture (`Activation::Texture`) instead of fc_act's and d_fc_pre's buffers: the
/// producer stores a texel per lane instead of element by element, and the consumer's staging copy
/// goes away. On the texture kernels with the weights in textures, without weight gradients (which
/// read both buffers).
fn mlp_through_texture(
    ctx: &GpuContext,
    k: &Kernels,
    w: &GpuWeights,
    cfg: &GptConfig,
    key: &PlanKey,
) -> bool {
    let (n, c, f) = (key.b * key.t, cfg.n_embd, cfg.n_inner);
    let textured = |m: &Matrix| matches!(m, Matrix::Texture { .. });
    !key.weight_grads
        && k.weight_gemms().has_texture_kernels()
        && w.layers
            .iter()
            .all(|lw| textured(&lw.fc_w) && textured(&lw.fc_proj_w))
        && mlp_chainable((n, c, f), key.backward, max_scratch_texels(ctx))
}

/// Whether an MLP of M rows (C → F → C) with its weights in textures can pass its hidden
/// activation, and with `backward` its gradient, through a texture: c_fc and the MLP's c_proj
/// take the texture tiles both ways (`chainable`). The engine and the memory estimate ask this.
fn mlp_chainable((m, c, f): (usize, usize, usize), backward: bool, max_texels: u64) -> bool {
    let fits = |shape, backward| chainable(true, shape, backward, max_texels);
    fits((m, c, f), false)
        && fits((m, f, c), false)
        && (!backward || fits((m, f, c), true) && fits((m, c, f), true))
}

impl Workspace {
    fn new(
        ctx: &GpuContext,
        k: &Kernels,
        w: &GpuWeights,
        grads: Option<&GpuWeights>,
        cfg: &GptConfig,
        key: PlanKey,
    ) -> Self {
        let (c, f, nh, v) = (cfg.n_embd, cfg.n_inner, cfg.n_head, cfg.vocab_size);
        let (nl, r, n) = (cfg.n_layer, key.rows.len(), key.b * key.t);
        let att_len = key.b * nh * key.t * key.t;
        let allocated = std::cell::Cell::new(0u64);
        let buf = |label: &str, floats: usize| {
            let b = ctx.storage(label, 4 * floats as u64);
            allocated.set(allocated.get() + b.size());
            b
        };
        let per_layer = |label: &str, floats: usize| (0..nl).map(|_| buf(label, floats)).collect();
        let stats = |label: &str| LnStats {
            mean: buf(label, n),
            rstd: buf(label, n),
        };
        let (bwd, wg) = (key.backward, key.weight_grads);
        let gather = matches!(key.rows, LossRows::Gather { .. });
        let top = key.top_rows().is_some();
        let fused = fused_lm_head(ctx, k, w, cfg, &key);
        let mlp_tex = mlp_through_texture(ctx, k, w, cfg, &key);
        let chunk_rows: Vec<usize> = w.wte_spans.iter().map(|span| span.rows).collect();
        let nb = lm_head::blocks(&chunk_rows);
        // the fused kernels' sums, when they run (and the backward's only with it)
        let partial = |floats: usize, with_backward: bool| {
            if fused && (bwd || !with_backward) {
                floats
            } else {
                1
            }
        };
        let slots = |label: &str, floats: usize| {
            let s = LayerSlots::new(ctx, label, floats, nl, wg);
            allocated.set(allocated.get() + s.0.iter().map(|b| b.size()).sum::<u64>());
            s
        };
        let mut ws = Workspace {
            ids: buf("ids", n),
            head_scale: buf("head_scale", nl * nh),
            lse_scale: buf("lse_scale", r),
            terms: buf("terms", 4 * key.terms_capacity.max(1)),
            term_start: buf("term_start", r + 1),
            patch: if key.patch.is_some() {
                per_layer("patch", att_len)
            } else {
                Vec::new()
            },
            token_start: buf("token_start", if wg { v + 1 } else { 1 }),
            token_rows: buf("token_rows", if wg { n } else { 1 }),
            row_ids: buf("row_ids", if gather { r } else { 1 }),
            row_slot: buf("row_slot", if gather { n } else { 1 }),
            hidden: (0..=nl).map(|_| buf("hidden", n * c)).collect(),
            ln_1: (0..nl).map(|_| stats("ln_1 stats")).collect(),
            qkv: per_layer("qkv", n * 3 * c),
            att: per_layer("att", att_len),
            mid: per_layer("mid", n * c),
            ln_2: (0..nl).map(|_| stats("ln_2 stats")).collect(),
            fc_pre: per_layer("fc_pre", n * f),
            ln_f: stats("ln_f stats"),
            ln_1_out: slots("ln_1_out", n * c),
            z: slots("z", n * c),
            ln_2_out: slots("ln_2_out", n * c),
            fc_act: slots("fc_act", if mlp_tex { 1 } else { n * f }),
            ln_f_out: buf("ln_f_out", n * c),
            ln_f_rows: buf("ln_f_rows", if gather { r * c } else { 1 }),
            logits: buf("logits", r * v),
            dlogits: buf("dlogits", if fused { 1 } else { r * v }),
            loss_rows: buf("loss_rows", r),
            block_stats: buf("block_stats", partial(r * nb * 2, false)),
            block_acc: buf("block_acc", partial(r * nb * c, true)),
            chunk_terms: buf("chunk_terms", partial(r * chunk_rows.len() * c, true)),
            fused_lm_head: fused,
            mlp_through_texture: mlp_tex,
            dln_f_rows: buf("dln_f_rows", r * c),
            dhidden: if bwd {
                (0..=nl).map(|_| buf("dhidden", n * c)).collect()
            } else {
                Vec::new()
            },
            d_fc_pre: buf("d_fc_pre", if bwd && !mlp_tex { n * f } else { 1 }),
            d_ln: buf("d_ln", if bwd { n * c } else { 1 }),
            dmid: buf("dmid", if bwd { n * c } else { 1 }),
            dz: buf("dz", if bwd { n * c } else { 1 }),
            dqkv: buf("dqkv", if bwd { n * 3 * c } else { 1 }),
            d_ln_top: buf("d_ln_top", if bwd && top { n * c } else { 1 }),
            dz_top: buf("dz_top", if bwd && top { n * c } else { 1 }),
            ra: if bwd {
                per_layer("ra", att_len)
            } else {
                Vec::new()
            },
            plan: PlanBuilder::new(ctx).finish(),
            bytes: 0,
            key,
        };
        ws.plan = ws.build_plan(ctx, k, w, grads, cfg);
        ws.bytes = allocated.get() + ws.plan.texture_bytes();
        ws
    }

    fn build_plan(
        &self,
        ctx: &GpuContext,
        k: &Kernels,
        w: &GpuWeights,
        grads: Option<&GpuWeights>,
        cfg: &GptConfig,
    ) -> Plan {
        let key = &self.key;
        let (b, t, c, f, nh, v) = (
            key.b,
            key.t,
            cfg.n_embd,
            cfg.n_inner,
            cfg.n_head,
            cfg.vocab_size,
        );
        let (n, r) = (b * t, key.rows.len());
        let eps = cfg.layer_norm_epsilon as f32;
        let grads = grads.filter(|_| key.weight_grads);
        let mut plan = PlanBuilder::new(ctx);
        let p = &mut plan;
        let ln = &k.layernorm;
        let shape = |layer| AttentionShape { b, t, c, nh, layer };

        // ---- forward ----
        let wte_textures = w.wte_texture_chunks();
        let wte = if !wte_textures.is_empty() && k.embedding.reads_textures(c) {
            WteSource::Textures(&wte_textures)
        } else {
            WteSource::Buffers(w.wte_buffers(ctx))
        };
        k.embedding
            .forward(p, &self.hidden[0], &self.ids, wte, &w.wpe, (b, t, c));
        let top_rows = key.top_rows();
        // The rows block l's attention projection and MLP run on (`PlanKey::top_rows`).
        let block_rows = |l: usize| match &top_rows {
            Some(rows) if l + 1 == cfg.n_layer => rows.clone(),
            _ => 0..n,
        };
        for (l, lw) in w.layers.iter().enumerate() {
            let (h_in, h_out) = (&self.hidden[l], &self.hidden[l + 1]);
            let (ln1, ln2) = (&self.ln_1[l], &self.ln_2[l]);
            let (ln_1_out, z) = (self.ln_1_out.at(l), self.z.at(l));
            let ln_2_out = self.ln_2_out.at(l);
            let fc_act = if self.mlp_through_texture {
                Activation::Texture(MLP_HIDDEN_TEXTURE)
            } else {
                Activation::Buffer(self.fc_act.at(l))
            };
            ln.forward(
                p,
                ln_1_out,
                &ln1.mean,
                &ln1.rstd,
                h_in,
                &lw.ln_1_w,
                &lw.ln_1_b,
                (n, c),
                eps,
            );
            k.weight_gemms().forward(
                p,
                &self.qkv[l],
                ln_1_out,
                lw.attn_w.weight(),
                Some(&lw.attn_b),
                None,
                (n, c, 3 * c),
            );
            k.attention
                .forward(p, z, &self.attention_buffers(l), shape(l));
            k.weight_gemms().forward(
                p,
                &self.mid[l],
                z,
                lw.attn_proj_w.weight(),
                Some(&lw.attn_proj_b),
                Some(h_in),
                (block_rows(l), c, c),
            );
            ln.forward(
                p,
                ln_2_out,
                &ln2.mean,
                &ln2.rstd,
                &self.mid[l],
                &lw.ln_2_w,
                &lw.ln_2_b,
                (n, c),
                eps,
            );
            k.weight_gemms().forward_gelu(
                p,
                &self.fc_pre[l],
                fc_act,
                ln_2_out,
                lw.fc_w.weight(),
                Some(&lw.fc_b),
                (block_rows(l), c, f),
            );
            k.weight_gemms().forward(
                p,
                h_out,
                fc_act,
                lw.fc_proj_w.weight(),
                Some(&lw.fc_proj_b),
                Some(&self.mid[l]),
                (block_rows(l), f, c),
            );
        }
        let h_last = &self.hidden[cfg.n_layer];
        let lnf = &self.ln_f;
        ln.forward(
            p,
            &self.ln_f_out,
            &lnf.mean,
            &lnf.rstd,
            h_last,
            &w.ln_f_w,
            &w.ln_f_b,
            (n, c),
            eps,
        );
        // Tied lm_head at the loss rows only: logits (R, V) = ln_f(h)[rows] · wteᵀ, one GEMM per chunk.
        let ln_f_rows = match &key.rows {
            LossRows::Range(rows) => Operand::new(&self.ln_f_out, c).at(rows.start * c),
            LossRows::Gather { .. } => {
                k.cross_entropy.gather_rows(
                    p,
                    &self.ln_f_rows,
                    &self.ln_f_out,
                    &self.row_ids,
                    (r, c),
                );
                Operand::new(&self.ln_f_rows, c)
            }
        };
        // At a few rows the lm_head is a GEMV over wte: fetched from textures it is several times
        // faster on CPU adapters. An inference engine keeps wte's chunks as textures; otherwise
        // each chunk is staged once for the forward and the backward.
        let staged_wte: Vec<Option<TextureBinding>> = (0..w.wte_spans.len())
            .map(|i| {
                if r > LM_HEAD_STAGED_ROWS {
                    return None;
                }
                if let Some(chunk) = wte_textures.get(i) {
                    return Some(chunk.texture.clone());
                }
                let chunk = &w.wte_buffers(ctx)[i];
                k.weight_gemms()
                    .stage_weights(p, 2 + i as u8, &chunk.buffer, chunk.rows * c)
                    .map(TextureBinding::Scratch)
            })
            .collect();
        // On CPU adapters: logits, the loss and dln_f_rows in one pass over wte.
        if self.fused_lm_head {
            let lm_head = k
                .lm_head
                .as_ref()
                .expect("fused_lm_head checks the kernels");
            let chunks: Vec<WteChunk> = w
                .wte_spans
                .iter()
                .zip(&staged_wte)
                .map(|(span, staged)| WteChunk {
                    texture: staged.clone().expect("fused_lm_head checks the textures"),
                    row0: span.row0,
                    rows: span.rows,
                })
                .collect();
            let buffers = LmHeadBuffers {
                x: ln_f_rows.buffer,
                x_off: ln_f_rows.offset as usize,
                lse_scale: &self.lse_scale,
                terms: &self.terms,
                term_start: &self.term_start,
                logits: &self.logits,
                loss_rows: &self.loss_rows,
                dx: &self.dln_f_rows,
                with_grad: key.backward,
                block_stats: &self.block_stats,
                block_acc: &self.block_acc,
                chunk_terms: &self.chunk_terms,
            };
            lm_head.forward_backward(p, &buffers, &chunks, (r, c, v));
        } else {
            for (chunk, staged) in w.wte_buffers(ctx).iter().zip(&staged_wte) {
                k.weight_gemms().gemm_with_staged_b(
                    p,
                    "lm_head_forward",
                    &Gemm {
                        m: r,
                        n: chunk.rows,
                        k: c,
                        a: ln_f_rows,
                        b: Operand::new(&chunk.buffer, c),
                        op: GemmOp::NT,
                        c: Operand::new(&self.logits, v).at(chunk.row0),
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
            k.cross_entropy.forward_backward(
                p,
                &self.loss_rows,
                &self.dlogits,
                &self.logits,
                &self.lse_scale,
                (&self.terms, &self.term_start),
                (r, v),
            );
        }
        if !key.backward {
            return plan.finish();
        }

        // ---- backward ----
        // dln_f_rows (R, C) = dlogits · wte, differentiating logits = x·wteᵀ in x; summed over
        // chunks (the fused lm_head wrote it already).
        let unfused = (!self.fused_lm_head).then(|| w.wte_buffers(ctx));
        let chunks = unfused.unwrap_or_default().iter().zip(&staged_wte);
        for (i, (chunk, staged)) in chunks.enumerate() {
            k.weight_gemms().gemm_with_staged_b(
                p,
                "lm_head_backward",
                &Gemm {
                    m: r,
                    n: c,
                    k: chunk.rows,
                    a: Operand::new(&self.dlogits, v).at(chunk.row0),
                    b: Operand::new(&chunk.buffer, c),
                    op: GemmOp::NN,
                    c: Operand::new(&self.dln_f_rows, c),
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
        if let Some(g) = grads {
            // dwte (V, C) = dlogitsᵀ · x, differentiating logits = x·wteᵀ in wte (the embedding's
            // share is added at the end).
            for (chunk, dchunk) in w.wte_buffers(ctx).iter().zip(g.wte_buffers(ctx)) {
                k.linear.gemm(
                    p,
                    "lm_head_backward_weight",
                    &Gemm {
                        m: chunk.rows,
                        n: c,
                        k: r,
                        a: Operand::new(&self.dlogits, v).at(chunk.row0),
                        b: ln_f_rows,
                        op: GemmOp::TN,
                        c: Operand::new(&dchunk.buffer, c),
                        bias: None,
                        residual: None,
                        accumulate: false,
                        gelu: None,
                        a_texture: None,
                        out_texture: None,
                    },
                );
            }
        }
        let saved = LayerNormSaved {
            x: h_last,
            mean: &lnf.mean,
            rstd: &lnf.rstd,
            w: &w.ln_f_w,
        };
        // ln_f's output gradient: dln_f_rows at the loss rows (scattered back when gathered).
        let (dout, dout_rows) = match &key.rows {
            LossRows::Range(rows) => (&self.dln_f_rows, rows.clone()),
            LossRows::Gather { .. } => {
                k.cross_entropy.scatter_rows(
                    p,
                    &self.d_ln,
                    &self.dln_f_rows,
                    &self.row_slot,
                    (n, c),
                );
                (&self.d_ln, 0..n)
            }
        };
        ln.backward(
            p,
            &self.dhidden[cfg.n_layer],
            None,
            dout,
            dout_rows.clone(),
            &saved,
            (n, c),
        );
        if let Some(g) = grads {
            ln.backward_params(p, &g.ln_f_w, &g.ln_f_b, dout, dout_rows, &saved, c);
        }
        for (l, lw) in w.layers.iter().enumerate().rev() {
            let dh_out = &self.dhidden[l + 1];
            let lg = grads.map(|g| &g.layers[l]);
            // At the loss rows only, the last block's d_ln and dz go to buffers whose other rows
            // stay zero: the LayerNorm and attention backwards below read every row.
            let rows = block_rows(l);
            let (d_ln2, dz) = if rows.len() < n {
                (&self.d_ln_top, &self.dz_top)
            } else {
                (&self.d_ln, &self.dz)
            };
            // MLP: h_out = mid + gelu(LN2(mid)·W_fc + b_fc)·W_proj + b_proj
            // d_fc_pre = (dh_out · W_projᵀ) ⊙ gelu'(fc_pre): the activation's backward in the
            // GEMM's epilogue
            let d_fc_pre = if self.mlp_through_texture {
                Activation::Texture(MLP_HIDDEN_TEXTURE)
            } else {
                Activation::Buffer(&self.d_fc_pre)
            };
            k.weight_gemms().backward_input_gelu(
                p,
                d_fc_pre,
                dh_out,
                lw.fc_proj_w.weight(),
                &self.fc_pre[l],
                (rows.clone(), f, c),
            );
            if let Some(lg) = lg {
                k.linear.backward_weights(
                    p,
                    lg.fc_proj_w.buffer(),
                    &lg.fc_proj_b,
                    self.fc_act.at(l),
                    dh_out,
                    (n, f, c),
                );
            }
            k.weight_gemms().backward_input(
                p,
                d_ln2,
                d_fc_pre,
                lw.fc_w.weight(),
                (rows.clone(), c, f),
            );
            if let Some(lg) = lg {
                k.linear.backward_weights(
                    p,
                    lg.fc_w.buffer(),
                    &lg.fc_b,
                    self.ln_2_out.at(l),
                    &self.d_fc_pre,
                    (n, c, f),
                );
            }
            let saved = LayerNormSaved {
                x: &self.mid[l],
                mean: &self.ln_2[l].mean,
                rstd: &self.ln_2[l].rstd,
                w: &lw.ln_2_w,
            };
            ln.backward(p, &self.dmid, Some(dh_out), d_ln2, 0..n, &saved, (n, c));
            if let Some(lg) = lg {
                ln.backward_params(p, &lg.ln_2_w, &lg.ln_2_b, d_ln2, 0..n, &saved, c);
            }
            // Attention: mid = h_in + Z·W_o + b_o;  G = dmid·W_oᵀ
            k.weight_gemms().backward_input(
                p,
                dz,
                &self.dmid,
                lw.attn_proj_w.weight(),
                (rows, c, c),
            );
            if let Some(lg) = lg {
                k.linear.backward_weights(
                    p,
                    lg.attn_proj_w.buffer(),
                    &lg.attn_proj_b,
                    self.z.at(l),
                    &self.dmid,
                    (n, c, c),
                );
            }
            // Below layer 0's R only dL/dh_0 remains: skipped when nothing reads it.
            let to_input = l > 0 || key.input_grad;
            k.attention.backward(
                p,
                (&self.ra[l], to_input.then_some(&self.dqkv)),
                dz,
                &self.attention_buffers(l),
                shape(l),
            );
            if !to_input {
                continue;
            }
            k.weight_gemms().backward_input(
                p,
                &self.d_ln,
                &self.dqkv,
                lw.attn_w.weight(),
                (n, c, 3 * c),
            );
            if let Some(lg) = lg {
                k.linear.backward_weights(
                    p,
                    lg.attn_w.buffer(),
                    &lg.attn_b,
                    self.ln_1_out.at(l),
                    &self.dqkv,
                    (n, c, 3 * c),
                );
            }
            let saved = LayerNormSaved {
                x: &self.hidden[l],
                mean: &self.ln_1[l].mean,
                rstd: &self.ln_1[l].rstd,
                w: &lw.ln_1_w,
            };
            ln.backward(
                p,
                &self.dhidden[l],
                Some(&self.dmid),
                &self.d_ln,
                0..n,
                &saved,
                (n, c),
            );
            if let Some(lg) = lg {
                ln.backward_params(p, &lg.ln_1_w, &lg.ln_1_b, &self.d_ln, 0..n, &saved, c);
            }
        }
        if let Some(g) = grads {
            // h_0 = wte[ids] + wpe[t]: dwte += the rows of dh_0 by token, dwpe = Σ_b dh_0.
            let eg = EmbeddingGrads {
                dh: &self.dhidden[0],
                token_start: &self.token_start,
                token_rows: &self.token_rows,
                dwte: g.wte_buffers(ctx),
                dwpe: &g.wpe,
            };
            k.embedding
                .backward(p, &eg, true, (b, t, c, cfg.n_positions));
        }
        plan.finish()
    }

    fn attention_buffers(&self, l: usize) -> AttentionBuffers<'_> {
        AttentionBuffers {
            qkv: &self.qkv[l],
            att: &self.att[l],
            head_scale: &self.head_scale,
            patch: self.key.patch.map(|eta| (&self.patch[l], eta)),
        }
    }
}

/// Bytes of the scratch textures a one-sequence plan stages GEMM operands into (the same rules
/// as `Linear::gemm` and `Linear::stage_weights`): slot 0 holds the largest A operand, slot 1 the
/// largest B operand, and at ≤ `LM_HEAD_STAGED_ROWS` loss rows one slot per wte chunk; then the
/// attention's and LayerNorm's staged reads.
fn scratch_texture_bytes(
    cfg: &GptConfig,
    (t, rows, backward): (usize, usize, bool),
    format: WeightFormat,
    (textured_weights, wte_textured, mlp_tex): (bool, bool, bool),
    chunk_rows: usize,
    max_texels: u64,
) -> u64 {
    use crate::layers::linear::{staged_weight_texels, texture_spans};
    use crate::layers::TEXTURE_ROW_TEXELS;
    let (c, f, v) = (cfg.n_embd, cfg.n_inner, cfg.vocab_size);
    let ld = |x: usize| x as u32;
    // The rows of a block's attention projection and MLP: the last block runs them at the loss
    // rows only (`PlanKey::top_rows`), so a one-block model runs them at those alone.
    let block_rows = if cfg.n_layer == 1 { rows } else { t };
    // (op, (M, N, K), (lda, a_off), (ldb, b_off), B staged) of every GEMM that may stage.
    // Weights in textures: the GEMMs stage A only, at any number of rows; weights in buffers:
    // both operands, from 8 rows on.
    let mut gemms = vec![];
    let stage_b = !textured_weights;
    let [c_attn, c_proj, c_fc, mlp_proj] = [(c, 3 * c), (c, c), (c, f), (f, c)];
    for (k, n) in [c_attn, c_proj, c_fc, mlp_proj] {
        let m = if (k, n) == c_attn { t } else { block_rows };
        if stage_b && m < 8 {
            continue;
        }
        // the MLP's hidden activation (its c_proj's input) and its gradient (c_fc's backward's
        // input) come from MLP_HIDDEN_TEXTURE
        if !(mlp_tex && (k, n) == mlp_proj) {
            gemms.push((GemmOp::NN, (m, n, k), (ld(k), 0), (ld(n), 0), stage_b));
        }
        if backward && !(mlp_tex && (k, n) == c_fc) {
            // dx (m, k) = dy (m, n) · Wᵀ
            gemms.push((GemmOp::NT, (m, k, n), (ld(n), 0), (ld(n), 0), stage_b));
        }
    }
    let chunks: Vec<usize> = (0..v)
        .step_by(chunk_rows)
        .map(|r0| chunk_rows.min(v - r0))
        .collect();
    let mut wte_slots = 0;
    let texture_rows = |texels: u64| texels.div_ceil(TEXTURE_ROW_TEXELS);
    if rows <= LM_HEAD_STAGED_ROWS {
        // staged every pass, unless the engine keeps wte in textures
        wte_slots = chunks
            .iter()
            .filter_map(|&n| staged_weight_texels(n * c, max_texels))
            .map(texture_rows)
            .sum::<u64>()
            * u64::from(!wte_textured);
    } else {
        for (i, &n) in chunks.iter().enumerate() {
            let row0 = ld(i * chunk_rows);
            gemms.push((GemmOp::NT, (rows, n, c), (ld(c), 0), (ld(c), 0), true));
            if backward {
                gemms.push((GemmOp::NN, (rows, c, n), (ld(v), row0), (ld(c), 0), true));
            }
        }
    }
    let (mut a_max, mut b_max) = (0, 0);
    for (op, shape, a, b, stage_b) in gemms {
        if let Some((a_texels, b_texels, _)) = texture_spans(op, shape, a, b, max_texels) {
            a_max = a_max.max(a_texels);
            if stage_b {
                b_max = b_max.max(b_texels);
            }
        }
    }
    let row_bytes = |texel_bytes: u64| TEXTURE_ROW_TEXELS * texel_bytes;
    let weight_texel = 4 * format.bytes_per_weight() as u64;
    // a texture exists only if something is staged into it
    let slot = |texels: u64, texel_bytes: u64| texture_rows(texels) * row_bytes(texel_bytes);
    // the attention's subgroup kernels: qkv and A, and for the backward G and R
    let shape = AttentionShape {
        b: 1,
        t,
        c,
        nh: cfg.n_head,
        layer: 0,
    };
    let hs = c / cfg.n_head;
    let (qkv, map) = crate::layers::attention::staged_texels(shape);
    let attention = if hs % 4 == 0 && hs <= 64 && c % 4 == 0 && qkv.max(map) <= max_texels {
        let forward = slot(qkv, 16) + slot(map, 16);
        // G for the scores; R for dQ, dK and dV, which an RA pass needs below the top block
        // only (it stops at layer 0's R)
        let ra = if cfg.n_layer > 1 { slot(map, 16) } else { 0 };
        forward + if backward { slot(qkv / 3, 16) + ra } else { 0 }
    } else {
        0
    };
    // LayerNorm's staged reads: x, and for the backward dout (at most T rows)
    let layernorm = crate::layers::layernorm::staged_texels(t, c, max_texels)
        .map_or(0, |texels| slot(texels, 16) * (1 + u64::from(backward)));
    let mlp_hidden = if mlp_tex {
        slot((block_rows * f / 4) as u64, 16)
    } else {
        0
    };
    slot(a_max, 16)
        + mlp_hidden
        + slot(b_max, weight_texel)
        + wte_slots * row_bytes(weight_texel)
        + attention
        + layernorm
}

/// What running one sequence needs on the adapter, computed before anything is allocated: the
/// buffers and textures `Engine::for_inference` and a one-sequence workspace create (buffers
/// rounded to 16 bytes, textures to whole rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// The weights, and what the kernels hold for the engine's lifetime (the tiled GEMMs'
    /// partial products on real GPUs).
    pub weights: u64,
    pub workspace: u64,
    /// The largest single buffer (an adapter limits each buffer, not only the total).
    pub largest_buffer: u64,
}

/// What of the adapter shapes the engine's buffers: the binding limit (wte's chunks) and, where
/// the GEMMs stage operands into textures, how many texels a scratch texture holds.
#[derive(Debug, Clone, Copy)]
pub struct AdapterLimits {
    pub max_binding: u64,
    pub scratch_texels: Option<u64>,
    /// The GEMMs are the tiled kernels, each instance holding a buffer of partial products.
    pub tiled_gemms: bool,
}

impl AdapterLimits {
    pub fn of(ctx: &GpuContext) -> Self {
        AdapterLimits {
            max_binding: ctx.max_binding_bytes(),
            scratch_texels: crate::layers::linear::texture_gemms_available(ctx)
                .then(|| crate::layers::max_scratch_texels(ctx)),
            tiled_gemms: crate::layers::linear::tiled_gemms_chosen(ctx),
        }
    }
}

impl MemoryEstimate {
    /// One sequence of `t` tokens whose loss reads `rows` rows, with or without the backward
    /// (which stops at layer 0's R, as `maps` runs it). Exact, except that ≥ 8 loss rows are counted as if their lm_head GEMMs staged operands
    /// into textures, which rows starting at an unaligned position do not.
    pub fn for_sequence(
        cfg: &GptConfig,
        t: usize,
        rows: usize,
        backward: bool,
        weights: WeightFormat,
        limits: AdapterLimits,
    ) -> Self {
        let max_binding = limits.max_binding;
        let weight_format = weights;
        let (c, f, nh, v, nl) = (
            cfg.n_embd,
            cfg.n_inner,
            cfg.n_head,
            cfg.vocab_size,
            cfg.n_layer,
        );
        // every buffer is rounded up to 16 bytes (`GpuContext::storage` and `upload`)
        let bytes = |n: usize| (n as u64).max(16).div_ceil(16) * 16;
        let b = |floats: usize| bytes(4 * floats);
        // the matrices in the weights' format (GpuWeights::upload)
        let m = |weights_: usize| bytes(weights.bytes_per_weight() * weights_);
        // wte in chunks of whole rows that fit one binding (as GpuWeights::upload splits it)
        let chunk_rows = vocab_chunk_rows(max_binding, c, weights);
        let chunk_lens: Vec<usize> = (0..v)
            .step_by(chunk_rows)
            .map(|r0| chunk_rows.min(v - r0))
            .collect();
        let chunk_sizes: Vec<usize> = chunk_lens.iter().map(|rows| rows * c).collect();
        let wte: Vec<u64> = chunk_sizes.iter().map(|&n| m(n)).collect();
        // the Conv1D matrices: buffers, or textures (not buffers) for `Engine::for_inference`
        // on a CPU adapter
        let textured = limits
            .scratch_texels
            .is_some_and(|max_texels| weights_fit_textures(c, f, max_texels));
        let matrices = [c * 3 * c, c * c, c * f, f * c].map(|n| {
            if textured {
                texture_bytes(n, weights)
            } else {
                m(n)
            }
        });
        let vectors = [b(c), b(c), b(3 * c), b(c), b(c), b(c), b(f), b(c)];
        let block: Vec<u64> = if textured {
            vectors.to_vec()
        } else {
            vectors.iter().chain(&matrices).copied().collect()
        };
        // every wte chunk fits a texture: the lm_head may run fused
        let chunks_fit = limits.scratch_texels.is_some_and(|max_texels| {
            wte_chunks_fit_textures(chunk_lens.iter().copied(), c, max_texels)
        });
        let wte_textured = limits.scratch_texels.is_some_and(|max_texels| {
            wte_in_textures(textured, chunk_lens.iter().copied(), c, max_texels)
        });
        // as `mlp_through_texture` decides for one prompt
        let mlp_tex = textured
            && limits
                .scratch_texels
                .is_some_and(|max_texels| mlp_chainable((t, c, f), backward, max_texels));
        let hidden = if mlp_tex { 1 } else { t * f };
        let wte_textures: u64 = if wte_textured {
            chunk_sizes.iter().map(|&n| texture_bytes(n, weights)).sum()
        } else {
            0
        };
        // the lm_head and the loss fused (`fused_lm_head`)
        let fused = chunks_fit && rows <= LM_HEAD_STAGED_ROWS && lm_head::fits(c, 0);
        // wte's buffers: an engine that keeps wte as textures makes them for the unfused
        // lm_head only (`GpuWeights::wte_buffers`)
        let wte: Vec<u64> = if wte_textured && fused {
            Vec::new()
        } else {
            wte
        };
        // the tiled GEMMs' partial products: one buffer per Linear (`Kernels::held_bytes`)
        let linear_instances = 1 + u64::from(weight_format != WeightFormat::F32);
        let gemm_partials = if limits.tiled_gemms {
            linear_instances * crate::layers::linear::SPLIT_K_PARTIAL_BYTES
        } else {
            0
        };
        let weights_bytes = wte.iter().sum::<u64>()
            + wte_textures
            + b(cfg.n_positions * c)
            + nl as u64 * (vectors.iter().sum::<u64>() + matrices.iter().sum::<u64>())
            + 2 * b(c)
            + gemm_partials;
        let nb = lm_head::blocks(&chunk_lens);
        let partial = |floats: usize, with_backward: bool| {
            b(if fused && (backward || !with_backward) {
                floats
            } else {
                1
            })
        };
        let att = b(nh * t * t);
        let mut sizes = vec![
            b(t),
            b(nl * nh),
            b(rows),
            b(4 * rows.max(1)),
            b(rows + 1),
            b(1),
            b(1),
            b(1),
            b(1),
            b(t * c),
            b(1), // ln_f_out, ln_f_rows
            b(rows * v),
            b(if fused { 1 } else { rows * v }),
            b(rows),
            b(rows * c), // logits, dlogits, loss_rows, dln_f_rows
            partial(rows * nb * 2, false),
            partial(rows * nb * c, true),
            partial(rows * chunk_sizes.len() * c, true), // block_stats, block_acc, chunk_terms
            b(t * c),
            b(t * c),
            b(t * c),
            b(hidden), // shared slots: ln_1_out, z, ln_2_out, fc_act
            2 * b(t),  // ln_f stats
        ];
        sizes.extend(std::iter::repeat_n(b(t * c), nl + 1)); // hidden
        sizes.extend(std::iter::repeat_n(2 * b(t), 2 * nl)); // ln_1, ln_2 stats
        sizes.extend(std::iter::repeat_n(b(t * 3 * c), nl)); // qkv
        sizes.extend(std::iter::repeat_n(att, nl)); // att
        sizes.extend(std::iter::repeat_n(b(t * c), nl)); // mid
        sizes.extend(std::iter::repeat_n(b(t * f), nl)); // fc_pre
        if backward {
            sizes.extend(std::iter::repeat_n(b(t * c), nl + 1)); // dhidden
                                                                 // d_fc_pre, d_ln, dmid, dz, dqkv
            sizes.extend([b(hidden), b(t * c), b(t * c), b(t * c), b(t * 3 * c)]);
            sizes.extend(std::iter::repeat_n(att, nl)); // ra
            sizes.extend([b(t * c), b(t * c)]); // d_ln_top, dz_top
        } else {
            sizes.extend([b(1), b(1), b(1), b(1), b(1), b(1), b(1)]);
        }
        let largest_buffer = sizes
            .iter()
            .chain(&wte)
            .chain(&block)
            .copied()
            .chain((gemm_partials > 0).then_some(crate::layers::linear::SPLIT_K_PARTIAL_BYTES))
            .max()
            .unwrap_or(0);
        let textures = limits.scratch_texels.map_or(0, |max_texels| {
            scratch_texture_bytes(
                cfg,
                (t, rows, backward),
                weight_format,
                (textured, wte_textured, mlp_tex),
                chunk_rows,
                max_texels,
            )
        });
        MemoryEstimate {
            weights: weights_bytes,
            workspace: sizes.iter().sum::<u64>() + textures,
            largest_buffer,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.workspace
    }

    /// Fails with one line when the adapter cannot hold it: a buffer over its limit, or (on a CPU
    /// adapter, whose "GPU" memory is host memory) more than the host has available.
    pub fn check(&self, ctx: &GpuContext) -> Result<()> {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        if self.largest_buffer > ctx.limits.max_buffer_size {
            return Err(crate::Error::Gpu(format!(
                "this pass needs a {:.0} MiB buffer; {} allows {:.0} MiB per buffer (shorten the prompt)",
                mib(self.largest_buffer),
                ctx.info.name,
                mib(ctx.limits.max_buffer_size)
            )));
        }
        if ctx.profile == crate::gpu::KernelProfile::CpuAdapter {
            if let Some(available) = crate::gpu::host_available_bytes() {
                if self.total() > available {
                    return Err(crate::Error::Gpu(format!(
                        "this pass needs about {:.0} MiB on {} (host memory), {:.0} MiB are available",
                        mib(self.total()),
                        ctx.info.name,
                        mib(available)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A model on the GPU, ready to run many prompts (and, with gradients, to be trained).
pub struct Engine {
    pub ctx: GpuContext,
    pub config: GptConfig,
    kernels: Kernels,
    weights: GpuWeights,
    /// How `weights` stores its matrices.
    format: WeightFormat,
    /// Every matrix is an f32 buffer, so the optimizer can update it (`Engine::new`).
    trainable: bool,
    /// dL/dθ for every parameter, allocated by the first pass that computes them.
    grads: Option<GpuWeights>,
    /// Workspaces by plan key, most recently used last; at most `workspace_limit`.
    workspaces: Vec<Workspace>,
    workspace_limit: usize,
}

/// One parameter tensor on the GPU with its gradient buffer (see [`Engine::parameters`]).
pub struct Parameter<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: &'a wgpu::Buffer,
    pub grad: &'a wgpu::Buffer,
}

/// The loss of a batch and, when asked, the logits of its target rows.
pub struct BatchOutput {
    pub loss: f64,
    /// (R, V): row r is `TrainBatch::target_rows()[r]`.
    pub logits: Option<Vec<f32>>,
    pub timings: PassTimings,
}

impl Engine {
    /// Compiles the kernels and uploads the weights as f32 buffers: an engine that runs every
    /// pass, training included.
    pub fn new(ctx: GpuContext, model: &Model) -> Result<Self> {
        Self::build(ctx, model, WeightFormat::F32, false)
    }

    /// An engine for forward and RA passes only, with the weight matrices stored as `format`
    /// (f16 halves their memory) and, on CPU adapters where the model's shapes allow, the Conv1D
    /// matrices kept as textures that the texture GEMMs read in place.
    pub fn for_inference(ctx: GpuContext, model: &Model, format: WeightFormat) -> Result<Self> {
        let c = &model.config;
        let textures = texture_gemms_available(&ctx)
            && weights_fit_textures(c.n_embd, c.n_inner, max_scratch_texels(&ctx));
        Self::build(ctx, model, format, textures)
    }

    fn build(ctx: GpuContext, model: &Model, format: WeightFormat, textures: bool) -> Result<Self> {
        let kernels = Kernels::new(&ctx, &model.config, format)?;
        let weights = GpuWeights::upload(&ctx, model, format, textures)?;
        model.weights.release_resident_pages();
        Ok(Engine {
            ctx,
            config: model.config.clone(),
            kernels,
            weights,
            format,
            trainable: format == WeightFormat::F32 && !textures,
            grads: None,
            workspaces: Vec::new(),
            workspace_limit: 1,
        })
    }

    /// How many batch shapes keep their buffers and plans between calls (default 1: one prompt
    /// shape at a time, the least memory). Training with a few padded lengths wants more.
    pub fn keep_workspaces(&mut self, limit: usize) {
        self.workspace_limit = limit.max(1);
        let excess = self.workspaces.len().saturating_sub(self.workspace_limit);
        self.workspaces.drain(..excess);
    }

    fn workspace(&self) -> &Workspace {
        self.workspaces.last().expect("prepared")
    }

    /// Builds (or reuses) the workspace for `key` and uploads the per-call inputs.
    /// `gather`: the loss rows and each row's slot among them (N), for `LossRows::Gather`.
    fn prepare(
        &mut self,
        key: PlanKey,
        ids: &[u32],
        loss: &LossPlan,
        options: &ForwardOptions,
        gather: Option<(&[u32], &[i32])>,
    ) {
        if key.weight_grads && self.grads.is_none() {
            self.grads = Some(GpuWeights::zeros_like(
                &self.ctx,
                &self.weights,
                &self.config,
            ));
        }
        if let Some(i) = self.workspaces.iter().position(|ws| ws.key == key) {
            let ws = self.workspaces.remove(i);
            self.workspaces.push(ws);
        } else {
            // Free the least recently used buffers before allocating new ones.
            let excess = (self.workspaces.len() + 1).saturating_sub(self.workspace_limit);
            self.workspaces.drain(..excess);
            let ws = Workspace::new(
                &self.ctx,
                &self.kernels,
                &self.weights,
                self.grads.as_ref(),
                &self.config,
                key,
            );
            self.workspaces.push(ws);
        }
        let ws = self.workspace();
        let q = &self.ctx.queue;
        q.write_buffer(&ws.ids, 0, bytemuck::cast_slice(ids));
        q.write_buffer(
            &ws.head_scale,
            0,
            bytemuck::cast_slice(&options.head_scale(&self.config)),
        );
        q.write_buffer(&ws.lse_scale, 0, bytemuck::cast_slice(&loss.lse_scale));
        let (terms, term_start) = gpu_terms(&loss.terms, loss.rows.len());
        if !terms.is_empty() {
            q.write_buffer(&ws.terms, 0, bytemuck::cast_slice(&terms));
        }
        q.write_buffer(&ws.term_start, 0, bytemuck::cast_slice(&term_start));
        if let Some((row_ids, row_slot)) = gather {
            q.write_buffer(&ws.row_ids, 0, bytemuck::cast_slice(row_ids));
            q.write_buffer(&ws.row_slot, 0, bytemuck::cast_slice(row_slot));
        }
        if ws.key.weight_grads {
            let (start, rows) = token_index(ids, self.config.vocab_size);
            q.write_buffer(&ws.token_start, 0, bytemuck::cast_slice(&start));
            q.write_buffer(&ws.token_rows, 0, bytemuck::cast_slice(&rows));
        }
        if let Some(p) = &options.patch {
            let per_layer = self.config.n_head * ids.len() * ids.len();
            for (buf, maps) in ws.patch.iter().zip(p.maps.chunks(per_layer)) {
                q.write_buffer(buf, 0, bytemuck::cast_slice(maps));
            }
        }
    }

    /// Records the prepared plan (and `after`, e.g. an optimizer step) into one command buffer,
    /// submits it and waits. Returns (record time, compute time) in ms.
    fn execute(&self, label: &str, after: Option<&Plan>) -> Result<(Instant, Instant)> {
        let ws = self.workspace();
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        ws.plan.record(&mut enc, label);
        if let Some(after) = after {
            after.record(&mut enc, label);
        }
        let recorded = Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        self.ctx.check(label)?;
        Ok((recorded, Instant::now()))
    }

    /// Runs the pass and reads back what `readback` asks for.
    pub fn run(
        &mut self,
        seq: &Sequence,
        options: &ForwardOptions,
        readback: Readback,
    ) -> Result<PassOutput> {
        crate::pass::validate(&self.config, seq, options)?;
        let t0 = Instant::now();
        let key = PlanKey {
            b: 1,
            t: seq.len(),
            rows: LossRows::Range(seq.loss.rows.clone()),
            terms_capacity: seq.loss.terms.len(),
            patch: options.patch.as_ref().map(|p| p.eta),
            backward: readback.backward,
            weight_grads: false,
            input_grad: readback.backward && readback.hidden_grads,
        };
        self.prepare(key, &seq.ids, &seq.loss, options, None);
        self.ctx.check("preparing the pass")?;
        let (t1, t2) = self.execute("revattn forward + backward", None)?;
        let ws = self.workspace();

        let (t, r, v) = (seq.len(), seq.loss.rows.len(), self.config.vocab_size);
        let (nh, c) = (self.config.n_head, self.config.n_embd);
        let want_att = readback.attention;
        let want_ra = readback.reversed_attention && readback.backward;
        let want_dh = readback.hidden_grads && readback.backward;
        // one group per returned tensor: every layer's maps come back as one vector
        fn maps(bufs: &[wgpu::Buffer], n: usize) -> Vec<(&wgpu::Buffer, usize)> {
            bufs.iter().map(|b| (b, n)).collect()
        }
        let (att, ra) = (maps(&ws.att, nh * t * t), maps(&ws.ra, nh * t * t));
        let dh = maps(&ws.dhidden, t * c);
        let scalars = [(&ws.loss_rows, r), (&ws.logits, r * v)];
        let mut groups: Vec<&[(&wgpu::Buffer, usize)]> = vec![&scalars[..1], &scalars[1..]];
        for (want, group) in [(want_att, &att), (want_ra, &ra), (want_dh, &dh)] {
            if want {
                groups.push(group);
            }
        }
        let mut parts = self.ctx.read_f32_groups(&groups)?.into_iter();
        let loss_rows = parts.next().expect("loss rows");
        let logits = parts.next().expect("logits");
        let attention = want_att.then(|| parts.next().expect("attention"));
        let reversed_attention = want_ra.then(|| parts.next().expect("reversed attention"));
        let hidden_grads = want_dh.then(|| parts.next().expect("hidden gradients"));
        let t3 = Instant::now();
        Ok(PassOutput {
            loss: loss_rows.iter().map(|&x| x as f64).sum(),
            logits,
            attention,
            reversed_attention,
            hidden_grads,
            timings: timings(t0, t1, t2, t3),
        })
    }

    /// A batch of B right-padded sequences: the loss (mean NLL over the positions with a target),
    /// and with `gradients` the gradient of every parameter into the engine's gradient buffers.
    /// `after` is recorded into the same command buffer (the optimizer step); `read_logits` brings
    /// back the logits of the target rows (only there are they computed).
    pub fn run_batch(
        &mut self,
        batch: &TrainBatch,
        gradients: bool,
        read_logits: bool,
        after: Option<&Plan>,
    ) -> Result<BatchOutput> {
        self.validate_batch(batch, gradients)?;
        let t0 = Instant::now();
        // The lm_head and the loss run on the target rows only, in slots rounded up to 64 so
        // that batches of similar size share a plan; empty slots carry no loss.
        let target_rows = batch.target_rows();
        let capacity = target_rows.len().max(1).div_ceil(64) * 64;
        let mut loss = batch.loss_plan();
        loss.rows = 0..capacity;
        loss.lse_scale.resize(capacity, 0.0);
        let mut row_ids = target_rows.clone();
        row_ids.resize(capacity, 0);
        let mut row_slot = vec![-1i32; batch.b * batch.t];
        for (slot, &row) in target_rows.iter().enumerate() {
            row_slot[row as usize] = slot as i32;
        }
        let key = PlanKey {
            b: batch.b,
            t: batch.t,
            rows: LossRows::Gather { capacity },
            terms_capacity: capacity, // one target per row at most
            patch: None,
            backward: gradients,
            weight_grads: gradients,
            input_grad: gradients,
        };
        let gather = Some((&row_ids[..], &row_slot[..]));
        self.prepare(key, &batch.ids, &loss, &ForwardOptions::default(), gather);
        self.ctx.check("preparing the batch")?;
        let label = if gradients {
            "revattn training step"
        } else {
            "revattn batched forward"
        };
        let (t1, t2) = self.execute(label, after)?;
        let ws = self.workspace();
        let r = target_rows.len();
        let mut sources = vec![(&ws.loss_rows, r)];
        if read_logits {
            sources.push((&ws.logits, r * self.config.vocab_size));
        }
        let mut parts = self.ctx.read_f32(&sources)?.into_iter();
        let loss = parts
            .next()
            .expect("loss rows")
            .iter()
            .map(|&x| x as f64)
            .sum();
        let logits = parts.next();
        Ok(BatchOutput {
            loss,
            logits,
            timings: timings(t0, t1, t2, Instant::now()),
        })
    }

    /// Times every step of the plan that ran last (`run` or `run_batch`) on its own (one submit
    /// each) and sums the times per kernel label (texture stagings as "stage_texture"), slowest
    /// first: where a pass spends its time. Returns (label, steps, total ms). Each step's time
    /// is less the round trip of an empty submit (measured here), which a pass, one submit for
    /// all its steps, pays once: so the steps' sum is what they cost inside a pass.
    pub fn profile_last(&self) -> Result<Vec<(String, usize, f64)>> {
        let Some(ws) = self.workspaces.last() else {
            return Err(crate::Error::Input(
                "profile_last: nothing has run yet".into(),
            ));
        };
        let submit_and_wait = |record: &dyn Fn(&mut wgpu::CommandEncoder)| -> Result<f64> {
            let start = Instant::now();
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            record(&mut enc);
            self.ctx.queue.submit([enc.finish()]);
            self.ctx.wait()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        let mut empty = (0..9)
            .map(|_| submit_and_wait(&|_| {}))
            .collect::<Result<Vec<f64>>>()?;
        empty.sort_by(f64::total_cmp);
        let round_trip = empty[empty.len() / 2];
        let mut totals: Vec<(String, usize, f64)> = Vec::new();
        for (i, step) in ws.plan.steps.iter().enumerate() {
            let ms = (submit_and_wait(&|enc| ws.plan.record_step(i, enc))? - round_trip).max(0.0);
            let label = step.label();
            match totals.iter_mut().find(|(l, _, _)| l == label) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += ms;
                }
                None => totals.push((label.to_string(), 1, ms)),
            }
        }
        self.ctx.check("profiling")?;
        totals.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(totals)
    }

    /// Bytes of every GPU buffer the engine holds: weights, gradients and optimizer-free
    /// training buffers, and the cached workspaces (activations, maps).
    pub fn gpu_bytes(&self) -> u64 {
        let weights = self.weights.bytes() + self.kernels.held_bytes();
        let grads: u64 = self.grads.as_ref().map_or(0, GpuWeights::bytes);
        let workspaces: u64 = self.workspaces.iter().map(|ws| ws.bytes).sum();
        weights + grads + workspaces
    }

    fn validate_batch(&self, batch: &TrainBatch, gradients: bool) -> Result<()> {
        let cfg = &self.config;
        let bad = |msg: String| Err(crate::Error::Input(msg));
        if batch.b == 0 || batch.t == 0 {
            return bad("the batch is empty".into());
        }
        if gradients && !self.trainable {
            return bad(format!(
                "training needs f32 weights in buffers (Engine::new); this inference engine \
                 stores them as {}{}",
                self.format.as_str(),
                if self.format == WeightFormat::F32 {
                    " textures"
                } else {
                    ""
                }
            ));
        }
        if batch.ids.len() != batch.b * batch.t || batch.targets.len() != batch.b * batch.t {
            return bad(format!(
                "a batch of {}×{} needs {} ids and targets, got {} and {}",
                batch.b,
                batch.t,
                batch.b * batch.t,
                batch.ids.len(),
                batch.targets.len()
            ));
        }
        if batch.t > cfg.n_positions {
            return bad(format!(
                "sequences of {} tokens exceed the model's n_positions {}",
                batch.t, cfg.n_positions
            ));
        }
        if batch.b * batch.t > 65_535 {
            return bad(format!("B·T = {} rows exceed 65535", batch.b * batch.t));
        }
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return bad(format!(
                "token id {id} is outside the vocabulary of {}",
                cfg.vocab_size
            ));
        }
        if let Some(&id) = batch
            .targets
            .iter()
            .find(|&&id| id >= cfg.vocab_size as i32)
        {
            return bad(format!(
                "target id {id} is outside the vocabulary of {}",
                cfg.vocab_size
            ));
        }
        if gradients && self.weights.wte_spans.len() > 1 {
            return bad(format!(
                "training needs wte ({} × {}) in one storage binding; this adapter allows {} bytes",
                cfg.vocab_size,
                cfg.n_embd,
                self.ctx.max_binding_bytes()
            ));
        }
        Ok(())
    }

    /// Every parameter with its gradient buffer, in `Weights::named` order (for the optimizer).
    /// Allocates the gradient buffers if no pass has yet.
    pub fn parameters(&mut self) -> Vec<Parameter<'_>> {
        assert!(
            self.trainable,
            "training needs the weights stored as f32 buffers (Engine::new)"
        );
        if self.grads.is_none() {
            self.grads = Some(GpuWeights::zeros_like(
                &self.ctx,
                &self.weights,
                &self.config,
            ));
        }
        let grads = self.grads.as_ref().expect("just allocated");
        // wte as one buffer: an optimizer over a chunked wte would miss rows.
        assert_eq!(
            self.weights.wte_spans.len(),
            1,
            "training needs wte in one binding"
        );
        self.config
            .parameter_shapes()
            .into_iter()
            .zip(self.weights.buffers().into_iter().zip(grads.buffers()))
            .map(|((name, shape), (value, grad))| Parameter {
                name,
                shape,
                value,
                grad,
            })
            .collect()
    }

    /// The current weights, read back from the GPU (a checkpoint after training).
    pub fn download_weights(&self) -> Result<Weights> {
        let tensors = self.read_tensors(&self.weights)?;
        Weights::from_named(&self.config, tensors)
    }

    /// The gradients of the last pass with gradients, in `Weights::named` order.
    pub fn download_gradients(&self) -> Result<Vec<Tensor>> {
        let grads = self.grads.as_ref().ok_or_else(|| {
            crate::Error::Input("no gradients: no pass with gradients has run".into())
        })?;
        self.read_tensors(grads)
    }

    fn read_tensors(&self, w: &GpuWeights) -> Result<Vec<Tensor>> {
        let shapes = self.config.parameter_shapes();
        let c = self.config.n_embd;
        let mut sources: Vec<(&wgpu::Buffer, usize)> = w
            .wte_buffers(&self.ctx)
            .iter()
            .map(|ch| (&ch.buffer, ch.rows * c))
            .collect();
        let n_chunks = sources.len();
        for ((_, shape), buf) in shapes.iter().zip(w.buffers()).skip(1) {
            sources.push((buf, shape.iter().product()));
        }
        let mut parts = self.ctx.read_f32(&sources)?.into_iter();
        let wte: Vec<f32> = concat_parts(parts.by_ref().take(n_chunks));
        let mut out = vec![Tensor::from_vec(shapes[0].1.clone(), wte)];
        for ((_, shape), data) in shapes.iter().skip(1).zip(parts) {
            out.push(Tensor::from_vec(shape.clone(), data));
        }
        Ok(out)
    }
}

fn timings(t0: Instant, t1: Instant, t2: Instant, t3: Instant) -> PassTimings {
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    PassTimings {
        prepare_ms: ms(t0, t1),
        compute_ms: ms(t1, t2),
        readback_ms: ms(t2, t3),
    }
}

impl Backend for Engine {
    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn run(
        &mut self,
        seq: &Sequence,
        options: &ForwardOptions,
        readback: Readback,
    ) -> Result<PassOutput> {
        Engine::run(self, seq, options, readback)
    }
}
