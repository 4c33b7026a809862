//! `revattn init`: a random-init GPT-2 in HF layout (config.json, model.safetensors, and
//! tokenizer.json when given one), initialised as HF's `GPT2PreTrainedModel._init_weights` does:
//! weights and embeddings N(0, 0.02), the two c_proj weights N(0, 0.02/sqrt(2·L)), biases 0,
//! LayerNorms 1 and 0. Deterministic for a given seed; benchmarks and scale tests need no Python.
//! Tensors are generated one at a time while the file is written, so even GPT-2 XL needs only its
//! largest tensor in memory.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::model::GptConfig;
use crate::output::StagedDir;

const GPT2_VOCAB: usize = 50257;
const INITIALIZER_RANGE: f64 = 0.02;

/// `--config gpt2|gpt2-medium|gpt2-large|gpt2-xl|L,H,C`.
pub fn parse_config(spec: &str, vocab_size: Option<usize>) -> Result<GptConfig> {
    let (n_layer, n_head, n_embd) = match spec {
        "gpt2" => (12, 12, 768),
        "gpt2-medium" => (24, 16, 1024),
        "gpt2-large" => (36, 20, 1280),
        "gpt2-xl" => (48, 25, 1600),
        custom => {
            let parts: Vec<usize> = custom
                .split(',')
                .map(|p| p.trim().parse::<usize>().ok().filter(|&n| n > 0))
                .collect::<Option<_>>()
                .filter(|v: &Vec<usize>| v.len() == 3)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "--config {custom:?}: expected gpt2, gpt2-medium, gpt2-large, gpt2-xl or L,H,C"
                    ))
                })?;
            (parts[0], parts[1], parts[2])
        }
    };
    if n_embd % n_head != 0 {
        return Err(Error::Input(format!(
            "--config: n_embd {n_embd} is not divisible by n_head {n_head}"
        )));
    }
    Ok(GptConfig {
        n_layer,
        n_head,
        n_embd,
        n_positions: 1024,
        vocab_size: vocab_size.unwrap_or(GPT2_VOCAB),
        n_inner: 4 * n_embd,
        layer_norm_epsilon: 1e-5,
    })
}

/// How one tensor is initialised.
#[derive(Clone, Copy)]
enum Init {
    Normal(f64),
    Constant(f32),
}

/// A tensor whose bytes are generated when the writer asks for them.
struct GeneratedTensor {
    shape: Vec<usize>,
    init: Init,
    seed: u64,
}

impl View for GeneratedTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let values: Vec<f32> = match self.init {
            Init::Constant(c) => vec![c; n],
            Init::Normal(std) => {
                let mut rng = SplitMix64(self.seed);
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
        };
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// FNV-1a of the name, mixed with the seed: every tensor has its own stream, independent of order.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(
        0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3),
    )
}

/// The tensors of a GPT-2 in hub layout (no `transformer.` prefix, lm_head tied).
fn tensors(cfg: &GptConfig, seed: u64) -> Vec<(String, GeneratedTensor)> {
    let (c, f, l) = (cfg.n_embd, cfg.n_inner, cfg.n_layer);
    let proj_std = INITIALIZER_RANGE / (2.0 * l as f64).sqrt();
    let mut specs: Vec<(String, Vec<usize>, Init)> = vec![
        (
            "wte.weight".into(),
            vec![cfg.vocab_size, c],
            Init::Normal(INITIALIZER_RANGE),
        ),
        (
            "wpe.weight".into(),
            vec![cfg.n_positions, c],
            Init::Normal(INITIALIZER_RANGE),
        ),
        ("ln_f.weight".into(), vec![c], Init::Constant(1.0)),
        ("ln_f.bias".into(), vec![c], Init::Constant(0.0)),
    ];
    for i in 0..l {
        let n = |s: &str| format!("h.{i}.{s}");
        specs.extend([
            (n("ln_1.weight"), vec![c], Init::Constant(1.0)),
            (n("ln_1.bias"), vec![c], Init::Constant(0.0)),
            (
                n("attn.c_attn.weight"),
                vec![c, 3 * c],
                Init::Normal(INITIALIZER_RANGE),
            ),
            (n("attn.c_attn.bias"), vec![3 * c], Init::Constant(0.0)),
            (n("attn.c_proj.weight"), vec![c, c], Init::Normal(proj_std)),
            (n("attn.c_proj.bias"), vec![c], Init::Constant(0.0)),
            (n("ln_2.weight"), vec![c], Init::Constant(1.0)),
            (n("ln_2.bias"), vec![c], Init::Constant(0.0)),
            (
                n("mlp.c_fc.weight"),
                vec![c, f],
                Init::Normal(INITIALIZER_RANGE),
            ),
            (n("mlp.c_fc.bias"), vec![f], Init::Constant(0.0)),
            (n("mlp.c_proj.weight"), vec![f, c], Init::Normal(proj_std)),
            (n("mlp.c_proj.bias"), vec![c], Init::Constant(0.0)),
        ]);
    }
    specs
        .into_iter()
        .map(|(name, shape, init)| {
            let seed = tensor_seed(seed, &name);
            (name, GeneratedTensor { shape, init, seed })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct InitArgs {
    pub config: String,
    pub seed: u64,
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
}

/// Writes the model; returns its configuration.
pub fn run(args: &InitArgs) -> Result<GptConfig> {
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let tok = crate::tokenizer::Gpt2Tokenizer::from_bytes(&bytes)?;
            Some((bytes, tok.vocab_size(), tok.end_of_text().ok()))
        }
        None => None,
    };
    let cfg = parse_config(&args.config, tokenizer.as_ref().map(|t| t.1))?;
    let staged = StagedDir::create(&args.out)?;
    let eot = tokenizer.as_ref().and_then(|t| t.2);
    let text = cfg.to_hf_json(eot);
    staged.write("config.json", text.as_bytes())?;
    if let Some((bytes, _, _)) = &tokenizer {
        staged.write("tokenizer.json", bytes)?;
    }
    let path = staged.path("model.safetensors");
    safetensors::tensor::serialize_to_file(tensors(&cfg, args.seed), None, &path)
        .map_err(|e| Error::Output(format!("cannot write {}: {e}", path.display())))?;
    // safetensors writes through a private (0600) temporary file; give the checkpoint the same
    // permissions as the other files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(staged.path("config.json"))
            .map_err(|e| Error::io(staged.path("config.json"), e))?
            .permissions()
            .mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(&path, e))?;
    }
    staged.commit()?;
    Ok(cfg)
}

/// Random-init weights in memory (the same values `run` writes for this seed).
pub fn random_weights(cfg: &GptConfig, seed: u64) -> Result<crate::model::Weights> {
    let mut generated: std::collections::HashMap<String, GeneratedTensor> =
        tensors(cfg, seed).into_iter().collect();
    let ordered = cfg
        .parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let t = generated
                .remove(&name)
                .expect("every parameter is generated");
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            crate::model::Tensor::from_vec(shape, values)
        })
        .collect();
    crate::model::Weights::from_named(cfg, ordered)
}

/// The directory revattn writes a model to, for messages.
pub fn describe(cfg: &GptConfig, out: &Path) -> String {
    format!(
        "wrote {} (L={} NH={} C={} V={}, {:.1} M parameters)",
        out.display(),
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.parameter_count() as f64 / 1e6
    )
}
