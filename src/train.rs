//! `revattn train`: trains a GPT-2 on a task suite (`revattn tasks`) with the engine's own
//! backward pass and AdamW, both in WGSL, and evaluates n-shot accuracy on held-out queries.
//!
//! One step: B episodes, each a random task with n demonstrations drawn from the task's train
//! pairs (`tasks::train_episode`), in the paper's template; n ∈ [0, max_shots] is drawn once per
//! step so a batch's episodes have similar lengths; the loss is the mean NLL
//! of every answer token (each demonstration's and the query's), so one episode trains every shot
//! count up to n. The episodes are right-padded to a length rounded up to 16 (a handful of plan
//! shapes, each kept by the engine), run forward + backward with weight gradients, and the AdamW
//! step is recorded into the same command buffer: one submit per step, only the loss comes back.
//!
//! Deterministic for a seed and adapter: step k's batch comes from the stream `train/k` of the
//! seed, so a resumed run draws exactly the batches the uninterrupted run would have; every kernel
//! has a single writer per output and a fixed summation order.
//!
//! Checkpoints (`--out DIR`, every `--checkpoint-every` steps and at the end) are HF GPT-2
//! directories (config.json, model.safetensors, tokenizer.json) plus optimizer.safetensors (the
//! AdamW moments) and train_state.json (step, settings, losses, evaluations). Each file is
//! written to a temporary name and renamed, train_state.json last; it records a hash of the two
//! safetensors files, and resuming refuses files from different checkpoints.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::loss::TrainBatch;
use crate::model::{GptConfig, Model, Tensor, Weights};
use crate::optim::{AdamW, GpuAdamW};
use crate::output::StagedDir;
use crate::tasks::{self, Episode, Rng, TaskSuite};
use crate::tokenizer::Gpt2Tokenizer;

/// Padded lengths are multiples of this (few distinct plan shapes).
const LENGTH_QUANTUM: usize = 16;

/// Everything that defines a training run (saved in train_state.json; a resumed run must match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// L,H,C of the model.
    pub config: String,
    /// Longest episode (the model's n_positions).
    pub seq: usize,
    pub steps: usize,
    pub batch: usize,
    pub max_shots: usize,
    pub seed: u64,
    pub warmup: usize,
    /// The learning rate decays by a cosine from `lr` to `lr · min_lr_ratio`.
    pub min_lr_ratio: f32,
    pub adamw: AdamW,
    pub eval_every: usize,
    /// Shot counts of every evaluation (PAPER.md's n-shot evaluation uses 0, 1, 5, 10).
    pub eval_shots: Vec<usize>,
    /// Held-out queries per task and shot count in the periodic evaluations (the final one uses
    /// every test query).
    pub eval_queries: usize,
    pub checkpoint_every: usize,
}

#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub tasks: PathBuf,
    pub out: PathBuf,
    pub settings: TrainSettings,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Stop after this step with a checkpoint (a long run split over sessions; continue with
    /// `resume`). The schedule is still that of `settings.steps`.
    pub until: Option<usize>,
}

/// Top-1 accuracy of one task at one shot count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskAccuracy {
    pub task: String,
    pub kind: String,
    pub shots: usize,
    pub queries: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// One evaluation: per task and shot count, and the mean over tasks per shot count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub step: usize,
    pub per_task: Vec<TaskAccuracy>,
    /// (shots, mean accuracy over tasks)
    pub mean: Vec<(usize, f64)>,
}

impl Evaluation {
    pub fn mean_at(&self, shots: usize) -> Option<f64> {
        self.mean.iter().find(|(s, _)| *s == shots).map(|(_, a)| *a)
    }

    /// A table: one row per task, one column per shot count.
    pub fn table(&self) -> String {
        let shots: Vec<usize> = self.mean.iter().map(|(s, _)| *s).collect();
        let mut out = format!("{:<14}", "task");
        for s in &shots {
            out += &format!("{:>9}", format!("{s}-shot"));
        }
        out.push('\n');
        let mut tasks: Vec<&str> = Vec::new();
        for a in &self.per_task {
            if !tasks.contains(&a.task.as_str()) {
                tasks.push(&a.task);
            }
        }
        for task in tasks {
            out += &format!("{task:<14}");
            for s in &shots {
                let acc = self
                    .per_task
                    .iter()
                    .find(|a| a.task == task && a.shots == *s)
                    .map(|a| a.accuracy)
                    .unwrap_or(f64::NAN);
                out += &format!("{:>9.3}", acc);
            }
            out.push('\n');
        }
        out += &format!("{:<14}", "mean");
        for (_, m) in &self.mean {
            out += &format!("{m:>9.3}");
        }
        out.push('\n');
        out
    }
}

/// train_state.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    pub step: usize,
    pub settings: TrainSettings,
    pub adapter: String,
    /// Seconds of training so far (all sessions).
    pub train_seconds: f64,
    /// (step, loss of that step's batch), every step
    pub losses: Vec<(usize, f64)>,
    pub evaluations: Vec<Evaluation>,
    /// FNV-1a of model.safetensors and optimizer.safetensors as written with this state:
    /// resuming refuses files from different checkpoints.
    pub model_fnv: String,
    pub optimizer_fnv: String,
}

/// FNV-1a (64-bit) of `bytes`, as 16 hex digits.
fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

const STATE_FORMAT: &str = "revattn-train/1";

/// `--config L,H,C` for a model over `vocab` tokens with `seq` positions.
pub fn model_config(spec: &str, vocab: usize, seq: usize) -> Result<GptConfig> {
    let mut cfg = crate::init::parse_config(spec, Some(vocab))?;
    cfg.n_positions = seq;
    Ok(cfg)
}

/// Learning rate at `step` (0-based): linear warmup, then cosine decay to lr·min_lr_ratio.
pub fn learning_rate(s: &TrainSettings, step: usize) -> f32 {
    let lr = s.adamw.lr;
    if step < s.warmup {
        return lr * (step + 1) as f32 / s.warmup as f32;
    }
    let span = (s.steps - s.warmup).max(1) as f32;
    let progress = ((step - s.warmup) as f32 / span).min(1.0);
    let min = lr * s.min_lr_ratio;
    min + 0.5 * (lr - min) * (1.0 + (std::f32::consts::PI * progress).cos())
}

/// Step `step`'s batch: `batch` episodes of random tasks, all with the same number of
/// demonstrations n (drawn uniformly from 0..=max_shots per step, so the episodes have similar
/// lengths and little padding), fewer where an episode would exceed --seq.
pub fn training_batch(
    suite: &TaskSuite,
    tok: &Gpt2Tokenizer,
    s: &TrainSettings,
    step: usize,
) -> Result<TrainBatch> {
    let mut rng = Rng::stream(s.seed, &format!("train/{step}"));
    let n = rng.below(s.max_shots + 1);
    let mut episodes = Vec::with_capacity(s.batch);
    for _ in 0..s.batch {
        let task = &suite.tasks[rng.below(suite.tasks.len())];
        let mut shots = n;
        let episode = loop {
            let (demos, query) = tasks::train_episode(task, shots, &mut rng);
            let e = tasks::encode_episode(tok, &demos, query)?;
            if e.ids.len() <= s.seq {
                break e;
            }
            if shots == 0 {
                return Err(Error::Input(format!(
                    "--seq {} is too short for a 0-shot episode of task {}",
                    s.seq, task.name
                )));
            }
            shots -= 1; // too long for --seq: fewer demonstrations
        };
        episodes.push(episode);
    }
    Ok(pad_episodes(&episodes, s.seq, true))
}

/// Right-pads episodes to one length (a multiple of LENGTH_QUANTUM, at most `max_len`) with
/// <|endoftext|> (id 0). Targets: every answer token when `all_answers`, else the query's only.
fn pad_episodes(episodes: &[Episode], max_len: usize, all_answers: bool) -> TrainBatch {
    let longest = episodes.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let t = longest
        .div_ceil(LENGTH_QUANTUM)
        .saturating_mul(LENGTH_QUANTUM)
        .min(max_len)
        .max(longest);
    let b = episodes.len();
    let mut ids = vec![0u32; b * t];
    let mut targets = vec![-1i32; b * t];
    for (i, e) in episodes.iter().enumerate() {
        ids[i * t..i * t + e.ids.len()].copy_from_slice(&e.ids);
        let answers = if all_answers {
            &e.answer_positions[..]
        } else {
            &e.answer_positions[e.answer_positions.len() - 1..]
        };
        for &p in answers {
            // The token at p is predicted at p − 1.
            targets[i * t + p - 1] = e.ids[p] as i32;
        }
    }
    TrainBatch { b, t, ids, targets }
}

/// Top-1 accuracy on each task's held-out queries (`tasks::eval_prompts`) at each shot count,
/// through the batched forward. `max_queries` caps the queries per task and shot count.
pub fn evaluate(
    engine: &mut Engine,
    suite: &TaskSuite,
    tok: &Gpt2Tokenizer,
    shots: &[usize],
    max_queries: Option<usize>,
    step: usize,
) -> Result<Evaluation> {
    const EVAL_BATCH: usize = 32;
    let v = engine.config.vocab_size;
    let max_len = engine.config.n_positions;
    let mut per_task = Vec::new();
    for &n in shots {
        for task in &suite.tasks {
            let mut prompts = tasks::eval_prompts(task, n, suite.seed);
            if let Some(cap) = max_queries {
                prompts.truncate(cap);
            }
            let episodes = prompts
                .iter()
                .map(|(demos, query)| tasks::encode_episode(tok, demos, query))
                .collect::<Result<Vec<_>>>()?;
            if let Some(e) = episodes.iter().find(|e| e.ids.len() > max_len) {
                return Err(Error::Input(format!(
                    "a {n}-shot {} prompt has {} tokens; the model has {max_len} positions",
                    task.name,
                    e.ids.len()
                )));
            }
            let mut correct = 0;
            for chunk in episodes.chunks(EVAL_BATCH) {
                let batch = pad_episodes(chunk, max_len, false);
                let out = engine.run_batch(&batch, false, true, None)?;
                let logits = out.logits.expect("logits were asked for");
                // One target per episode (its query), so logits row i is episode i's query.
                for (i, e) in chunk.iter().enumerate() {
                    let scores = &logits[i * v..(i + 1) * v];
                    let best = argmax(scores);
                    correct += (best == *e.ids.last().expect("non-empty") as usize) as usize;
                }
            }
            let queries = episodes.len();
            per_task.push(TaskAccuracy {
                task: task.name.clone(),
                kind: task.kind.to_string(),
                shots: n,
                queries,
                correct,
                accuracy: correct as f64 / queries.max(1) as f64,
            });
        }
    }
    let mean = shots
        .iter()
        .map(|&n| {
            let accs: Vec<f64> = per_task
                .iter()
                .filter(|a| a.shots == n)
                .map(|a| a.accuracy)
                .collect();
            (n, accs.iter().sum::<f64>() / accs.len().max(1) as f64)
        })
        .collect();
    Ok(Evaluation {
        step,
        per_task,
        mean,
    })
}

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// What a finished run reports.
pub struct TrainReport {
    pub steps: usize,
    pub final_loss: f64,
    pub evaluation: Evaluation,
    pub train_seconds: f64,
    pub adapter: String,
}

/// Runs (or resumes) training and writes the final checkpoint.
pub fn run(args: &TrainArgs, ctx: GpuContext) -> Result<TrainReport> {
    let s = &args.settings;
    validate(s)?;
    let suite = tasks::load(&args.tasks)?;
    let tok = suite.tokenizer()?;
    let cfg = model_config(&s.config, suite.vocab_size(), s.seq)?;
    check_eval_lengths(&suite, &tok, s)?;
    let adapter = ctx.describe();

    let (weights, mut state, moments) = if args.resume {
        let (w, st, m) = load_checkpoint(&args.out, &cfg, s)?;
        (w, st, Some(m))
    } else {
        if args.out.join("train_state.json").exists() {
            return Err(Error::Input(format!(
                "{} already holds a training run; pass --resume to continue it or pick another --out",
                args.out.display()
            )));
        }
        let state = TrainState {
            format: STATE_FORMAT.into(),
            step: 0,
            settings: s.clone(),
            adapter: adapter.clone(),
            train_seconds: 0.0,
            losses: Vec::new(),
            evaluations: Vec::new(),
            model_fnv: String::new(),
            optimizer_fnv: String::new(),
        };
        (crate::init::random_weights(&cfg, s.seed)?, state, None)
    };
    let model = Model {
        config: cfg.clone(),
        weights,
        tokenizer: suite.tokenizer()?,
        source: "revattn train".into(),
    };
    let mut engine = Engine::new(ctx, &model)?;
    drop(model);
    engine.keep_workspaces(s.seq.div_ceil(LENGTH_QUANTUM) + 1);
    let mut opt = GpuAdamW::for_engine(&mut engine, s.adamw);
    if let Some(m) = &moments {
        opt.upload_moments(&engine.ctx, m, state.step as u32);
    }

    let stop = args.until.unwrap_or(s.steps).min(s.steps);
    if state.step >= stop {
        return Err(Error::Input(format!(
            "--resume: the checkpoint is already at step {}, nothing to train",
            state.step
        )));
    }
    let progress = Progress::new(stop, state.step);
    let session_start = Instant::now();
    let seconds_before = state.train_seconds;
    let (mut loss_sum, mut loss_n, mut last_loss) = (0.0, 0usize, f64::NAN);
    let mut tokens_since = 0usize;
    let mut since = Instant::now();
    while state.step < stop {
        let step = state.step;
        let batch = training_batch(&suite, &tok, s, step)?;
        let lr = learning_rate(s, step);
        let plan = opt.prepare_step(&engine.ctx, lr);
        let out = engine.run_batch(&batch, true, false, Some(plan))?;
        if !out.loss.is_finite() {
            return Err(Error::Gpu(format!(
                "the loss became {} at step {step}; lower --lr",
                out.loss
            )));
        }
        state.step += 1;
        last_loss = out.loss;
        loss_sum += out.loss;
        loss_n += 1;
        tokens_since += batch.b * batch.t;
        let done = state.step == stop;
        state.losses.push((state.step, out.loss));
        if state.step % 10 == 0 || done {
            let elapsed = since.elapsed().as_secs_f64();
            progress.update(
                state.step,
                loss_sum / loss_n as f64,
                lr,
                tokens_since as f64 / elapsed,
            );
            (loss_sum, loss_n, tokens_since, since) = (0.0, 0, 0, Instant::now());
        }
        if s.eval_every > 0 && state.step % s.eval_every == 0 && !done {
            let eval = evaluate(
                &mut engine,
                &suite,
                &tok,
                &s.eval_shots,
                Some(s.eval_queries),
                state.step,
            )?;
            progress.message(&format!(
                "step {}: held-out top-1 accuracy {}",
                state.step,
                eval.mean
                    .iter()
                    .map(|(n, a)| format!("{n}-shot {a:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            state.evaluations.push(eval);
        }
        if s.checkpoint_every > 0 && state.step % s.checkpoint_every == 0 && !done {
            state.train_seconds = seconds_before + session_start.elapsed().as_secs_f64();
            write_checkpoint(&args.out, &engine, &opt, &mut state, &suite)?;
        }
    }
    state.train_seconds = seconds_before + session_start.elapsed().as_secs_f64();
    // Every test query at the end of the schedule (and recorded); a run stopped by --until
    // reports the periodic sample.
    let at_end = state.step == s.steps;
    let sample = (!at_end).then_some(s.eval_queries);
    let evaluation = evaluate(&mut engine, &suite, &tok, &s.eval_shots, sample, state.step)?;
    if at_end {
        state.evaluations.push(evaluation.clone());
    }
    write_checkpoint(&args.out, &engine, &opt, &mut state, &suite)?;
    Ok(TrainReport {
        steps: state.step,
        final_loss: last_loss,
        evaluation,
        train_seconds: state.train_seconds,
        adapter,
    })
}

fn validate(s: &TrainSettings) -> Result<()> {
    let bad = |m: &str| Err(Error::Input(m.to_string()));
    if s.steps == 0 {
        return bad("--steps must be at least 1");
    }
    if s.batch == 0 {
        return bad("--batch must be at least 1");
    }
    if s.seq < 8 {
        return bad("--seq must be at least 8 (a 0-shot prompt)");
    }
    if !(s.adamw.lr > 0.0 && s.adamw.lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    if !(0.0..1.0).contains(&s.adamw.beta1) || !(0.0..1.0).contains(&s.adamw.beta2) {
        return bad("AdamW betas must lie in [0, 1)");
    }
    if s.warmup >= s.steps {
        return bad("--warmup must be smaller than --steps");
    }
    if s.eval_shots.is_empty() {
        return bad("--eval-shots needs at least one shot count");
    }
    Ok(())
}

/// Fails early (before any training) when an evaluation prompt would not fit --seq.
fn check_eval_lengths(suite: &TaskSuite, tok: &Gpt2Tokenizer, s: &TrainSettings) -> Result<()> {
    for &n in &s.eval_shots {
        for task in &suite.tasks {
            for (demos, query) in tasks::eval_prompts(task, n, suite.seed) {
                let len = tasks::encode_episode(tok, &demos, query)?.ids.len();
                if len > s.seq {
                    return Err(Error::Input(format!(
                        "--seq {}: a {n}-shot {} evaluation prompt has {len} tokens; raise --seq or drop {n} from --eval-shots",
                        s.seq, task.name
                    )));
                }
            }
        }
    }
    Ok(())
}

fn write_checkpoint(
    out: &Path,
    engine: &Engine,
    opt: &GpuAdamW,
    state: &mut TrainState,
    suite: &TaskSuite,
) -> Result<()> {
    let weights = engine.download_weights()?;
    let moments = opt.download_moments(&engine.ctx)?;
    let staged = StagedDir::create(out)?;
    let eot = suite.tokenizer()?.end_of_text().ok();
    staged.write("config.json", engine.config.to_hf_json(eot).as_bytes())?;
    staged.write("tokenizer.json", &suite.tokenizer_json)?;
    // One metadata key only: safetensors writes a HashMap, whose order would vary run to run.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let model_bytes = weights.to_safetensors(Some(meta))?;
    let optimizer_bytes = moments_bytes(&weights, &moments)?;
    state.model_fnv = fnv1a(&model_bytes);
    state.optimizer_fnv = fnv1a(&optimizer_bytes);
    staged.write("model.safetensors", &model_bytes)?;
    staged.write("optimizer.safetensors", &optimizer_bytes)?;
    let json = serde_json::to_string_pretty(state).expect("state serializes");
    staged.write("train_state.json", json.as_bytes())?;
    staged.commit()
}

fn moments_bytes(weights: &Weights, moments: &[(Vec<f32>, Vec<f32>)]) -> Result<Vec<u8>> {
    let named = weights.named();
    let mut views = Vec::new();
    for ((name, t), (m, v)) in named.iter().zip(moments) {
        for (kind, data) in [("m", m), ("v", v)] {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(data),
            )
            .expect("moment shape matches");
            views.push((format!("{kind}.{name}"), view));
        }
    }
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Output(format!("cannot serialize the optimizer state: {e}")))
}

type Moments = Vec<(Vec<f32>, Vec<f32>)>;

fn load_checkpoint(
    out: &Path,
    cfg: &GptConfig,
    s: &TrainSettings,
) -> Result<(Weights, TrainState, Moments)> {
    let state_path = out.join("train_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "{} is not a revattn training state: {e}",
            state_path.display()
        ))
    })?;
    if state.format != STATE_FORMAT {
        return Err(Error::Input(format!(
            "{}: unknown format {:?}",
            state_path.display(),
            state.format
        )));
    }
    let mut expected = state.settings.clone();
    expected.steps = s.steps; // a resumed run may train longer
    if &expected != s {
        return Err(Error::Input(format!(
            "--resume: the settings differ from the run in {} (only --steps may change)",
            out.display()
        )));
    }
    if state.step > s.steps {
        return Err(Error::Input(format!(
            "--resume: the checkpoint is at step {}, beyond --steps {}",
            state.step, s.steps
        )));
    }
    let model = Model::load(out)?;
    if model.config.n_layer != cfg.n_layer
        || model.config.n_embd != cfg.n_embd
        || model.config.n_head != cfg.n_head
        || model.config.vocab_size != cfg.vocab_size
        || model.config.n_positions != cfg.n_positions
    {
        return Err(Error::Input(
            "--resume: the checkpoint's config.json differs from --config".into(),
        ));
    }
    let read_bytes = |name: &str| {
        let path = out.join(name);
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    };
    let opt_bytes = read_bytes("optimizer.safetensors")?;
    if fnv1a(&read_bytes("model.safetensors")?) != state.model_fnv
        || fnv1a(&opt_bytes) != state.optimizer_fnv
    {
        return Err(Error::Input(format!(
            "--resume: model.safetensors or optimizer.safetensors in {} is not the one train_state.json (step {}) was written with",
            out.display(),
            state.step
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&opt_bytes)
        .map_err(|e| Error::Input(format!("optimizer.safetensors: {e}")))?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| Error::Input(format!("optimizer.safetensors has no {name}")))?;
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let moments = cfg
        .parameter_shapes()
        .iter()
        .map(|(name, _)| Ok((read(&format!("m.{name}"))?, read(&format!("v.{name}"))?)))
        .collect::<Result<Vec<_>>>()?;
    // Own the tensors: the checkpoint files are rewritten while training goes on.
    let owned = model
        .weights
        .named()
        .into_iter()
        .map(|(_, t)| Tensor::from_vec(t.shape.clone(), t.data().to_vec()))
        .collect();
    Ok((Weights::from_named(cfg, owned)?, state, moments))
}

/// A one-line progress display on a terminal, plain lines otherwise.
struct Progress {
    total: usize,
    start_step: usize,
    start: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: usize, start_step: usize) -> Self {
        Progress {
            total,
            start_step,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&self, step: usize, loss: f64, lr: f32, tokens_per_s: f64) {
        let done = step - self.start_step;
        let per_step = self.start.elapsed().as_secs_f64() / done.max(1) as f64;
        let eta = per_step * (self.total - step) as f64;
        let width = 24;
        let filled = width * step / self.total.max(1);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let line = format!(
            "[{bar}] step {step}/{} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s eta {}",
            self.total,
            clock(eta)
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            if step == self.total {
                eprintln!();
            }
        } else if step % ((self.total / 100).max(10).div_ceil(10) * 10) == 0 || step == self.total {
            // update() is called every 10 steps: print on a multiple of 10 near 1% of the run
            eprintln!("{line}");
        }
    }

    fn message(&self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{text}");
    }
}

fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
