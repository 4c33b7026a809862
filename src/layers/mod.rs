//! One Rust module per GPT-2 layer, each next to its WGSL file under `shaders/` with the forward and
//! backward kernels side by side. A module compiles its pipelines once (`new`) and appends its
//! dispatches to a [`PlanBuilder`]; the engine records a whole plan into one compute pass.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod linear;

use crate::gpu::GpuContext;

/// Every uniform block lives in one buffer, one 256-byte slot per dispatch
/// (256 is the largest `min_uniform_buffer_offset_alignment` any backend requires).
const PARAM_SLOT: u64 = 256;

/// A dispatch ready to record: created once per plan, replayed on every call.
pub struct Dispatch {
    pub label: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

struct PendingDispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    params_offset: u64,
    params_size: u64,
    buffers: Vec<(u32, wgpu::Buffer)>,
    workgroups: [u32; 3],
}

/// Collects dispatches (pipeline, parameters, storage bindings, grid); `finish` packs all
/// parameters into one uniform buffer and creates the bind groups.
pub struct PlanBuilder<'a> {
    ctx: &'a GpuContext,
    params: Vec<u8>,
    pending: Vec<PendingDispatch>,
}

/// A recorded-once sequence of dispatches and the uniform buffer their parameters live in.
pub struct Plan {
    pub dispatches: Vec<Dispatch>,
    _params: wgpu::Buffer,
}

impl Plan {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
        }
    }
}

impl<'a> PlanBuilder<'a> {
    /// The context the plan is built for.
    pub fn ctx(&self) -> &'a GpuContext {
        self.ctx
    }

    pub fn new(ctx: &'a GpuContext) -> Self {
        PlanBuilder {
            ctx,
            params: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Adds one dispatch. `params` goes to binding 0 (uniform); `buffers` are (binding, buffer).
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) {
        let bytes = bytemuck::bytes_of(params);
        debug_assert!(bytes.len() as u64 <= PARAM_SLOT && bytes.len() % 16 == 0);
        let params_offset = self.params.len() as u64;
        self.params.extend_from_slice(bytes);
        self.params.resize((params_offset + PARAM_SLOT) as usize, 0);
        self.pending.push(PendingDispatch {
            label,
            pipeline: pipeline.clone(),
            params_offset,
            params_size: bytes.len() as u64,
            buffers: buffers
                .iter()
                .map(|(b, buf)| (*b, (*buf).clone()))
                .collect(),
            workgroups,
        });
    }

    pub fn finish(self) -> Plan {
        let ctx = self.ctx;
        let params = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("plan params"),
            size: (self.params.len() as u64).max(PARAM_SLOT),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&params, 0, &self.params);
        let dispatches = self
            .pending
            .into_iter()
            .map(|d| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: d.params_offset,
                        size: wgpu::BufferSize::new(d.params_size),
                    }),
                }];
                entries.extend(d.buffers.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: buf.as_entire_binding(),
                }));
                let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.label),
                    layout: &d.pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                Dispatch {
                    label: d.label,
                    pipeline: d.pipeline,
                    bind_group,
                    workgroups: d.workgroups,
                }
            })
            .collect();
        Plan {
            dispatches,
            _params: params,
        }
    }
}

/// Splits `n` workgroups over x and y so that neither exceeds the 65 535 per-dimension limit.
/// Returns the grid and the number of workgroups per y step (x extent).
pub fn grid_2d(n: u32) -> ([u32; 3], u32) {
    const MAX: u32 = 65_535;
    if n <= MAX {
        ([n.max(1), 1, 1], n.max(1))
    } else {
        ([MAX, n.div_ceil(MAX), 1], MAX)
    }
}

pub fn pipelines<const N: usize>(
    ctx: &GpuContext,
    label: &str,
    source: &str,
    entries: [&str; N],
) -> [wgpu::ComputePipeline; N] {
    let module = ctx.shader(label, source);
    entries.map(|e| ctx.pipeline(&module, e))
}

/// Records `plan` into one compute pass, submits it and waits (tests, one-off work).
pub fn execute(ctx: &GpuContext, plan: &Plan) -> crate::Result<()> {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        plan.record(&mut pass);
    }
    ctx.queue.submit([enc.finish()]);
    ctx.wait()?;
    ctx.check("executing a plan")
}
