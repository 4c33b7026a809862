//! The loss on the logits of the loss rows and its gradient, for every loss kind of `loss.rs`.
//! Kernel: `shaders/cross_entropy.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{pipelines, PlanBuilder};
use crate::gpu::GpuContext;
use crate::loss::LossTerm;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    v: u32,
    _pad: [u32; 2],
}

/// The terms in the kernel's layout, grouped by row, and their CSR index `start` (R + 1): row r's
/// terms are `terms[start[r]..start[r + 1]]`.
pub fn gpu_terms(terms: &[LossTerm], rows: usize) -> (Vec<GpuTerm>, Vec<u32>) {
    let mut sorted: Vec<&LossTerm> = terms.iter().collect();
    sorted.sort_by_key(|t| t.row); // stable: a row's terms keep their order
    let mut start = vec![0u32; rows + 1];
    for t in &sorted {
        start[t.row + 1] += 1;
    }
    for r in 0..rows {
        start[r + 1] += start[r];
    }
    (sorted.into_iter().map(GpuTerm::from).collect(), start)
}

/// The GPU layout of a [`LossTerm`].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct GpuTerm {
    row: u32,
    id: u32,
    coef: f32,
    _pad: u32,
}

impl From<&LossTerm> for GpuTerm {
    fn from(t: &LossTerm) -> Self {
        GpuTerm {
            row: t.row as u32,
            id: t.id,
            coef: t.coef,
            _pad: 0,
        }
    }
}

pub struct CrossEntropy {
    forward_backward: wgpu::ComputePipeline,
    gather: wgpu::ComputePipeline,
    scatter: wgpu::ComputePipeline,
}

impl CrossEntropy {
    pub fn new(ctx: &GpuContext) -> Self {
        let [forward_backward, gather, scatter] = pipelines(
            ctx,
            "cross_entropy.wgsl",
            include_str!("../../shaders/cross_entropy.wgsl"),
            ["loss_forward_backward", "gather_rows", "scatter_rows"],
        );
        CrossEntropy {
            forward_backward,
            gather,
            scatter,
        }
    }

    /// loss_rows (R) and dlogits (R, V) from logits (R, V), lse_scale (R) and the terms with
    /// their row index (see [`gpu_terms`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        plan: &mut PlanBuilder,
        loss_rows: &wgpu::Buffer,
        dlogits: &wgpu::Buffer,
        logits: &wgpu::Buffer,
        lse_scale: &wgpu::Buffer,
        (terms, term_start): (&wgpu::Buffer, &wgpu::Buffer),
        (rows, v): (usize, usize),
    ) {
        let params = Params {
            rows: rows as u32,
            v: v as u32,
            _pad: [0; 2],
        };
        plan.dispatch(
            "loss_forward_backward",
            &self.forward_backward,
            &params,
            &[
                (1, logits),
                (2, lse_scale),
                (3, terms),
                (4, dlogits),
                (5, loss_rows),
                (6, term_start),
            ],
            [rows as u32, 1, 1],
        );
    }

    /// out (R, C) = x[row_ids] for x (N, C): the loss rows of a batch.
    pub fn gather_rows(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        x: &wgpu::Buffer,
        row_ids: &wgpu::Buffer,
        (r, c): (usize, usize),
    ) {
        let params = Params {
            rows: r as u32,
            v: c as u32,
            _pad: [0; 2],
        };
        plan.dispatch(
            "loss_gather_rows",
            &self.gather,
            &params,
            &[(7, row_ids), (8, x), (9, out)],
            [(c as u32).div_ceil(64), r as u32, 1],
        );
    }

    /// out (N, C) = the gathered rows' gradient g (R, C) at their rows (row_slot (N): index into
    /// g or −1), 0 elsewhere: differentiates `gather_rows`.
    pub fn scatter_rows(
        &self,
        plan: &mut PlanBuilder,
        out: &wgpu::Buffer,
        g: &wgpu::Buffer,
        row_slot: &wgpu::Buffer,
        (n, c): (usize, usize),
    ) {
        let params = Params {
            rows: n as u32,
            v: c as u32,
            _pad: [0; 2],
        };
        plan.dispatch(
            "loss_scatter_rows",
            &self.scatter,
            &params,
            &[(8, g), (9, out), (10, row_slot)],
            [(c as u32).div_ceil(64), n as u32, 1],
        );
    }
}
