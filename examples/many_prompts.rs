//! Load a model once, run many prompts: the top RA head of each.
//!
//!     cargo run --release --example many_prompts [-- MODEL_DIR]
//!
//! Without MODEL_DIR it runs on the embedded default model.

use revattn::engine::Engine;
use revattn::gpu::{BackendChoice, GpuContext};
use revattn::loss::{LossKind, LossRequest, Sequence};
use revattn::model::Model;
use revattn::pass::{ForwardOptions, Readback};
use revattn::ra::{frobenius_norms, top_heads};

fn main() -> revattn::Result<()> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from);
    let model = Model::load_or_embedded(dir.as_deref())?;
    let mut engine = Engine::new(GpuContext::new(BackendChoice::Auto)?, &model)?;
    println!("{} on {}", model.source, engine.ctx.describe());
    let cases = [
        (
            "I like Italy and France. I visited the city of",
            " Florence",
        ),
        ("I like Italy and France. I visited the city of", " Paris"),
        ("The capital of France is", " Paris"),
        ("Q: 3 + 4\nA:", " 7"),
    ];
    for (prompt, target) in cases {
        let req = LossRequest {
            prompt,
            target,
            foil: None,
            kind: LossKind::Nll,
            bos: true,
        };
        let seq = Sequence::build(&model.tokenizer, &req, model.config.n_positions)?;
        let readback = Readback {
            attention: false,
            ..Readback::default()
        };
        let out = engine.run(&seq, &ForwardOptions::default(), readback)?;
        let norms = frobenius_norms(
            out.reversed_attention.as_deref().expect("requested"),
            seq.len(),
        );
        let best = top_heads(&norms, model.config.n_head, 1)[0];
        println!(
            "{:<50} {:<10} loss {:>7.4}  top head L{}H{} ‖R‖ {:.3e}  ({:.1} ms on the device)",
            format!("{prompt:?}"),
            format!("{target:?}"),
            out.loss,
            best.layer,
            best.head,
            best.score,
            out.timings.compute_ms
        );
    }
    Ok(())
}
