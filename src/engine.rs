//! The scheduler: uploads a model once, allocates the activations once per sequence shape, and
//! records the whole forward + backward as one plan of dispatches (one encoder, one compute pass,
//! one submit). Only the tensors the caller asks for are read back.
//!
//! prompt → `loss::Sequence` → embedding → L × (LN1 → c_attn → attention → c_proj + residual →
//! LN2 → c_fc → gelu → c_proj + residual) → ln_f → lm_head at the loss rows → loss →
//! the same layers backward → R per layer and head.

use std::ops::Range;
use std::time::Instant;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::layers::attention::{Attention, AttentionBuffers, AttentionShape};
use crate::layers::cross_entropy::{CrossEntropy, GpuTerm};
use crate::layers::embedding::{Embedding, VocabChunk};
use crate::layers::gelu::Gelu;
use crate::layers::layernorm::{LayerNorm, LayerNormSaved};
use crate::layers::linear::{Gemm, Linear, Operand};
use crate::layers::{Plan, PlanBuilder};
use crate::loss::Sequence;
use crate::model::{GptConfig, Model, Tensor};
use crate::pass::{Backend, ForwardOptions, PassOutput, PassTimings, Readback};

/// Every kernel, compiled once per engine.
pub struct Kernels {
    pub embedding: Embedding,
    pub layernorm: LayerNorm,
    pub linear: Linear,
    pub gelu: Gelu,
    pub attention: Attention,
    pub cross_entropy: CrossEntropy,
}

impl Kernels {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let k = Kernels {
            embedding: Embedding::new(ctx),
            layernorm: LayerNorm::new(ctx),
            linear: Linear::new(ctx),
            gelu: Gelu::new(ctx),
            attention: Attention::new(ctx),
            cross_entropy: CrossEntropy::new(ctx),
        };
        ctx.check("compiling the WGSL kernels")?;
        Ok(k)
    }
}

struct GpuLayer {
    ln_1_w: wgpu::Buffer,      // (C)
    ln_1_b: wgpu::Buffer,      // (C)
    attn_w: wgpu::Buffer,      // (C, 3C)
    attn_b: wgpu::Buffer,      // (3C)
    attn_proj_w: wgpu::Buffer, // (C, C)
    attn_proj_b: wgpu::Buffer, // (C)
    ln_2_w: wgpu::Buffer,      // (C)
    ln_2_b: wgpu::Buffer,      // (C)
    fc_w: wgpu::Buffer,        // (C, F)
    fc_b: wgpu::Buffer,        // (F)
    fc_proj_w: wgpu::Buffer,   // (F, C)
    fc_proj_b: wgpu::Buffer,   // (C)
}

struct GpuWeights {
    wte: Vec<VocabChunk>, // (V, C) in row chunks that each fit one binding
    wpe: wgpu::Buffer,    // (P, C)
    layers: Vec<GpuLayer>,
    ln_f_w: wgpu::Buffer, // (C)
    ln_f_b: wgpu::Buffer, // (C)
}

impl GpuWeights {
    fn upload(ctx: &GpuContext, model: &Model) -> Result<Self> {
        let w = &model.weights;
        let up = |name: &str, t: &Tensor| ctx.upload(name, t.data());
        let c = model.config.n_embd;
        // Rows per chunk: as many as one binding holds, a multiple of 64 rows.
        let max_rows = ((ctx.max_binding_bytes() / (4 * c as u64)) as usize / 64 * 64).max(64);
        let v = model.config.vocab_size;
        let wte = (0..v)
            .step_by(max_rows)
            .map(|row0| {
                let rows = max_rows.min(v - row0);
                VocabChunk {
                    buffer: ctx.upload("wte chunk", &w.wte.data()[row0 * c..(row0 + rows) * c]),
                    row0,
                    rows,
                }
            })
            .collect();
        let layers = w
            .layers
            .iter()
            .map(|l| GpuLayer {
                ln_1_w: up("ln_1.weight", &l.ln_1_w),
                ln_1_b: up("ln_1.bias", &l.ln_1_b),
                attn_w: up("attn.c_attn.weight", &l.attn_w),
                attn_b: up("attn.c_attn.bias", &l.attn_b),
                attn_proj_w: up("attn.c_proj.weight", &l.attn_proj_w),
                attn_proj_b: up("attn.c_proj.bias", &l.attn_proj_b),
                ln_2_w: up("ln_2.weight", &l.ln_2_w),
                ln_2_b: up("ln_2.bias", &l.ln_2_b),
                fc_w: up("mlp.c_fc.weight", &l.fc_w),
                fc_b: up("mlp.c_fc.bias", &l.fc_b),
                fc_proj_w: up("mlp.c_proj.weight", &l.fc_proj_w),
                fc_proj_b: up("mlp.c_proj.bias", &l.fc_proj_b),
            })
            .collect();
        let weights = GpuWeights {
            wte,
            wpe: up("wpe", &w.wpe),
            layers,
            ln_f_w: up("ln_f.weight", &w.ln_f_w),
            ln_f_b: up("ln_f.bias", &w.ln_f_b),
        };
        ctx.check("uploading the weights")?;
        Ok(weights)
    }
}

/// What a plan depends on; a new key means new buffers and a new plan.
#[derive(Debug, Clone, PartialEq)]
struct PlanKey {
    t: usize,
    rows: Range<usize>,
    n_terms: usize,
    /// η when patching (η is baked into the plan's parameters).
    patch: Option<f32>,
    backward: bool,
}

/// LayerNorm statistics of one LayerNorm instance.
struct LnStats {
    mean: wgpu::Buffer, // (T)
    rstd: wgpu::Buffer, // (T)
}

/// Buffers for one (model, plan key), allocated once and reused by every call with that key.
/// Only what the activation backward reads is kept per layer; the rest is shared scratch.
struct Workspace {
    key: PlanKey,
    // per-call inputs
    ids: wgpu::Buffer,        // (T) u32
    head_scale: wgpu::Buffer, // (L, NH)
    lse_scale: wgpu::Buffer,  // (R)
    terms: wgpu::Buffer,      // (n_terms) GpuTerm
    patch: Vec<wgpu::Buffer>, // L × (NH, T, T), only when patching
    // forward, kept for the backward
    hidden: Vec<wgpu::Buffer>, // L+1 × (T, C): input of block l; hidden[L] is ln_f's input
    ln_1: Vec<LnStats>,        // L
    qkv: Vec<wgpu::Buffer>,    // L × (T, 3C)
    att: Vec<wgpu::Buffer>,    // L × (NH, T, T)
    mid: Vec<wgpu::Buffer>,    // L × (T, C) residual stream after attention
    ln_2: Vec<LnStats>,        // L
    fc_pre: Vec<wgpu::Buffer>, // L × (T, F) c_fc output, gelu's input
    ln_f: LnStats,
    // forward scratch (only weight gradients would need these per layer)
    ln_out: wgpu::Buffer, // (T, C)
    z: wgpu::Buffer,      // (T, C) concatenated head outputs
    fc_act: wgpu::Buffer, // (T, F)
    // loss
    logits: wgpu::Buffer,    // (R, V)
    dlogits: wgpu::Buffer,   // (R, V)
    loss_rows: wgpu::Buffer, // (R)
    // backward
    dln_f_rows: wgpu::Buffer,   // (R, C)
    dhidden: Vec<wgpu::Buffer>, // L+1 × (T, C): dL/dhidden[l]
    d_fc_act: wgpu::Buffer,     // (T, F)
    d_fc_pre: wgpu::Buffer,     // (T, F)
    d_ln: wgpu::Buffer,         // (T, C) gradient at a LayerNorm's output
    dmid: wgpu::Buffer,         // (T, C)
    dz: wgpu::Buffer,           // (T, C) G, the gradient at c_proj's input
    dqkv: wgpu::Buffer,         // (T, 3C)
    ra: Vec<wgpu::Buffer>,      // L × (NH, T, T)
    plan: Plan,
}

impl Workspace {
    fn new(ctx: &GpuContext, k: &Kernels, w: &GpuWeights, cfg: &GptConfig, key: PlanKey) -> Self {
        let (t, c, f, nh, v) = (key.t, cfg.n_embd, cfg.n_inner, cfg.n_head, cfg.vocab_size);
        let (nl, r) = (cfg.n_layer, key.rows.len());
        let buf = |label: &str, n: usize| ctx.storage(label, 4 * n as u64);
        let per_layer = |label: &str, n: usize| (0..nl).map(|_| buf(label, n)).collect::<Vec<_>>();
        let stats = |label: &str| LnStats {
            mean: buf(label, t),
            rstd: buf(label, t),
        };
        let ws_inputs = (
            buf("ids", t),
            buf("head_scale", nl * nh),
            buf("lse_scale", r),
            buf("terms", 4 * key.n_terms.max(1)),
            if key.patch.is_some() {
                per_layer("patch", nh * t * t)
            } else {
                Vec::new()
            },
        );
        let mut ws = Workspace {
            ids: ws_inputs.0,
            head_scale: ws_inputs.1,
            lse_scale: ws_inputs.2,
            terms: ws_inputs.3,
            patch: ws_inputs.4,
            hidden: (0..=nl).map(|_| buf("hidden", t * c)).collect(),
            ln_1: (0..nl).map(|_| stats("ln_1 stats")).collect(),
            qkv: per_layer("qkv", t * 3 * c),
            att: per_layer("att", nh * t * t),
            mid: per_layer("mid", t * c),
            ln_2: (0..nl).map(|_| stats("ln_2 stats")).collect(),
            fc_pre: per_layer("fc_pre", t * f),
            ln_f: stats("ln_f stats"),
            ln_out: buf("ln_out", t * c),
            z: buf("z", t * c),
            fc_act: buf("fc_act", t * f),
            logits: buf("logits", r * v),
            dlogits: buf("dlogits", r * v),
            loss_rows: buf("loss_rows", r),
            dln_f_rows: buf("dln_f_rows", r * c),
            dhidden: if key.backward {
                (0..=nl).map(|_| buf("dhidden", t * c)).collect()
            } else {
                Vec::new()
            },
            d_fc_act: buf("d_fc_act", if key.backward { t * f } else { 1 }),
            d_fc_pre: buf("d_fc_pre", if key.backward { t * f } else { 1 }),
            d_ln: buf("d_ln", t * c),
            dmid: buf("dmid", t * c),
            dz: buf("dz", t * c),
            dqkv: buf("dqkv", t * 3 * c),
            ra: if key.backward {
                per_layer("ra", nh * t * t)
            } else {
                Vec::new()
            },
            plan: PlanBuilder::new(ctx).finish(),
            key,
        };
        ws.plan = ws.build_plan(ctx, k, w, cfg);
        ws
    }

    fn build_plan(&self, ctx: &GpuContext, k: &Kernels, w: &GpuWeights, cfg: &GptConfig) -> Plan {
        let key = &self.key;
        let (t, c, f, nh, v) = (key.t, cfg.n_embd, cfg.n_inner, cfg.n_head, cfg.vocab_size);
        let r = key.rows.len();
        let eps = cfg.layer_norm_epsilon as f32;
        let mut plan = PlanBuilder::new(ctx);
        let p = &mut plan;

        // ---- forward ----
        k.embedding
            .forward(p, &self.hidden[0], &self.ids, &w.wte, &w.wpe, (t, c));
        for (l, lw) in w.layers.iter().enumerate() {
            let (h_in, h_out) = (&self.hidden[l], &self.hidden[l + 1]);
            let (ln1, ln2) = (&self.ln_1[l], &self.ln_2[l]);
            let ln = &k.layernorm;
            ln.forward(
                p,
                &self.ln_out,
                &ln1.mean,
                &ln1.rstd,
                h_in,
                &lw.ln_1_w,
                &lw.ln_1_b,
                (t, c),
                eps,
            );
            k.linear.forward(
                p,
                &self.qkv[l],
                &self.ln_out,
                &lw.attn_w,
                Some(&lw.attn_b),
                None,
                (t, c, 3 * c),
            );
            let ab = self.attention_buffers(l);
            k.attention
                .forward(p, &self.z, &ab, AttentionShape { t, c, nh, layer: l });
            k.linear.forward(
                p,
                &self.mid[l],
                &self.z,
                &lw.attn_proj_w,
                Some(&lw.attn_proj_b),
                Some(h_in),
                (t, c, c),
            );
            ln.forward(
                p,
                &self.ln_out,
                &ln2.mean,
                &ln2.rstd,
                &self.mid[l],
                &lw.ln_2_w,
                &lw.ln_2_b,
                (t, c),
                eps,
            );
            k.linear.forward(
                p,
                &self.fc_pre[l],
                &self.ln_out,
                &lw.fc_w,
                Some(&lw.fc_b),
                None,
                (t, c, f),
            );
            k.gelu.forward(p, &self.fc_act, &self.fc_pre[l], t * f);
            k.linear.forward(
                p,
                h_out,
                &self.fc_act,
                &lw.fc_proj_w,
                Some(&lw.fc_proj_b),
                Some(&self.mid[l]),
                (t, f, c),
            );
        }
        let h_last = &self.hidden[cfg.n_layer];
        k.layernorm.forward(
            p,
            &self.ln_out,
            &self.ln_f.mean,
            &self.ln_f.rstd,
            h_last,
            &w.ln_f_w,
            &w.ln_f_b,
            (t, c),
            eps,
        );
        // Tied lm_head at the loss rows only: logits (R, V) = ln_f(h)[rows] · wteᵀ, one GEMM per chunk.
        for chunk in &w.wte {
            k.linear.gemm(
                p,
                "lm_head_forward",
                &Gemm {
                    m: r,
                    n: chunk.rows,
                    k: c,
                    a: Operand::new(&self.ln_out, c).at(key.rows.start * c),
                    b: Operand::new(&chunk.buffer, c),
                    transpose_b: true,
                    c: Operand::new(&self.logits, v).at(chunk.row0),
                    bias: None,
                    residual: None,
                    accumulate: false,
                },
            );
        }
        k.cross_entropy.forward_backward(
            p,
            &self.loss_rows,
            &self.dlogits,
            &self.logits,
            &self.lse_scale,
            &self.terms,
            (r, v, key.n_terms),
        );
        if !key.backward {
            return plan.finish();
        }

        // ---- backward ----
        // dln_f_rows (R, C) = dlogits · wte, differentiating logits = x·wteᵀ; summed over chunks.
        for (i, chunk) in w.wte.iter().enumerate() {
            k.linear.gemm(
                p,
                "lm_head_backward",
                &Gemm {
                    m: r,
                    n: c,
                    k: chunk.rows,
                    a: Operand::new(&self.dlogits, v).at(chunk.row0),
                    b: Operand::new(&chunk.buffer, c),
                    transpose_b: false,
                    c: Operand::new(&self.dln_f_rows, c),
                    bias: None,
                    residual: None,
                    accumulate: i > 0,
                },
            );
        }
        let saved = LayerNormSaved {
            x: h_last,
            mean: &self.ln_f.mean,
            rstd: &self.ln_f.rstd,
            w: &w.ln_f_w,
        };
        k.layernorm.backward(
            p,
            &self.dhidden[cfg.n_layer],
            None,
            &self.dln_f_rows,
            key.rows.clone(),
            &saved,
            (t, c),
        );
        for (l, lw) in w.layers.iter().enumerate().rev() {
            let dh_out = &self.dhidden[l + 1];
            // MLP: h_out = mid + gelu(LN2(mid)·W_fc + b_fc)·W_proj + b_proj
            k.linear
                .backward_input(p, &self.d_fc_act, dh_out, &lw.fc_proj_w, (t, f, c));
            k.gelu
                .backward(p, &self.d_fc_pre, &self.d_fc_act, &self.fc_pre[l], t * f);
            k.linear
                .backward_input(p, &self.d_ln, &self.d_fc_pre, &lw.fc_w, (t, c, f));
            let saved = LayerNormSaved {
                x: &self.mid[l],
                mean: &self.ln_2[l].mean,
                rstd: &self.ln_2[l].rstd,
                w: &lw.ln_2_w,
            };
            k.layernorm.backward(
                p,
                &self.dmid,
                Some(dh_out),
                &self.d_ln,
                0..t,
                &saved,
                (t, c),
            );
            // Attention: mid = h_in + Z·W_o + b_o;  G = dmid·W_oᵀ
            k.linear
                .backward_input(p, &self.dz, &self.dmid, &lw.attn_proj_w, (t, c, c));
            let ab = self.attention_buffers(l);
            k.attention.backward(
                p,
                &self.ra[l],
                &self.dqkv,
                &self.dz,
                &ab,
                AttentionShape { t, c, nh, layer: l },
            );
            k.linear
                .backward_input(p, &self.d_ln, &self.dqkv, &lw.attn_w, (t, c, 3 * c));
            let saved = LayerNormSaved {
                x: &self.hidden[l],
                mean: &self.ln_1[l].mean,
                rstd: &self.ln_1[l].rstd,
                w: &lw.ln_1_w,
            };
            k.layernorm.backward(
                p,
                &self.dhidden[l],
                Some(&self.dmid),
                &self.d_ln,
                0..t,
                &saved,
                (t, c),
            );
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

/// A model on the GPU, ready to run many prompts.
pub struct Engine {
    pub ctx: GpuContext,
    pub config: GptConfig,
    kernels: Kernels,
    weights: GpuWeights,
    workspace: Option<Workspace>,
}

impl Engine {
    /// Compiles the kernels and uploads the weights.
    pub fn new(ctx: GpuContext, model: &Model) -> Result<Self> {
        let kernels = Kernels::new(&ctx)?;
        let weights = GpuWeights::upload(&ctx, model)?;
        model.weights.release_resident_pages();
        Ok(Engine {
            ctx,
            config: model.config.clone(),
            kernels,
            weights,
            workspace: None,
        })
    }

    fn prepare(&mut self, seq: &Sequence, options: &ForwardOptions, backward: bool) {
        let key = PlanKey {
            t: seq.len(),
            rows: seq.loss.rows.clone(),
            n_terms: seq.loss.terms.len(),
            patch: options.patch.as_ref().map(|p| p.eta),
            backward,
        };
        if self.workspace.as_ref().is_none_or(|ws| ws.key != key) {
            self.workspace = None; // free the old buffers before allocating new ones
            let ws = Workspace::new(&self.ctx, &self.kernels, &self.weights, &self.config, key);
            self.workspace = Some(ws);
        }
        let ws = self.workspace.as_ref().expect("workspace was just built");
        let q = &self.ctx.queue;
        q.write_buffer(&ws.ids, 0, bytemuck::cast_slice(&seq.ids));
        q.write_buffer(
            &ws.head_scale,
            0,
            bytemuck::cast_slice(&options.head_scale(&self.config)),
        );
        q.write_buffer(&ws.lse_scale, 0, bytemuck::cast_slice(&seq.loss.lse_scale));
        let terms: Vec<GpuTerm> = seq.loss.terms.iter().map(GpuTerm::from).collect();
        if !terms.is_empty() {
            q.write_buffer(&ws.terms, 0, bytemuck::cast_slice(&terms));
        }
        if let Some(p) = &options.patch {
            let per_layer = self.config.n_head * seq.len() * seq.len();
            for (buf, maps) in ws.patch.iter().zip(p.maps.chunks(per_layer)) {
                q.write_buffer(buf, 0, bytemuck::cast_slice(maps));
            }
        }
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
        self.prepare(seq, options, readback.backward);
        self.ctx.check("preparing the pass")?;
        let ws = self.workspace.as_ref().expect("prepared");
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("revattn forward + backward"),
                timestamp_writes: None,
            });
            ws.plan.record(&mut pass);
        }
        let t1 = Instant::now();
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        self.ctx.check("running the pass")?;
        let t2 = Instant::now();

        let (t, r, v) = (seq.len(), seq.loss.rows.len(), self.config.vocab_size);
        let (nl, nh, c) = (self.config.n_layer, self.config.n_head, self.config.n_embd);
        let mut sources: Vec<(&wgpu::Buffer, usize)> =
            vec![(&ws.loss_rows, r), (&ws.logits, r * v)];
        let want_att = readback.attention;
        let want_ra = readback.reversed_attention && readback.backward;
        let want_dh = readback.hidden_grads && readback.backward;
        if want_att {
            sources.extend(ws.att.iter().map(|b| (b, nh * t * t)));
        }
        if want_ra {
            sources.extend(ws.ra.iter().map(|b| (b, nh * t * t)));
        }
        if want_dh {
            sources.extend(ws.dhidden.iter().map(|b| (b, t * c)));
        }
        let mut parts = self.ctx.read_f32(&sources)?.into_iter();
        let loss_rows = parts.next().expect("loss rows");
        let logits = parts.next().expect("logits");
        let mut concat = |n: usize| parts.by_ref().take(n).flatten().collect::<Vec<f32>>();
        let attention = want_att.then(|| concat(nl));
        let reversed_attention = want_ra.then(|| concat(nl));
        let hidden_grads = want_dh.then(|| concat(nl + 1));
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(PassOutput {
            loss: loss_rows.iter().map(|&x| x as f64).sum(),
            logits,
            attention,
            reversed_attention,
            hidden_grads,
            timings: PassTimings {
                prepare_ms: ms(t0, t1),
                compute_ms: ms(t1, t2),
                readback_ms: ms(t2, t3),
            },
        })
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
