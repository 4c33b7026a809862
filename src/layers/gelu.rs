//! gelu_new (tanh form), element-wise: forward and backward. Kernels: `shaders/gelu.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{grid_2d, pipelines, PlanBuilder};
use crate::gpu::GpuContext;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    row_stride: u32,
    _pad: [u32; 2],
}

const WG: u32 = 64;

pub struct Gelu {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
}

impl Gelu {
    pub fn new(ctx: &GpuContext) -> Self {
        let [forward, backward] = pipelines(
            ctx,
            "gelu.wgsl",
            concat!(
                include_str!("../../shaders/gelu_math.wgsl"),
                include_str!("../../shaders/gelu.wgsl")
            ),
            ["gelu_forward", "gelu_backward"],
        );
        Gelu { forward, backward }
    }

    fn params(n: usize) -> (Params, [u32; 3]) {
        let (grid, x_groups) = grid_2d((n as u32).div_ceil(WG));
        let params = Params {
            n: n as u32,
            row_stride: x_groups * WG,
            _pad: [0; 2],
        };
        (params, grid)
    }

    /// y (n) = gelu_new(x)
    pub fn forward(&self, plan: &mut PlanBuilder, y: &wgpu::Buffer, x: &wgpu::Buffer, n: usize) {
        let (params, grid) = Self::params(n);
        plan.dispatch(
            "gelu_forward",
            &self.forward,
            &params,
            &[(1, x), (2, y)],
            grid,
        );
    }

    /// dx (n) = dy ⊙ gelu_new'(x), differentiating y = gelu_new(x)
    pub fn backward(
        &self,
        plan: &mut PlanBuilder,
        dx: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        x: &wgpu::Buffer,
        n: usize,
    ) {
        let (params, grid) = Self::params(n);
        plan.dispatch(
            "gelu_backward",
            &self.backward,
            &params,
            &[(1, x), (3, dy), (4, dx)],
            grid,
        );
    }
}
