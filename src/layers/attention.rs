//! Causal multi-head attention of one layer: forward (softmax, A·V with optional patching and
//! head ablation) and backward (RA, dQ, dK, dV). Kernels: `shaders/attention.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{max_scratch_texels, PlanBuilder, ScratchTexture, TextureBinding};
use crate::gpu::{GpuContext, KernelProfile};

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

/// Scratch textures the subgroup kernels read (`attention_subgroup.wgsl`, bindings 15–18): the
/// layer's qkv, G = dz, A and R, staged before the kernels that read them, 4 values per texel.
const fn staged(slot: u8) -> ScratchTexture {
    ScratchTexture {
        slot,
        format: wgpu::TextureFormat::Rgba32Float,
    }
}
const QKV_TEXTURE: ScratchTexture = staged(10);
const DZ_TEXTURE: ScratchTexture = staged(11);
const ATT_TEXTURE: ScratchTexture = staged(12);
const RA_TEXTURE: ScratchTexture = staged(13);

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

/// The five kernels of one variant (scalar, or vec4 over channels).
struct Kernels {
    softmax_forward: wgpu::ComputePipeline,
    values_forward: wgpu::ComputePipeline,
    scores_backward: wgpu::ComputePipeline,
    query_backward: wgpu::ComputePipeline,
    key_value_backward: wgpu::ComputePipeline,
}

pub struct Attention {
    scalar: Kernels,
    /// For hs % 4 == 0 and C % 4 == 0: a quarter of the loads.
    vec4: Kernels,
    /// softmax_forward and scores_backward with one invocation per row instead of one workgroup
    /// (CPU adapters: no idle lanes on short rows, no barriers).
    rows: Option<[wgpu::ComputePipeline; 2]>,
    /// `shaders/attention_subgroup.wgsl` (softmax_forward, scores_backward, values_forward,
    /// query_backward, key_value_backward with rows shared across an 8-lane subgroup), alongside
    /// `rows` where the adapter has them.
    subgroup: Option<[wgpu::ComputePipeline; 5]>,
    unused: wgpu::Buffer,
}

/// Binding indices of qkv, z, dz, dqkv: scalar views, or the vec4 views of the same buffers.
struct Views {
    qkv: u32,
    z: u32,
    dz: u32,
    dqkv: u32,
    /// Channels per invocation in the per-channel kernels.
    width: u32,
}

const SCALAR_VIEWS: Views = Views {
    qkv: 1,
    z: 6,
    dz: 7,
    dqkv: 10,
    width: 1,
};
const VEC4_VIEWS: Views = Views {
    qkv: 11,
    z: 12,
    dz: 13,
    dqkv: 14,
    width: 4,
};

impl Attention {
    /// The fastest kernels for this adapter.
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_row_kernels(ctx, ctx.profile == KernelProfile::CpuAdapter)
    }

    /// `row_kernels` picks the one-invocation-per-row softmax and score backward (tests run both).
    pub fn with_row_kernels(ctx: &GpuContext, row_kernels: bool) -> Self {
        let module = ctx.shader(
            "attention.wgsl",
            include_str!("../../shaders/attention.wgsl"),
        );
        let kernels = |suffix: &str| {
            let [softmax_forward, values_forward, scores_backward, query_backward, key_value_backward] =
                [
                    "softmax_forward",
                    "values_forward",
                    "scores_backward",
                    "query_backward",
                    "key_value_backward",
                ]
                .map(|name| ctx.pipeline(&module, &format!("{name}{suffix}")));
            Kernels {
                softmax_forward,
                values_forward,
                scores_backward,
                query_backward,
                key_value_backward,
            }
        };
        let rows = row_kernels.then(|| {
            ["softmax_forward_rows", "scores_backward_rows"].map(|e| ctx.pipeline(&module, e))
        });
        let subgroup = (row_kernels && ctx.subgroups_of_8).then(|| {
            super::pipelines(
                ctx,
                "attention_subgroup.wgsl",
                // attention.wgsl's parameters, bindings and helpers, then the subgroup kernels
                concat!(
                    include_str!("../../shaders/attention.wgsl"),
                    include_str!("../../shaders/texel_layout.wgsl"),
                    include_str!("../../shaders/attention_subgroup.wgsl"),
                ),
                [
                    "softmax_forward_sg",
                    "scores_backward_sg",
                    "values_forward_sg",
                    "query_backward_sg",
                    "key_value_backward_sg",
                ],
            )
        });
        Attention {
            scalar: kernels(""),
            vec4: kernels("_vec4"),
            rows,
            subgroup,
            unused: ctx.storage("unused", 16),
        }
    }

    fn variant(&self, s: AttentionShape) -> (&Kernels, &'static Views) {
        if (s.c / s.nh) % 4 == 0 && s.c % 4 == 0 {
            (&self.vec4, &VEC4_VIEWS)
        } else {
            (&self.scalar, &SCALAR_VIEWS)
        }
    }

    /// The subgroup kernels, where they apply: vec4 heads of at most 64 channels (16 quads, two
    /// per lane), and qkv and the maps small enough for a scratch texture.
    fn subgroup_kernels(
        &self,
        plan: &PlanBuilder,
        s: AttentionShape,
    ) -> Option<&[wgpu::ComputePipeline; 5]> {
        let hs = s.c / s.nh;
        let (qkv, maps) = staged_texels(s);
        let fits = qkv.max(maps) <= max_scratch_texels(plan.ctx());
        self.subgroup
            .as_ref()
            .filter(|_| hs % 4 == 0 && hs <= 64 && s.c % 4 == 0 && fits)
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

    /// One 8-lane workgroup per 8 rows of one head of one sequence.
    fn subgroup_grid(s: AttentionShape) -> [u32; 3] {
        [(s.t as u32).div_ceil(8), s.nh as u32, s.b as u32]
    }

    /// att (B, NH, T, T) = causal softmax(Q·Kᵀ/sqrt(hs)); z (B·T, C) = s_h·(att + η·M)·V per head.
    ///
    /// att must hold zeros above the diagonal: the CPU-adapter kernels (one row per invocation or
    /// subgroup lane) write only j ≤ i, since on llvmpipe every per-lane store is a loop over the
    /// lanes. A fresh buffer qualifies (wgpu zero-initializes), and so does one this layer has
    /// written at the same shape: the engine keeps att per layer and workspace.
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        z: &wgpu::Buffer,
        b: &AttentionBuffers,
        s: AttentionShape,
    ) {
        let (k, v) = self.variant(s);
        let params = Self::params(s, b.patch.map(|p| p.1));
        if let Some([softmax, _, values, _, _]) = self.subgroup_kernels(plan, s) {
            let (qkv_texels, map_texels) = staged_texels(s);
            let grid = Self::subgroup_grid(s);
            plan.stage(QKV_TEXTURE, b.qkv, 0, qkv_texels);
            plan.dispatch_with_textures(
                "attention_softmax_forward",
                softmax,
                &params,
                &[(2, b.att)],
                &[(15, TextureBinding::Scratch(QKV_TEXTURE))],
                grid,
            );
            plan.stage(ATT_TEXTURE, b.att, 0, map_texels);
            let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
            plan.dispatch_with_textures(
                "attention_values_forward",
                values,
                &params,
                &[(4, patch), (5, b.head_scale), (12, z)],
                &[
                    (15, TextureBinding::Scratch(QKV_TEXTURE)),
                    (17, TextureBinding::Scratch(ATT_TEXTURE)),
                ],
                grid,
            );
            return;
        }
        match &self.rows {
            // The row kernels pick scalar or vec4 loads themselves: both views are bound.
            Some([softmax_rows, _]) => plan.dispatch(
                "attention_softmax_forward",
                softmax_rows,
                &params,
                &[(1, b.qkv), (11, b.qkv), (2, b.att)],
                [(s.t as u32).div_ceil(64), s.nh as u32, s.b as u32],
            ),
            None => plan.dispatch(
                "attention_softmax_forward",
                &k.softmax_forward,
                &params,
                &[(v.qkv, b.qkv), (2, b.att)],
                [s.t as u32, s.nh as u32, s.b as u32],
            ),
        }
        let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
        let grid = [(s.c as u32 / v.width).div_ceil(64), s.t as u32, s.b as u32];
        plan.dispatch(
            "attention_values_forward",
            &k.values_forward,
            &params,
            &[
                (v.qkv, b.qkv),
                (3, b.att),
                (4, patch),
                (5, b.head_scale),
                (v.z, z),
            ],
            grid,
        );
    }

    /// From dz = G (B·T, C): ra (B, NH, T, T) = R, and, when given, dqkv (B·T, 3C) =
    /// [dQ | dK | dV] (not needed at the first layer unless dL/dh_0 is). Like att in `forward`, ra
    /// must hold zeros above the diagonal.
    pub fn backward(
        &self,
        plan: &mut PlanBuilder,
        (ra, dqkv): (&wgpu::Buffer, Option<&wgpu::Buffer>),
        dz: &wgpu::Buffer,
        b: &AttentionBuffers,
        s: AttentionShape,
    ) {
        let (k, v) = self.variant(s);
        let params = Self::params(s, b.patch.map(|p| p.1));
        if let Some([_, scores, _, query, key_value]) = self.subgroup_kernels(plan, s) {
            let (qkv_texels, map_texels) = staged_texels(s);
            let grid = Self::subgroup_grid(s);
            let [qkv_tex, dz_tex, att_tex, ra_tex] =
                [QKV_TEXTURE, DZ_TEXTURE, ATT_TEXTURE, RA_TEXTURE].map(TextureBinding::Scratch);
            plan.stage(QKV_TEXTURE, b.qkv, 0, qkv_texels);
            plan.stage(DZ_TEXTURE, dz, 0, qkv_texels / 3);
            plan.stage(ATT_TEXTURE, b.att, 0, map_texels);
            plan.dispatch_with_textures(
                "attention_scores_backward",
                scores,
                &params,
                &[(5, b.head_scale), (8, ra)],
                &[
                    (15, qkv_tex.clone()),
                    (16, dz_tex.clone()),
                    (17, att_tex.clone()),
                ],
                grid,
            );
            let Some(dqkv) = dqkv else {
                return;
            };
            plan.stage(RA_TEXTURE, ra, 0, map_texels);
            plan.dispatch_with_textures(
                "attention_query_backward",
                query,
                &params,
                &[(14, dqkv)],
                &[(15, qkv_tex.clone()), (18, ra_tex.clone())],
                grid,
            );
            let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
            plan.dispatch_with_textures(
                "attention_key_value_backward",
                key_value,
                &params,
                &[(4, patch), (5, b.head_scale), (14, dqkv)],
                &[(15, qkv_tex), (16, dz_tex), (17, att_tex), (18, ra_tex)],
                grid,
            );
            return;
        }
        match &self.rows {
            Some([_, scores_rows]) => plan.dispatch(
                "attention_scores_backward",
                scores_rows,
                &params,
                &[
                    (1, b.qkv),
                    (11, b.qkv),
                    (3, b.att),
                    (5, b.head_scale),
                    (7, dz),
                    (13, dz),
                    (8, ra),
                ],
                [(s.t as u32).div_ceil(64), s.nh as u32, s.b as u32],
            ),
            None => plan.dispatch(
                "attention_scores_backward",
                &k.scores_backward,
                &params,
                &[
                    (v.qkv, b.qkv),
                    (3, b.att),
                    (5, b.head_scale),
                    (v.dz, dz),
                    (8, ra),
                ],
                [s.t as u32, s.nh as u32, s.b as u32],
            ),
        }
        let Some(dqkv) = dqkv else {
            return;
        };
        let (query, key_value) = (&k.query_backward, &k.key_value_backward);
        let grid = [(s.c as u32 / v.width).div_ceil(64), s.t as u32, s.b as u32];
        plan.dispatch(
            "attention_query_backward",
            query,
            &params,
            &[(v.qkv, b.qkv), (9, ra), (v.dqkv, dqkv)],
            grid,
        );
        let patch = b.patch.map(|p| p.0).unwrap_or(&self.unused);
        plan.dispatch(
            "attention_key_value_backward",
            key_value,
            &params,
            &[
                (v.qkv, b.qkv),
                (3, b.att),
                (4, patch),
                (5, b.head_scale),
                (v.dz, dz),
                (9, ra),
                (v.dqkv, dqkv),
            ],
            grid,
        );
    }
}

/// Texels of the staged qkv (dz is a third of it) and of a staged attention map (A or R), for
/// the subgroup kernels.
pub fn staged_texels(s: AttentionShape) -> (u64, u64) {
    let qkv = (s.b * s.t * 3 * s.c / 4) as u64;
    let map = ((s.b * s.nh * s.t * s.t) as u64).div_ceil(4);
    (qkv, map)
}
