//! GPU context: adapter selection, device with the adapter's own limits, buffers, readback, and
//! wgpu validation errors turned into `Error::Gpu` instead of panics.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// `--backend`: which graphics API to run on. `auto` picks the best adapter found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
    /// The float64 CPU reference (no GPU; slow; for debugging).
    Cpu,
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::all(),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::Cpu => wgpu::Backends::empty(),
        }
    }
}

/// Texels per row of the textures the kernels read operands from: an operand's vec4 number i is
/// texel (i mod 1024, i / 1024), which `shaders/texel_layout.wgsl` writes out for the kernels.
/// Rows of 16 KiB of f32 are a multiple of the 256-byte row pitch buffer-texture copies need, and
/// with 16384 rows (the usual 2-D limit) a texture holds 64 M values, a GPT-2 wte chunk.
pub const TEXTURE_ROW_TEXELS: u64 = 1024;

/// The most a readback copies through its staging buffer at a time (`read_f32_groups`).
pub const READBACK_CHUNK_BYTES: u64 = 256 << 20;

pub const NO_ADAPTER_HELP: &str = "no usable GPU adapter found; on Linux without a GPU install \
lavapipe (software Vulkan): apt-get install -y mesa-vulkan-drivers libvulkan1, or try --backend gl";

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see for the given choice.
pub fn list_adapters(choice: BackendChoice) -> Vec<wgpu::AdapterInfo> {
    let inst = instance(choice.backends());
    pollster::block_on(inst.enumerate_adapters(choice.backends()))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

/// Higher is better: real GPUs first, then software; native APIs before GL.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 1,
        _ => 0,
    };
    (device, api)
}

/// Kernel family chosen per adapter at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum KernelProfile {
    /// CPU rasterizers (lavapipe/llvmpipe): no shared memory, wide register blocks.
    CpuAdapter,
    /// Real GPUs.
    Gpu,
}

#[derive(Clone)]
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub profile: KernelProfile,
    /// Subgroup operations are enabled and subgroups are exactly 8 lanes wide.
    pub subgroups_of_8: bool,
    /// Whether naga's shader-side safety code is compiled in (see `shader_runtime_checks`).
    pub runtime_checks: wgpu::ShaderRuntimeChecks,
    /// The first validation / out-of-memory error wgpu reported since the last `check`.
    error: Arc<Mutex<Option<String>>>,
    /// The last readback's MAP_READ staging buffer, reused by the next readback that fits it
    /// (`read_f32_groups`): a fresh one costs a page fault per 4 KiB on first touch, which for
    /// R at T = 1024 (604 MB) took longer than the copy itself.
    readback: Arc<Mutex<Option<wgpu::Buffer>>>,
}

impl GpuContext {
    /// Picks the best adapter for `choice` and opens a device with that adapter's limits
    /// (wgpu's defaults cap buffers at 256 MiB; GPT-2 needs more).
    pub fn new(choice: BackendChoice) -> Result<Self> {
        if choice == BackendChoice::Cpu {
            return Err(Error::Gpu("--backend cpu has no GPU context".into()));
        }
        let inst = instance(choice.backends());
        let mut adapters = pollster::block_on(inst.enumerate_adapters(choice.backends()));
        adapters.sort_by_key(|a| std::cmp::Reverse(adapter_rank(&a.get_info())));
        let adapter = adapters.into_iter().next().ok_or_else(|| {
            Error::Gpu(if choice == BackendChoice::Auto {
                NO_ADAPTER_HELP.to_string()
            } else {
                format!("no {choice:?} adapter found ({NO_ADAPTER_HELP})")
            })
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let profile = if info.device_type == wgpu::DeviceType::Cpu {
            KernelProfile::CpuAdapter
        } else {
            KernelProfile::Gpu
        };
        // The CPU-adapter GEMMs are written for subgroups of exactly 8 lanes (llvmpipe's 256-bit SIMD).
        let subgroups_of_8 = adapter.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == 8
            && info.subgroup_max_size == 8;
        let required_features = if subgroups_of_8 {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("revattn"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", info.name)))?;
        let runtime_checks = shader_runtime_checks(&info);
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                // wgpu's messages span lines; keep the CLI's errors to one line.
                *slot = Some(
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }));
        Ok(GpuContext {
            adapter,
            device,
            queue,
            info,
            limits,
            profile,
            subgroups_of_8,
            runtime_checks,
            error,
            readback: Arc::new(Mutex::new(None)),
        })
    }

    /// "llvmpipe (LLVM 15.0.6, 256 bits) · Vulkan · Mesa 22.3.6"
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} · {:?} · {} {}",
            i.name, i.backend, i.driver, i.driver_info
        )
        .trim()
        .to_string()
    }

    /// Returns the first wgpu error reported since the last call, as `Error::Gpu`.
    pub fn check(&self, what: &str) -> Result<()> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(Error::Gpu(format!("{what}: {e}"))),
            None => Ok(()),
        }
    }

    /// Largest byte size one storage binding may have on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    pub fn shader(&self, label: &str, source: &str) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        // SAFETY: `shader_runtime_checks` drops checks only for this project's own kernels on
        // Vulkan CPU adapters, whose buffers stay bounds-checked by the driver (robustness2), and
        // every kernel bounds its loops by its parameters and indexes private arrays in range.
        unsafe {
            self.device
                .create_shader_module_trusted(desc, self.runtime_checks)
        }
    }

    pub fn pipeline(&self, module: &wgpu::ShaderModule, entry: &str) -> wgpu::ComputePipeline {
        self.specialized_pipeline(module, entry, &[])
    }

    /// `pipeline` with the module's `override` constants set: naga substitutes their values
    /// before the driver compiles the kernel, so the branches they decide are folded away and
    /// cost nothing at run time (llvmpipe runs both sides of a branch on a uniform value,
    /// masked, a per-lane loop for every buffer access in the skipped side).
    pub fn specialized_pipeline(
        &self,
        module: &wgpu::ShaderModule,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            })
    }

    /// A read-write storage buffer of `bytes` (rounded up to 16, so that it can also be bound
    /// as an array of vec4), zero-filled.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`, zero-padded to a multiple of 16 bytes like `storage`
    /// (a kernel reading it as an array of vec4 sees every element).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        if data.is_empty() {
            return self.storage(label, 4);
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut padded;
        let contents = if bytes.len() % 16 == 0 {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(16) * 16, 0);
            &padded[..]
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A texture holding `bytes` as texels of `format` in the texture GEMMs' layout (texel i at
    /// (i mod `TEXTURE_ROW_TEXELS`, i / `TEXTURE_ROW_TEXELS`), the last row zero-padded): a
    /// weight matrix they read without staging it every pass.
    pub fn upload_texels(
        &self,
        label: &str,
        bytes: &[u8],
        format: wgpu::TextureFormat,
    ) -> wgpu::TextureView {
        let texel_bytes = u64::from(format.block_copy_size(None).expect("a color format"));
        let rows = (bytes.len() as u64)
            .div_ceil(texel_bytes * TEXTURE_ROW_TEXELS)
            .max(1);
        let size = wgpu::Extent3d {
            width: TEXTURE_ROW_TEXELS as u32,
            height: rows as u32,
            depth_or_array_layers: 1,
        };
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            // read as read-only storage textures: llvmpipe inlines those loads; copied out by
            // `buffer_from_texels`
            usage: wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::COPY_DST
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let row_bytes = (texel_bytes * TEXTURE_ROW_TEXELS) as usize;
        let mut padded;
        let contents = if bytes.len() % row_bytes == 0 {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(rows as usize * row_bytes, 0);
            &padded[..]
        };
        self.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            contents,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes as u32),
                rows_per_image: None,
            },
            size,
        );
        texture.create_view(&Default::default())
    }

    /// A storage buffer holding the first `bytes` bytes of a texture `upload_texels` made (its
    /// texels in order, without the last row's padding): the same contents as `upload` of the
    /// bytes given to `upload_texels`, made on the adapter without the host copy. The copy is
    /// submitted now, so it runs before anything submitted later.
    pub fn buffer_from_texels(
        &self,
        label: &str,
        texels: &wgpu::TextureView,
        bytes: u64,
    ) -> wgpu::Buffer {
        let texture = texels.texture();
        let texel_bytes = u64::from(
            texture
                .format()
                .block_copy_size(None)
                .expect("a color format"),
        );
        let row_bytes = texel_bytes * TEXTURE_ROW_TEXELS;
        assert!(
            bytes % texel_bytes == 0 && bytes <= row_bytes * u64::from(texture.height()),
            "{bytes} bytes are not whole texels of the texture"
        );
        let buffer = self.storage(label, bytes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        // whole texture rows, then the part of the last row that holds data
        let (full_rows, rest) = (bytes / row_bytes, bytes % row_bytes);
        let pieces = [
            (0, TEXTURE_ROW_TEXELS, full_rows),
            (full_rows, rest / texel_bytes, u64::from(rest > 0)),
        ];
        for (row0, width, height) in pieces {
            if width == 0 || height == 0 {
                continue;
            }
            encoder.copy_texture_to_buffer(
                wgpu::TexelCopyTextureInfo {
                    texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: row0 as u32,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::TexelCopyBufferInfo {
                    buffer: &buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: row0 * row_bytes,
                        bytes_per_row: Some(row_bytes as u32),
                        rows_per_image: None,
                    },
                },
                wgpu::Extent3d {
                    width: width as u32,
                    height: height as u32,
                    depth_or_array_layers: 1,
                },
            );
        }
        self.queue.submit([encoder.finish()]);
        buffer
    }

    /// Copies `(buffer, f32 count)` pairs to the host: one submit and one map per chunk of at
    /// most `READBACK_CHUNK_BYTES` (see `read_f32_groups`).
    pub fn read_f32(&self, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let groups: Vec<&[(&wgpu::Buffer, usize)]> =
            sources.iter().map(std::slice::from_ref).collect();
        self.read_f32_groups(&groups)
    }

    /// Like `read_f32`, with each group's buffers concatenated into one vector, copied once
    /// from the mapped staging memory (R of every layer comes back as one (L, NH, T, T) vector).
    /// Reads of more than `READBACK_CHUNK_BYTES` go through the staging buffer in chunks: R of
    /// GPT-2 XL at T = 1024 (5 GB) is larger than any one buffer an adapter allows.
    pub fn read_f32_groups(&self, groups: &[&[(&wgpu::Buffer, usize)]]) -> Result<Vec<Vec<f32>>> {
        self.read_f32_groups_in_chunks(groups, READBACK_CHUNK_BYTES)
    }

    /// `read_f32_groups` with at most `max_chunk` bytes (a multiple of 8) through the staging
    /// buffer at a time.
    pub fn read_f32_groups_in_chunks(
        &self,
        groups: &[&[(&wgpu::Buffer, usize)]],
        max_chunk: u64,
    ) -> Result<Vec<Vec<f32>>> {
        assert!(
            max_chunk >= 8 && max_chunk % 8 == 0,
            "readback chunks are whole multiples of wgpu's map alignment (8 bytes)"
        );
        let counts: Vec<usize> = groups
            .iter()
            .map(|g| g.iter().map(|(_, n)| n).sum())
            .collect();
        let total = counts.iter().sum::<usize>() as u64 * 4;
        // zeroed, so that large vectors are fresh pages that the copying threads fault in
        let mut out: Vec<Vec<f32>> = counts.iter().map(|&n| vec![0.0f32; n]).collect();
        if total == 0 {
            return Ok(out);
        }
        let chunk = total.min(max_chunk.min(self.limits.max_buffer_size) & !7);
        // Reuse the last staging buffer if it fits and is not more than twice the size needed or
        // 64 MiB (so one large read does not pin its buffer for every small one after it, while
        // reads of different lengths in turn do not each make a buffer: making one costs
        // milliseconds on a GPU's driver).
        let mut cached = self.readback.lock().unwrap_or_else(|e| e.into_inner());
        let staging = match cached.take() {
            Some(b) if b.size() >= chunk && b.size() <= (2 * chunk).max(64 << 20) => b,
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: chunk,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        // Every source buffer's byte span [start, end) in the concatenated stream, and the stream
        // offset where each group's vector ends.
        let mut sources = Vec::new();
        let mut at = 0u64;
        for (buf, n) in groups.iter().flat_map(|g| g.iter()) {
            sources.push((*buf, at, at + 4 * *n as u64));
            at += 4 * *n as u64;
        }
        let group_ends: Vec<u64> = counts
            .iter()
            .scan(0u64, |end, &n| {
                *end += 4 * n as u64;
                Some(*end)
            })
            .collect();
        let mut chunk_start = 0u64;
        while chunk_start < total {
            let chunk_end = (chunk_start + chunk).min(total);
            let mut enc = self.device.create_command_encoder(&Default::default());
            for &(buf, start, end) in &sources {
                let (from, to) = (start.max(chunk_start), end.min(chunk_end));
                if from < to {
                    enc.copy_buffer_to_buffer(
                        buf,
                        from - start,
                        &staging,
                        from - chunk_start,
                        to - from,
                    );
                }
            }
            self.queue.submit([enc.finish()]);
            let len = chunk_end - chunk_start;
            let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
            staging
                .slice(..len)
                .map_async(wgpu::MapMode::Read, move |r| {
                    tx.send(r).ok();
                });
            self.wait()?;
            pollster::block_on(rx.receive())
                .ok_or_else(|| Error::Gpu("readback channel closed".into()))?
                .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
            {
                let view = staging
                    .get_mapped_range(..len)
                    .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
                let floats: &[f32] = bytemuck::cast_slice(&view);
                // copy the chunk's part of each group's span to its place in that group's vector
                let mut group_start = 0u64;
                for (vector, &group_end) in out.iter_mut().zip(&group_ends) {
                    let (from, to) = (group_start.max(chunk_start), group_end.min(chunk_end));
                    if from < to {
                        let src =
                            ((from - chunk_start) / 4) as usize..((to - chunk_start) / 4) as usize;
                        let dst = ((from - group_start) / 4) as usize;
                        copy_in_parallel(&mut vector[dst..dst + src.len()], &floats[src]);
                    }
                    group_start = group_end;
                }
            }
            staging.unmap();
            chunk_start = chunk_end;
        }
        *cached = Some(staging);
        self.check("readback")?;
        Ok(out)
    }

    /// Blocks until the queue is idle.
    /// Submits the copies that `upload`s have queued and waits for them, which frees their
    /// staging memory (wgpu keeps each upload's host-side staging copy until the next submit
    /// completes: uploading a model in one go would briefly hold its weights twice).
    pub fn flush_uploads(&self) -> Result<()> {
        self.queue.submit(std::iter::empty());
        self.wait()
    }

    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("device lost or timed out: {e}")))?;
        Ok(())
    }
}

/// `dst.copy_from_slice(src)`, split over up to 8 threads when it is over 16 MiB: most of a
/// large readback's time is the page faults of its fresh output, which threads take in parallel
/// (R at T = 1024 on a 16-core host).
fn copy_in_parallel(dst: &mut [f32], src: &[f32]) {
    const PARALLEL_FLOATS: usize = 4 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || dst.len() < PARALLEL_FLOATS {
        dst.copy_from_slice(src);
        return;
    }
    let part = dst.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (d, s) in dst.chunks_mut(part).zip(src.chunks(part)) {
            scope.spawn(move || d.copy_from_slice(s));
        }
    });
}

/// MemAvailable from /proc/meminfo (Linux), in bytes.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// naga compiles safety code into every shader by default: a clamp on each private-array index, a
/// counter on each loop (against infinite loops) and guards on integer division. On a real GPU that
/// costs little; llvmpipe runs it per lane on the CPU, where it slows the tight GEMM loops
/// (docs/BENCHMARKS.md). On Vulkan CPU adapters (lavapipe), which keep every storage
/// buffer access bounds-checked in the driver (robustBufferAccess2, which wgpu enables), the
/// project's kernels are compiled without it. Elsewhere, and whenever `REVATTN_SHADER_CHECKS=1`
/// is set (debugging a kernel), wgpu's checked default applies.
fn shader_runtime_checks(info: &wgpu::AdapterInfo) -> wgpu::ShaderRuntimeChecks {
    let lavapipe =
        info.device_type == wgpu::DeviceType::Cpu && info.backend == wgpu::Backend::Vulkan;
    let forced = std::env::var("REVATTN_SHADER_CHECKS").is_ok_and(|v| v == "1");
    if lavapipe && !forced {
        wgpu::ShaderRuntimeChecks::unchecked()
    } else {
        wgpu::ShaderRuntimeChecks::checked()
    }
}
