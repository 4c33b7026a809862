//! `revattn maps`: one prompt → forward + backward → A and RA for every head → maps.safetensors,
//! summary.json, norms.png, one PNG per top head, and a one-screen table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use crate::engine::{AdapterLimits, Engine, MemoryEstimate};
use crate::error::{Error, Result};
use crate::gpu::{BackendChoice, GpuContext};
use crate::layers::WeightFormat;
use crate::loss::{LossKind, LossRequest, Sequence};
use crate::model::Model;
use crate::output::StagedDir;
use crate::pass::{Backend, ForwardOptions, PassOutput, Readback};
use crate::ra::{frobenius_norms, head_map, top_heads, top_tokens, HeadScore};
use crate::reference::CpuReference;
use crate::render;

/// Everything `revattn maps` takes.
#[derive(Debug, Clone)]
pub struct MapsArgs {
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub target: String,
    pub loss: LossKind,
    pub foil: Option<String>,
    pub bos: bool,
    pub top_k: usize,
    pub out: PathBuf,
    pub backend: BackendChoice,
    /// How the adapter stores the weight matrices.
    pub weights: WeightFormat,
}

/// What `maps` computed, for the stdout table and for callers of the library.
pub struct MapsReport {
    pub model: String,
    pub backend: String,
    pub tokens: Vec<String>,
    pub loss: f64,
    pub top_heads: Vec<(HeadScore, f32)>,
    pub next_tokens: Vec<(String, f64)>,
    pub files: Vec<PathBuf>,
    /// ‖RA‖_F of the top head over the median head's: how concentrated the gradient is.
    pub top_over_median: f64,
    pub timings: Vec<(&'static str, f64)>,
}

fn tensor_bytes_f32(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Opens the compute backend the user chose.
pub fn open_backend<'m>(choice: BackendChoice, model: &'m Model) -> Result<Box<dyn Backend + 'm>> {
    Ok(match choice {
        BackendChoice::Cpu => Box::new(CpuReference::new(model)),
        _ => Box::new(Engine::new(GpuContext::new(choice)?, model)?),
    })
}

/// Like `open_backend`, but says first how much adapter memory the pass over `seq` needs and
/// refuses (before uploading anything) when the adapter cannot hold it.
fn open_backend_for<'m>(
    choice: BackendChoice,
    model: &'m Model,
    seq: &Sequence,
    weights: WeightFormat,
) -> Result<Box<dyn Backend + 'm>> {
    if choice == BackendChoice::Cpu {
        if weights != WeightFormat::F32 {
            return Err(Error::Input(format!(
                "--weights {} is a GPU storage format; the cpu reference computes in f64",
                weights.as_str()
            )));
        }
        return open_backend(choice, model);
    }
    let ctx = GpuContext::new(choice)?;
    let need = MemoryEstimate::for_sequence(
        &model.config,
        seq.len(),
        seq.loss.rows.len(),
        true,
        weights,
        AdapterLimits::of(&ctx),
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "memory   about {:.0} MiB on the adapter: weights {:.0} MiB ({}), activations and maps {:.0} MiB",
        mib(need.total()),
        mib(need.weights),
        weights.as_str(),
        mib(need.workspace)
    );
    need.check(&ctx)?;
    Ok(Box::new(Engine::for_inference(ctx, model, weights)?))
}

pub fn run(args: &MapsArgs) -> Result<MapsReport> {
    let mut timings: Vec<(&'static str, f64)> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, f64)>| {
        let now = Instant::now();
        timings.push((name, (now - clock).as_secs_f64() * 1e3));
        clock = now;
    };

    let model = Model::load_or_embedded(args.model.as_deref())?;
    lap("load_model", &mut timings);
    let request = LossRequest {
        prompt: &args.prompt,
        target: &args.target,
        foil: args.foil.as_deref(),
        kind: args.loss,
        bos: args.bos,
    };
    let seq = Sequence::build(&model.tokenizer, &request, model.config.n_positions)?;
    lap("tokenize", &mut timings);
    let staged = StagedDir::create(&args.out)?;

    let mut backend = open_backend_for(args.backend, &model, &seq, args.weights)?;
    let backend_name = backend.describe();
    lap("backend_setup", &mut timings);
    let out: PassOutput = backend.run(&seq, &ForwardOptions::default(), Readback::default())?;
    timings.push(("pass_prepare", out.timings.prepare_ms));
    timings.push(("pass_compute", out.timings.compute_ms));
    timings.push(("pass_readback", out.timings.readback_ms));
    lap("pass_total", &mut timings);

    let cfg = &model.config;
    let (t, nl, nh, v) = (seq.len(), cfg.n_layer, cfg.n_head, cfg.vocab_size);
    let attention = out.attention.as_deref().expect("attention was requested");
    let ra = out.reversed_attention.as_deref().expect("RA was requested");
    let attention_norms = frobenius_norms(attention, t);
    let ra_norms = frobenius_norms(ra, t);
    let top_over_median = {
        let mut sorted: Vec<f64> = ra_norms.iter().map(|&x| x as f64).collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        sorted.last().copied().unwrap_or(0.0) / median.max(f64::MIN_POSITIVE)
    };
    let logits_last = &out.logits[..v];
    let tokens: Vec<String> = seq
        .ids
        .iter()
        .map(|&id| model.tokenizer.token_text(id))
        .collect();
    let ranked = top_heads(&ra_norms, nh, nl * nh);
    let top10: Vec<(HeadScore, f32)> = ranked
        .iter()
        .take(10)
        .map(|h| (*h, attention_norms[h.layer * nh + h.head]))
        .collect();
    let next: Vec<(u32, f64)> = top_tokens(logits_last, 5);

    // maps.safetensors
    let ids: Vec<u8> = seq
        .ids
        .iter()
        .flat_map(|&id| (id as i64).to_le_bytes())
        .collect();
    let loss_f32 = [out.loss as f32];
    let owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("input_ids", Dtype::I64, vec![t], ids),
        (
            "attention",
            Dtype::F32,
            vec![nl, nh, t, t],
            tensor_bytes_f32(attention),
        ),
        (
            "reversed_attention",
            Dtype::F32,
            vec![nl, nh, t, t],
            tensor_bytes_f32(ra),
        ),
        (
            "attention_norms",
            Dtype::F32,
            vec![nl, nh],
            tensor_bytes_f32(&attention_norms),
        ),
        (
            "ra_norms",
            Dtype::F32,
            vec![nl, nh],
            tensor_bytes_f32(&ra_norms),
        ),
        ("loss", Dtype::F32, vec![1], tensor_bytes_f32(&loss_f32)),
        (
            "logits_last",
            Dtype::F32,
            vec![v],
            tensor_bytes_f32(logits_last),
        ),
    ];
    let views: Vec<(&str, TensorView)> = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = TensorView::new(*dtype, shape.clone(), bytes).expect("shape matches data");
            (*name, view)
        })
        .collect();
    let metadata: HashMap<String, String> = [
        (
            "tokens",
            serde_json::to_string(&tokens).expect("strings serialize"),
        ),
        ("prompt", args.prompt.clone()),
        ("target", args.target.clone()),
        ("foil", args.foil.clone().unwrap_or_default()),
        ("bos", args.bos.to_string()),
        ("loss", args.loss.name().to_string()),
        ("model", model.source.clone()),
        ("adapter", backend_name.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let st = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::Output(format!("cannot serialize maps.safetensors: {e}")))?;
    staged.write("maps.safetensors", &st)?;
    lap("write_safetensors", &mut timings);

    // PNGs
    let mut files = vec!["maps.safetensors".to_string(), "summary.json".to_string()];
    staged.write(
        "norms.png",
        &render::norms_png(&attention_norms, &ra_norms, nl, nh),
    )?;
    files.push("norms.png".into());
    for h in ranked.iter().take(args.top_k) {
        let name = format!("head_L{}_H{}.png", h.layer, h.head);
        let png = render::head_png(
            h.layer,
            h.head,
            &tokens,
            head_map(attention, nh, t, h.layer, h.head),
            head_map(ra, nh, t, h.layer, h.head),
        );
        staged.write(&name, &png)?;
        files.push(name);
    }
    lap("render_png", &mut timings);

    let next_tokens: Vec<(String, f64)> = next
        .iter()
        .map(|&(id, p)| (model.tokenizer.token_text(id), p))
        .collect();
    let summary = json!({
        "model": model.source,
        "backend": backend_name,
        "config": cfg,
        "prompt": args.prompt,
        "target": args.target,
        "foil": args.foil,
        "bos": args.bos,
        "loss_kind": args.loss.name(),
        "loss": out.loss,
        "tokens": tokens,
        "input_ids": seq.ids,
        "ra_norm_top_over_median": top_over_median,
        "top_heads_by_ra_norm": top10.iter().map(|(h, a)| json!({
            "layer": h.layer, "head": h.head, "ra_norm": h.score, "attention_norm": a,
        })).collect::<Vec<_>>(),
        "next_tokens": next.iter().zip(&next_tokens).map(|((id, p), (text, _))| json!({
            "id": id, "token": text, "probability": p,
        })).collect::<Vec<_>>(),
        "timings_ms": timings.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    let text = serde_json::to_string_pretty(&summary).expect("summary serializes");
    staged.write("summary.json", text.as_bytes())?;
    staged.commit()?;
    Ok(MapsReport {
        model: model.source.clone(),
        backend: backend_name,
        tokens,
        loss: out.loss,
        top_heads: top10,
        next_tokens,
        files: files.into_iter().map(|f| args.out.join(f)).collect(),
        top_over_median,
        timings,
    })
}

/// The one-screen table `revattn maps` prints.
pub fn format_report(r: &MapsReport, args: &MapsArgs) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "model    {}", r.model);
    let _ = writeln!(s, "backend  {}", r.backend);
    let _ = writeln!(s, "tokens   {} {:?}", r.tokens.len(), r.tokens);
    let _ = writeln!(s, "loss     {} = {:.6}", args.loss.name(), r.loss);
    let _ = writeln!(s, "\n top heads by ‖RA‖_F        ‖RA‖_F      ‖A‖_F");
    for (i, (h, a)) in r.top_heads.iter().enumerate() {
        let _ = writeln!(
            s,
            " {:>2}. layer {:>2} head {:>2}   {:>10.4e}  {:>9.4}",
            i + 1,
            h.layer,
            h.head,
            h.score,
            a
        );
    }
    let _ = writeln!(
        s,
        " the top head's ‖RA‖_F is {:.1}× the median head's",
        r.top_over_median
    );
    let _ = writeln!(s, "\n next token after the prompt");
    for (text, p) in &r.next_tokens {
        let _ = writeln!(s, "   {:<20} {:>7.3}%", format!("{text:?}"), 100.0 * p);
    }
    let total: f64 = r
        .timings
        .iter()
        .filter(|(k, _)| !k.starts_with("pass_") || *k == "pass_total")
        .map(|(_, v)| v)
        .sum();
    let pass = r
        .timings
        .iter()
        .find(|(k, _)| *k == "pass_total")
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    let _ = writeln!(
        s,
        "\n time     {:.0} ms total, {:.0} ms forward + backward",
        total, pass
    );
    let _ = writeln!(s, " files    {}/", args.out.display());
    for f in &r.files {
        let _ = writeln!(
            s,
            "   {}",
            f.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
    }
    s
}
