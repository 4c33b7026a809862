//! `revattn bench`: RA latency (forward + backward + RA readback for every head, `nll` loss) per
//! sequence length: the cold first run (buffer allocation, plan building, shader JIT) apart from
//! the warm median, and peak host memory. Results go to stdout and, optionally, JSON.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::BackendChoice;
use crate::gpu::GpuContext;
use crate::loss::{LossKind, Sequence};
use crate::model::Model;
use crate::pass::{ForwardOptions, PassTimings, Readback};

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub model: Option<PathBuf>,
    pub seq_lens: Vec<usize>,
    pub runs: usize,
    pub json: Option<PathBuf>,
    pub backend: BackendChoice,
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
    let mut engine = Engine::new(GpuContext::new(args.backend)?, &model)?;
    let setup_ms = setup.elapsed().as_secs_f64() * 1e3;
    println!("machine  {}", machine());
    println!("adapter  {}", engine.ctx.describe());
    println!(
        "model    {} (L={} NH={} C={} V={}, {:.1} M parameters); engine setup {:.0} ms",
        model.source,
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.parameter_count() as f64 / 1e6,
        setup_ms
    );
    let gemm_t = *args
        .seq_lens
        .iter()
        .find(|&&t| t == 64)
        .unwrap_or(&args.seq_lens[0]);
    println!("\nGEMMs at T = {gemm_t} (C = A·B, A M×K):");
    println!(
        "{:<28} {:>6} {:>6} {:>6} {:>10} {:>9}",
        "shape", "M", "K", "N", "ms", "GFLOP/s"
    );
    let gemms = gemm_throughput(&engine.ctx, &cfg, gemm_t, 3)?;
    for g in &gemms {
        println!(
            "{:<28} {:>6} {:>6} {:>6} {:>10.3} {:>9.2}",
            g.name, g.m, g.k, g.n, g.ms, g.gflops
        );
    }
    println!(
        "\nRA latency: forward + backward + RA readback, all {} heads, nll loss, {} warm runs",
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
    let mut rows = Vec::new();
    for &t in &args.seq_lens {
        let seq = synthetic_sequence(t, cfg.vocab_size);
        let start = Instant::now();
        engine.run(&seq, &ForwardOptions::default(), readback)?;
        let cold_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut total = Vec::new();
        let mut stages: Vec<PassTimings> = Vec::new();
        for _ in 0..args.runs {
            let start = Instant::now();
            let out = engine.run(&seq, &ForwardOptions::default(), readback)?;
            total.push(start.elapsed().as_secs_f64() * 1e3);
            stages.push(out.timings);
        }
        let pick =
            |f: fn(&PassTimings) -> f64| median(&mut stages.iter().map(f).collect::<Vec<_>>());
        let row = LatencyRow {
            t,
            cold_ms,
            warm_min_ms: total.iter().copied().fold(f64::INFINITY, f64::min),
            warm_median_ms: median(&mut total),
            prepare_ms: pick(|s| s.prepare_ms),
            compute_ms: pick(|s| s.compute_ms),
            readback_ms: pick(|s| s.readback_ms),
            peak_rss_mib: peak_rss_mib(),
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
    if let Some(path) = &args.json {
        let doc = json!({
            "machine": machine(),
            "adapter": engine.ctx.describe(),
            "model": model.source,
            "config": cfg,
            "engine_setup_ms": setup_ms,
            "runs": args.runs,
            "gemm_t": gemm_t,
            "gemms": gemms,
            "ra_latency": rows,
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
}

/// Times each GEMM shape of the model at sequence length `t` (forward y = x·W, backward dx = dy·Wᵀ,
/// weight gradients dW = xᵀ·dy as training runs them, and the lm_head row), `reps` dispatches in
/// one submit, best of 3 submits.
pub fn gemm_throughput(
    ctx: &GpuContext,
    cfg: &crate::model::GptConfig,
    t: usize,
    reps: usize,
) -> Result<Vec<GemmRow>> {
    use crate::layers::linear::{Gemm, GemmOp, Linear, Operand};
    use crate::layers::{execute, PlanBuilder};
    let linear = Linear::new(ctx);
    let (c, f, v) = (cfg.n_embd, cfg.n_inner, cfg.vocab_size);
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
        let mut plan = PlanBuilder::new(ctx);
        for _ in 0..reps {
            linear.gemm(
                &mut plan,
                "bench",
                &Gemm {
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
                },
            );
        }
        let plan = plan.finish();
        execute(ctx, &plan)?; // JIT + warm-up
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            execute(ctx, &plan)?;
            best = best.min(start.elapsed().as_secs_f64() * 1e3 / reps as f64);
        }
        let gflops = 2.0 * (m * n * k) as f64 / (best * 1e6);
        rows.push(GemmRow {
            name: name.to_string(),
            m,
            k,
            n,
            op: format!("{op:?}").to_lowercase(),
            ms: best,
            gflops,
        });
    }
    Ok(rows)
}
