//! Model loading: an HF GPT-2 directory (config.json, model.safetensors, tokenizer.json or
//! vocab.json + merges.txt), or the small model embedded in the binary.
//!
//! Dimension vocabulary used everywhere in revattn:
//! B batch, T sequence length, C n_embd, NH heads, hs = C / NH head size, V vocabulary,
//! L layers, P n_positions, F = n_inner (4·C unless config.json says otherwise).
//!
//! Weights stay in the memory-mapped file whenever the stored bytes are aligned little-endian f32;
//! f16/bf16 checkpoints and unaligned data are converted to an owned f32 copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tokenizer::Gpt2Tokenizer;

/// The GPT-2 hyper-parameters revattn needs, read from config.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GptConfig {
    /// L
    pub n_layer: usize,
    /// NH
    pub n_head: usize,
    /// C
    pub n_embd: usize,
    /// P: the longest sequence the position table covers.
    pub n_positions: usize,
    /// V
    pub vocab_size: usize,
    /// F: the MLP's hidden width.
    pub n_inner: usize,
    pub layer_norm_epsilon: f64,
}

impl GptConfig {
    /// hs = C / NH
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parses and checks an HF GPT-2 config.json.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Model(format!("config.json is not valid JSON: {e}")))?;
        let get = |keys: &[&str]| -> Result<usize> {
            for k in keys {
                if let Some(x) = v.get(*k) {
                    return x
                        .as_u64()
                        .filter(|&n| n > 0)
                        .map(|n| n as usize)
                        .ok_or_else(|| {
                            Error::Model(format!("config.json: {k} must be a positive integer"))
                        });
                }
            }
            Err(Error::Model(format!("config.json has no {}", keys[0])))
        };
        let n_layer = get(&["n_layer", "num_hidden_layers"])?;
        let n_head = get(&["n_head", "num_attention_heads"])?;
        let n_embd = get(&["n_embd", "hidden_size"])?;
        let n_positions = get(&["n_positions", "n_ctx", "max_position_embeddings"])?;
        let vocab_size = get(&["vocab_size"])?;
        let n_inner = match v.get("n_inner") {
            None | Some(serde_json::Value::Null) => 4 * n_embd,
            Some(_) => get(&["n_inner"])?,
        };
        let layer_norm_epsilon = v
            .get("layer_norm_epsilon")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5);
        if n_embd % n_head != 0 {
            return Err(Error::Model(format!(
                "config.json: n_embd {n_embd} is not divisible by n_head {n_head}"
            )));
        }
        if let Some(act) = v.get("activation_function").and_then(|a| a.as_str()) {
            if act != "gelu_new" {
                return Err(Error::Model(format!(
                    "config.json: activation_function {act:?} is not supported (GPT-2 uses gelu_new)"
                )));
            }
        }
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if v.get(flag).and_then(|f| f.as_bool()) == Some(true) {
                return Err(Error::Model(format!(
                    "config.json: {flag}=true is not supported"
                )));
            }
        }
        if v.get("scale_attn_weights").and_then(|f| f.as_bool()) == Some(false) {
            return Err(Error::Model(
                "config.json: scale_attn_weights=false is not supported".into(),
            ));
        }
        Ok(GptConfig {
            n_layer,
            n_head,
            n_embd,
            n_positions,
            vocab_size,
            n_inner,
            layer_norm_epsilon,
        })
    }

    /// config.json as HF's GPT2Config writes it (`eot`: the tokenizer's <|endoftext|> id).
    pub fn to_hf_json(&self, eot: Option<u32>) -> String {
        let eot = eot.unwrap_or(50256);
        let json = serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_inner": if self.n_inner == 4 * self.n_embd { None } else { Some(self.n_inner) },
            "vocab_size": self.vocab_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": 0.02,
            "resid_pdrop": 0.1,
            "embd_pdrop": 0.1,
            "attn_pdrop": 0.1,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
            "bos_token_id": eot,
            "eos_token_id": eot,
        });
        serde_json::to_string_pretty(&json).expect("config serializes")
    }

    /// (HF name, shape) of every parameter, in `Weights::named` order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (c, f) = (self.n_embd, self.n_inner);
        let mut out = vec![
            ("wte.weight".to_string(), vec![self.vocab_size, c]),
            ("wpe.weight".to_string(), vec![self.n_positions, c]),
        ];
        for l in 0..self.n_layer {
            let block: [(&str, Vec<usize>); 12] = [
                ("ln_1.weight", vec![c]),
                ("ln_1.bias", vec![c]),
                ("attn.c_attn.weight", vec![c, 3 * c]),
                ("attn.c_attn.bias", vec![3 * c]),
                ("attn.c_proj.weight", vec![c, c]),
                ("attn.c_proj.bias", vec![c]),
                ("ln_2.weight", vec![c]),
                ("ln_2.bias", vec![c]),
                ("mlp.c_fc.weight", vec![c, f]),
                ("mlp.c_fc.bias", vec![f]),
                ("mlp.c_proj.weight", vec![f, c]),
                ("mlp.c_proj.bias", vec![c]),
            ];
            out.extend(block.into_iter().map(|(n, s)| (format!("h.{l}.{n}"), s)));
        }
        out.push(("ln_f.weight".to_string(), vec![c]));
        out.push(("ln_f.bias".to_string(), vec![c]));
        out
    }

    /// Number of parameters (wte counted once: lm_head is tied).
    pub fn parameter_count(&self) -> usize {
        let (c, f) = (self.n_embd, self.n_inner);
        let block = 2 * 2 * c + c * 3 * c + 3 * c + c * c + c + c * f + f + f * c + c;
        self.vocab_size * c + self.n_positions * c + self.n_layer * block + 2 * c
    }
}

/// Where a tensor's f32 values live.
enum TensorData {
    /// Aligned f32 inside a memory-mapped file: no copy.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    /// Aligned f32 inside bytes compiled into the binary.
    Static(&'static [f32]),
    Owned(Vec<f32>),
}

/// A row-major f32 tensor of the checkpoint.
pub struct Tensor {
    pub shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn data(&self) -> &[f32] {
        match &self.data {
            TensorData::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + len * 4])
            }
            TensorData::Static(s) => s,
            TensorData::Owned(v) => v,
        }
    }

    /// Drops this tensor's pages of a memory-mapped checkpoint from memory once it has been
    /// copied to the adapter (they are re-read from the file if needed again), so that
    /// uploading a large model never holds the whole file and its GPU copy at once.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        if let TensorData::Mapped { map, offset, len } = &self.data {
            // SAFETY: a read-only file mapping: MADV_DONTNEED discards clean pages, which are
            // re-read from the file on the next access.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *offset, len * 4)
            };
        }
    }

    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::Owned(data),
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

/// One transformer block. HF Conv1D weights are stored [in, out]: y = x·W + b.
#[derive(Debug)]
pub struct LayerWeights {
    pub ln_1_w: Tensor,      // (C)
    pub ln_1_b: Tensor,      // (C)
    pub attn_w: Tensor,      // (C, 3C) columns Q | K | V, head h at [h·hs, (h+1)·hs) of each
    pub attn_b: Tensor,      // (3C)
    pub attn_proj_w: Tensor, // (C, C) W_o: rows [h·hs, (h+1)·hs) read head h
    pub attn_proj_b: Tensor, // (C)
    pub ln_2_w: Tensor,      // (C)
    pub ln_2_b: Tensor,      // (C)
    pub fc_w: Tensor,        // (C, F)
    pub fc_b: Tensor,        // (F)
    pub fc_proj_w: Tensor,   // (F, C)
    pub fc_proj_b: Tensor,   // (C)
}

#[derive(Debug)]
pub struct Weights {
    pub wte: Tensor, // (V, C), also the tied lm_head
    pub wpe: Tensor, // (P, C)
    pub layers: Vec<LayerWeights>,
    pub ln_f_w: Tensor, // (C)
    pub ln_f_b: Tensor, // (C)
    /// The checkpoint file, when the tensors borrow from it.
    mapped: Option<Arc<Mmap>>,
}

/// A loaded GPT-2: hyper-parameters, weights and tokenizer.
pub struct Model {
    pub config: GptConfig,
    pub weights: Weights,
    pub tokenizer: Gpt2Tokenizer,
    /// Human-readable origin: the directory, or "embedded default model".
    pub source: String,
}

/// The file bytes behind a checkpoint.
enum Bytes {
    Mapped(Arc<Mmap>),
    Static(&'static [u8]),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }
}

/// `data` rounded to IEEE binary16 (nearest even), as bits: how `--weights f16` stores a matrix.
pub fn f16_bits(data: &[f32]) -> Vec<u16> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    // the slice conversion runs several values per instruction where the CPU has F16C
    let mut bits = vec![0u16; data.len()];
    bits.reinterpret_cast_mut::<half::f16>()
        .convert_from_f32_slice(data);
    bits
}

impl Weights {
    fn load(bytes: Bytes, config: &GptConfig) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes.as_slice())
            .map_err(|e| Error::Model(format!("model.safetensors is truncated or corrupt: {e}")))?;
        // Accept both key layouts: save_pretrained writes "transformer.h.0…", hub files "h.0…".
        let mut names: HashMap<String, String> = HashMap::new();
        for name in st.names() {
            let short = name.strip_prefix("transformer.").unwrap_or(name);
            names.insert(short.to_string(), name.to_string());
        }
        let base = bytes.as_slice().as_ptr() as usize;
        let take = |short: &str, shape: &[usize]| -> Result<Tensor> {
            let full = names
                .get(short)
                .ok_or_else(|| Error::Model(format!("model.safetensors has no tensor {short}")))?;
            let view = st
                .tensor(full)
                .map_err(|e| Error::Model(format!("tensor {full}: {e}")))?;
            if view.shape() != shape {
                return Err(Error::Model(format!(
                    "tensor {full} has shape {:?}, config.json implies {:?}",
                    view.shape(),
                    shape
                )));
            }
            let raw = view.data();
            let len: usize = shape.iter().product();
            let data = match view.dtype() {
                Dtype::F32 => {
                    let offset = raw.as_ptr() as usize - base;
                    if raw.as_ptr() as usize % 4 == 0 && cfg!(target_endian = "little") {
                        match &bytes {
                            Bytes::Mapped(map) => TensorData::Mapped {
                                map: map.clone(),
                                offset,
                                len,
                            },
                            Bytes::Static(s) => TensorData::Static(bytemuck::cast_slice(
                                &s[offset..offset + len * 4],
                            )),
                        }
                    } else {
                        TensorData::Owned(
                            raw.chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .collect(),
                        )
                    }
                }
                Dtype::F16 => TensorData::Owned(
                    raw.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                Dtype::BF16 => TensorData::Owned(
                    raw.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                other => {
                    return Err(Error::Model(format!(
                        "tensor {full} has dtype {other:?}; expected F32, F16 or BF16"
                    )))
                }
            };
            Ok(Tensor {
                shape: shape.to_vec(),
                data,
            })
        };
        let (c, f, v, p) = (
            config.n_embd,
            config.n_inner,
            config.vocab_size,
            config.n_positions,
        );
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let n = |s: &str| format!("h.{l}.{s}");
            layers.push(LayerWeights {
                ln_1_w: take(&n("ln_1.weight"), &[c])?,
                ln_1_b: take(&n("ln_1.bias"), &[c])?,
                attn_w: take(&n("attn.c_attn.weight"), &[c, 3 * c])?,
                attn_b: take(&n("attn.c_attn.bias"), &[3 * c])?,
                attn_proj_w: take(&n("attn.c_proj.weight"), &[c, c])?,
                attn_proj_b: take(&n("attn.c_proj.bias"), &[c])?,
                ln_2_w: take(&n("ln_2.weight"), &[c])?,
                ln_2_b: take(&n("ln_2.bias"), &[c])?,
                fc_w: take(&n("mlp.c_fc.weight"), &[c, f])?,
                fc_b: take(&n("mlp.c_fc.bias"), &[f])?,
                fc_proj_w: take(&n("mlp.c_proj.weight"), &[f, c])?,
                fc_proj_b: take(&n("mlp.c_proj.bias"), &[c])?,
            });
        }
        if names.contains_key(&format!("h.{}.ln_1.weight", config.n_layer)) {
            return Err(Error::Model(format!(
                "model.safetensors has more blocks than config.json's n_layer {}",
                config.n_layer
            )));
        }
        Ok(Weights {
            mapped: match &bytes {
                Bytes::Mapped(map) => Some(map.clone()),
                Bytes::Static(_) => None,
            },
            wte: take("wte.weight", &[v, c])?,
            wpe: take("wpe.weight", &[p, c])?,
            layers,
            ln_f_w: take("ln_f.weight", &[c])?,
            ln_f_b: take("ln_f.bias", &[c])?,
        })
    }
}

impl LayerWeights {
    /// (HF name suffix, tensor) in checkpoint order.
    pub fn named(&self) -> [(&'static str, &Tensor); 12] {
        [
            ("ln_1.weight", &self.ln_1_w),
            ("ln_1.bias", &self.ln_1_b),
            ("attn.c_attn.weight", &self.attn_w),
            ("attn.c_attn.bias", &self.attn_b),
            ("attn.c_proj.weight", &self.attn_proj_w),
            ("attn.c_proj.bias", &self.attn_proj_b),
            ("ln_2.weight", &self.ln_2_w),
            ("ln_2.bias", &self.ln_2_b),
            ("mlp.c_fc.weight", &self.fc_w),
            ("mlp.c_fc.bias", &self.fc_b),
            ("mlp.c_proj.weight", &self.fc_proj_w),
            ("mlp.c_proj.bias", &self.fc_proj_b),
        ]
    }
}

impl Weights {
    /// Every parameter with its HF hub name ("wte.weight", "h.0.ln_1.weight", …), in the one
    /// canonical order that gradients, optimizer state and checkpoints use.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![
            ("wte.weight".to_string(), &self.wte),
            ("wpe.weight".to_string(), &self.wpe),
        ];
        for (l, layer) in self.layers.iter().enumerate() {
            out.extend(layer.named().map(|(n, t)| (format!("h.{l}.{n}"), t)));
        }
        out.push(("ln_f.weight".to_string(), &self.ln_f_w));
        out.push(("ln_f.bias".to_string(), &self.ln_f_b));
        out
    }

    /// The matrices that `--weights f16` stores in half precision (wte and each block's four
    /// Conv1D weights), mutably: rounding them here gives the exact weights such a run uses.
    fn f16_matrices_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.wte];
        for l in &mut self.layers {
            out.extend([
                &mut l.attn_w,
                &mut l.attn_proj_w,
                &mut l.fc_w,
                &mut l.fc_proj_w,
            ]);
        }
        out
    }

    /// Rounds every matrix `--weights f16` stores to f16 and back (what that run computes with),
    /// so the float64 reference can check it at the usual tolerance.
    pub fn round_f16_matrices(&mut self) {
        for t in self.f16_matrices_mut() {
            let rounded = t
                .data()
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect();
            t.data = TensorData::Owned(rounded);
        }
    }

    /// model.safetensors bytes in HF hub layout (F32, wte once: the lm_head is tied).
    pub fn to_safetensors(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .named()
            .into_iter()
            .map(|(name, t)| {
                let view = safetensors::tensor::TensorView::new(
                    Dtype::F32,
                    t.shape.clone(),
                    bytemuck::cast_slice(t.data()),
                )
                .expect("shape matches data");
                (name, view)
            })
            .collect();
        safetensors::tensor::serialize(views, metadata)
            .map_err(|e| Error::Output(format!("cannot serialize the weights: {e}")))
    }

    /// Rebuilds weights from tensors in `named()` order (a trained model read back from the GPU).
    pub fn from_named(config: &GptConfig, mut tensors: Vec<Tensor>) -> Result<Self> {
        let expected = 4 + 12 * config.n_layer;
        if tensors.len() != expected {
            return Err(Error::Model(format!(
                "expected {expected} parameter tensors, got {}",
                tensors.len()
            )));
        }
        let mut it = tensors.drain(..);
        let mut next = || it.next().expect("count checked");
        let (wte, wpe) = (next(), next());
        let layers = (0..config.n_layer)
            .map(|_| LayerWeights {
                ln_1_w: next(),
                ln_1_b: next(),
                attn_w: next(),
                attn_b: next(),
                attn_proj_w: next(),
                attn_proj_b: next(),
                ln_2_w: next(),
                ln_2_b: next(),
                fc_w: next(),
                fc_b: next(),
                fc_proj_w: next(),
                fc_proj_b: next(),
            })
            .collect();
        let (ln_f_w, ln_f_b) = (next(), next());
        drop(it);
        Ok(Weights::in_memory(wte, wpe, layers, ln_f_w, ln_f_b))
    }
}

impl Weights {
    /// Weights built in memory (tests, generated models): no file behind them.
    pub fn in_memory(
        wte: Tensor,
        wpe: Tensor,
        layers: Vec<LayerWeights>,
        ln_f_w: Tensor,
        ln_f_b: Tensor,
    ) -> Self {
        Weights {
            wte,
            wpe,
            layers,
            ln_f_w,
            ln_f_b,
            mapped: None,
        }
    }

    /// Lets the kernel drop the checkpoint's pages from memory once the GPU has its own copy
    /// (otherwise the upload leaves the whole file resident). Later reads fault the pages back in
    /// from the unchanged file, so this changes memory use, never values.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        if let Some(map) = &self.mapped {
            // SAFETY: a read-only file mapping: MADV_DONTNEED discards clean pages, which
            // are re-read from the file on the next access.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The small GPT-2 compiled into the binary: what every command runs on without `--model`.
pub mod embedded {
    pub const NAME: &str = "embedded default model (assets/default-model)";
    pub static CONFIG: &str = include_str!("../assets/default-model/config.json");
    pub static TOKENIZER: &[u8] = include_bytes!("../assets/default-model/tokenizer.json");
    /// Wrapped so the f32 data can be borrowed without a copy.
    #[repr(C, align(16))]
    pub struct Aligned<T: ?Sized>(pub T);
    pub static SAFETENSORS: &Aligned<[u8]> =
        &Aligned(*include_bytes!("../assets/default-model/model.safetensors"));
}

impl Model {
    /// Loads an HF GPT-2 directory.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Model(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::Model(format!(
                "{} has no config.json",
                dir.display()
            )));
        }
        let config = GptConfig::from_json(&read_text(&config_path)?)?;
        let tokenizer = Gpt2Tokenizer::load_dir(dir)?;
        check_vocab(&config, &tokenizer)?;
        let st_path: PathBuf = dir.join("model.safetensors");
        let file = std::fs::File::open(&st_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Model(format!("{} has no model.safetensors", dir.display()))
            } else {
                Error::io(&st_path, e)
            }
        })?;
        // SAFETY: the file is only read; revattn never writes a checkpoint it has mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&st_path, e))?;
        let weights = Weights::load(Bytes::Mapped(Arc::new(map)), &config)?;
        Ok(Model {
            config,
            weights,
            tokenizer,
            source: dir.display().to_string(),
        })
    }

    /// The small GPT-2 shipped inside the binary.
    pub fn embedded() -> Result<Self> {
        let config = GptConfig::from_json(embedded::CONFIG)?;
        let tokenizer = Gpt2Tokenizer::from_bytes(embedded::TOKENIZER)?;
        let weights = Weights::load(Bytes::Static(&embedded::SAFETENSORS.0), &config)?;
        Ok(Model {
            config,
            weights,
            tokenizer,
            source: embedded::NAME.to_string(),
        })
    }

    /// `--model DIR` when given, else the embedded model.
    pub fn load_or_embedded(dir: Option<&Path>) -> Result<Self> {
        match dir {
            Some(d) => Self::load(d),
            None => Self::embedded(),
        }
    }
}

fn check_vocab(config: &GptConfig, tok: &Gpt2Tokenizer) -> Result<()> {
    if tok.vocab_size() > config.vocab_size {
        return Err(Error::Model(format!(
            "tokenizer has {} tokens but config.json's vocab_size is {}",
            tok.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_bits_round_to_nearest_even() {
        assert_eq!(f16_bits(&[1.0, -2.0, 1.0 / 3.0]), [0x3c00, 0xc000, 0x3555]);
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa.
        assert_eq!(f16_bits(&[1.0 + 1.0 / 2048.0]), [0x3c00]);
        // overflow → +inf
        assert_eq!(f16_bits(&[1e6]), [0x7c00]);
        // the slice conversion (vectorized, with a scalar tail) agrees with the scalar one on
        // every value, subnormals and ties included, at a length that is no multiple of 8
        let values: Vec<f32> = (0..1003)
            .map(|i| (i as f32 - 501.0) * 7.3e-3 * (1.0 + (i % 7) as f32 * 1e-3))
            .chain([6.0e-8, -3.0e-5, 65504.0, 65520.0, 0.0, -0.0])
            .collect();
        let scalar: Vec<u16> = values
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        assert_eq!(f16_bits(&values), scalar);
    }

    #[test]
    fn config_rejects_indivisible_heads() {
        let e = GptConfig::from_json(
            r#"{"n_layer":1,"n_head":3,"n_embd":16,"n_positions":8,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not divisible"), "{e}");
    }
}
