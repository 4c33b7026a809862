//! The `revattn` binary end to end: `maps` on a fixture model writes exactly the promised files and
//! tensors; every bad input gets a one-line error, a non-zero exit and no output files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn revattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revattn"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("revattn runs")
}

fn maps_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "maps",
        "--model",
        model,
        "--prompt",
        "I like Italy and France. I visited the city of",
        "--target",
        " Florence",
        "--out",
        out,
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn maps_writes_every_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-prefixed");
    for (loss, extra) in [
        ("nll", vec![]),
        ("ce", vec!["--bos"]),
        ("logit-diff", vec!["--foil", " Rome"]),
    ] {
        let mut args = maps_args(model.to_str().unwrap(), out.to_str().unwrap());
        args.extend(["--loss", loss, "--top-k", "3"]);
        args.extend(extra.iter().copied());
        let o = revattn(&args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        println!("{stdout}");
        assert!(
            o.status.success(),
            "maps --loss {loss} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            stdout.contains("top heads") && stdout.contains("next token"),
            "stdout table: {stdout}"
        );
        let bytes = std::fs::read(out.join("maps.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "attention",
                "attention_norms",
                "input_ids",
                "logits_last",
                "loss",
                "ra_norms",
                "reversed_attention"
            ]
        );
        let t = st.tensor("input_ids").unwrap().shape()[0];
        let expect_t = match loss {
            "ce" => 13,
            _ => 11,
        }; // ce runs prompt + target; --bos adds one
        assert_eq!(t, expect_t, "T for {loss}");
        assert_eq!(st.tensor("attention").unwrap().shape(), [3, 4, t, t]);
        assert_eq!(
            st.tensor("reversed_attention").unwrap().shape(),
            [3, 4, t, t]
        );
        assert_eq!(st.tensor("ra_norms").unwrap().shape(), [3, 4]);
        assert_eq!(st.tensor("logits_last").unwrap().shape(), [1024]);
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap();
        for k in ["tokens", "prompt", "target", "loss", "model", "adapter"] {
            assert!(meta.contains_key(k), "metadata {k} missing");
        }
        assert_eq!(meta["loss"], loss);
        let tokens: Vec<String> = serde_json::from_str(&meta["tokens"]).unwrap();
        assert_eq!(tokens.len(), t);
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(
            summary["top_heads_by_ra_norm"].as_array().unwrap().len(),
            10
        );
        assert_eq!(summary["next_tokens"].as_array().unwrap().len(), 5);
        assert!(summary["timings_ms"]["pass_compute"].as_f64().unwrap() >= 0.0);
        let pngs: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().to_string();
                n.starts_with("head_L").then_some(n)
            })
            .collect();
        assert!(pngs.len() >= 3, "top-k PNGs: {pngs:?}");
        assert!(std::fs::read(out.join("norms.png"))
            .unwrap()
            .starts_with(b"\x89PNG"));
    }
    // nothing but the outputs is left next to --out
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["out"]);
}

#[test]
fn maps_without_model_uses_the_embedded_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs").join("out"); // missing parents are created
    let o = revattn(&[
        "maps",
        "--task",
        "antonym",
        "--shots",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("embedded default model"));
    // the memory the pass needs is said before it runs
    assert!(String::from_utf8_lossy(&o.stderr).contains("memory   about"));
    // a 5-shot prompt of one-word pairs: BOS + 5 demonstrations of 9 tokens + "Q: x\nA:"
    assert!(stdout.contains("tokens   52 "), "{stdout}");
    let bytes = std::fs::read(out.join("maps.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert!(
        meta["prompt"].starts_with("<|endoftext|>Q: "),
        "{}",
        meta["prompt"]
    );
    assert!(meta["prompt"].ends_with("\nA:"));
}

#[test]
fn maps_task_prompts_reject_bad_requests() {
    for (extra, needle) in [
        (vec!["--task", "nonsense"], "no task \"nonsense\""),
        (
            vec!["--task", "size", "--query", "100000"],
            "--query 100000",
        ),
        (
            vec!["--task", "size", "--tasks", "/nonexistent/suite"],
            "/nonexistent/suite",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut args = vec!["maps", "--out", out.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let o = revattn(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    // --prompt and --task exclude each other (clap's usage error)
    let o = revattn(&[
        "maps", "--task", "size", "--prompt", "x", "--target", " y", "--out", "o",
    ]);
    assert!(!o.status.success());
}

/// Runs `maps` expecting failure: one `error:` line naming `needle`, exit ≠ 0, no files.
fn expect_error(name: &str, model: Option<&Path>, extra: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut args = vec!["maps"];
    let model_str;
    if let Some(m) = model {
        model_str = m.to_string_lossy().to_string();
        args.extend(["--model", &model_str]);
    }
    let out_str = out.to_string_lossy().to_string();
    let has = |flag: &str| extra.contains(&flag);
    if !has("--prompt") {
        args.extend(["--prompt", "I visited the city of"]);
    }
    if !has("--target") {
        args.extend(["--target", " Florence"]);
    }
    if !has("--out") {
        args.extend(["--out", &out_str]);
    }
    args.extend(extra);
    let o = revattn(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("{name:<28} → {}", stderr.trim());
    assert!(!o.status.success(), "{name}: expected failure");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{name}: error must be one line: {stderr}"
    );
    assert!(stderr.starts_with("error:"), "{name}: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{name}: expected {needle:?} in {stderr:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{name}: left files behind: {left:?}");
}

/// Rewrites model.safetensors of `dir` with `edit` applied to the (name → (shape, bytes)) map.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_files() {
    let good = fixture("tiny-odd");
    let scratch = tempfile::tempdir().unwrap();
    let variant = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let dir = scratch.path().join(name);
        copy_dir(&good, &dir);
        edit(&dir);
        dir
    };

    expect_error(
        "model dir missing",
        Some(&scratch.path().join("nope")),
        &[],
        "not a directory",
    );
    let d = variant("no-weights", &|d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    expect_error(
        "model.safetensors missing",
        Some(&d),
        &[],
        "no model.safetensors",
    );
    let d = variant("truncated", &|d| {
        let p = d.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    expect_error(
        "model.safetensors truncated",
        Some(&d),
        &[],
        "truncated or corrupt",
    );
    let d = variant("corrupt", &|d| {
        std::fs::write(
            d.join("model.safetensors"),
            b"\x10\0\0\0\0\0\0\0{not json at all",
        )
        .unwrap()
    });
    expect_error(
        "model.safetensors corrupt",
        Some(&d),
        &[],
        "truncated or corrupt",
    );
    let d = variant("missing-tensor", &|d| {
        rewrite_weights(d, |t| t.retain(|(n, _, _)| n != "ln_f.bias"))
    });
    expect_error("missing tensor", Some(&d), &[], "no tensor ln_f.bias");
    let d = variant("wrong-shape", &|d| {
        rewrite_weights(d, |t| {
            let e = t
                .iter_mut()
                .find(|(n, _, _)| n == "h.1.attn.c_proj.weight")
                .unwrap();
            e.1 = vec![e.1[0] * e.1[1] / 5, 5];
        })
    });
    expect_error(
        "wrongly shaped tensor",
        Some(&d),
        &[],
        "h.1.attn.c_proj.weight has shape",
    );
    let d = variant("no-config", &|d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    expect_error("config.json missing", Some(&d), &[], "no config.json");
    let d = variant("bad-config", &|d| {
        let p = d.join("config.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"n_head\": 3", "\"n_head\": 4");
        std::fs::write(&p, s).unwrap();
    });
    expect_error("config.json inconsistent", Some(&d), &[], "not divisible");
    let d = variant("bad-embd", &|d| {
        let p = d.join("config.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"n_embd\": 15", "\"n_embd\": 18");
        std::fs::write(&p, s).unwrap();
    });
    expect_error("config.json vs weights", Some(&d), &[], "has shape");
    let d = variant("no-tokenizer", &|d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    expect_error("no tokenizer", Some(&d), &[], "no tokenizer.json");
    let d = variant("stripping-tokenizer", &|d| {
        let p = d.join("tokenizer.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["normalizer"] =
            serde_json::json!({"type": "Strip", "strip_left": true, "strip_right": true});
        std::fs::write(&p, v.to_string()).unwrap();
    });
    expect_error(
        "target tokenizes to nothing",
        Some(&d),
        &["--target", "   "],
        "tokenizes to nothing",
    );

    expect_error(
        "empty prompt",
        Some(&good),
        &["--prompt", ""],
        "prompt is empty",
    );
    expect_error(
        "empty target",
        Some(&good),
        &["--target", ""],
        "target is empty",
    );
    let long = "the city of Florence ".repeat(40);
    expect_error(
        "too long for n_positions",
        Some(&good),
        &["--prompt", &long],
        "n_positions",
    );
    expect_error(
        "logit-diff without foil",
        Some(&good),
        &["--loss", "logit-diff"],
        "--foil",
    );
    expect_error(
        "unwritable --out",
        Some(&good),
        &["--out", "/proc/revattn-out"],
        "cannot write",
    );
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    expect_error(
        "--out is a file",
        Some(&good),
        &["--out", file.to_str().unwrap()],
        "not a directory",
    );
    expect_error(
        "no such GPU adapter",
        Some(&good),
        &[
            "--backend",
            if cfg!(target_os = "macos") {
                "dx12"
            } else {
                "metal"
            },
        ],
        "apt-get install -y mesa-vulkan-drivers",
    );
}

#[test]
fn cpu_backend_writes_the_same_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-odd");
    let read = |dir: &Path| {
        let bytes = std::fs::read(dir.join("maps.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let v: Vec<f32> = st
            .tensor("reversed_attention")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        v
    };
    let (gpu_out, cpu_out) = (tmp.path().join("gpu"), tmp.path().join("cpu"));
    let o = revattn(&maps_args(
        model.to_str().unwrap(),
        gpu_out.to_str().unwrap(),
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = maps_args(model.to_str().unwrap(), cpu_out.to_str().unwrap());
    args.extend(["--backend", "cpu"]);
    let o = revattn(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cpu reference"));
    let (g, c) = (read(&gpu_out), read(&cpu_out));
    let max = c.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = g
        .iter()
        .zip(&c)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("gpu vs cpu backend RA: max|Δ| {diff:.3e} of max {max:.3e}");
    assert!(
        diff <= 1e-4 * max,
        "gpu and cpu backends disagree: {diff} vs {max}"
    );
}

#[test]
fn init_writes_a_loadable_deterministic_model() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = fixture("tiny-odd").join("tokenizer.json");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    for (dir, seed) in [(&a, "7"), (&b, "7"), (&c, "8")] {
        let o = revattn(&[
            "init",
            "--config",
            "2,3,15",
            "--seed",
            seed,
            "--tokenizer",
            tok.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b), "same seed, same weights");
    assert_ne!(weights(&a), weights(&c), "another seed, other weights");
    let model = revattn::model::Model::load(&a).unwrap();
    assert_eq!(
        (
            model.config.n_layer,
            model.config.n_head,
            model.config.n_embd,
            model.config.vocab_size
        ),
        (2, 3, 15, 1024)
    );
    // HF's init: N(0, 0.02) for wte, LayerNorm weights 1
    let wte = model.weights.wte.data();
    let std = (wte.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / wte.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.002, "wte std {std}");
    assert!(model.weights.ln_f_w.data().iter().all(|&x| x == 1.0));
    let out = tmp.path().join("maps");
    let o = revattn(&maps_args(a.to_str().unwrap(), out.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let bad = revattn(&[
        "init",
        "--config",
        "2,3",
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected gpt2"));
    assert!(!tmp.path().join("bad").exists());
}

/// `bench --latency-only --json` on a fixture: one latency row per length (warm medians within
/// the warm runs' range, RSS recorded), and the growth between consecutive lengths, from the
/// same rounds, consistent with those runs.
#[test]
fn bench_writes_latency_rows_and_growth() {
    let tmp = tempfile::tempdir().unwrap();
    let json_path = tmp.path().join("bench.json");
    let model = fixture("tiny-bpe");
    let o = revattn(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--seq",
        "8,24,40",
        "--runs",
        "3",
        "--latency-only",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("T = 24 → 40:"), "no growth line:\n{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let rows = doc["ra_latency"].as_array().unwrap();
    let lengths: Vec<u64> = rows.iter().map(|r| r["t"].as_u64().unwrap()).collect();
    assert_eq!(lengths, [8, 24, 40]);
    for r in rows {
        let (min, med) = (
            r["warm_min_ms"].as_f64().unwrap(),
            r["warm_median_ms"].as_f64().unwrap(),
        );
        assert!(
            min > 0.0 && min <= med,
            "warm min {min} ms, median {med} ms"
        );
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0);
    }
    let growth = doc["ra_growth"].as_array().unwrap();
    assert_eq!(growth.len(), 2);
    for g in growth {
        let (lo, med, hi) = (
            g["min"].as_f64().unwrap(),
            g["median"].as_f64().unwrap(),
            g["max"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "growth {g}");
    }
    assert!(!tmp.path().join("bench.json.tmp").exists());
}
