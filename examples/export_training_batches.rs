//! Writes what a `revattn train` run starts from and feeds its model, so another framework can
//! replay the run step by step: the initial weights (`init.safetensors`, HF hub names) and the
//! first N batches with their learning rates (`batches.jsonl`: b, t, ids, targets, lr; targets are
//! −1 where no loss is taken). The settings come from the run's train_state.json.
//!
//! ```sh
//! cargo run --release --example export_training_batches -- RUN_DIR SUITE_DIR OUT_DIR [STEPS]
//! python3 scripts/replay_train_torch.py --run RUN_DIR --export OUT_DIR
//! ```

use std::io::Write;
use std::path::PathBuf;

use revattn::train::{learning_rate, model_config, training_batch, TrainState};
use revattn::{tasks, Error, Result};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [run_dir, suite_dir, out_dir, rest @ ..] = &args[..] else {
        return Err(Error::Input(
            "usage: export_training_batches RUN_DIR SUITE_DIR OUT_DIR [STEPS]".into(),
        ));
    };
    let steps: usize = match rest.first() {
        Some(n) => n
            .parse()
            .map_err(|_| Error::Input(format!("STEPS {n:?} is not a number")))?,
        None => 100,
    };
    let state_path = PathBuf::from(run_dir).join("train_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: {e}", state_path.display())))?;
    let s = state.settings;
    let suite = tasks::load(std::path::Path::new(suite_dir))?;
    let tok = suite.tokenizer()?;
    let cfg = model_config(&s.config, suite.vocab_size(), s.seq)?;
    let out = PathBuf::from(out_dir);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    // The same initial weights `revattn train` draws for this seed.
    let weights = revattn::init::random_weights(&cfg, s.seed)?;
    let init = out.join("init.safetensors");
    std::fs::write(&init, weights.to_safetensors(None)?).map_err(|e| Error::io(&init, e))?;
    let path = out.join("batches.jsonl");
    let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    for step in 0..steps.min(s.steps) {
        let b = training_batch(&suite, &tok, &s, step)?;
        let line = serde_json::json!({
            "b": b.b, "t": b.t, "ids": b.ids, "targets": b.targets,
            "lr": learning_rate(&s, step),
        });
        writeln!(file, "{line}").map_err(|e| Error::io(&path, e))?;
    }
    println!(
        "wrote {} and {} batches to {}",
        init.display(),
        steps.min(s.steps),
        path.display()
    );
    Ok(())
}
