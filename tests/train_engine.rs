//! The GPU training path against the float64 CPU reference: every parameter's gradient on random
//! models and batches (odd head size, padding, T = 1, positions without targets), AdamW steps,
//! and the batched forward against one-sequence passes. Prints max differences; fails loudly.

mod common;

use common::{assert_close, gpu, Rng};
use revattn::engine::Engine;
use revattn::loss::{LossKind, Sequence, TrainBatch};
use revattn::model::{GptConfig, Model, Tensor, Weights};
use revattn::optim::{AdamW, GpuAdamW};
use revattn::pass::{ForwardOptions, Readback};
use revattn::reference;
use revattn::tokenizer::Gpt2Tokenizer;

const GRAD_TOL: f64 = 1e-4;

fn config(n_layer: usize, n_head: usize, n_embd: usize, n_inner: usize, vocab: usize) -> GptConfig {
    GptConfig {
        n_layer,
        n_head,
        n_embd,
        n_positions: 24,
        vocab_size: vocab,
        n_inner,
        layer_norm_epsilon: 1e-5,
    }
}

/// Random weights with LayerNorm affine parameters away from 1/0 and peaked attention.
fn random_model(cfg: &GptConfig, seed: u64) -> Model {
    let mut rng = Rng(seed);
    let tensors = cfg
        .parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = if name.ends_with("ln_1.weight")
                || name.ends_with("ln_2.weight")
                || name.ends_with("ln_f.weight")
            {
                rng.vec(n, 0.4).into_iter().map(|x| 1.0 + x).collect()
            } else if name.ends_with("c_attn.weight") {
                rng.vec(n, 0.8)
            } else {
                rng.vec(n, 0.3)
            };
            Tensor::from_vec(shape, data)
        })
        .collect();
    let json = br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
        "vocab":{"a":0,"b":1},"merges":[]}}"#;
    Model {
        config: cfg.clone(),
        weights: Weights::from_named(cfg, tensors).unwrap(),
        tokenizer: Gpt2Tokenizer::from_bytes(json).unwrap(),
        source: "random test model".into(),
    }
}

/// B sequences of random lengths ≤ T, right-padded with id 0; targets at random positions of each
/// sequence (at least one), −1 on padding.
fn random_batch(b: usize, t: usize, vocab: usize, rng: &mut Rng) -> TrainBatch {
    let mut ids = vec![0u32; b * t];
    let mut targets = vec![-1i32; b * t];
    for s in 0..b {
        let len = if s == 0 { t } else { 1 + rng.below(t) };
        for p in 0..len {
            ids[s * t + p] = rng.below(vocab) as u32;
            if rng.below(3) == 0 {
                targets[s * t + p] = rng.below(vocab) as i32;
            }
        }
        targets[s * t + len - 1] = rng.below(vocab) as i32;
    }
    TrainBatch { b, t, ids, targets }
}

fn check_gradients(name: &str, cfg: &GptConfig, b: usize, t: usize, seed: u64) {
    let model = random_model(cfg, seed);
    let batch = random_batch(b, t, cfg.vocab_size, &mut Rng(seed + 1));
    let want = reference::train_grads(cfg, &model.weights, &batch);
    let mut engine = Engine::new(gpu(), &model).unwrap();
    let out = engine.run_batch(&batch, true, false, None).unwrap();
    let got = engine.download_gradients().unwrap();
    println!(
        "{name}: B={b} T={t} loss gpu {:.6} cpu {:.6}",
        out.loss, want.loss
    );
    assert!(
        ((out.loss - want.loss) / want.loss).abs() < 1e-5,
        "{name}: loss {} vs {}",
        out.loss,
        want.loss
    );
    for ((pname, _), (g, w)) in cfg
        .parameter_shapes()
        .iter()
        .zip(got.iter().zip(&want.grads))
    {
        assert_close(&format!("{name} d{pname}"), g.data(), w, GRAD_TOL);
    }
}

#[test]
fn weight_gradients_match_the_reference() {
    // head size 5, n_inner ≠ 4C, padding and positions without targets
    check_gradients("odd", &config(2, 3, 15, 40, 37), 3, 7, 11);
    // one token per sequence
    check_gradients("t1", &config(1, 2, 8, 32, 29), 4, 1, 12);
    // a batch of one, T not a multiple of anything, vec4-aligned sizes (subgroup GEMMs)
    check_gradients("aligned", &config(2, 4, 32, 128, 64), 1, 13, 13);
    check_gradients("batch", &config(2, 2, 16, 64, 48), 5, 11, 14);
}

#[test]
fn adamw_steps_match_the_reference() {
    let cfg = config(2, 3, 15, 40, 37);
    let model = random_model(&cfg, 21);
    let batch = random_batch(3, 9, cfg.vocab_size, &mut Rng(22));
    let settings = AdamW {
        lr: 1e-2,
        grad_clip: 0.5,
        ..AdamW::default()
    };
    let shapes: Vec<Vec<usize>> = cfg.parameter_shapes().into_iter().map(|(_, s)| s).collect();
    let mut params = reference::params_f64(&model.weights);
    let mut m: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v = m.clone();

    let mut engine = Engine::new(gpu(), &model).unwrap();
    let mut opt = GpuAdamW::for_engine(&mut engine, settings);
    for step in 1..=6u32 {
        let want = reference::train_grads_f64(&cfg, &params, &batch);
        let norm = reference::adamw_step(
            &mut params,
            &want.grads,
            &mut m,
            &mut v,
            &shapes,
            step,
            &settings,
        );
        let plan = opt.prepare_step(&engine.ctx, settings.lr);
        // The plan borrows the optimizer; run_batch needs the engine mutably, not the optimizer.
        let out = engine.run_batch(&batch, true, false, Some(plan)).unwrap();
        let (gpu_norm, scale) = opt.last_norm(&engine.ctx).unwrap();
        println!(
            "step {step}: loss gpu {:.7} cpu {:.7}  grad norm gpu {gpu_norm:.6} cpu {norm:.6} (clip scale {scale:.4})",
            out.loss, want.loss
        );
        assert!(
            ((out.loss - want.loss) / want.loss).abs() < 1e-4,
            "step {step} loss"
        );
        assert!(
            ((gpu_norm as f64 - norm) / norm).abs() < 1e-4,
            "step {step} grad norm"
        );
    }
    let got = engine.download_weights().unwrap();
    let c = cfg.n_embd;
    for ((name, t), want) in got.named().into_iter().zip(&params) {
        if name.ends_with("c_attn.bias") {
            // The K bias adds q·b_k to a whole softmax row: its gradient is exactly 0, so both sides
            // hold rounding noise (≈1e-9 in f32, ≈1e-17 in f64) that Adam's m/√v turns into ±lr
            // steps. It never changes the loss; compare the Q and V thirds only.
            let (got_q, got_v) = (&t.data()[..c], &t.data()[2 * c..]);
            assert_close(
                &format!("after 6 steps {name} (Q)"),
                got_q,
                &want[..c],
                1e-4,
            );
            assert_close(
                &format!("after 6 steps {name} (V)"),
                got_v,
                &want[2 * c..],
                1e-4,
            );
            continue;
        }
        assert_close(&format!("after 6 steps {name}"), t.data(), want, 1e-4);
    }
}

#[test]
fn batched_forward_matches_one_sequence_at_a_time() {
    let cfg = config(2, 2, 16, 64, 48);
    let model = random_model(&cfg, 31);
    let mut rng = Rng(32);
    let batch = random_batch(6, 10, cfg.vocab_size, &mut rng);
    let mut engine = Engine::new(gpu(), &model).unwrap();
    let out = engine.run_batch(&batch, false, true, None).unwrap();
    let logits = out.logits.unwrap();
    let v = cfg.vocab_size;
    let mut worst = 0.0f64;
    for s in 0..batch.b {
        // The sequence's real length: up to its last target (padding follows).
        let row = &batch.targets[s * batch.t..(s + 1) * batch.t];
        let len = row.iter().rposition(|&x| x >= 0).unwrap() + 1;
        let ids = batch.ids[s * batch.t..s * batch.t + len].to_vec();
        let seq = Sequence::from_ids(ids, LossKind::Nll, &[0], None);
        let single = engine
            .run(
                &seq,
                &ForwardOptions::default(),
                Readback {
                    backward: false,
                    ..Default::default()
                },
            )
            .unwrap();
        // logits come back for the target rows only, in row order
        let slot = batch
            .target_rows()
            .iter()
            .position(|&r| r as usize == s * batch.t + len - 1)
            .unwrap();
        let batched = &logits[slot * v..(slot + 1) * v];
        let scale = single.logits.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let diff = batched
            .iter()
            .zip(&single.logits)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        worst = worst.max(diff / scale);
    }
    println!("batched vs single last-position logits: max rel {worst:.2e}");
    assert!(
        worst < 1e-5,
        "batched forward differs from single passes: {worst:.2e}"
    );
}
