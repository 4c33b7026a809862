//! Causal multi-head attention of one layer: forward (softmax, A·V with optional patching and
//! head ablation) and backward (RA, dQ, dK, dV). Kernels: `shaders/attention.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{pipelines, PlanBuilder};
use crate::gpu::GpuContext;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    c: u32,
    nh: u32,
    hs: u32,
    scale: f32,
    eta: f32,
    flags: u32,
    head_scale_off: u32,
}

const HAS_PATCH: u32 = 1;

/// Sizes and switches shared by all kernels of one layer.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    /// Sequences in the batch.
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    /// This layer's index: its heads' multipliers start at layer·NH in the (L, NH) head_scale.
    pub layer: usize,
}

/// The tensors of one layer's attention.
pub struct AttentionBuffers<'a> {
    pub qkv: &'a wgpu::Buffer,        // (B·T, 3C)
    pub att: &'a wgpu::Buffer,        // (B, NH, T, T)
    pub head_scale: &'a wgpu::Buffer, // (L, NH)
    /// (B, NH, T, T) patch map M and its coefficient η, when patching.
    pub patch: Option<(&'a wgpu::Buffer, f32)>,
}

pub struct Attention {
    softmax_forward: wgpu::ComputePipeline,
    values_forward: wgpu::ComputePipeline,
    scores_backward: wgpu::ComputePipeline,
    query_backward: wgpu::ComputePipeline,
    key_value_backward: wgpu::ComputePipeline,
    unused: wgpu::Buffer,
}

impl Attention {
    pub fn new(ctx: &GpuContext) -> Self {
        let [softmax_forward, values_forward, scores_backward, query_backward, key_value_backward] =
            pipelines(
                ctx,
                "attention.wgsl",
                include_str!("../../shaders/attention.wgsl"),
                [
                    "softmax_forward",
                    "values_forward",
                    "scores_backward",
                    "query_backward",
                    "key_value_backward",
                ],
            );
        Attention {
            softmax_forward,
            values_forward,
            scores_backward,
            query_backward,
            key_value_backward,
            unused: ctx.storage("unused", 16),
        }
    }

    fn params(s: AttentionShape, patch: Option<f32>) -> Params {
        let hs = s.c / s.nh;
        Params {
            t: s.t as u32,
            c: s.c as u32,
            nh: s.nh as u32,
            hs: hs as u32,
            scale: 1.0 / (hs as f32).sqrt(),
            eta: patch.unwrap_or(0.0),
            flags: if patch.is_some() { HAS_PATCH } else { 0 },
            head_scale_off: (s.layer * s.nh) as u32,
        }
    }

    /// att (B, NH, T, T) = causal softmax(Q·Kᵀ/sqrt(hs)); z (B·T, C) = s_h·(att + η·M)·V per head.
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        z: &wgpu::Buffer,
        b: &AttentionBuffers,
        s: AttentionShape,
    ) {
        let params = Self::params(s, b.patch.map(|p| p.1));
        plan.dispatch(
            "attention_softmax_forward",
            &self.softmax_forward,
            &params,
            &[(1, b.qkv), (2, b.att)],
            [s.t as u32, s.nh as u32, s.b as u32],
        );
        let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
        plan.dispatch(
            "attention_values_forward",
            &self.values_forward,
            &params,
            &[
                (1, b.qkv),
                (3, b.att),
                (4, patch),
                (5, b.head_scale),
                (6, z),
            ],
            [(s.c as u32).div_ceil(64), s.t as u32, s.b as u32],
        );
    }

    /// From dz = G (B·T, C): ra (B, NH, T, T) = R, and dqkv (B·T, 3C) = [dQ | dK | dV].
    pub fn backward(
        &self,
        plan: &mut PlanBuilder,
        ra: &wgpu::Buffer,
        dqkv: &wgpu::Buffer,
        dz: &wgpu::Buffer,
        b: &AttentionBuffers,
        s: AttentionShape,
    ) {
        let params = Self::params(s, b.patch.map(|p| p.1));
        plan.dispatch(
            "attention_scores_backward",
            &self.scores_backward,
            &params,
            &[(1, b.qkv), (3, b.att), (5, b.head_scale), (7, dz), (8, ra)],
            [s.t as u32, s.nh as u32, s.b as u32],
        );
        let grid = [(s.c as u32).div_ceil(64), s.t as u32, s.b as u32];
        plan.dispatch(
            "attention_query_backward",
            &self.query_backward,
            &params,
            &[(1, b.qkv), (9, ra), (10, dqkv)],
            grid,
        );
        let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
        plan.dispatch(
            "attention_key_value_backward",
            &self.key_value_backward,
            &params,
            &[
                (1, b.qkv),
                (3, b.att),
                (4, patch),
                (5, b.head_scale),
                (7, dz),
                (9, ra),
                (10, dqkv),
            ],
            grid,
        );
    }
}
