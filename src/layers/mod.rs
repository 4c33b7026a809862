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

/// How the weight matrices (wte and the four Conv1D weights of every block) are stored on the
/// adapter. Arithmetic is f32 either way; biases, LayerNorms and wpe always stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// 4 bytes per weight: exact.
    #[default]
    F32,
    /// 2 bytes per weight (IEEE binary16, round to nearest even), unpacked to f32 in the
    /// kernels with `unpack2x16float`, so no SHADER_F16 feature is needed. Halves weight memory;
    /// inference and RA only (training keeps f32 master weights).
    F16,
}

impl WeightFormat {
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
        }
    }
}

/// `source` with its read-only f32 storage array `name` stored as `format` (unchanged for f32).
pub fn with_storage(source: &str, name: &str, format: WeightFormat) -> String {
    match format {
        WeightFormat::F32 => source.to_string(),
        WeightFormat::F16 => with_f16_storage(source, name),
    }
}

/// `source` with its read-only f32 storage array `name` stored as packed f16 pairs instead.
///
/// The binding `var<storage, read> name: array<f32>` becomes `name_f16: array<u32>` (two halves
/// per word; `array<vec4<f32>>` becomes `array<vec2<u32>>`), a function `name_at(i)` unpacks
/// element (or vec4) `i` to f32, and every `name[i]` in the kernels becomes `name_at(i)`.
/// Indices keep counting f32 elements (or vec4s), so parameters, offsets and grids are the same
/// as for f32 storage: one kernel source serves both formats.
///
/// Panics if the binding is not declared exactly once (a programming error in a shader).
pub fn with_f16_storage(source: &str, name: &str) -> String {
    let scalar = format!("var<storage, read> {name}: array<f32>;");
    let vector = format!("var<storage, read> {name}: array<vec4<f32>>;");
    let (declaration, replacement) = if source.matches(&scalar).count() == 1 {
        (
            scalar,
            format!(
                "var<storage, read> {name}_f16: array<u32>;\n\
                 fn {name}_at(i: u32) -> f32 {{ return unpack2x16float({name}_f16[i >> 1u])[i & 1u]; }}"
            ),
        )
    } else if source.matches(&vector).count() == 1 {
        (
            vector,
            format!(
                "var<storage, read> {name}_f16: array<vec2<u32>>;\n\
                 fn {name}_at(i: u32) -> vec4<f32> {{ let h = {name}_f16[i]; \
                 return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y)); }}"
            ),
        )
    } else {
        panic!("shader does not declare the read-only f32 binding `{name}` exactly once");
    };
    let source = source.replacen(&declaration, &replacement, 1);
    // Rewrite `name[expr]` (with `name` a whole identifier) as `name_at(expr)`.
    let open = format!("{name}[");
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    let mut rest = source.as_str();
    while let Some(at) = rest.find(&open) {
        let starts_word = !rest[..at].chars().next_back().is_some_and(is_ident);
        out.push_str(&rest[..at]);
        if !starts_word {
            out.push_str(&open);
            rest = &rest[at + open.len()..];
            continue;
        }
        let body = &rest[at + open.len()..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find(|&(_, ch)| {
                depth += match ch {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unbalanced `{open}` in a shader"));
        out.push_str(name);
        out.push_str("_at(");
        out.push_str(&body[..end]);
        out.push(')');
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_storage_rewrites_every_indexing_of_the_binding_only() {
        let source = "@group(0) @binding(2) var<storage, read> b: array<f32>;\n\
                      fn f(i: u32) -> f32 { return b[i + idx[2u]] * ab[i] + b[b_off]; }";
        let out = with_f16_storage(source, "b");
        assert!(
            out.contains("var<storage, read> b_f16: array<u32>;"),
            "{out}"
        );
        assert!(out.contains("fn b_at(i: u32) -> f32"), "{out}");
        assert!(
            out.contains("return b_at(i + idx[2u]) * ab[i] + b_at(b_off);"),
            "{out}"
        );
        let vec4 = with_f16_storage(
            "var<storage, read> b4: array<vec4<f32>>;\nlet q = b4[k];",
            "b4",
        );
        assert!(vec4.contains("b4_f16: array<vec2<u32>>"), "{vec4}");
        assert!(vec4.contains("let q = b4_at(k);"), "{vec4}");
        assert_eq!(with_storage(source, "b", WeightFormat::F32), source);
    }

    #[test]
    #[should_panic(expected = "exactly once")]
    fn f16_storage_needs_the_binding() {
        with_f16_storage("var<storage, read> a: array<f32>;", "b");
    }
}
