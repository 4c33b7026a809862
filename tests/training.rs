//! Training parity of the float64 CPU reference against float64 PyTorch
//! (tests/fixtures/golden/train.safetensors, written by scripts/make_fixtures.py): the next-token
//! loss and every parameter's gradient on tiny-odd for one padded batch (B = 3, T = 9, lengths
//! 9, 6 and 4), and 10 AdamW steps with global-norm clipping. Plus what padding and positions
//! without a target must (not) contribute, and `adamw_step` against the formula by hand.
//!
//! Tolerances: gradients max|Δ|/max|golden| ≤ 1e-5 per tensor (goldens stored as F32, so the
//! floor is ~6e-8); loss ≤ 1e-12 relative (stored as F64); AdamW losses and pre-clip norms
//! ≤ 1e-6 relative (the hyper-parameters are f32 in `AdamW`, e.g. lr 0.01 → 0.0099999998, which
//! moves the trajectory by ~1e-8 relative).

mod common;

use std::path::PathBuf;

use common::{st_f64, st_i32, st_metadata};
use revattn::loss::TrainBatch;
use revattn::model::Model;
use revattn::optim::AdamW;
use revattn::reference::{self, ParamGrads};
use safetensors::SafeTensors;

const GRAD_REL_TOL: f64 = 1e-5;
const LOSS_REL_TOL: f64 = 1e-12;
const ADAMW_REL_TOL: f64 = 1e-6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Everything train.safetensors holds.
struct TrainGolden {
    model: Model,
    batch: TrainBatch,
    loss: f64,
    /// (HF name, gradient) in `Weights::named()` order.
    grads: Vec<(String, Vec<f64>)>,
    adamw: AdamW,
    /// (steps) the loss before each AdamW step, and the gradient norm before clipping.
    losses: Vec<f64>,
    norms: Vec<f64>,
}

fn golden() -> TrainGolden {
    let bytes = std::fs::read(root().join("tests/fixtures/golden/train.safetensors")).unwrap();
    let meta = st_metadata(&bytes);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = Model::load(&root().join(&meta["model_dir"])).unwrap();
    let shape = st.tensor("input_ids").unwrap().shape().to_vec();
    let (b, t) = (shape[0], shape[1]);
    let batch = TrainBatch {
        b,
        t,
        ids: st_i32(&st, "input_ids").iter().map(|&i| i as u32).collect(),
        targets: st_i32(&st, "targets"),
    };
    assert_eq!(batch.n_targets().to_string(), meta["n_targets"]);
    let grads = model
        .weights
        .named()
        .iter()
        .map(|(name, tensor)| {
            let g = st_f64(&st, &format!("grad.{name}"));
            assert_eq!(g.len(), tensor.data().len(), "grad.{name}: size");
            (name.clone(), g)
        })
        .collect();
    let adamw: AdamW = serde_json::from_str(&meta["adamw"]).expect("adamw metadata");
    TrainGolden {
        batch,
        loss: st_f64(&st, "loss")[0],
        grads,
        adamw,
        losses: st_f64(&st, "adamw_losses"),
        norms: st_f64(&st, "adamw_grad_norms"),
        model,
    }
}

/// max|a − b| / max|b|
fn rel_diff(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    let max_diff = got.iter().zip(want).fold(0.0f64, |m, (g, w)| {
        if (g - w).is_nan() {
            f64::INFINITY
        } else {
            m.max((g - w).abs())
        }
    });
    max_diff / max_ref
}

#[test]
fn cpu_reference_train_grads_match_pytorch() {
    let g = golden();
    let cfg = &g.model.config;
    let shapes: Vec<Vec<usize>> = g
        .model
        .weights
        .named()
        .iter()
        .map(|(_, t)| t.shape.clone())
        .collect();
    assert_eq!(
        cfg.parameter_shapes()
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        shapes,
        "GptConfig::parameter_shapes differs from Weights::named()"
    );
    let got: ParamGrads = reference::train_grads(cfg, &g.model.weights, &g.batch);
    let loss_rel = ((got.loss - g.loss) / g.loss).abs();
    println!(
        "loss: reference {:.15} golden {:.15} rel {loss_rel:.2e}",
        got.loss, g.loss
    );
    assert!(loss_rel <= LOSS_REL_TOL, "loss differs by {loss_rel:e}");
    assert_eq!(got.grads.len(), g.grads.len());
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    for ((name, want), got) in g.grads.iter().zip(&got.grads) {
        let rel = rel_diff(got, want);
        let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        println!("  grad.{name:<26} max|ref| {max_ref:.3e}  rel {rel:.2e}");
        worst = worst.max(rel);
        if rel.is_nan() || rel > GRAD_REL_TOL {
            failures.push(format!("{name}: {rel:.3e}"));
        }
    }
    println!(
        "train_grads vs PyTorch: {} tensors, worst relative difference {worst:.2e} (tolerance {GRAD_REL_TOL:.0e})",
        g.grads.len()
    );
    assert!(failures.is_empty(), "gradients differ: {failures:?}");
}

#[test]
fn cpu_reference_adamw_matches_pytorch() {
    let g = golden();
    let cfg = &g.model.config;
    let shapes: Vec<Vec<usize>> = cfg.parameter_shapes().into_iter().map(|(_, s)| s).collect();
    let mut params = reference::params_f64(&g.model.weights);
    let mut m: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v = m.clone();
    println!("AdamW {:?}", g.adamw);
    assert!(
        g.adamw.grad_clip > 0.0 && g.norms[0] > g.adamw.grad_clip as f64,
        "the golden must exercise clipping"
    );
    let (mut worst_loss, mut worst_norm) = (0.0f64, 0.0f64);
    for (k, (&want_loss, &want_norm)) in g.losses.iter().zip(&g.norms).enumerate() {
        let pg = reference::train_grads_f64(cfg, &params, &g.batch);
        let norm = reference::adamw_step(
            &mut params,
            &pg.grads,
            &mut m,
            &mut v,
            &shapes,
            k as u32 + 1,
            &g.adamw,
        );
        let (dl, dn) = (
            ((pg.loss - want_loss) / want_loss).abs(),
            ((norm - want_norm) / want_norm).abs(),
        );
        println!(
            "step {:2}: loss {:.9} (golden {want_loss:.9}, rel {dl:.1e})  ‖g‖ {norm:.9} (golden {want_norm:.9}, rel {dn:.1e}){}",
            k + 1,
            pg.loss,
            if norm > g.adamw.grad_clip as f64 { "  clipped" } else { "" }
        );
        worst_loss = worst_loss.max(dl);
        worst_norm = worst_norm.max(dn);
    }
    println!("AdamW vs PyTorch over {} steps: worst loss rel {worst_loss:.2e}, worst norm rel {worst_norm:.2e} (tolerance {ADAMW_REL_TOL:.0e})", g.losses.len());
    assert!(
        worst_loss <= ADAMW_REL_TOL && worst_norm <= ADAMW_REL_TOL,
        "AdamW trajectory differs from PyTorch: loss {worst_loss:e}, norm {worst_norm:e}"
    );
    assert!(
        g.losses.last().unwrap() < &g.losses[0],
        "the golden run should lower the loss"
    );
}

/// Positions after a sequence's last target (its padding, its untargeted tail) contribute nothing,
/// −1 targets contribute nothing, and the batch gradient is Σ_b (n_b / n)·(gradient of sequence b
/// alone, unpadded).
#[test]
fn padding_and_untargeted_positions_contribute_nothing() {
    let g = golden();
    let (cfg, w) = (&g.model.config, &g.model.weights);
    let base = reference::train_grads(cfg, w, &g.batch);
    let (b, t) = (g.batch.b, g.batch.t);
    let last_target = |s: usize| {
        (0..t)
            .rev()
            .find(|&p| g.batch.targets[s * t + p] >= 0)
            .expect("every golden sequence has a target")
    };

    // 1. New ids everywhere after each sequence's last target: bit-identical loss and gradients.
    let mut changed = g.batch.clone();
    let mut n_changed = 0;
    for s in 0..b {
        for p in last_target(s) + 1..t {
            let id = &mut changed.ids[s * t + p];
            *id = (*id * 7 + 11) % cfg.vocab_size as u32;
            n_changed += 1;
        }
    }
    assert!(n_changed > 0);
    let other = reference::train_grads(cfg, w, &changed);
    assert_eq!(
        other.loss, base.loss,
        "changing ids after the last target changed the loss"
    );
    for ((name, _), (x, y)) in w.named().iter().zip(base.grads.iter().zip(&other.grads)) {
        assert!(
            x == y,
            "{name}: changing ids after the last target changed the gradient"
        );
    }
    println!("{n_changed} ids after the last targets changed: loss and gradients bit-identical");

    // 2. The wpe rows of positions after the last target of every sequence get exactly 0.
    let last = (0..b).map(last_target).max().unwrap();
    let wpe = &base.grads[1];
    let c = cfg.n_embd;
    assert!(wpe[last * c..(last + 1) * c].iter().any(|&x| x != 0.0));
    assert!(
        wpe[(last + 1) * c..].iter().all(|&x| x == 0.0),
        "wpe rows after position {last} have a gradient"
    );

    // 3. Σ over sequences, each alone and unpadded, weighted by its share of the targets.
    let n = g.batch.n_targets() as f64;
    let mut sum: Vec<Vec<f64>> = base.grads.iter().map(|x| vec![0.0; x.len()]).collect();
    let mut loss = 0.0;
    for s in 0..b {
        let len = last_target(s) + 1;
        let single = TrainBatch {
            b: 1,
            t: len,
            ids: g.batch.ids[s * t..s * t + len].to_vec(),
            targets: g.batch.targets[s * t..s * t + len].to_vec(),
        };
        let share = single.n_targets() as f64 / n;
        let pg = reference::train_grads(cfg, w, &single);
        loss += share * pg.loss;
        for (acc, x) in sum.iter_mut().zip(&pg.grads) {
            for (a, v) in acc.iter_mut().zip(x) {
                *a += share * v;
            }
        }
    }
    let loss_rel = ((loss - base.loss) / base.loss).abs();
    let worst = sum
        .iter()
        .zip(&base.grads)
        .map(|(x, y)| rel_diff(x, y))
        .fold(0.0f64, f64::max);
    println!("batch = Σ_b (n_b/n)·single sequence b: loss rel {loss_rel:.2e}, worst gradient rel {worst:.2e}");
    assert!(
        loss_rel < 1e-13 && worst < 1e-12,
        "the batch is not the weighted sum of its sequences"
    );

    // 4. A sequence whose targets are all −1 contributes nothing: the batch equals the batch
    //    without it (n counts only the remaining targets).
    let mut untargeted = g.batch.clone();
    untargeted.targets[2 * t..3 * t].fill(-1);
    let two = TrainBatch {
        b: 2,
        t,
        ids: g.batch.ids[..2 * t].to_vec(),
        targets: g.batch.targets[..2 * t].to_vec(),
    };
    let (x, y) = (
        reference::train_grads(cfg, w, &untargeted),
        reference::train_grads(cfg, w, &two),
    );
    assert_eq!(x.loss, y.loss);
    assert!(
        x.grads == y.grads,
        "an untargeted sequence changed the gradients"
    );

    // 5. No target at all: loss 0 and every gradient exactly 0 (TrainBatch's n = max(n, 1)).
    let mut none = g.batch.clone();
    none.targets.fill(-1);
    let z = reference::train_grads(cfg, w, &none);
    assert_eq!(z.loss, 0.0);
    assert!(z.grads.iter().flatten().all(|&x| x == 0.0));
}

/// `adamw_step` against the formula in `optim.rs` evaluated by hand on two tiny tensors: no clip,
/// an active clip, and weight decay only on the 2-D tensor.
#[test]
fn adamw_step_follows_the_formula() {
    let shapes = vec![vec![2, 2], vec![3]];
    let p0 = vec![vec![0.5, -1.0, 2.0, 0.25], vec![1.0, -0.5, 0.0]];
    let grads = vec![vec![0.3, -0.1, 0.0, 0.2], vec![-0.4, 0.05, 0.6]];
    let norm_want = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for clip in [0.0f32, 100.0, 0.5] {
        let opt = AdamW {
            lr: 0.125,
            beta1: 0.875,
            beta2: 0.75,
            eps: 0.0625,
            weight_decay: 0.5,
            grad_clip: clip,
        };
        let (lr, b1, b2, eps, wd) = (0.125, 0.875, 0.75, 0.0625, 0.5);
        let coef = if clip > 0.0 {
            (clip as f64 / (norm_want + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let mut p = p0.clone();
        let mut m: Vec<Vec<f64>> = p.iter().map(|x| vec![0.0; x.len()]).collect();
        let mut v = m.clone();
        // two steps, so that the bias corrections and the moment updates both matter
        let (mut pw, mut mw, mut vw) = (p0.clone(), m.clone(), v.clone());
        for step in 1..=2u32 {
            let norm = reference::adamw_step(&mut p, &grads, &mut m, &mut v, &shapes, step, &opt);
            assert!(
                (norm - norm_want).abs() < 1e-15,
                "pre-clip norm {norm} ≠ {norm_want}"
            );
            for k in 0..2 {
                for i in 0..pw[k].len() {
                    let gi = grads[k][i] * coef;
                    if k == 0 {
                        pw[k][i] *= 1.0 - lr * wd;
                    }
                    mw[k][i] = b1 * mw[k][i] + (1.0 - b1) * gi;
                    vw[k][i] = b2 * vw[k][i] + (1.0 - b2) * gi * gi;
                    let mhat = mw[k][i] / (1.0 - f64::powi(b1, step as i32));
                    let vhat = vw[k][i] / (1.0 - f64::powi(b2, step as i32));
                    pw[k][i] -= lr * mhat / (vhat.sqrt() + eps);
                }
            }
            let worst = p
                .iter()
                .flatten()
                .zip(pw.iter().flatten())
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                worst < 1e-15,
                "clip {clip}, step {step}: params off by {worst:e}"
            );
        }
        println!("adamw_step by hand, clip {clip} (coefficient {coef:.4}): 2 steps agree");
    }
}
