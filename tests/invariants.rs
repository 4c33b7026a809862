//! Properties RA must have whatever the model (PAPER.md §1.2), checked on the GPU engine, plus the
//! engine's experiment switches (patching, head ablation) and buffer reuse against the reference.

mod common;

use common::{assert_close, gpu, Rng};
use revattn::engine::Engine;
use revattn::gpu::KernelProfile;
use revattn::layers::WeightFormat;
use revattn::loss::{LossKind, LossRequest, Sequence};
use revattn::model::Model;
use revattn::pass::Backend;
use revattn::pass::{AttentionPatch, ForwardOptions, PassOutput, Readback};
use revattn::reference::{self, CpuPass, CpuReference};

/// A pass read back with attention and dL/dh against the float64 reference: loss, logits and A
/// at 1e-5 relative, R and dL/dh at 1e-4.
fn assert_pass_matches(tag: &str, g: &PassOutput, c: &CpuPass) {
    assert_close(&format!("{tag} loss"), &[g.loss as f32], &[c.loss], 1e-5);
    assert_close(&format!("{tag} logits"), &g.logits, &c.logits, 1e-5);
    assert_close(
        &format!("{tag} attention"),
        g.attention.as_ref().unwrap(),
        &c.attention,
        1e-5,
    );
    assert_close(
        &format!("{tag} RA"),
        g.reversed_attention.as_ref().unwrap(),
        &c.reversed_attention,
        1e-4,
    );
    assert_close(
        &format!("{tag} dL/dh"),
        g.hidden_grads.as_ref().unwrap(),
        &c.hidden_grads,
        1e-4,
    );
}

/// One RA pass of a fresh inference engine on `ctx`: `MemoryEstimate` (what `maps` prints and
/// checks before it starts) is exactly the bytes the engine then holds.
fn assert_estimate_matches(
    tag: &str,
    ctx: revattn::gpu::GpuContext,
    model: &Model,
    seq: &Sequence,
    format: WeightFormat,
) {
    let mut engine = Engine::for_inference(ctx, model, format).unwrap();
    engine
        .run(seq, &ForwardOptions::default(), Readback::default())
        .unwrap();
    let want = revattn::engine::MemoryEstimate::for_sequence(
        &model.config,
        seq.len(),
        seq.loss.rows.len(),
        true,
        format,
        revattn::engine::AdapterLimits::of(&engine.ctx),
    );
    println!(
        "{tag}: estimate {} B, engine holds {} B",
        want.total(),
        engine.gpu_bytes()
    );
    assert_eq!(want.total(), engine.gpu_bytes(), "{tag}");
}

fn fixture(name: &str) -> Model {
    Model::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name),
    )
    .unwrap()
}

fn sequence(model: &Model, prompt: &str, target: &str, kind: LossKind, bos: bool) -> Sequence {
    sequence_with_foil(model, prompt, target, " Rome", kind, bos)
}

fn sequence_with_foil(
    model: &Model,
    prompt: &str,
    target: &str,
    foil: &str,
    kind: LossKind,
    bos: bool,
) -> Sequence {
    let req = LossRequest {
        prompt,
        target,
        foil: Some(foil),
        kind,
        bos,
    };
    Sequence::build(&model.tokenizer, &req, model.config.n_positions).unwrap()
}

/// (prompt, target, foil) triples the model's tokenizer knows.
fn prompts_for(model: &Model) -> Vec<(String, String, String)> {
    if model.source.starts_with("embedded") {
        // The trained organism: few-shot prompts of its own task suite (seed 0, as shipped).
        let suite = revattn::tasks::generate(0);
        ["antonym", "size"]
            .iter()
            .flat_map(|name| {
                let pairs = &suite.task(name).unwrap().train;
                [1usize, 3].map(|n| {
                    let demos: Vec<_> = pairs[..n].iter().collect();
                    let (prompt, target) = revattn::tasks::prompt(&demos, &pairs[n]);
                    (prompt, target, format!(" {}", pairs[0].output))
                })
            })
            .collect()
    } else {
        [
            ("The", " city"),
            (
                "I like Italy and France. I visited the city of",
                " Florence",
            ),
            ("Q: 12 + 7\nA: 19\n\nQ: 3 + 4\nA:", " 7"),
        ]
        .map(|(p, t)| (p.to_string(), t.to_string(), " Rome".to_string()))
        .to_vec()
    }
}

#[test]
fn ra_is_lower_triangular_with_zero_row_sums() {
    let models = [
        Model::embedded().unwrap(),
        fixture("tiny-bpe"),
        fixture("tiny-odd"),
        fixture("tiny-prefixed"),
    ];
    for model in &models {
        let prompts = prompts_for(model);
        let mut engine = Engine::new(gpu(), model).unwrap();
        let (nl, nh) = (model.config.n_layer, model.config.n_head);
        for (prompt, target, foil) in &prompts {
            for kind in [LossKind::Nll, LossKind::Ce, LossKind::LogitDiff] {
                let seq =
                    sequence_with_foil(model, prompt, target, foil, kind, kind == LossKind::Ce);
                let t = seq.len();
                let out = engine
                    .run(&seq, &ForwardOptions::default(), Readback::default())
                    .unwrap();
                let ra = out.reversed_attention.unwrap();
                // f32 rounding in dA − rowsum(A ⊙ dA) grows as a row's A peaks, so row sums are compared
                // with the largest row mass Σ_j |R_ij| over all heads (as every tolerance here: max|Δ|/max|value|).
                let (mut worst_row_sum, mut max_r) = (0.0f64, 0.0f64);
                for lh in 0..nl * nh {
                    let m = &ra[lh * t * t..(lh + 1) * t * t];
                    assert_eq!(m[0], 0.0, "R[0,0] must be exactly 0");
                    let (mut head_mass, mut head_sum) = (0.0f64, 0.0f64);
                    for i in 0..t {
                        let row = &m[i * t..(i + 1) * t];
                        assert!(
                            row[i + 1..].iter().all(|&x| x == 0.0),
                            "RA above the diagonal must be exactly 0"
                        );
                        head_mass = head_mass.max(row.iter().map(|&x| (x as f64).abs()).sum());
                        head_sum = head_sum.max(row.iter().map(|&x| x as f64).sum::<f64>().abs());
                        // rows after the last loss row get no gradient at all
                        if i >= seq.loss.rows.end {
                            assert!(
                                row.iter().all(|&x| x == 0.0),
                                "row {i} after the loss rows must be 0"
                            );
                        }
                    }
                    max_r = max_r.max(head_mass);
                    worst_row_sum = worst_row_sum.max(head_sum);
                }
                if max_r > 0.0 {
                    worst_row_sum /= max_r;
                }
                println!("{} T{t} {:<10} max row |R|₁ {max_r:.2e}  worst |Σ_j R_ij| / max Σ_j|R_ij| {worst_row_sum:.2e}", model.source, kind.name());
                // With T = 1 every row has a single entry and R ≡ 0 exactly.
                assert_eq!(max_r > 0.0, t > 1, "RA must be non-zero exactly when T > 1");
                assert!(
                    worst_row_sum < 1e-5,
                    "RA rows must sum to 0 (relative {worst_row_sum:.2e})"
                );
            }
        }
    }
}

#[test]
fn patching_and_ablation_match_reference_and_buffers_are_reused() {
    let model = fixture("tiny-prefixed");
    let cfg = &model.config;
    let mut engine = Engine::new(gpu(), &model).unwrap();
    let mut cpu = CpuReference::new(&model);
    let readback = Readback {
        hidden_grads: true,
        ..Readback::default()
    };
    let seq = sequence(
        &model,
        "I like Italy and France. I visited the city of",
        " Florence",
        LossKind::Ce,
        false,
    );
    let t = seq.len();
    let mut rng = Rng(11);
    let maps: Vec<f32> = rng.vec(cfg.n_layer * cfg.n_head * t * t, 0.5);
    let options = [
        ForwardOptions::default(),
        ForwardOptions {
            patch: Some(AttentionPatch { eta: -0.7, maps }),
            ablated_heads: vec![(0, 1), (2, 3)],
        },
        ForwardOptions::default(), // back to the plain plan: reused buffers must not leak state
    ];
    for (k, opt) in options.iter().enumerate() {
        let g = engine.run(&seq, opt, readback).unwrap();
        let c = Backend::run(&mut cpu, &seq, opt, readback).unwrap();
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        assert_close(&format!("[{k}] loss"), &[g.loss as f32], &[c.loss], 1e-5);
        assert_close(&format!("[{k}] logits"), &g.logits, &f64s(&c.logits), 1e-5);
        assert_close(
            &format!("[{k}] attention"),
            g.attention.as_ref().unwrap(),
            &f64s(c.attention.as_ref().unwrap()),
            1e-5,
        );
        assert_close(
            &format!("[{k}] RA"),
            g.reversed_attention.as_ref().unwrap(),
            &f64s(c.reversed_attention.as_ref().unwrap()),
            1e-4,
        );
        assert_close(
            &format!("[{k}] dL/dh"),
            g.hidden_grads.as_ref().unwrap(),
            &f64s(c.hidden_grads.as_ref().unwrap()),
            1e-4,
        );
        if !opt.ablated_heads.is_empty() {
            let ra = g.reversed_attention.as_ref().unwrap();
            for &(l, h) in &opt.ablated_heads {
                let start = (l * cfg.n_head + h) * t * t;
                assert!(
                    ra[start..start + t * t].iter().all(|&x| x == 0.0),
                    "ablated head L{l}H{h} has RA"
                );
            }
        }
    }
    // A different length after the patched run, then the first sequence again.
    let short = sequence(&model, "The", " city of", LossKind::Nll, true);
    let a = engine
        .run(&short, &ForwardOptions::default(), readback)
        .unwrap();
    let b = reference::forward_backward(cfg, &model.weights, &short, &ForwardOptions::default());
    assert_close(
        "short sequence RA after reuse",
        a.reversed_attention.as_ref().unwrap(),
        &b.reversed_attention,
        1e-4,
    );
}

#[test]
fn forward_only_readback_skips_the_backward() {
    let model = fixture("tiny-odd");
    let mut engine = Engine::new(gpu(), &model).unwrap();
    let seq = sequence(
        &model,
        "I visited the city of",
        " Florence",
        LossKind::Nll,
        false,
    );
    let full = engine
        .run(&seq, &ForwardOptions::default(), Readback::default())
        .unwrap();
    let fwd = engine
        .run(
            &seq,
            &ForwardOptions::default(),
            Readback {
                backward: false,
                reversed_attention: false,
                ..Readback::default()
            },
        )
        .unwrap();
    assert!(fwd.reversed_attention.is_none());
    assert_eq!(fwd.loss, full.loss);
    assert_eq!(fwd.logits, full.logits);
}

/// RA alone stops the backward at layer 0's R (nothing reads what lies below it); R and the loss
/// are exactly those of a pass that goes on to dL/dh_0.
#[test]
fn ra_alone_stops_at_the_first_layer_with_the_same_maps() {
    for name in ["tiny-odd", "tiny-bpe"] {
        let model = fixture(name);
        let mut engine = Engine::for_inference(gpu(), &model, WeightFormat::F32).unwrap();
        let seq = sequence(
            &model,
            "I like Italy and France. I visited",
            " Florence",
            LossKind::Nll,
            true,
        );
        let with_dh = Readback {
            hidden_grads: true,
            ..Readback::default()
        };
        let full = engine
            .run(&seq, &ForwardOptions::default(), with_dh)
            .unwrap();
        let ra_only = engine
            .run(&seq, &ForwardOptions::default(), Readback::default())
            .unwrap();
        assert!(full.hidden_grads.is_some() && ra_only.hidden_grads.is_none());
        assert_eq!(
            ra_only.reversed_attention, full.reversed_attention,
            "{name}"
        );
        assert_eq!(ra_only.attention, full.attention, "{name}");
        assert_eq!(ra_only.loss, full.loss, "{name}");
    }
}

/// More than 8 loss rows (teacher-forced cross-entropy over a long target): the lm_head runs as
/// GEMMs over wte's buffers, which an engine that keeps wte as textures (CPU adapters) copies from
/// them on the adapter for the first such pass. Loss, logits and RA match the reference on the
/// first pass and on the next (which reuses the buffers), for both weight formats.
#[test]
fn many_loss_rows_read_wte_buffers_made_from_its_textures() {
    let target = " Florence and Rome, Milan and Venice, Naples and Turin, Genoa and Bologna, Pisa";
    for name in ["tiny-bpe", "tiny-prefixed"] {
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let model = fixture(name);
            let mut rounded = fixture(name);
            if format == WeightFormat::F16 {
                rounded.weights.round_f16_matrices();
            }
            let mut engine = Engine::for_inference(gpu(), &model, format).unwrap();
            let seq = sequence(
                &model,
                "I like Italy and France.",
                target,
                LossKind::Ce,
                true,
            );
            assert!(seq.loss.rows.len() > 8, "{name}: 8 target tokens or fewer");
            let want = reference::forward_backward(
                &rounded.config,
                &rounded.weights,
                &seq,
                &ForwardOptions::default(),
            );
            for pass in ["first pass", "second pass"] {
                let g = engine
                    .run(&seq, &ForwardOptions::default(), Readback::default())
                    .unwrap();
                let tag = format!(
                    "{name} {} ce over {} rows, {pass}",
                    format.as_str(),
                    seq.loss.rows.len()
                );
                assert_close(&format!("{tag} loss"), &[g.loss as f32], &[want.loss], 1e-5);
                assert_close(&format!("{tag} logits"), &g.logits, &want.logits, 1e-5);
                assert_close(
                    &format!("{tag} RA"),
                    g.reversed_attention.as_ref().unwrap(),
                    &want.reversed_attention,
                    1e-4,
                );
            }
        }
    }
}

/// `MemoryEstimate` (what `maps` prints and checks before it starts) is exactly what the engine
/// then holds, for both weight formats.
#[test]
fn the_memory_estimate_matches_the_buffers_the_engine_holds() {
    // and a one-block model, whose only block runs its attention projection and MLP at the loss
    // rows alone (with the tiny-bpe tokenizer)
    let one_block = || {
        let tiny = fixture("tiny-bpe");
        let config = revattn::init::parse_config("1,4,64", Some(tiny.config.vocab_size)).unwrap();
        Model {
            weights: revattn::init::random_weights(&config, 5).unwrap(),
            config,
            source: "one random block".into(),
            ..tiny
        }
    };
    for name in ["tiny-bpe", "tiny-odd", "tiny-prefixed", "one-block"] {
        let model = if name == "one-block" {
            one_block()
        } else {
            fixture(name)
        };
        // teacher-forced over more than 8 target tokens: the lm_head runs unfused, so an engine
        // that keeps wte as textures makes its buffers for this pass (and holds them after)
        let long_target =
            " Florence and Rome, Milan and Venice, Naples and Turin, Genoa and Bologna, Pisa";
        for (kind, format, target) in [
            (LossKind::Nll, WeightFormat::F32, " Florence"),
            (LossKind::Ce, WeightFormat::F32, " Florence"),
            (LossKind::Nll, WeightFormat::F16, " Florence"),
            (LossKind::Ce, WeightFormat::F32, long_target),
            (LossKind::Ce, WeightFormat::F16, long_target),
        ] {
            let seq = sequence(&model, "I like Italy and France.", target, kind, true);
            if target == long_target {
                assert!(
                    seq.loss.rows.len() > 8,
                    "{name}: the long target has 8 tokens or fewer"
                );
            }
            let tag = format!(
                "{name} {} {} {} loss rows",
                kind.name(),
                format.as_str(),
                seq.loss.rows.len()
            );
            assert_estimate_matches(&tag, gpu(), &model, &seq, format);
        }
    }
}

/// `--weights f16`: the engine storing its matrices as f16 computes what the float64 reference
/// computes with those matrices rounded to f16, at the same tolerances as f32 weights (the
/// unpacking is exact; only the storage changed). Training refuses such an engine.
#[test]
fn f16_weights_match_the_reference_on_rounded_weights() {
    for name in ["tiny-odd", "tiny-prefixed", "tiny-bpe"] {
        let model = fixture(name);
        let mut rounded = fixture(name);
        rounded.weights.round_f16_matrices();
        let mut engine = Engine::for_inference(gpu(), &model, WeightFormat::F16).unwrap();
        let readback = Readback {
            hidden_grads: true,
            ..Readback::default()
        };
        for kind in [LossKind::Nll, LossKind::Ce] {
            let seq = sequence(
                &model,
                "I like Italy and France. I visited",
                " Florence",
                kind,
                true,
            );
            let g = engine
                .run(&seq, &ForwardOptions::default(), readback)
                .unwrap();
            let c = reference::forward_backward(
                &rounded.config,
                &rounded.weights,
                &seq,
                &ForwardOptions::default(),
            );
            let tag = format!("{name} {} f16 weights", kind.name());
            assert_pass_matches(&tag, &g, &c);
        }
        let batch = revattn::loss::TrainBatch {
            b: 1,
            t: 2,
            ids: vec![1, 2],
            targets: vec![2, -1],
        };
        let err = engine.run_batch(&batch, true, false, None).err().unwrap();
        assert!(err.to_string().contains("needs f32 weights"), "{err}");
    }
}

/// The kernels real GPUs take (`KernelProfile::Gpu`: tiled GEMMs through workgroup memory,
/// split along K where they have few tiles, workgroup-reduction rows, weights in buffers), run
/// here on whatever adapter the tests have: loss, logits, attention, RA and dL/dh match the
/// float64 reference for both weight formats, at one loss row (the lm_head GEMV) and at more
/// than 8 (its GEMMs over vocabulary chunks); the memory estimate matches what the engine holds.
#[test]
fn real_gpu_kernels_match_the_reference() {
    let long_target = " Florence and Rome, Milan and Venice, Naples and Turin, Genoa and Bologna";
    for name in ["tiny-odd", "tiny-prefixed", "tiny-bpe"] {
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let model = fixture(name);
            let mut rounded = fixture(name);
            if format == WeightFormat::F16 {
                rounded.weights.round_f16_matrices();
            }
            let gpu_profile = || {
                let mut ctx = gpu();
                ctx.profile = KernelProfile::Gpu;
                ctx
            };
            let seq = sequence(&model, "I like Italy.", " Florence", LossKind::Nll, true);
            let tag = format!("{name} {} gpu kernels", format.as_str());
            assert_estimate_matches(&tag, gpu_profile(), &model, &seq, format);
            let mut engine = Engine::for_inference(gpu_profile(), &model, format).unwrap();
            let readback = Readback {
                hidden_grads: true,
                ..Readback::default()
            };
            for (kind, target) in [(LossKind::Nll, " Florence"), (LossKind::Ce, long_target)] {
                let seq = sequence(
                    &model,
                    "I like Italy and France. I visited",
                    target,
                    kind,
                    true,
                );
                assert!(
                    kind == LossKind::Nll || seq.loss.rows.len() > 8,
                    "{name}: the long target has 8 tokens or fewer"
                );
                let g = engine
                    .run(&seq, &ForwardOptions::default(), readback)
                    .unwrap();
                let c = reference::forward_backward(
                    &rounded.config,
                    &rounded.weights,
                    &seq,
                    &ForwardOptions::default(),
                );
                let tag = format!(
                    "{name} {} gpu kernels {} over {} rows",
                    format.as_str(),
                    kind.name(),
                    seq.loss.rows.len()
                );
                assert_pass_matches(&tag, &g, &c);
            }
        }
    }
}
