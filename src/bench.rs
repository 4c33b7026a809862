//! `revattn bench`: RA latency (forward + backward + RA readback for every head, `nll` loss) per
//! sequence length: the cold first run (buffer allocation, plan building, shader JIT) apart from
//! the warm median, and peak host memory; the growth from one length to the next, from warm runs
//! round-robin over the lengths; GFLOP/s of every GEMM shape (on real GPUs beside the portable
//! kernels' on the same shape); where one RA pass spends
//! its time per kernel (GEMMs, attention with its GFLOP/s, the rest); batched forward throughput
//! (B prompts of mixed lengths, right-padded); the GPU buffers held. Results go to stdout and,
//! optionally, JSON.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::{BackendChoice, GpuContext, KernelProfile};
use crate::layers::WeightFormat;
use crate::loss::{LossKind, Sequence, TrainBatch};
use crate::model::Model;
use crate::pass::{ForwardOptions, PassTimings, Readback};

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub model: Option<PathBuf>,
    pub seq_lens: Vec<usize>,
    pub runs: usize,
    pub json: Option<PathBuf>,
    /// Skip the GEMM table, the kernel profile and the batched forward.
    pub latency_only: bool,
    pub backend: BackendChoice,
    /// How the adapter stores the weight matrices.
    pub weights: WeightFormat,
}

/// One sequence length's measurements, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRow {
    pub t: usize,
    pub cold_ms: f64,
    pub warm_median_ms: f64,
    pub warm_min_ms: f64,
    /// Medians of the warm runs' stages.
    pub prepare_ms: f64,
    pub compute_ms: f64,
    pub readback_ms: f64,
    pub peak_rss_mib: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Peak resident set size of this process (Linux: VmHWM), in MiB; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// "model name" of the first CPU and the number of logical CPUs.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} logical CPUs, {}", std::env::consts::OS)
}

/// A deterministic T-token prompt (ids spread over the vocabulary) with an `nll` target.
fn synthetic_sequence(t: usize, vocab: usize) -> Sequence {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let ids: Vec<u32> = (0..t)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect();
    Sequence::from_ids(ids, LossKind::Nll, &[(vocab / 3) as u32], None)
}

pub fn run(args: &BenchArgs) -> Result<Vec<LatencyRow>> {
    if args.backend == BackendChoice::Cpu {
        return Err(Error::Input(
            "bench times the GPU engine; choose a GPU backend, not --backend cpu".into(),
        ));
    }
    if args.runs == 0 {
        return Err(Error::Input("--runs must be at least 1".into()));
    }
    let model = Model::load_or_embedded(args.model.as_deref())?;
    let cfg = model.config.clone();
    if let Some(&t) = args
        .seq_lens
        .iter()
        .find(|&&t| t == 0 || t > cfg.n_positions)
    {
        return Err(Error::Input(format!(
            "sequence length {t} is outside 1..={} (n_positions)",
            cfg.n_positions
        )));
    }
    let setup = Instant::now();
    let mut engine = Engine::for_inference(GpuContext::new(args.backend)?, &model, args.weights)?;
    let setup_ms = setup.elapsed().as_secs_f64() * 1e3;
    println!("machine  {}", machine());
    println!("adapter  {}", engine.ctx.describe());
    println!(
        "model    {} (L={} NH={} C={} V={}, {:.1} M parameters, {} weights); engine setup {:.0} ms",
        model.source,
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.parameter_count() as f64 / 1e6,
        args.weights.as_str(),
        setup_ms
    );
    let gemm_t = *args
        .seq_lens
        .iter()
        .find(|&&t| t == 64)
        .unwrap_or(&args.seq_lens[0]);
    let gemms = if args.latency_only {
        Vec::new()
    } else {
        // A GEMM of T = 64 takes tens of milliseconds on a CPU adapter and microseconds on a
        // GPU, where a submit's round trip would dominate a few.
        let (reps, portable_column) = match engine.ctx.profile {
            KernelProfile::CpuAdapter => (3, ""),
            KernelProfile::Gpu => (200, "portable"),
        };
        println!("\nGEMMs at T = {gemm_t} (C = A·B, A M×K), {reps} in one submit, best of 3:");
        let header = format!(
            "{:<28} {:>6} {:>6} {:>6} {:>10} {:>9} {:>9}",
            "shape", "M", "K", "N", "ms", "GFLOP/s", portable_column
        );
        println!("{}", header.trim_end());
        let gemms = gemm_throughput(&engine.ctx, &cfg, gemm_t, reps, args.weights)?;
        for g in &gemms {
            let portable = g.portable_gflops.map(|x| format!("{x:.2}"));
            let line = format!(
                "{:<28} {:>6} {:>6} {:>6} {:>10.3} {:>9.2} {:>9}",
                g.name,
                g.m,
                g.k,
                g.n,
                g.ms,
                g.gflops,
                portable.unwrap_or_default()
            );
            println!("{}", line.trim_end());
        }
        gemms
    };
    println!(
        "\nRA latency: forward + backward + RA readback, all {} heads, nll loss, {} warm runs (round-robin over the lengths)",
        cfg.n_layer * cfg.n_head,
        args.runs
    );
    println!(
        "{:>6} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "T", "cold ms", "warm med ms", "min ms", "prep ms", "gpu ms", "read ms", "RSS MiB"
    );
    let readback = Readback {
        attention: false,
        ..Readback::default()
    };
    // Each length's cold run in the order given, its peak RSS read right after (so with lengths
    // in increasing order, before any longer one has run); then the warm runs round-robin over
    // the lengths, every workspace kept, so that the lengths' times (and their ratios, below)
    // come from the same stretches of a noisy host.
    engine.keep_workspaces(args.seq_lens.len());
    let seqs: Vec<Sequence> = args
        .seq_lens
        .iter()
        .map(|&t| synthetic_sequence(t, cfg.vocab_size))
        .collect();
    let mut cold = Vec::new();
    for seq in &seqs {
        let start = Instant::now();
        engine.run(seq, &ForwardOptions::default(), readback)?;
        cold.push((start.elapsed().as_secs_f64() * 1e3, peak_rss_mib()));
    }
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); seqs.len()];
    let mut stages: Vec<Vec<PassTimings>> = vec![Vec::new(); seqs.len()];
    for _ in 0..args.runs {
        for (i, seq) in seqs.iter().enumerate() {
            let start = Instant::now();
            let out = engine.run(seq, &ForwardOptions::default(), readback)?;
            totals[i].push(start.elapsed().as_secs_f64() * 1e3);
            stages[i].push(out.timings);
        }
    }
    let mut rows = Vec::new();
    for (i, &t) in args.seq_lens.iter().enumerate() {
        let pick =
            |f: fn(&PassTimings) -> f64| median(&mut stages[i].iter().map(f).collect::<Vec<_>>());
        let row = LatencyRow {
            t,
            cold_ms: cold[i].0,
            warm_min_ms: totals[i].iter().copied().fold(f64::INFINITY, f64::min),
            warm_median_ms: median(&mut totals[i].clone()),
            prepare_ms: pick(|s| s.prepare_ms),
            compute_ms: pick(|s| s.compute_ms),
            readback_ms: pick(|s| s.readback_ms),
            peak_rss_mib: cold[i].1,
        };
        println!(
            "{:>6} {:>10.1} {:>12.1} {:>10.1} {:>10.2} {:>10.1} {:>10.2} {:>10.0}",
            row.t,
            row.cold_ms,
            row.warm_median_ms,
            row.warm_min_ms,
            row.prepare_ms,
            row.compute_ms,
            row.readback_ms,
            row.peak_rss_mib
        );
        rows.push(row);
    }
    // How the time grows from one length to the next: the ratio within each round, so that both
    // sides of a ratio see the same stretch of the host.
    let mut growth = Vec::new();
    for i in 1..seqs.len() {
        let mut ratios: Vec<f64> = totals[i]
            .iter()
            .zip(&totals[i - 1])
            .map(|(long, short)| long / short)
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let (from, to) = (args.seq_lens[i - 1], args.seq_lens[i]);
        let med = median(&mut ratios);
        println!(
            "T = {from} → {to}: {med:.2}× the time (median of {} rounds; {lo:.2}–{hi:.2})",
            ratios.len()
        );
        growth.push(json!({ "from": from, "to": to, "median": med, "min": lo, "max": hi }));
    }
    engine.keep_workspaces(1);
    // before the batched forward, whose lm_head at 32 loss rows makes wte's buffers in an engine
    // that keeps wte as textures
    let ra_gpu_mib = engine.gpu_bytes() as f64 / (1 << 20) as f64;
    let (ra_profile, batched) = if args.latency_only {
        (None, None)
    } else {
        (
            Some(profile_ra_pass(&mut engine, &cfg, gemm_t, args.runs)?),
            Some(batched_forward(&mut engine, &cfg, args.runs)?),
        )
    };
    let gpu_mib = engine.gpu_bytes() as f64 / (1 << 20) as f64;
    println!(
        "\nGPU buffers held: {ra_gpu_mib:.1} MiB after the RA passes (weights and the last \
         workspace), {gpu_mib:.1} MiB at the end; peak host RSS {:.0} MiB",
        peak_rss_mib()
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "ra_profile": ra_profile,
            "batched_forward": batched,
            "gpu_buffers_mib": gpu_mib,
            "ra_gpu_buffers_mib": ra_gpu_mib,
            "machine": machine(),
            "adapter": engine.ctx.describe(),
            "model": model.source,
            "weights": args.weights,
            "config": cfg,
            "engine_setup_ms": setup_ms,
            "runs": args.runs,
            "gemm_t": gemm_t,
            "gemms": gemms,
            "ra_latency": rows,
            "ra_growth": growth,
        });
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(&doc).expect("serializes"),
        )
        .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    }
    Ok(rows)
}

/// Where one pass spends its time: kernels timed one dispatch per submit, grouped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassProfile {
    pub t: usize,
    pub b: usize,
    /// The whole pass, from the round with the median overhead ratio: for RA its GPU time (one
    /// submit), for the batched forward the wall time of `run_batch`.
    pub pass_ms: f64,
    pub gemm_ms: f64,
    pub attention_ms: f64,
    pub other_ms: f64,
    /// Attention forward + backward FLOPs (causal: 6·B·T²·C·L for RA, 2·B·T²·C·L forward only)
    /// over its kernels' time.
    pub attention_gflops: f64,
    /// pass_ms / gemm_ms, the median over the rounds: the overhead target is ≤ 1.3.
    pub overhead_ratio: f64,
    /// Each round's ratio: one whole pass timed, then its kernels one by one, alternately, so
    /// that both halves of a ratio see the same stretch of a noisy host.
    pub overhead_ratios: Vec<f64>,
    /// (kernel label, dispatches, ms)
    pub kernels: Vec<(String, usize, f64)>,
}

fn summarize(
    kernels: Vec<(String, usize, f64)>,
    pass_ms: f64,
    attention_flops: f64,
    (b, t): (usize, usize),
) -> PassProfile {
    let sum = |pred: &dyn Fn(&str) -> bool| -> f64 {
        kernels.iter().filter(|k| pred(&k.0)).map(|k| k.2).sum()
    };
    // the fused lm_head_loss counts as a GEMM: its work is the lm_head's forward and backward GEMVs
    let is_gemm = |l: &str| l.starts_with("linear_") || l.starts_with("lm_head_");
    let gemm_ms = sum(&is_gemm);
    let attention_ms = sum(&|l: &str| l.starts_with("attention_"));
    let other_ms = sum(&|l: &str| !is_gemm(l) && !l.starts_with("attention_"));
    PassProfile {
        t,
        b,
        pass_ms,
        gemm_ms,
        attention_ms,
        other_ms,
        attention_gflops: attention_flops / (attention_ms.max(1e-9) * 1e6),
        overhead_ratio: pass_ms / gemm_ms.max(1e-9),
        overhead_ratios: Vec::new(),
        kernels,
    }
}

/// `rounds` rounds of one whole pass (`pass`, returning its ms) followed by the same plan kernel
/// by kernel (`Engine::profile_last`): the profile of the round with the median overhead ratio
/// (the upper middle one for an even number of rounds), with every round's ratio. The host runs in slow and fast stretches (1.5× apart within
/// minutes), so a pass and a profile timed minutes apart do not make a ratio.
fn interleaved_profile(
    engine: &mut Engine,
    rounds: usize,
    mut pass: impl FnMut(&mut Engine) -> Result<f64>,
    attention_flops: f64,
    (b, t): (usize, usize),
) -> Result<PassProfile> {
    let mut profiles = Vec::new();
    for _ in 0..rounds.max(1) {
        let pass_ms = pass(engine)?;
        let kernels = engine.profile_last()?;
        profiles.push(summarize(kernels, pass_ms, attention_flops, (b, t)));
    }
    let ratios: Vec<f64> = profiles.iter().map(|p| p.overhead_ratio).collect();
    profiles.sort_by(|x, y| x.overhead_ratio.total_cmp(&y.overhead_ratio));
    let mut p = profiles.swap_remove(profiles.len() / 2);
    p.overhead_ratios = ratios;
    Ok(p)
}

fn print_profile(title: &str, p: &PassProfile) {
    println!("\n{title}");
    println!(
        "{:<34} {:>6} {:>10} {:>7}",
        "kernel", "calls", "ms", "share"
    );
    let total: f64 = p.kernels.iter().map(|k| k.2).sum();
    for (label, n, ms) in &p.kernels {
        println!(
            "{label:<34} {n:>6} {ms:>10.2} {:>6.1}%",
            100.0 * ms / total.max(1e-9)
        );
    }
    println!(
        "GEMMs {:.1} ms, attention {:.1} ms ({:.2} GFLOP/s), other {:.1} ms; whole pass {:.1} ms = {:.2}× the GEMMs",
        p.gemm_ms, p.attention_ms, p.attention_gflops, p.other_ms, p.pass_ms, p.overhead_ratio
    );
    let ratios: Vec<String> = p
        .overhead_ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect();
    println!(
        "(the round with the median ratio of {} rounds, each a whole pass then its kernels one by one: {})",
        ratios.len(),
        ratios.join(", ")
    );
}

/// The RA pass at T, kernel by kernel.
fn profile_ra_pass(
    engine: &mut Engine,
    cfg: &crate::model::GptConfig,
    t: usize,
    runs: usize,
) -> Result<PassProfile> {
    let seq = synthetic_sequence(t, cfg.vocab_size);
    let readback = Readback {
        attention: false,
        ..Readback::default()
    };
    engine.run(&seq, &ForwardOptions::default(), readback)?; // warm
    let flops = 6.0 * (t * t * cfg.n_embd * cfg.n_layer) as f64;
    let pass = |engine: &mut Engine| -> Result<f64> {
        Ok(engine
            .run(&seq, &ForwardOptions::default(), readback)?
            .timings
            .compute_ms)
    };
    let p = interleaved_profile(engine, runs, pass, flops, (1, t))?;
    print_profile(
        &format!("One RA pass at T = {t}, kernel by kernel (one submit each):"),
        &p,
    );
    Ok(p)
}

/// Batched forward throughput: B = 32 prompts, lengths 32…64 (fixed seed), right-padded to 64,
/// the lm_head and loss at each prompt's last position (what the experiments' evaluation needs).
fn batched_forward(
    engine: &mut Engine,
    cfg: &crate::model::GptConfig,
    runs: usize,
) -> Result<serde_json::Value> {
    let (b, t) = (32usize, 64usize.min(cfg.n_positions));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut ids = vec![0u32; b * t];
    let mut targets = vec![-1i32; b * t];
    let mut lengths = Vec::new();
    for s in 0..b {
        let len = t / 2 + next(t - t / 2 + 1).min(t - t / 2);
        for p in 0..len {
            ids[s * t + p] = next(cfg.vocab_size) as u32;
        }
        targets[s * t + len - 1] = next(cfg.vocab_size) as i32;
        lengths.push(len);
    }
    let batch = TrainBatch { b, t, ids, targets };
    engine.run_batch(&batch, false, true, None)?; // cold
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        engine.run_batch(&batch, false, true, None)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(&mut times);
    let flops = 2.0 * (b * t * t * cfg.n_embd * cfg.n_layer) as f64;
    // the overhead rounds: a pass and its profile take seconds each here, so at most 3
    let pass = |engine: &mut Engine| -> Result<f64> {
        let start = Instant::now();
        engine.run_batch(&batch, false, true, None)?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let p = interleaved_profile(engine, runs.min(3), pass, flops, (b, t))?;
    let mean_len = lengths.iter().sum::<usize>() as f64 / b as f64;
    println!(
        "\nBatched forward: B = {b} prompts, lengths {}…{} (mean {mean_len:.1}) right-padded to {t}: {ms:.1} ms, {:.1} prompts/s",
        lengths.iter().min().unwrap(),
        lengths.iter().max().unwrap(),
        b as f64 / (ms / 1e3)
    );
    print_profile("Batched forward, kernel by kernel:", &p);
    Ok(json!({
        "b": b,
        "t": t,
        "lengths": lengths,
        "warm_median_ms": ms,
        "prompts_per_s": b as f64 / (ms / 1e3),
        "profile": p,
    }))
}

/// The instance of a bench GEMM with operation `op`: B of nn and nt is a weight matrix, read by
/// `weight_linear` where weights are not f32; B of tn is an f32 gradient.
fn instance_for<'a>(
    op: crate::layers::linear::GemmOp,
    f32_linear: &'a crate::layers::linear::Linear,
    weight_linear: &'a Option<crate::layers::linear::Linear>,
) -> &'a crate::layers::linear::Linear {
    use crate::layers::linear::GemmOp;
    match (op, weight_linear) {
        (GemmOp::NN | GemmOp::NT, Some(l)) => l,
        _ => f32_linear,
    }
}

/// One GEMM shape's throughput.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GemmRow {
    pub name: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// "nn", "nt" or "tn" (see `GemmOp`).
    pub op: String,
    pub ms: f64,
    pub gflops: f64,
    /// Real GPUs: the same shape on the portable kernels (`linear.wgsl`), for comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portable_gflops: Option<f64>,
}

/// Times each GEMM shape of the model at sequence length `t` (forward y = x·W, backward dx = dy·Wᵀ,
/// weight gradients dW = xᵀ·dy as training runs them, and the lm_head row), `reps` dispatches in
/// one submit, best of 3 submits. Operand B of the nn and nt shapes is a weight matrix, stored as
/// `weights` where `Engine::for_inference` keeps it (a texture read in place on CPU adapters);
/// the tn shapes (training) are always f32 buffers. Each time includes the staging of operands
/// into textures that the texture kernels need.
pub fn gemm_throughput(
    ctx: &GpuContext,
    cfg: &crate::model::GptConfig,
    t: usize,
    reps: usize,
    weights: WeightFormat,
) -> Result<Vec<GemmRow>> {
    use crate::layers::linear::{
        texel_format, texture_gemms_available, weights_fit_textures, Gemm, GemmKernels, GemmOp,
        Linear, Operand, Weight,
    };
    use crate::layers::{execute, max_scratch_texels, PlanBuilder, TextureBinding};
    let f32_linear = Linear::new(ctx);
    let weight_linear = (weights != WeightFormat::F32).then(|| Linear::for_weights(ctx, weights));
    let (c, f, v) = (cfg.n_embd, cfg.n_inner, cfg.vocab_size);
    // B of the nn and nt shapes as `Engine::for_inference` stores the weights: a texture where
    // the texture GEMMs read the matrices in place, else a buffer.
    let textured =
        texture_gemms_available(ctx) && weights_fit_textures(c, f, max_scratch_texels(ctx));
    use GemmOp::{NN, NT, TN};
    // (name, M, K, N, op): C (M×N) = op(A) (M×K) · op(B) (K×N)
    let shapes: Vec<(&str, usize, usize, usize, GemmOp)> = vec![
        ("qkv  x·W_attn", t, c, 3 * c, NN),
        ("attn proj  z·W_o", t, c, c, NN),
        ("fc  x·W_fc", t, c, f, NN),
        ("fc proj  h·W_proj", t, f, c, NN),
        ("qkv bwd  dqkv·W_attnᵀ", t, 3 * c, c, NT),
        ("attn proj bwd  dm·W_oᵀ", t, c, c, NT),
        ("fc bwd  dh·W_fcᵀ", t, f, c, NT),
        ("fc proj bwd  dx·W_projᵀ", t, c, f, NT),
        ("qkv dW  xᵀ·dqkv", c, t, 3 * c, TN),
        ("fc dW  xᵀ·dh", c, t, f, TN),
        ("fc proj dW  hᵀ·dx", f, t, c, TN),
        ("lm_head row  x·wteᵀ", 1, c, v.min(32_768), NT),
    ];
    // Real GPUs: the portable kernels timed beside the tiled ones the engine takes, the gain of
    // staging through workgroup memory shape by shape.
    let portable = (ctx.profile == KernelProfile::Gpu).then(|| {
        let f32_linear = Linear::with_kernels(ctx, GemmKernels::Portable, WeightFormat::F32);
        let weight_linear = (weights != WeightFormat::F32)
            .then(|| Linear::with_kernels(ctx, GemmKernels::Portable, weights));
        (f32_linear, weight_linear)
    });
    let mut rows = Vec::new();
    for (name, m, k, n, op) in shapes {
        let a = ctx.storage("a", 4 * (m * k) as u64);
        let b = ctx.storage("b", 4 * (k * n) as u64);
        let (lda, ldb) = match op {
            NN => (k, n),
            NT => (k, k),
            TN => (m, n),
        };
        let out = ctx.storage("c", 4 * (m * n) as u64);
        let weight_texture = (textured && op != TN && m > 1).then(|| {
            let bytes = vec![0u8; k * n * weights.bytes_per_weight()];
            ctx.upload_texels("bench weight", &bytes, texel_format(weights))
        });
        // the lm_head row reads wte's chunk from a texture, as the inference engine keeps it
        let lm_head_texture = (textured && m == 1).then(|| {
            let bytes = vec![0u8; k * n * weights.bytes_per_weight()];
            ctx.upload_texels("bench wte chunk", &bytes, texel_format(weights))
        });
        // ms per GEMM of `linear`'s choice for this shape
        let time = |linear: &Linear| -> Result<f64> {
            let mut plan = PlanBuilder::new(ctx);
            for _ in 0..reps {
                match (&weight_texture, op) {
                    (Some(w), NN) => linear.forward(
                        &mut plan,
                        &out,
                        &a,
                        Weight::Texture(w),
                        None,
                        None,
                        (m, k, n),
                    ),
                    // dx (m, n) = dy (m, k) · Wᵀ with W (n, k)
                    (Some(w), _) => {
                        linear.backward_input(&mut plan, &out, &a, Weight::Texture(w), (m, n, k))
                    }
                    (None, _) => {
                        let g = Gemm {
                            m,
                            n,
                            k,
                            a: Operand::new(&a, lda),
                            b: Operand::new(&b, ldb),
                            op,
                            c: Operand::new(&out, n),
                            bias: None,
                            residual: None,
                            accumulate: false,
                            gelu: None,
                            a_texture: None,
                            out_texture: None,
                        };
                        match &lm_head_texture {
                            Some(w) => linear.gemm_with_staged_b(
                                &mut plan,
                                "bench",
                                &g,
                                Some(TextureBinding::View(w.clone())),
                            ),
                            None => linear.gemm(&mut plan, "bench", &g),
                        }
                    }
                }
            }
            let plan = plan.finish();
            execute(ctx, &plan)?; // JIT + warm-up
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let start = Instant::now();
                execute(ctx, &plan)?;
                best = best.min(start.elapsed().as_secs_f64() * 1e3 / reps as f64);
            }
            Ok(best)
        };
        let gflops = |ms: f64| 2.0 * (m * n * k) as f64 / (ms * 1e6);
        let ms = time(instance_for(op, &f32_linear, &weight_linear))?;
        let portable_gflops = match &portable {
            Some((f32_linear, weight_linear)) => {
                Some(gflops(time(instance_for(op, f32_linear, weight_linear))?))
            }
            None => None,
        };
        rows.push(GemmRow {
            name: name.to_string(),
            m,
            k,
            n,
            op: format!("{op:?}").to_lowercase(),
            ms,
            gflops: gflops(ms),
            portable_gflops,
        });
    }
    Ok(rows)
}
