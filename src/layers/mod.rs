//! One Rust module per GPT-2 layer, each next to its WGSL file under `shaders/` with the forward and
//! backward kernels side by side. A module compiles its pipelines once (`new`) and appends its
//! dispatches to a [`PlanBuilder`]; the engine records a whole plan into one command buffer (one
//! compute pass, or a few where GEMM operands are staged into textures between them).

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod linear;
pub mod lm_head;

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
    /// kernels with `unpack2x16float` (buffers) or by the texture load (rgba16float weight
    /// textures), so no SHADER_F16 feature is needed. Halves weight memory; inference and RA only
    /// (training keeps f32 master weights).
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

/// Scratch textures use the texture GEMMs' layout, so one copy of whole rows plus one partial row
/// stages any operand.
pub use crate::gpu::TEXTURE_ROW_TEXELS;

/// A dispatch ready to record: created once per plan, replayed on every call.
pub struct Dispatch {
    pub label: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// Names one of a plan's scratch textures: a slot (one per operand a kernel reads as a texture)
/// and a texel format. All stagings into the same scratch texture share it, in plan order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchTexture {
    pub slot: u8,
    pub format: wgpu::TextureFormat,
}

impl ScratchTexture {
    fn texel_bytes(self) -> u64 {
        self.format.block_copy_size(None).expect("a color format") as u64
    }
}

/// A copy of `texels` texels of `source` from `byte_offset` into the front of a scratch texture.
pub struct Staging {
    source: wgpu::Buffer,
    byte_offset: u64,
    texels: u64,
    target: usize,
}

impl Staging {
    fn record(&self, enc: &mut wgpu::CommandEncoder, textures: &[(ScratchTexture, wgpu::Texture)]) {
        let (scratch, texture) = &textures[self.target];
        let row_bytes = TEXTURE_ROW_TEXELS * scratch.texel_bytes();
        let full_rows = self.texels / TEXTURE_ROW_TEXELS;
        let rest = self.texels % TEXTURE_ROW_TEXELS;
        // whole rows, then the partial last row
        for (first_row, width, height) in [
            (0, TEXTURE_ROW_TEXELS, full_rows),
            (full_rows, rest, u64::from(rest > 0)),
        ] {
            if height == 0 {
                continue;
            }
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.source,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: self.byte_offset + first_row * row_bytes,
                        bytes_per_row: Some(row_bytes as u32),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: first_row as u32,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width: width as u32,
                    height: height as u32,
                    depth_or_array_layers: 1,
                },
            );
        }
    }
}

/// One step of a plan, in order.
pub enum Step {
    Dispatch(Dispatch),
    /// A copy from a buffer into a scratch texture, between compute passes.
    Stage(Staging),
}

impl Step {
    pub fn label(&self) -> &'static str {
        match self {
            Step::Dispatch(d) => d.label,
            Step::Stage(_) => "stage_texture",
        }
    }
}

enum PendingResource {
    Buffer(wgpu::Buffer),
    Texture(TextureBinding),
}

/// A texture a dispatch reads: one of the plan's scratch textures, or one that lives longer (a
/// weight matrix stored as a texture).
#[derive(Clone, Debug)]
pub enum TextureBinding {
    Scratch(ScratchTexture),
    View(wgpu::TextureView),
}

struct PendingDispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    params_offset: u64,
    params_size: u64,
    resources: Vec<(u32, PendingResource)>,
    workgroups: [u32; 3],
}

enum PendingStep {
    Dispatch(PendingDispatch),
    Stage {
        source: wgpu::Buffer,
        byte_offset: u64,
        texels: u64,
        target: ScratchTexture,
    },
}

/// Collects dispatches (pipeline, parameters, storage bindings, grid) and texture stagings;
/// `finish` packs all parameters into one uniform buffer, creates the scratch textures and the
/// bind groups.
pub struct PlanBuilder<'a> {
    ctx: &'a GpuContext,
    params: Vec<u8>,
    pending: Vec<PendingStep>,
    /// Scratch textures a dispatch writes (`reserve`), with the texels it needs.
    written: Vec<(ScratchTexture, u64)>,
}

/// A recorded-once sequence of steps, the uniform buffer their parameters live in and the scratch
/// textures they stage operands into.
pub struct Plan {
    pub steps: Vec<Step>,
    textures: Vec<(ScratchTexture, wgpu::Texture)>,
    _params: wgpu::Buffer,
}

impl Plan {
    /// Records the plan: runs of dispatches each in one compute pass, stagings between them.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder, label: &str) {
        let mut i = 0;
        while i < self.steps.len() {
            if let Step::Stage(s) = &self.steps[i] {
                s.record(enc, &self.textures);
                i += 1;
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            while let Some(Step::Dispatch(d)) = self.steps.get(i) {
                d.record(&mut pass);
                i += 1;
            }
        }
    }

    /// Records step `i` alone (kernel profiles).
    pub fn record_step(&self, i: usize, enc: &mut wgpu::CommandEncoder) {
        match &self.steps[i] {
            Step::Stage(s) => s.record(enc, &self.textures),
            Step::Dispatch(d) => d.record(&mut enc.begin_compute_pass(&Default::default())),
        }
    }

    /// Bytes of the scratch textures.
    pub fn texture_bytes(&self) -> u64 {
        self.textures
            .iter()
            .map(|(s, t)| u64::from(t.width()) * u64::from(t.height()) * s.texel_bytes())
            .sum()
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
            written: Vec::new(),
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
        self.dispatch_with_textures(label, pipeline, params, buffers, &[], workgroups);
    }

    /// `dispatch` with scratch textures bound too, as they hold after the stagings before it.
    pub fn dispatch_with_textures<P: bytemuck::Pod>(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        textures: &[(u32, TextureBinding)],
        workgroups: [u32; 3],
    ) {
        let bytes = bytemuck::bytes_of(params);
        debug_assert!(bytes.len() as u64 <= PARAM_SLOT && bytes.len() % 16 == 0);
        let params_offset = self.params.len() as u64;
        self.params.extend_from_slice(bytes);
        self.params.resize((params_offset + PARAM_SLOT) as usize, 0);
        let resources = buffers
            .iter()
            .map(|(b, buf)| (*b, PendingResource::Buffer((*buf).clone())))
            .chain(
                textures
                    .iter()
                    .map(|(b, t)| (*b, PendingResource::Texture(t.clone()))),
            )
            .collect();
        self.pending.push(PendingStep::Dispatch(PendingDispatch {
            label,
            pipeline: pipeline.clone(),
            params_offset,
            params_size: bytes.len() as u64,
            resources,
            workgroups,
        }));
    }

    /// Copies `texels` texels of `source`, starting at `byte_offset` (a multiple of the texel
    /// size), into the front of `target`. The caller checks `texels` against
    /// `max_scratch_texels`.
    pub fn stage(
        &mut self,
        target: ScratchTexture,
        source: &wgpu::Buffer,
        byte_offset: u64,
        texels: u64,
    ) {
        debug_assert!(byte_offset % target.texel_bytes() == 0);
        debug_assert!(texels <= max_scratch_texels(self.ctx));
        self.pending.push(PendingStep::Stage {
            source: source.clone(),
            byte_offset,
            texels,
            target,
        });
    }

    /// Makes `target` hold at least `texels` texels: a dispatch writes it (bound as a write-only
    /// storage texture) rather than a staging.
    pub fn reserve(&mut self, target: ScratchTexture, texels: u64) {
        debug_assert!(texels <= max_scratch_texels(self.ctx));
        self.written.push((target, texels));
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
        // Each scratch texture holds the largest operand staged into it or written to it.
        let mut rows: Vec<(ScratchTexture, u64)> = Vec::new();
        let staged = self.pending.iter().filter_map(|step| match step {
            PendingStep::Stage { texels, target, .. } => Some((target, texels)),
            PendingStep::Dispatch(_) => None,
        });
        for (target, texels) in staged.chain(self.written.iter().map(|(t, n)| (t, n))) {
            let need = texels.div_ceil(TEXTURE_ROW_TEXELS).max(1);
            match rows.iter_mut().find(|(t, _)| t == target) {
                Some((_, r)) => *r = (*r).max(need),
                None => rows.push((*target, need)),
            }
        }
        let textures: Vec<(ScratchTexture, wgpu::Texture)> = rows
            .into_iter()
            .map(|(scratch, rows)| {
                let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("scratch operand"),
                    size: wgpu::Extent3d {
                        width: TEXTURE_ROW_TEXELS as u32,
                        height: rows as u32,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: scratch.format,
                    // read as read-only storage textures: llvmpipe inlines those loads
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                (scratch, texture)
            })
            .collect();
        let views: Vec<wgpu::TextureView> = textures
            .iter()
            .map(|(_, t)| t.create_view(&Default::default()))
            .collect();
        let find = |s: &ScratchTexture| {
            textures
                .iter()
                .position(|(t, _)| t == s)
                .expect("a scratch texture is staged or reserved before it is bound")
        };
        let steps = self
            .pending
            .into_iter()
            .map(|step| match step {
                PendingStep::Stage {
                    source,
                    byte_offset,
                    texels,
                    target,
                } => Step::Stage(Staging {
                    source,
                    byte_offset,
                    texels,
                    target: find(&target),
                }),
                PendingStep::Dispatch(d) => {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &params,
                            offset: d.params_offset,
                            size: wgpu::BufferSize::new(d.params_size),
                        }),
                    }];
                    entries.extend(d.resources.iter().map(|(binding, r)| wgpu::BindGroupEntry {
                        binding: *binding,
                        resource: match r {
                            PendingResource::Buffer(buf) => buf.as_entire_binding(),
                            PendingResource::Texture(TextureBinding::Scratch(s)) => {
                                wgpu::BindingResource::TextureView(&views[find(s)])
                            }
                            PendingResource::Texture(TextureBinding::View(view)) => {
                                wgpu::BindingResource::TextureView(view)
                            }
                        },
                    }));
                    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(d.label),
                        layout: &d.pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    });
                    Step::Dispatch(Dispatch {
                        label: d.label,
                        pipeline: d.pipeline,
                        bind_group,
                        workgroups: d.workgroups,
                    })
                }
            })
            .collect();
        Plan {
            steps,
            textures,
            _params: params,
        }
    }
}

/// The most texels one scratch texture can hold on this device.
pub fn max_scratch_texels(ctx: &GpuContext) -> u64 {
    TEXTURE_ROW_TEXELS * u64::from(ctx.limits.max_texture_dimension_2d)
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

/// Records `plan`, submits it and waits (tests, one-off work).
pub fn execute(ctx: &GpuContext, plan: &Plan) -> crate::Result<()> {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    plan.record(&mut enc, "plan");
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
