//! The tied lm_head and the loss at a few loss rows, forward and backward in one pass over wte:
//! logits = x·wteᵀ, the loss of `loss.rs`, and dx = dlogits·wte. On CPU adapters with wte in
//! textures this replaces the lm_head's two GEMVs (each a full read of wte) and the loss kernel.
//! Kernels: `shaders/lm_head.wgsl`. The plain path (`Linear` GEMMs and `CrossEntropy`) stays for
//! other adapters, many loss rows and training (which needs dlogits for wte's gradient).

use bytemuck::{Pod, Zeroable};

pub use super::embedding::WteChunk;
use super::{pipelines, PlanBuilder, WeightFormat};
use crate::gpu::GpuContext;

/// Vocab rows per workgroup of the blocks kernel (`BLOCK_ROWS` in the shader).
pub const BLOCK_ROWS: usize = 128;

/// The widest row the blocks kernel is unrolled for: 128 quads per lane (GPT-2 XL: 50).
pub const MAX_C: usize = 8 * 128 * 4;

const WITH_GRAD: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    c: u32,
    v: u32,
    chunk_row0: u32,
    chunk_rows: u32,
    block0: u32,
    blocks: u32,
    chunk: u32,
    chunks: u32,
    x_off: u32,
    flags: u32,
    _pad: [u32; 2],
}

/// Blocks of `BLOCK_ROWS` vocab rows over wte's chunks (each chunk starts a block).
pub fn blocks(chunk_rows: &[usize]) -> usize {
    chunk_rows.iter().map(|r| r.div_ceil(BLOCK_ROWS)).sum()
}

/// Whether the fused kernels take rows of width `c` whose first element is at `x_off`.
pub fn fits(c: usize, x_off: usize) -> bool {
    c % 4 == 0 && c <= MAX_C && x_off % 4 == 0
}

/// What the fused lm_head reads and writes. R loss rows, NB = `blocks`, chunks = wte's chunks.
pub struct LmHeadBuffers<'a> {
    pub x: &'a wgpu::Buffer, // (…, C) ln_f's output; loss row r at x_off + r·C
    pub x_off: usize,
    pub lse_scale: &'a wgpu::Buffer,  // (R)
    pub terms: &'a wgpu::Buffer,      // GpuTerm, grouped by row
    pub term_start: &'a wgpu::Buffer, // (R + 1)
    pub logits: &'a wgpu::Buffer,     // (R, V)
    pub loss_rows: &'a wgpu::Buffer,  // (R)
    /// (R, C) dL/dx at the loss rows, written when `with_grad`
    pub dx: &'a wgpu::Buffer,
    /// The backward too (else logits and the loss only).
    pub with_grad: bool,
    pub block_stats: &'a wgpu::Buffer, // (R, NB, 2)
    /// (R, NB, C) with the backward, else unused
    pub block_acc: &'a wgpu::Buffer,
    /// (R, chunks, C) with the backward, else unused
    pub chunk_terms: &'a wgpu::Buffer,
}

/// `template` with each line that ends in `// per quad` written once per quad of a lane,
/// `#` replaced by the quad's number (see lm_head.wgsl: WGSL has no arrays llvmpipe keeps in
/// registers).
fn per_quad(template: &str, quads: usize) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    for line in template.lines() {
        match line.strip_suffix(" // per quad") {
            Some(body) => {
                for j in 0..quads {
                    out.push_str(&body.replace('#', &j.to_string()));
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

pub struct LmHead {
    blocks: wgpu::ComputePipeline,
    combine: wgpu::ComputePipeline,
}

impl LmHead {
    /// Kernels for rows of `c` values (see [`fits`]) reading wte textures in `format`
    /// (rgba16float texels for f16 weights).
    pub fn new(ctx: &GpuContext, format: WeightFormat, c: usize) -> Self {
        const F32: &str = "var wte_tex: texture_storage_2d<rgba32float, read>;";
        let template = concat!(
            include_str!("../../shaders/texel_layout.wgsl"),
            include_str!("../../shaders/lm_head.wgsl"),
        );
        assert_eq!(
            template.matches(F32).count(),
            1,
            "lm_head.wgsl declares wte_tex once"
        );
        let source = per_quad(template, c.div_ceil(32).max(1));
        let source = match format {
            WeightFormat::F32 => source.to_string(),
            WeightFormat::F16 => source.replacen(
                F32,
                "var wte_tex: texture_storage_2d<rgba16float, read>;",
                1,
            ),
        };
        let [blocks, combine] = pipelines(
            ctx,
            "lm_head.wgsl",
            &source,
            ["lm_head_blocks", "lm_head_combine"],
        );
        LmHead { blocks, combine }
    }

    /// logits (R, V), loss_rows (R) and, `with_grad`, dx (R, C): one blocks dispatch per chunk
    /// of wte, then the combine. The caller checks [`fits`].
    pub fn forward_backward(
        &self,
        plan: &mut PlanBuilder,
        b: &LmHeadBuffers,
        wte: &[WteChunk],
        (r, c, v): (usize, usize, usize),
    ) {
        debug_assert!(fits(c, b.x_off));
        let chunk_rows: Vec<usize> = wte.iter().map(|w| w.rows).collect();
        let mut params = Params {
            c: c as u32,
            v: v as u32,
            chunk_row0: 0,
            chunk_rows: 0,
            block0: 0,
            blocks: blocks(&chunk_rows) as u32,
            chunk: 0,
            chunks: wte.len() as u32,
            x_off: b.x_off as u32,
            flags: if b.with_grad { WITH_GRAD } else { 0 },
            _pad: [0; 2],
        };
        // what both kernels bind; the blocks kernel adds x, the combine the loss's inputs and outputs
        let shared = [
            (3, b.terms),
            (4, b.term_start),
            (5, b.logits),
            (6, b.block_stats),
            (7, b.block_acc),
            (8, b.chunk_terms),
        ];
        let buffers = [[(1, b.x)].as_slice(), &shared].concat();
        for (i, chunk) in wte.iter().enumerate() {
            params.chunk_row0 = chunk.row0 as u32;
            params.chunk_rows = chunk.rows as u32;
            params.chunk = i as u32;
            plan.dispatch_with_textures(
                "lm_head_loss",
                &self.blocks,
                &params,
                &buffers,
                &[(11, chunk.texture.clone())],
                [chunk.rows.div_ceil(BLOCK_ROWS) as u32, r as u32, 1],
            );
            params.block0 += chunk.rows.div_ceil(BLOCK_ROWS) as u32;
        }
        plan.dispatch(
            "lm_head_loss",
            &self.combine,
            &params,
            &[
                [(2, b.lse_scale)].as_slice(),
                &shared,
                &[(9, b.loss_rows), (10, b.dx)],
            ]
            .concat(),
            [(c as u32 / 4).div_ceil(8), r as u32, 1],
        );
    }
}
