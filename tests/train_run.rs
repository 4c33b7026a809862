//! `revattn train` end to end on a tiny model: checkpoints in HF layout that load back, the same
//! weights from one run and from a run interrupted and resumed (determinism per seed), the loss
//! going down, and one-line errors for bad settings.

mod common;

use std::path::Path;

use common::gpu;
use revattn::model::Model;
use revattn::optim::AdamW;
use revattn::tasks;
use revattn::train::{self, TrainArgs, TrainSettings, TrainState};

fn settings(steps: usize) -> TrainSettings {
    TrainSettings {
        config: "2,2,16".into(),
        seq: 48,
        steps,
        batch: 6,
        max_shots: 3,
        seed: 5,
        warmup: 2,
        min_lr_ratio: 0.1,
        adamw: AdamW {
            lr: 1e-2,
            ..AdamW::default()
        },
        eval_every: 4,
        eval_shots: vec![0, 2],
        eval_queries: 8,
        checkpoint_every: 4,
    }
}

fn suite_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("suite");
    tasks::write(&tasks::generate(3), &dir).unwrap();
    dir
}

fn train(
    tasks: &Path,
    out: &Path,
    settings: TrainSettings,
    resume: bool,
) -> revattn::Result<train::TrainReport> {
    train_until(tasks, out, settings, resume, None)
}

fn train_until(
    tasks: &Path,
    out: &Path,
    settings: TrainSettings,
    resume: bool,
    until: Option<usize>,
) -> revattn::Result<train::TrainReport> {
    let args = TrainArgs {
        tasks: tasks.to_path_buf(),
        out: out.to_path_buf(),
        settings,
        resume,
        until,
    };
    train::run(&args, gpu())
}

fn state(out: &Path) -> TrainState {
    serde_json::from_str(&std::fs::read_to_string(out.join("train_state.json")).unwrap()).unwrap()
}

#[test]
fn training_is_deterministic_resumable_and_writes_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = suite_dir(tmp.path());

    let whole = tmp.path().join("whole");
    let report = train(&suite, &whole, settings(10), false).unwrap();
    assert_eq!(report.steps, 10);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "train_state.json",
    ] {
        assert!(whole.join(f).is_file(), "{f} missing");
    }
    let st = state(&whole);
    assert_eq!(st.step, 10);
    // evaluations at steps 4 and 8, and the final one (every test query) at 10
    let steps: Vec<usize> = st.evaluations.iter().map(|e| e.step).collect();
    assert_eq!(steps, vec![4, 8, 10]);
    let last = st.evaluations.last().unwrap();
    assert_eq!(last.per_task.len(), 6 * 2);
    assert!(
        last.per_task.iter().all(|a| a.queries > 8),
        "the final evaluation uses every query"
    );
    assert_eq!(st.losses.len(), 10);
    let mean = |l: &[(usize, f64)]| l.iter().map(|x| x.1).sum::<f64>() / l.len() as f64;
    let (first_loss, last_loss) = (mean(&st.losses[..3]), mean(&st.losses[7..]));
    println!("loss (mean of 3 steps) {first_loss:.4} → {last_loss:.4}");
    assert!(
        last_loss < first_loss,
        "the loss did not go down: {first_loss} → {last_loss}"
    );

    // The checkpoint is an HF GPT-2 directory revattn (and transformers) can load.
    let model = Model::load(&whole).unwrap();
    assert_eq!(
        (
            model.config.n_layer,
            model.config.n_head,
            model.config.n_embd
        ),
        (2, 2, 16)
    );
    assert_eq!(model.config.n_positions, 48);
    assert_eq!(model.tokenizer.vocab_size(), model.config.vocab_size);

    // The same run stopped at step 4 and resumed to 10 gives the same bytes.
    let split = tmp.path().join("split");
    train_until(&suite, &split, settings(10), false, Some(4)).unwrap();
    assert_eq!(state(&split).step, 4);
    train(&suite, &split, settings(10), true).unwrap();
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed training differs from the uninterrupted run"
    );
    let a = std::fs::read(whole.join("optimizer.safetensors")).unwrap();
    let b = std::fs::read(split.join("optimizer.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed optimizer state differs from the uninterrupted run"
    );
}

#[test]
fn bad_training_requests_fail_with_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = suite_dir(tmp.path());
    let out = tmp.path().join("run");
    let expect_err = |r: revattn::Result<train::TrainReport>, needle: &str| {
        let msg = match r {
            Ok(_) => panic!("expected an error containing {needle:?}"),
            Err(e) => e.to_string(),
        };
        println!("{msg}");
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        assert!(!msg.contains('\n'), "not one line: {msg:?}");
    };
    expect_err(
        train(
            &suite,
            &out,
            TrainSettings {
                steps: 0,
                ..settings(4)
            },
            false,
        ),
        "--steps",
    );
    expect_err(
        train(
            &suite,
            &out,
            TrainSettings {
                eval_shots: vec![10],
                ..settings(4)
            },
            false,
        ),
        "--seq 48",
    );
    expect_err(
        train(
            &suite,
            &out,
            TrainSettings {
                config: "2,3,16".into(),
                ..settings(4)
            },
            false,
        ),
        "divisible",
    );
    expect_err(
        train(&tmp.path().join("nope"), &out, settings(4), false),
        "nope",
    );
    assert!(!out.exists(), "a failed run left {}", out.display());
    expect_err(train(&suite, &out, settings(4), true), "train_state.json");

    train(&suite, &out, settings(4), false).unwrap();
    expect_err(train(&suite, &out, settings(8), false), "--resume");
    expect_err(
        train(
            &suite,
            &out,
            TrainSettings {
                batch: 5,
                ..settings(8)
            },
            true,
        ),
        "settings differ",
    );
    expect_err(train(&suite, &out, settings(3), true), "beyond --steps");
    expect_err(
        train_until(&suite, &out, settings(8), true, Some(4)),
        "nothing to train",
    );
}
