//! Golden parity: the GPU engine and the CPU reference against float64 PyTorch autograd
//! (tests/fixtures/golden, written by scripts/make_fixtures.py) on every committed case — three
//! models (hub and `transformer.` key layouts, head sizes 16, 5 and 8, n_inner ≠ 4·C), three
//! prompts (T = 1 … 34, with and without BOS), all three losses.
//! Every tensor: max|Δ| / max|golden| ≤ 1e-4 on the GPU (f32) and ≤ 1e-5 on the CPU reference
//! (f64, against goldens stored as f32). One verdict line at the end.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use revattn::engine::Engine;
use revattn::layers::WeightFormat;
use revattn::loss::{LossKind, LossRequest, Sequence};
use revattn::model::Model;
use revattn::pass::{Backend, ForwardOptions, PassOutput, Readback};
use revattn::reference::CpuReference;
use safetensors::SafeTensors;

const GPU_REL_TOL: f64 = 1e-4;
const CPU_REL_TOL: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Case {
    name: String,
    model_dir: PathBuf,
    prompt: String,
    target: String,
    foil: Option<String>,
    kind: LossKind,
    bos: bool,
    file: PathBuf,
}

fn cases() -> Vec<Case> {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/golden/index.json")).unwrap(),
    )
    .unwrap();
    index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            let file = root().join(s("file"));
            Case {
                name: file.file_stem().unwrap().to_string_lossy().into(),
                model_dir: root().join(s("model_dir")),
                prompt: s("prompt"),
                target: s("target"),
                foil: Some(s("foil")).filter(|f| !f.is_empty()),
                kind: match c["loss"].as_str().unwrap() {
                    "nll" => LossKind::Nll,
                    "ce" => LossKind::Ce,
                    "logit-diff" => LossKind::LogitDiff,
                    other => panic!("unknown loss {other}"),
                },
                bos: c["bos"].as_bool().unwrap(),
                file,
            }
        })
        .collect()
}

fn f32_tensor(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect()
}

/// Compares one tensor; returns the relative difference and prints a line.
fn compare(case: &str, name: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(
        got.len(),
        want.len(),
        "{case} {name}: length {} vs {}",
        got.len(),
        want.len()
    );
    let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    let max_diff = got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| {
        let d = (g as f64 - w).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    let rel = max_diff / max_ref;
    println!("  {name:<20} max|Δ| {max_diff:.3e}  max|ref| {max_ref:.3e}  rel {rel:.2e}");
    rel
}

/// Compares one pass with its golden file; `seq` is what the pass ran on.
fn check_case(case: &Case, seq: &Sequence, out: &PassOutput) -> Vec<(String, f64)> {
    let bytes = std::fs::read(&case.file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<i64> = st
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        seq.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        ids,
        "{}: tokenization differs from HF",
        case.name
    );
    let mut rels = Vec::new();
    let mut add = |name: &str, got: &[f32]| {
        rels.push((
            format!("{} {name}", case.name),
            compare(&case.name, name, got, &f32_tensor(&st, name)),
        ))
    };
    add("loss", &[out.loss as f32]);
    add("logits", &out.logits);
    add("attention", out.attention.as_ref().unwrap());
    add(
        "reversed_attention",
        out.reversed_attention.as_ref().unwrap(),
    );
    add("hidden_grads", out.hidden_grads.as_ref().unwrap());
    rels
}

fn run_all(backend_name: &str, tol: f64, mut open: impl FnMut(&Model) -> Box<dyn Backend + '_>) {
    let mut worst: Vec<(String, f64)> = Vec::new();
    let cases = cases();
    assert!(
        cases.len() >= 27,
        "expected the 27 committed golden cases, found {}",
        cases.len()
    );
    let mut by_model: Vec<(PathBuf, Vec<&Case>)> = Vec::new();
    for c in &cases {
        match by_model.iter_mut().find(|(d, _)| *d == c.model_dir) {
            Some((_, v)) => v.push(c),
            None => by_model.push((c.model_dir.clone(), vec![c])),
        }
    }
    for (dir, model_cases) in &by_model {
        let model = Model::load(Path::new(dir)).unwrap();
        let mut backend = open(&model);
        for case in model_cases {
            println!("{backend_name} {}", case.name);
            let request = LossRequest {
                prompt: &case.prompt,
                target: &case.target,
                foil: case.foil.as_deref(),
                kind: case.kind,
                bos: case.bos,
            };
            let seq =
                Sequence::build(&model.tokenizer, &request, model.config.n_positions).unwrap();
            let readback = Readback {
                hidden_grads: true,
                ..Readback::default()
            };
            let out = backend
                .run(&seq, &ForwardOptions::default(), readback)
                .unwrap();
            worst.extend(check_case(case, &seq, &out));
        }
    }
    let failures: Vec<_> = worst
        .iter()
        .filter(|(_, r)| r.is_nan() || *r > tol)
        .collect();
    let max = worst.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    if failures.is_empty() {
        println!("{backend_name}: overall OK — {} tensors, worst relative difference {max:.2e} ≤ {tol:.0e}", worst.len());
    } else {
        for (name, r) in &failures {
            println!("FAIL {name}: {r:.3e}");
        }
        panic!(
            "{backend_name}: {} of {} tensors exceed {tol:.0e} (worst {max:.3e})",
            failures.len(),
            worst.len()
        );
    }
}

#[test]
fn gpu_engine_matches_pytorch_goldens() {
    let mut ctx = Some(gpu());
    run_all("gpu", GPU_REL_TOL, |model| {
        // One context for all models: the first model takes it, later ones open their own.
        let ctx = ctx.take().unwrap_or_else(gpu);
        Box::new(Engine::new(ctx, model).unwrap())
    });
}

/// The engine for forward and RA passes (`maps`, `bench`): on CPU adapters its Conv1D weights
/// live in textures and every GEMM takes the texture kernels.
#[test]
fn gpu_inference_engine_matches_pytorch_goldens() {
    run_all("gpu inference", GPU_REL_TOL, |model| {
        Box::new(Engine::for_inference(gpu(), model, WeightFormat::F32).unwrap())
    });
}

#[test]
fn cpu_reference_matches_pytorch_goldens() {
    run_all("cpu", CPU_REL_TOL, |model| {
        Box::new(CpuReference::new(model))
    });
}
