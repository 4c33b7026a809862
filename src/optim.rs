//! AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW`) with global gradient-norm clipping
//! (`torch.nn.utils.clip_grad_norm_`). The settings live here; the GPU step is
//! `shaders/adamw.wgsl` (driven by `train.rs`) and the float64 reference is
//! `reference::adamw_step`. For parameter p with gradient g at step t (1-based):
//!
//! ```text
//! g      ← g · min(1, clip / (‖all g‖₂ + 1e-6))          (when clip > 0)
//! p      ← p − lr·wd·p                                    (only tensors with ≥ 2 dims)
//! m      ← β1·m + (1 − β1)·g
//! v      ← β2·v + (1 − β2)·g²
//! p      ← p − lr · (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps)
//! ```

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices and embeddings only (not biases, LayerNorms).
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// Whether weight decay applies to a tensor of this shape (nanoGPT's rule: every ≥ 2-D tensor).
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

// ---------------------------------------------------------------------------------------------
// The GPU step: `shaders/adamw.wgsl`.
// ---------------------------------------------------------------------------------------------

use bytemuck::{Pod, Zeroable};

use crate::engine::{Engine, Parameter};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::layers::{grid_2d, pipelines, Plan, PlanBuilder};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    slot: u32,
    n_slots: u32,
    decay: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    grad_clip: f32,
    x_stride: u32,
    _pad: [u32; 2],
}

/// Host-written scalars of one step, then the kernel-written norm and clip scale.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct StepState {
    lr: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    _pad: f32,
    grad_norm: f32,
    clip_scale: f32,
    _pad1: [f32; 2],
}

/// AdamW state on the GPU for a set of parameters (their first and second moments) and the
/// recorded step: Σg² per tensor → clip scale → update of every tensor.
pub struct GpuAdamW {
    pub settings: AdamW,
    /// (moment 1, moment 2) per parameter, each the size of its tensor.
    moments: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Elements per parameter tensor.
    numels: Vec<usize>,
    state: wgpu::Buffer, // StepState
    plan: Plan,
    /// Steps taken so far (t of the bias correction is step + 1 for the next one).
    pub step: u32,
}

impl GpuAdamW {
    /// The optimizer over every parameter of `engine`.
    pub fn for_engine(engine: &mut Engine, settings: AdamW) -> Self {
        let ctx = engine.ctx.clone();
        Self::new(&ctx, &engine.parameters(), settings)
    }

    pub fn new(ctx: &GpuContext, params: &[Parameter], settings: AdamW) -> Self {
        let [sq_sum, clip, update] = pipelines(
            ctx,
            "adamw.wgsl",
            include_str!("../shaders/adamw.wgsl"),
            ["grad_sq_sum", "clip_scale", "adamw_update"],
        );
        let numel = |p: &Parameter| p.shape.iter().product::<usize>();
        let moments: Vec<_> = params
            .iter()
            .map(|p| {
                let bytes = 4 * numel(p) as u64;
                (ctx.storage("adam m", bytes), ctx.storage("adam v", bytes))
            })
            .collect();
        let sq = ctx.storage("grad sq", 4 * params.len() as u64); // (n_tensors)
        let state = ctx.storage("adam state", std::mem::size_of::<StepState>() as u64);
        let base = Params {
            n: 0,
            slot: 0,
            n_slots: params.len() as u32,
            decay: 0,
            beta1: settings.beta1,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: settings.weight_decay,
            grad_clip: settings.grad_clip,
            x_stride: 0,
            _pad: [0; 2],
        };
        let mut plan = PlanBuilder::new(ctx);
        for (slot, p) in params.iter().enumerate() {
            let prm = Params {
                n: numel(p) as u32,
                slot: slot as u32,
                ..base
            };
            plan.dispatch(
                "adamw_grad_sq_sum",
                &sq_sum,
                &prm,
                &[(1, p.grad), (2, &sq)],
                [1, 1, 1],
            );
        }
        plan.dispatch(
            "adamw_clip_scale",
            &clip,
            &base,
            &[(3, &state), (7, &sq)],
            [1, 1, 1],
        );
        for (p, (m, v)) in params.iter().zip(&moments) {
            let n = numel(p) as u32;
            let (grid, x_extent) = grid_2d(n.div_ceil(64));
            let prm = Params {
                n,
                decay: decays(&p.shape) as u32,
                x_stride: x_extent * 64,
                ..base
            };
            plan.dispatch(
                "adamw_update",
                &update,
                &prm,
                &[(1, p.grad), (3, &state), (4, p.value), (5, m), (6, v)],
                grid,
            );
        }
        GpuAdamW {
            settings,
            numels: params.iter().map(numel).collect(),
            moments,
            state,
            plan: plan.finish(),
            step: 0,
        }
    }

    /// Writes the next step's scalars (learning rate `lr`) and returns the plan to record right
    /// after the pass that computes the gradients.
    pub fn prepare_step(&mut self, ctx: &GpuContext, lr: f32) -> &Plan {
        self.step += 1;
        let t = self.step as i32;
        let s = &self.settings;
        let state = StepState {
            lr,
            bias_correction1: 1.0 - s.beta1.powi(t),
            bias_correction2: 1.0 - s.beta2.powi(t),
            ..Default::default()
        };
        ctx.queue
            .write_buffer(&self.state, 0, bytemuck::bytes_of(&state));
        &self.plan
    }

    /// (global gradient norm before clipping, clip scale) of the last step.
    pub fn last_norm(&self, ctx: &GpuContext) -> Result<(f32, f32)> {
        let v = ctx.read_f32(&[(&self.state, 8)])?.remove(0);
        Ok((v[4], v[5]))
    }

    /// The moments, per parameter (checkpoints for resuming).
    pub fn download_moments(&self, ctx: &GpuContext) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let sources: Vec<(&wgpu::Buffer, usize)> = self
            .moments
            .iter()
            .zip(&self.numels)
            .flat_map(|((m, v), &n)| [(m, n), (v, n)])
            .collect();
        let mut parts = ctx.read_f32(&sources)?.into_iter();
        let mut out = Vec::new();
        while let (Some(m), Some(v)) = (parts.next(), parts.next()) {
            out.push((m, v));
        }
        Ok(out)
    }

    /// Restores moments saved by `download_moments` and the step count.
    pub fn upload_moments(
        &mut self,
        ctx: &GpuContext,
        moments: &[(Vec<f32>, Vec<f32>)],
        step: u32,
    ) {
        for ((m, v), (mb, vb)) in moments.iter().zip(&self.moments) {
            ctx.queue.write_buffer(mb, 0, bytemuck::cast_slice(m));
            ctx.queue.write_buffer(vb, 0, bytemuck::cast_slice(v));
        }
        self.step = step;
    }
}
