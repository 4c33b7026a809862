//! Token + position embedding over a wte split into row chunks (one storage binding cannot hold
//! GPT-2's wte). Kernel: `shaders/embedding.wgsl`. Its backward is a weight gradient (dwte, dwpe),
//! which RA does not need.

use bytemuck::{Pod, Zeroable};

use super::{pipelines, PlanBuilder};
use crate::gpu::GpuContext;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    c: u32,
    vocab_row0: u32,
    vocab_rows: u32,
}

/// A row range [row0, row0 + rows) of wte (V, C) in its own buffer.
pub struct VocabChunk {
    pub buffer: wgpu::Buffer, // (rows, C)
    pub row0: usize,
    pub rows: usize,
}

pub struct Embedding {
    forward: wgpu::ComputePipeline,
}

impl Embedding {
    pub fn new(ctx: &GpuContext) -> Self {
        let [forward] = pipelines(
            ctx,
            "embedding.wgsl",
            include_str!("../../shaders/embedding.wgsl"),
            ["embedding_forward"],
        );
        Embedding { forward }
    }

    /// out (T, C) = wte[ids] + wpe[0..T)
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        ids: &wgpu::Buffer,
        wte: &[VocabChunk],
        wpe: &wgpu::Buffer,
        (t, c): (usize, usize),
    ) {
        for chunk in wte {
            let params = Params {
                t: t as u32,
                c: c as u32,
                vocab_row0: chunk.row0 as u32,
                vocab_rows: chunk.rows as u32,
            };
            plan.dispatch(
                "embedding_forward",
                &self.forward,
                &params,
                &[(1, ids), (2, &chunk.buffer), (3, wpe), (4, out)],
                [(c as u32).div_ceil(64), t as u32, 1],
            );
        }
    }
}
