//! The `revattn` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use revattn::bench::{self, BenchArgs};
use revattn::gpu::{self, BackendChoice, GpuContext};
use revattn::init::{self, InitArgs};
use revattn::layers::WeightFormat;
use revattn::loss::LossKind;
use revattn::maps::{self, MapsArgs};
use revattn::optim::AdamW;
use revattn::tasks;
use revattn::train::{self, TrainArgs, TrainSettings};
use revattn::Result;

/// Reversed Attention for GPT-2: the attention map the backward pass computes, R = dL/d(QKᵀ),
/// for every layer and head, on any GPU wgpu reaches (Vulkan, Metal, DX12, GL) or lavapipe.
#[derive(Parser)]
#[command(name = "revattn", version, about, long_about = None)]
struct Cli {
    /// Graphics API to run on (auto = the best adapter found; cpu = the float64 reference).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, global = true)]
    backend: BackendChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute attention and Reversed Attention of every head for one prompt and write
    /// maps.safetensors, summary.json and PNG heatmaps.
    Maps {
        /// HF GPT-2 directory (config.json, model.safetensors, tokenizer.json); default: the
        /// small model embedded in revattn.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The prompt, encoded exactly as given.
        #[arg(long, required_unless_present = "task", conflicts_with = "task")]
        prompt: Option<String>,
        /// The target continuation (e.g. " Florence", with its leading space).
        #[arg(long, required_unless_present = "task", conflicts_with = "task")]
        target: Option<String>,
        /// Instead of --prompt/--target: a held-out few-shot prompt of this task of the task suite
        /// (`<|endoftext|>Q: x\nA: y\n\n…Q: x_q\nA:`, target " y_q"), e.g. antonym or size.
        #[arg(long)]
        task: Option<String>,
        /// Demonstrations in the --task prompt.
        #[arg(long, default_value_t = 5, requires = "task")]
        shots: usize,
        /// Which held-out query of the task.
        #[arg(long, default_value_t = 0, requires = "task")]
        query: usize,
        /// The task suite for --task (a `revattn tasks` directory); default: the one the embedded
        /// model was trained on.
        #[arg(long, requires = "task")]
        tasks: Option<PathBuf>,
        /// nll: −Σ log p(target ids) at the last prompt position (official demo loss);
        /// ce: teacher-forced mean cross-entropy over the target tokens of prompt+target
        /// (official experiments' loss); logit-diff: logit[foil] − logit[target].
        #[arg(long, value_enum, default_value_t = LossKind::Nll)]
        loss: LossKind,
        /// The competing continuation for --loss logit-diff.
        #[arg(long)]
        foil: Option<String>,
        /// Prepend <|endoftext|> to the prompt.
        #[arg(long)]
        bos: bool,
        /// How many heads (by RA norm) get their own PNG.
        #[arg(long, default_value_t = 4)]
        top_k: usize,
        /// Output directory (created; files appear only once all are written).
        #[arg(long)]
        out: PathBuf,
        /// Storage of the weight matrices on the adapter: f32, or f16 (half the memory; arithmetic
        /// stays f32, so results move by f16's rounding of the weights, about 1e-3 relative).
        #[arg(long, value_enum, default_value_t = WeightFormat::F32)]
        weights: WeightFormat,
    },
    /// Time RA (forward + backward + RA readback, all heads, nll loss) per sequence length:
    /// cold first run and warm median, with peak host memory, and how the time grows from one
    /// length to the next (warm runs go round-robin over the lengths).
    Bench {
        /// HF GPT-2 directory; default: the embedded model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Sequence lengths to time.
        #[arg(long, value_delimiter = ',', default_values_t = [16usize, 64, 256])]
        seq: Vec<usize>,
        /// Warm runs per length (the median is reported); also the rounds of the RA pass's
        /// overhead profile.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Only the RA latency table (no GEMM table, kernel profile or batched forward): for
        /// large models, where those take many minutes.
        #[arg(long)]
        latency_only: bool,
        /// Storage of the weight matrices on the adapter: f32, or f16 (half the memory; arithmetic
        /// stays f32, so results move by f16's rounding of the weights, about 1e-3 relative).
        #[arg(long, value_enum, default_value_t = WeightFormat::F32)]
        weights: WeightFormat,
    },
    /// Write a random-init GPT-2 in HF layout (config.json, model.safetensors, tokenizer.json),
    /// initialised like HF's GPT-2, deterministic for a seed.
    Init {
        /// gpt2, gpt2-medium, gpt2-large, gpt2-xl, or L,H,C (layers, heads, n_embd).
        #[arg(long, default_value = "gpt2")]
        config: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A tokenizer.json to copy into the model (its size sets vocab_size; default 50257).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a synthetic in-context-learning task suite (deterministic for a seed): 6 tasks over
    /// the same made-up input words, each answering from its own words (antonym, translation,
    /// category, country, color, size), as abstractive/<task>.json in the function_vectors
    /// format, a tokenizer.json with one token per word, and suite.json (seed, vocabulary, prompt
    /// template, train/test split rule).
    Tasks {
        /// Output directory (new or empty; files appear only once all are written).
        #[arg(long)]
        out: PathBuf,
        /// The same seed gives byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a GPT-2 on a task suite (`revattn tasks`) on the GPU: forward, backward with weight
    /// gradients and AdamW in WGSL. Batches of random n-shot episodes (n = 0 … --max-shots) with
    /// the loss on every answer token; periodic 0/1/5/10-shot evaluation on held-out queries;
    /// checkpoints in HF layout (plus optimizer state), resumable, deterministic per seed and
    /// adapter.
    Train {
        /// Task suite directory written by `revattn tasks`.
        #[arg(long)]
        tasks: PathBuf,
        /// L,H,C: layers, heads, n_embd (n_inner = 4·C).
        #[arg(long, default_value = "4,4,64")]
        config: String,
        /// Optimizer steps (a resumed run may raise it).
        #[arg(long, default_value_t = 2000)]
        steps: usize,
        /// Episodes per step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Longest episode in tokens; also the model's n_positions.
        #[arg(long, default_value_t = 160)]
        seq: usize,
        /// Peak learning rate (after warmup; cosine decay to --min-lr-ratio · lr).
        #[arg(long, default_value_t = 3e-3)]
        lr: f32,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        #[arg(long, default_value_t = 0.1)]
        min_lr_ratio: f32,
        /// AdamW decoupled weight decay (matrices and embeddings only).
        #[arg(long, default_value_t = 0.1)]
        weight_decay: f32,
        /// Global gradient-norm clip (0 = off).
        #[arg(long, default_value_t = 1.0)]
        grad_clip: f32,
        /// Most demonstrations in a training episode.
        #[arg(long, default_value_t = 10)]
        max_shots: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Evaluate every this many steps (0 = only at the end).
        #[arg(long, default_value_t = 250)]
        eval_every: usize,
        /// Shot counts of every evaluation.
        #[arg(long, value_delimiter = ',', default_values_t = [0usize, 1, 5, 10])]
        eval_shots: Vec<usize>,
        /// Held-out queries per task and shot count in periodic evaluations (the final one uses all).
        #[arg(long, default_value_t = 64)]
        eval_queries: usize,
        /// Write a checkpoint every this many steps (0 = only at the end).
        #[arg(long, default_value_t = 250)]
        checkpoint_every: usize,
        /// Continue the run whose checkpoint is in --out (same settings; --steps may grow).
        #[arg(long)]
        resume: bool,
        /// Stop after this step with a checkpoint, to continue later with --resume (the learning
        /// rate schedule is still that of --steps).
        #[arg(long)]
        until: Option<usize>,
        /// Output directory: the model in HF layout, optimizer.safetensors, train_state.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the adapters wgpu finds, the one revattn would choose, its limits and features.
    Info,
}

fn train_command(args: &TrainArgs, backend: BackendChoice) -> Result<()> {
    if backend == BackendChoice::Cpu {
        return Err(revattn::Error::Input(
            "training runs on a GPU adapter; --backend cpu is the reference for single passes"
                .into(),
        ));
    }
    let ctx = GpuContext::new(backend)?;
    eprintln!("training on {}", ctx.describe());
    let report = train::run(args, ctx)?;
    println!(
        "trained {} steps in {:.0} s on {}; final loss {:.4}",
        report.steps, report.train_seconds, report.adapter, report.final_loss
    );
    println!("held-out top-1 accuracy:\n{}", report.evaluation.table());
    println!("wrote {}", args.out.display());
    Ok(())
}

fn info(choice: BackendChoice) -> Result<()> {
    let adapters = gpu::list_adapters(if choice == BackendChoice::Cpu {
        BackendChoice::Auto
    } else {
        choice
    });
    println!("adapters found: {}", adapters.len());
    for a in &adapters {
        println!(
            "  - {} ({:?}, {:?}) driver: {} {}",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        );
    }
    if choice == BackendChoice::Cpu {
        println!("chosen: cpu reference (f64), no GPU");
        return Ok(());
    }
    let ctx = GpuContext::new(choice)?;
    println!("chosen: {}", ctx.describe());
    println!("kernel profile: {:?}", ctx.profile);
    println!(
        "subgroups: {}..{} lanes; 8-lane subgroup kernels {}",
        ctx.info.subgroup_min_size,
        ctx.info.subgroup_max_size,
        if ctx.subgroups_of_8 {
            "enabled"
        } else {
            "not available"
        }
    );
    let gemms = if revattn::layers::linear::texture_gemms_available(&ctx) {
        "texture tiles (operands staged into storage textures), buffer kernels for other shapes"
    } else if revattn::layers::linear::tiled_gemms_chosen(&ctx) {
        "tiled (64×64 tiles through workgroup memory, split along K where C has few tiles)"
    } else {
        "portable"
    };
    println!("GEMM kernels: {gemms}");
    let l = &ctx.limits;
    println!("limits:");
    println!(
        "  max_buffer_size                      {}",
        l.max_buffer_size
    );
    println!(
        "  max_storage_buffer_binding_size      {}",
        l.max_storage_buffer_binding_size
    );
    println!(
        "  max_storage_buffers_per_shader_stage {}",
        l.max_storage_buffers_per_shader_stage
    );
    println!(
        "  max_compute_workgroups_per_dimension {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  max_compute_invocations_per_workgroup {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_compute_workgroup_storage_size   {}",
        l.max_compute_workgroup_storage_size
    );
    println!(
        "  min_uniform_buffer_offset_alignment  {}",
        l.min_uniform_buffer_offset_alignment
    );
    println!("features: {:?}", ctx.adapter.features());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Maps {
            model,
            prompt,
            target,
            task,
            shots,
            query,
            tasks: suite,
            loss,
            foil,
            bos,
            top_k,
            out,
            weights,
        } => {
            let text = match (task, prompt, target) {
                (Some(task), _, _) => tasks::few_shot_prompt(suite.as_deref(), &task, shots, query),
                (None, Some(prompt), Some(target)) => Ok((prompt, target)),
                _ => unreachable!("clap requires --prompt and --target without --task"),
            };
            text.and_then(|(prompt, target)| {
                let args = MapsArgs {
                    model,
                    prompt,
                    target,
                    loss,
                    foil,
                    bos,
                    top_k,
                    out,
                    backend: cli.backend,
                    weights,
                };
                maps::run(&args).map(|report| print!("{}", maps::format_report(&report, &args)))
            })
        }
        Command::Bench {
            model,
            seq,
            runs,
            json,
            latency_only,
            weights,
        } => {
            let args = BenchArgs {
                model,
                seq_lens: seq,
                runs,
                json,
                latency_only,
                backend: cli.backend,
                weights,
            };
            bench::run(&args).map(|_| ())
        }
        Command::Init {
            config,
            seed,
            tokenizer,
            out,
        } => {
            let args = InitArgs {
                config,
                seed,
                tokenizer,
                out,
            };
            init::run(&args).map(|cfg| println!("{}", init::describe(&cfg, &args.out)))
        }
        Command::Tasks { out, seed } => tasks::run(&out, seed).map(|report| print!("{report}")),
        Command::Train {
            tasks,
            config,
            steps,
            batch,
            seq,
            lr,
            warmup,
            min_lr_ratio,
            weight_decay,
            grad_clip,
            max_shots,
            seed,
            eval_every,
            eval_shots,
            eval_queries,
            checkpoint_every,
            resume,
            until,
            out,
        } => {
            let args = TrainArgs {
                tasks,
                out,
                resume,
                until,
                settings: TrainSettings {
                    config,
                    seq,
                    steps,
                    batch,
                    max_shots,
                    seed,
                    warmup,
                    min_lr_ratio,
                    adamw: AdamW {
                        lr,
                        weight_decay,
                        grad_clip,
                        ..AdamW::default()
                    },
                    eval_every,
                    eval_shots,
                    eval_queries,
                    checkpoint_every,
                },
            };
            train_command(&args, cli.backend)
        }
        Command::Info => info(cli.backend),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
