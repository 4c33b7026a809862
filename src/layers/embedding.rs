//! Token + position embedding over a wte split into row chunks (one storage binding cannot hold
//! GPT-2's wte), for B right-padded sequences of T tokens. Its backward is a weight gradient
//! (dwte, dwpe), which training needs and RA does not. Kernels: `shaders/embedding.wgsl`, and
//! `shaders/embedding_texture.wgsl` for the forward reading wte's chunks from textures.

use bytemuck::{Pod, Zeroable};

use super::{pipelines, with_storage, PlanBuilder, TextureBinding, WeightFormat};
use crate::gpu::GpuContext;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    c: u32,
    vocab_row0: u32,
    vocab_rows: u32,
    rows: u32,
    n_positions: u32,
    flags: u32,
    _pad: u32,
}

const ACCUMULATE: u32 = 1;

/// A row range [row0, row0 + rows) of wte (V, C) in its own buffer.
pub struct VocabChunk {
    pub buffer: wgpu::Buffer, // (rows, C)
    pub row0: usize,
    pub rows: usize,
}

/// The same row range of wte as a texture (row by row, `texel_at` layout), where inference
/// engines on CPU adapters keep it (the lm_head reads it there too).
pub struct WteChunk {
    pub texture: TextureBinding,
    pub row0: usize,
    pub rows: usize,
}

/// Where the forward reads wte's chunks.
pub enum WteSource<'a> {
    Buffers(&'a [VocabChunk]),
    /// Needs `Embedding::reads_textures`.
    Textures(&'a [WteChunk]),
}

/// Rows of the batch grouped by token id (CSR), so the wte gradient reads only the rows of its
/// token: rows with id v are `rows[start[v]..start[v + 1]]`.
pub fn token_index(ids: &[u32], vocab_size: usize) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; vocab_size + 1]; // (V + 1)
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for v in 0..vocab_size {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut rows = vec![0u32; ids.len()]; // (B·T)
    for (r, &id) in ids.iter().enumerate() {
        rows[fill[id as usize] as usize] = r as u32;
        fill[id as usize] += 1;
    }
    (start, rows)
}

/// The buffers of the embedding backward.
pub struct EmbeddingGrads<'a> {
    pub dh: &'a wgpu::Buffer,          // (B·T, C) dL/dh_0
    pub token_start: &'a wgpu::Buffer, // (V + 1)
    pub token_rows: &'a wgpu::Buffer,  // (B·T)
    pub dwte: &'a [VocabChunk],        // (V, C) in the same chunks as wte
    pub dwpe: &'a wgpu::Buffer,        // (P, C)
}

pub struct Embedding {
    forward: wgpu::ComputePipeline,
    /// The forward reading wte from textures (CPU adapters, where the texture GEMMs run).
    forward_texture: Option<wgpu::ComputePipeline>,
    token_backward: wgpu::ComputePipeline,
    position_backward: wgpu::ComputePipeline,
}

impl Embedding {
    pub fn new(ctx: &GpuContext) -> Self {
        Self::for_weights(ctx, WeightFormat::F32)
    }

    /// The kernels reading wte as `format` (the backward, training only, needs f32).
    pub fn for_weights(ctx: &GpuContext, format: WeightFormat) -> Self {
        let source = with_storage(include_str!("../../shaders/embedding.wgsl"), "wte", format);
        let [forward, token_backward, position_backward] = pipelines(
            ctx,
            "embedding.wgsl",
            &source,
            ["embedding_forward", "token_backward", "position_backward"],
        );
        let forward_texture = crate::layers::linear::texture_gemms_available(ctx).then(|| {
            let texture_format = match format {
                WeightFormat::F32 => "rgba32float",
                WeightFormat::F16 => "rgba16float",
            };
            let source = [
                include_str!("../../shaders/texel_layout.wgsl"),
                &source,
                &include_str!("../../shaders/embedding_texture.wgsl").replacen(
                    "texture_storage_2d<rgba32float, read>",
                    &format!("texture_storage_2d<{texture_format}, read>"),
                    1,
                ),
            ]
            .concat();
            let [forward] = pipelines(
                ctx,
                "embedding_texture.wgsl",
                &source,
                ["embedding_forward_texture"],
            );
            forward
        });
        Embedding {
            forward,
            forward_texture,
            token_backward,
            position_backward,
        }
    }

    /// Whether `forward` takes `WteSource::Textures` of rows of width `c`.
    pub fn reads_textures(&self, c: usize) -> bool {
        self.forward_texture.is_some() && c % 4 == 0
    }

    /// out (B·T, C) = wte[ids] + wpe[row mod T]
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        ids: &wgpu::Buffer,
        wte: WteSource,
        wpe: &wgpu::Buffer,
        (b, t, c): (usize, usize, usize),
    ) {
        let rows = b * t;
        assert!(
            rows <= 65_535,
            "B·T = {rows} rows exceed one dispatch dimension"
        );
        let buffers = [(1, ids), (3, wpe), (4, out)];
        match wte {
            WteSource::Buffers(chunks) => {
                for chunk in chunks {
                    plan.dispatch(
                        "embedding_forward",
                        &self.forward,
                        &Self::params((chunk.row0, chunk.rows), (b, t, c), 0, 0),
                        &[buffers.as_slice(), &[(2, &chunk.buffer)]].concat(),
                        [(c as u32).div_ceil(64), rows as u32, 1],
                    );
                }
            }
            WteSource::Textures(chunks) => {
                assert!(self.reads_textures(c), "no texture embedding for C = {c}");
                let pipeline = self.forward_texture.as_ref().expect("reads_textures");
                for chunk in chunks {
                    plan.dispatch_with_textures(
                        "embedding_forward",
                        pipeline,
                        &Self::params((chunk.row0, chunk.rows), (b, t, c), 0, 0),
                        &buffers,
                        &[(10, chunk.texture.clone())],
                        [(c as u32 / 4).div_ceil(64), rows as u32, 1],
                    );
                }
            }
        }
    }

    /// dwte (+)= the token rows of dh, dwpe = dh summed over the batch. `accumulate` adds to
    /// dwte (which already holds the tied lm_head's gradient) instead of overwriting it.
    pub fn backward(
        &self,
        plan: &mut PlanBuilder,
        g: &EmbeddingGrads,
        accumulate: bool,
        (b, t, c, n_positions): (usize, usize, usize, usize),
    ) {
        let flags = if accumulate { ACCUMULATE } else { 0 };
        for chunk in g.dwte {
            plan.dispatch(
                "embedding_token_backward",
                &self.token_backward,
                &Self::params((chunk.row0, chunk.rows), (b, t, c), n_positions, flags),
                &[
                    (5, g.dh),
                    (6, g.token_start),
                    (7, g.token_rows),
                    (8, &chunk.buffer),
                ],
                [(c as u32).div_ceil(64), chunk.rows as u32, 1],
            );
        }
        let first = &g.dwte[0];
        plan.dispatch(
            "embedding_position_backward",
            &self.position_backward,
            &Self::params((first.row0, first.rows), (b, t, c), n_positions, 0),
            &[(5, g.dh), (9, g.dwpe)],
            [(c as u32).div_ceil(64), n_positions as u32, 1],
        );
    }

    fn params(
        (row0, vocab_rows): (usize, usize),
        (b, t, c): (usize, usize, usize),
        n_positions: usize,
        flags: u32,
    ) -> Params {
        Params {
            t: t as u32,
            c: c as u32,
            vocab_row0: row0 as u32,
            vocab_rows: vocab_rows as u32,
            rows: (b * t) as u32,
            n_positions: n_positions as u32,
            flags,
            _pad: 0,
        }
    }
}
