//! Conv1D (HF GPT-2's linear layer, W stored [in, out]): forward y = x·W + b, backward to the
//! input dx = dy·Wᵀ, and the weight gradients dW = xᵀ·dy, db = Σ_rows dy.
//! Kernels: `shaders/linear.wgsl` (portable) and `shaders/linear_subgroup.wgsl` (CPU adapters).

use bytemuck::{Pod, Zeroable};

use super::{pipelines, PlanBuilder};
use crate::gpu::{GpuContext, KernelProfile};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    _pad0: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    _pad1: u32,
}

const HAS_BIAS: u32 = 1;
const HAS_RESIDUAL: u32 = 2;
const ACCUMULATE: u32 = 4;
/// Each workgroup covers a 32×32 block of C (8×8 invocations × 4×4 outputs).
const TILE: u32 = 32;

/// A matrix operand: buffer, element offset and leading dimension (row stride).
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u32,
    pub ld: u32,
}

impl<'a> Operand<'a> {
    pub fn new(buffer: &'a wgpu::Buffer, ld: usize) -> Self {
        Operand {
            buffer,
            offset: 0,
            ld: ld as u32,
        }
    }

    pub fn at(self, offset: usize) -> Self {
        Operand {
            offset: offset as u32,
            ..self
        }
    }
}

/// Which operand is read transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmOp {
    /// C = A·B: A (M×K), B (K×N). The forward y = x·W.
    NN,
    /// C = A·Bᵀ: A (M×K), B (N×K). The input gradient dx = dy·Wᵀ, and logits = x·wteᵀ.
    NT,
    /// C = Aᵀ·B: A (K×M), B (K×N). The weight gradient dW = xᵀ·dy.
    TN,
}

/// C (M×N) = op(A) · op(B) [+ bias (N)] [+ residual (same layout as C)] [+ C].
pub struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (M×K), or (K×M) for `GemmOp::TN`.
    pub a: Operand<'a>,
    /// (K×N), or (N×K) for `GemmOp::NT`.
    pub b: Operand<'a>,
    pub op: GemmOp,
    pub c: Operand<'a>,
    pub bias: Option<&'a wgpu::Buffer>,
    pub residual: Option<&'a wgpu::Buffer>,
    pub accumulate: bool,
}

pub struct Linear {
    nn: wgpu::ComputePipeline,
    nt: wgpu::ComputePipeline,
    tn: wgpu::ComputePipeline,
    column_sum: wgpu::ComputePipeline,
    /// `shaders/linear_subgroup.wgsl`'s GEMMs (nn, nt, one-row nt, tn), on CPU adapters with
    /// 8-lane subgroups.
    subgroup: Option<[wgpu::ComputePipeline; 4]>,
    unused: wgpu::Buffer,
}

impl Linear {
    /// The fastest kernels this adapter supports.
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_subgroup_kernels(ctx, ctx.profile == KernelProfile::CpuAdapter)
    }

    /// `use_subgroups` = false forces the portable kernels (tests compare both families).
    pub fn with_subgroup_kernels(ctx: &GpuContext, use_subgroups: bool) -> Self {
        let [nn, nt, tn, column_sum] = pipelines(
            ctx,
            "linear.wgsl",
            include_str!("../../shaders/linear.wgsl"),
            ["matmul_nn", "matmul_nt", "matmul_tn", "column_sum"],
        );
        let subgroup = (use_subgroups && ctx.subgroups_of_8).then(|| {
            pipelines(
                ctx,
                "linear_subgroup.wgsl",
                include_str!("../../shaders/linear_subgroup.wgsl"),
                [
                    "matmul_nn_sg",
                    "matmul_nt_sg",
                    "matmul_nt_row_sg",
                    "matmul_tn_sg",
                ],
            )
        });
        Linear {
            nn,
            nt,
            tn,
            column_sum,
            subgroup,
            unused: ctx.storage("unused", 16),
        }
    }

    /// out (M, N) = x (M, K) · w (K, N) + b (N) [+ residual (M, N)]
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: Option<&wgpu::Buffer>,
        residual: Option<&wgpu::Buffer>,
        (m, k, n): (usize, usize, usize),
    ) {
        self.gemm(
            plan,
            "linear_forward",
            &Gemm {
                m,
                n,
                k,
                a: Operand::new(x, k),
                b: Operand::new(w, n),
                op: GemmOp::NN,
                c: Operand::new(out, n),
                bias: b,
                residual,
                accumulate: false,
            },
        );
    }

    /// dx (M, K) = dout (M, N) · wᵀ, differentiating out = x·w in x.
    pub fn backward_input(
        &self,
        plan: &mut PlanBuilder,
        dx: &wgpu::Buffer,
        dout: &wgpu::Buffer,
        w: &wgpu::Buffer,
        (m, k, n): (usize, usize, usize),
    ) {
        self.gemm(
            plan,
            "linear_backward_input",
            &Gemm {
                m,
                n: k,
                k: n,
                a: Operand::new(dout, n),
                b: Operand::new(w, n),
                op: GemmOp::NT,
                c: Operand::new(dx, k),
                bias: None,
                residual: None,
                accumulate: false,
            },
        );
    }

    /// dw (K, N) = xᵀ·dout and db (N) = Σ_rows dout, differentiating out = x·w + b in w and b.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weights(
        &self,
        plan: &mut PlanBuilder,
        dw: &wgpu::Buffer,
        db: &wgpu::Buffer,
        x: &wgpu::Buffer,
        dout: &wgpu::Buffer,
        (m, k, n): (usize, usize, usize),
    ) {
        self.gemm(
            plan,
            "linear_backward_weight",
            &Gemm {
                m: k,
                n,
                k: m,
                a: Operand::new(x, k),
                b: Operand::new(dout, n),
                op: GemmOp::TN,
                c: Operand::new(dw, n),
                bias: None,
                residual: None,
                accumulate: false,
            },
        );
        self.column_sum(
            plan,
            "linear_backward_bias",
            db,
            Operand::new(dout, n),
            (m, n),
        );
    }

    /// out (N) = Σ_{r < rows} a[r, 0..N).
    pub fn column_sum(
        &self,
        plan: &mut PlanBuilder,
        label: &'static str,
        out: &wgpu::Buffer,
        a: Operand,
        (rows, n): (usize, usize),
    ) {
        let params = Params {
            m: 1,
            n: n as u32,
            k: rows as u32,
            flags: 0,
            lda: a.ld,
            ldb: 0,
            ldc: n as u32,
            _pad0: 0,
            a_off: a.offset,
            b_off: 0,
            c_off: 0,
            _pad1: 0,
        };
        plan.dispatch(
            label,
            &self.column_sum,
            &params,
            &[
                (1, a.buffer),
                (3, &self.unused),
                (4, &self.unused),
                (5, out),
            ],
            [(n as u32).div_ceil(64), 1, 1],
        );
    }

    /// Any GEMM of the family; the lm_head uses it directly with offsets and leading dimensions.
    pub fn gemm(&self, plan: &mut PlanBuilder, label: &'static str, g: &Gemm) {
        if g.m == 0 || g.n == 0 {
            return;
        }
        let flags = if g.bias.is_some() { HAS_BIAS } else { 0 }
            | if g.residual.is_some() {
                HAS_RESIDUAL
            } else {
                0
            }
            | if g.accumulate { ACCUMULATE } else { 0 };
        let params = Params {
            m: g.m as u32,
            n: g.n as u32,
            k: g.k as u32,
            flags,
            lda: g.a.ld,
            ldb: g.b.ld,
            ldc: g.c.ld,
            _pad0: 0,
            a_off: g.a.offset,
            b_off: g.b.offset,
            c_off: g.c.offset,
            _pad1: 0,
        };
        let common = [
            (1, g.a.buffer),
            (2, g.b.buffer),
            (3, g.bias.unwrap_or(&self.unused)),
            (4, g.residual.unwrap_or(&self.unused)),
            (5, g.c.buffer),
        ];
        let (m, n) = (g.m as u32, g.n as u32);
        let quads = |x: u32| x % 4 == 0;
        // The subgroup kernels read A and B as vec4 rows along K (and B along N in nn).
        let vec4_ok = [g.k as u32, g.a.ld, g.a.offset, g.b.ld, g.b.offset]
            .into_iter()
            .all(quads);
        // The tn kernel reads A along M and B along N as vec4s; K is free.
        let tn_ok = [m, n, g.a.ld, g.a.offset, g.b.ld, g.b.offset]
            .into_iter()
            .all(quads);
        match &self.subgroup {
            Some([_, _, _, tn]) if g.op == GemmOp::TN && tn_ok => {
                plan.dispatch(
                    label,
                    tn,
                    &params,
                    &common,
                    [n.div_ceil(32), m.div_ceil(16), 1],
                );
            }
            Some([nn, _, _, _]) if g.op == GemmOp::NN && vec4_ok && quads(n) => {
                plan.dispatch(
                    label,
                    nn,
                    &params,
                    &common,
                    [n.div_ceil(32), m.div_ceil(16), 1],
                );
            }
            Some([_, nt, _, _]) if g.op == GemmOp::NT && vec4_ok && m >= 8 => {
                plan.dispatch(
                    label,
                    nt,
                    &params,
                    &common,
                    [n.div_ceil(8), m.div_ceil(16), 1],
                );
            }
            // The lm_head at one position: a 16-row tile would waste most of its work.
            Some([_, _, nt_row, _]) if g.op == GemmOp::NT && vec4_ok && m == 1 => {
                plan.dispatch(label, nt_row, &params, &common, [n.div_ceil(8), 1, 1]);
            }
            _ => {
                let pipeline = match g.op {
                    GemmOp::NN => &self.nn,
                    GemmOp::NT => &self.nt,
                    GemmOp::TN => &self.tn,
                };
                plan.dispatch(
                    label,
                    pipeline,
                    &params,
                    &common,
                    [n.div_ceil(TILE), m.div_ceil(TILE), 1],
                );
            }
        }
    }
}
