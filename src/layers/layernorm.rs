//! LayerNorm: forward (with the mean and rstd the backward needs), backward with the residual
//! gradient added in the same pass, and the gradients of its weight and bias.
//! Kernels: `shaders/layernorm.wgsl` and, on CPU adapters with 8-lane subgroups,
//! `shaders/layernorm_subgroup.wgsl` (one subgroup per row, for C a multiple of 4), compiled twice:
//! reading x and dout from their buffers, and from scratch textures the plan stages them into
//! (`staged_source`), the faster where they fit.

use bytemuck::{Pod, Zeroable};

use super::{grid_2d, max_scratch_texels, pipelines, PlanBuilder, ScratchTexture, TextureBinding};
use crate::gpu::{GpuContext, KernelProfile};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    flags: u32,
    dout_row0: u32,
    dout_rows: u32,
    _pad: [u32; 2],
}

const HAS_RESIDUAL: u32 = 1;

/// Scratch textures of the staged kernels' reads: x (rows, C/4 quads), and the backward's dout.
pub const X_TEXTURE: ScratchTexture = ScratchTexture {
    slot: 20,
    format: wgpu::TextureFormat::Rgba32Float,
};
pub const DOUT_TEXTURE: ScratchTexture = ScratchTexture {
    slot: 21,
    format: wgpu::TextureFormat::Rgba32Float,
};

pub struct LayerNorm {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    /// One invocation per row instead of one workgroup (CPU adapters).
    row_kernels: bool,
    /// `layernorm_subgroup.wgsl`'s forward and backward, taken where C is a multiple of 4.
    subgroup: Option<[wgpu::ComputePipeline; 2]>,
    /// The same two kernels reading x and dout from staged textures, taken where those fit a
    /// scratch texture.
    staged: Option<[wgpu::ComputePipeline; 2]>,
    param_backward: wgpu::ComputePipeline,
    unused: wgpu::Buffer,
}

/// The tensors one LayerNorm reads in its backward.
pub struct LayerNormSaved<'a> {
    pub x: &'a wgpu::Buffer,    // (rows, C) the forward's input
    pub mean: &'a wgpu::Buffer, // (rows)
    pub rstd: &'a wgpu::Buffer, // (rows)
    pub w: &'a wgpu::Buffer,    // (C)
}

impl LayerNorm {
    /// The fastest kernels for this adapter.
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_row_kernels(ctx, ctx.profile == KernelProfile::CpuAdapter)
    }

    /// `row_kernels` picks the CPU-adapter kernels: one subgroup per row where the adapter has
    /// 8-lane subgroups and C is a multiple of 4 (reading staged textures where they fit), else
    /// one invocation per row.
    pub fn with_row_kernels(ctx: &GpuContext, row_kernels: bool) -> Self {
        Self::with_kernels(ctx, row_kernels, row_kernels)
    }

    /// As `with_row_kernels`, with the staged subgroup kernels only if `staged` (tests run every
    /// family).
    pub fn with_kernels(ctx: &GpuContext, row_kernels: bool, staged: bool) -> Self {
        let subgroup_kernels = |label: &str, source: &str| {
            pipelines(
                ctx,
                label,
                source,
                ["layernorm_forward_sg", "layernorm_backward_sg"],
            )
        };
        let source = include_str!("../../shaders/layernorm_subgroup.wgsl");
        let subgroup = (row_kernels && ctx.subgroups_of_8)
            .then(|| subgroup_kernels("layernorm_subgroup.wgsl", source));
        let staged = (staged && subgroup.is_some())
            .then(|| subgroup_kernels("layernorm_subgroup.wgsl (staged)", &staged_source(source)));
        let (fwd, bwd) = if row_kernels {
            ("layernorm_forward_rows", "layernorm_backward_rows")
        } else {
            ("layernorm_forward", "layernorm_backward")
        };
        let [forward, backward, param_backward] = pipelines(
            ctx,
            "layernorm.wgsl",
            include_str!("../../shaders/layernorm.wgsl"),
            [fwd, bwd, "layernorm_param_backward"],
        );
        LayerNorm {
            forward,
            backward,
            row_kernels,
            subgroup,
            staged,
            param_backward,
            unused: ctx.storage("unused", 16),
        }
    }

    /// The staged forward or backward kernel, where this instance has it and `rows` rows of `c`
    /// channels fit a scratch texture (`staged_texels`).
    fn staged_kernel(
        &self,
        ctx: &GpuContext,
        backward: bool,
        rows: usize,
        c: usize,
    ) -> Option<(&wgpu::ComputePipeline, [u32; 3], u64)> {
        let texels = staged_texels(rows, c, max_scratch_texels(ctx))?;
        let pipelines = self.staged.as_ref()?;
        Some((
            &pipelines[usize::from(backward)],
            grid_2d(rows as u32).0,
            texels,
        ))
    }

    /// The forward or backward kernel for rows of `c` channels, and its grid: a workgroup (or
    /// subgroup) per row, or an invocation per row in workgroups of 64.
    fn kernel(&self, backward: bool, rows: usize, c: usize) -> (&wgpu::ComputePipeline, [u32; 3]) {
        match &self.subgroup {
            Some(sg) if c % 4 == 0 => (&sg[usize::from(backward)], grid_2d(rows as u32).0),
            _ => {
                let pipeline = if backward {
                    &self.backward
                } else {
                    &self.forward
                };
                let grid = if self.row_kernels {
                    grid_2d((rows as u32).div_ceil(64)).0
                } else {
                    grid_2d(rows as u32).0
                };
                (pipeline, grid)
            }
        }
    }

    /// out (rows, C) = LN(x) ⊙ w + b; also writes mean, rstd (rows).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        mean: &wgpu::Buffer,
        rstd: &wgpu::Buffer,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: &wgpu::Buffer,
        (rows, c): (usize, usize),
        eps: f32,
    ) {
        let params = Params {
            rows: rows as u32,
            c: c as u32,
            eps,
            flags: 0,
            dout_row0: 0,
            dout_rows: 0,
            _pad: [0; 2],
        };
        // every binding but x, which the staged kernel reads from its texture
        let common = [(2, w), (3, b), (4, out), (5, mean), (6, rstd)];
        if let Some((pipeline, grid, texels)) = self.staged_kernel(plan.ctx(), false, rows, c) {
            plan.stage(X_TEXTURE, x, 0, texels);
            plan.dispatch_with_textures(
                "layernorm_forward",
                pipeline,
                &params,
                &common,
                &[(14, TextureBinding::Scratch(X_TEXTURE))],
                grid,
            );
            return;
        }
        let (pipeline, grid) = self.kernel(false, rows, c);
        let buffers = [[(1, x)].as_slice(), &common].concat();
        plan.dispatch("layernorm_forward", pipeline, &params, &buffers, grid);
    }

    /// dx (rows, C) = dresidual + LN backward of dout. `dout` holds rows
    /// [dout_rows.start, dout_rows.end) only; the other rows' dout is zero.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        plan: &mut PlanBuilder,
        dx: &wgpu::Buffer,
        dresidual: Option<&wgpu::Buffer>,
        dout: &wgpu::Buffer,
        dout_rows: std::ops::Range<usize>,
        saved: &LayerNormSaved,
        (rows, c): (usize, usize),
    ) {
        let params = Params {
            rows: rows as u32,
            c: c as u32,
            eps: 0.0,
            flags: if dresidual.is_some() { HAS_RESIDUAL } else { 0 },
            dout_row0: dout_rows.start as u32,
            dout_rows: dout_rows.len() as u32,
            _pad: [0; 2],
        };
        let dresidual = dresidual.unwrap_or(&self.unused);
        let staged = self
            .staged_kernel(plan.ctx(), true, rows, c)
            .filter(|_| !dout_rows.is_empty());
        // every binding but x and dout, which the staged kernel reads from textures
        let common = [
            (2, saved.w),
            (7, saved.mean),
            (8, saved.rstd),
            (10, dresidual),
            (11, dx),
        ];
        if let Some((pipeline, grid, texels)) = staged {
            plan.stage(X_TEXTURE, saved.x, 0, texels);
            plan.stage(DOUT_TEXTURE, dout, 0, (dout_rows.len() * c / 4) as u64);
            plan.dispatch_with_textures(
                "layernorm_backward",
                pipeline,
                &params,
                &common,
                &[
                    (14, TextureBinding::Scratch(X_TEXTURE)),
                    (15, TextureBinding::Scratch(DOUT_TEXTURE)),
                ],
                grid,
            );
            return;
        }
        let (pipeline, grid) = self.kernel(true, rows, c);
        let buffers = [[(1, saved.x), (9, dout)].as_slice(), &common].concat();
        plan.dispatch("layernorm_backward", pipeline, &params, &buffers, grid);
    }

    /// dw (C) = Σ_rows dout ⊙ x̂ and db (C) = Σ_rows dout, over the rows `dout` holds.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params(
        &self,
        plan: &mut PlanBuilder,
        dw: &wgpu::Buffer,
        db: &wgpu::Buffer,
        dout: &wgpu::Buffer,
        dout_rows: std::ops::Range<usize>,
        saved: &LayerNormSaved,
        c: usize,
    ) {
        let params = Params {
            rows: dout_rows.end as u32,
            c: c as u32,
            eps: 0.0,
            flags: 0,
            dout_row0: dout_rows.start as u32,
            dout_rows: dout_rows.len() as u32,
            _pad: [0; 2],
        };
        plan.dispatch(
            "layernorm_param_backward",
            &self.param_backward,
            &params,
            &[
                (1, saved.x),
                (7, saved.mean),
                (8, saved.rstd),
                (9, dout),
                (12, dw),
                (13, db),
            ],
            [(c as u32).div_ceil(64), 1, 1],
        );
    }
}

/// `layernorm_subgroup.wgsl` with `x_at` and `dout_at` reading the read-only storage textures
/// `X_TEXTURE` and `DOUT_TEXTURE` (bindings 14 and 15, quad i at `texel_at(i)`) instead of their
/// buffers, behind `texel_layout.wgsl`.
fn staged_source(source: &str) -> String {
    const BUFFER_READS: &str = "fn x_at(i: u32) -> vec4<f32> { return x4[i]; }\n\
                                fn dout_at(i: u32) -> vec4<f32> { return dout4[i]; }\n";
    const TEXTURE_READS: &str = "\
@group(0) @binding(14) var x_tex: texture_storage_2d<rgba32float, read>;    // x staged
@group(0) @binding(15) var dout_tex: texture_storage_2d<rgba32float, read>; // dout staged
fn x_at(i: u32) -> vec4<f32> { return textureLoad(x_tex, texel_at(i)); }
fn dout_at(i: u32) -> vec4<f32> { return textureLoad(dout_tex, texel_at(i)); }
";
    assert_eq!(
        source.matches(BUFFER_READS).count(),
        1,
        "layernorm_subgroup.wgsl defines x_at and dout_at once"
    );
    let layout = include_str!("../../shaders/texel_layout.wgsl");
    format!(
        "{layout}{}",
        source.replacen(BUFFER_READS, TEXTURE_READS, 1)
    )
}

/// Texels a staged LayerNorm copies for `rows` rows of `c` channels (x, and at most as many for
/// dout), if its kernels can take them: C a multiple of 4 and the rows within a scratch texture.
/// `MemoryEstimate` sizes the scratch textures with it.
pub fn staged_texels(rows: usize, c: usize, max_texels: u64) -> Option<u64> {
    let texels = (rows * c / 4) as u64;
    (c % 4 == 0 && texels > 0 && texels <= max_texels).then_some(texels)
}
