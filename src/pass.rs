//! What one forward + backward pass takes and returns, shared by the GPU engine and the CPU
//! reference, so the CLI and the tests can run either behind the same calls.

use crate::error::{Error, Result};
use crate::loss::Sequence;
use crate::model::GptConfig;

/// Attention patching (PAPER.md §2 E5, Appendix B): after the softmax and before A·V,
/// every head's attention becomes A + η·M[l, h]. The backward pass differentiates the patched
/// forward exactly: the softmax VJP (and so RA) uses the softmax output A, while A·V and its
/// backward use A + η·M.
#[derive(Debug, Clone)]
pub struct AttentionPatch {
    pub eta: f32,
    /// (L, NH, T, T) for the T of the sequence it is applied to.
    pub maps: Vec<f32>,
}

/// Switches on the forward pass that the experiments need; the default is the plain model.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    pub patch: Option<AttentionPatch>,
    /// Heads (layer, head) whose rows of W_o are treated as zero for this pass (bias kept),
    /// without touching the loaded weights.
    pub ablated_heads: Vec<(usize, usize)>,
}

impl ForwardOptions {
    /// (L, NH) multiplier of each head's output: 0 for ablated heads, 1 otherwise.
    pub fn head_scale(&self, config: &GptConfig) -> Vec<f32> {
        let mut s = vec![1.0f32; config.n_layer * config.n_head];
        for &(l, h) in &self.ablated_heads {
            s[l * config.n_head + h] = 0.0;
        }
        s
    }
}

/// Which tensors to bring back to the host. Loss and the logits of the loss rows always come back.
#[derive(Debug, Clone, Copy)]
pub struct Readback {
    pub attention: bool,
    pub reversed_attention: bool,
    /// dL/dh_l at the input of every block (and of ln_f): parity tests and debugging.
    pub hidden_grads: bool,
    /// Skip the backward pass entirely (forward-only evaluation).
    pub backward: bool,
}

impl Default for Readback {
    fn default() -> Self {
        Readback {
            attention: true,
            reversed_attention: true,
            hidden_grads: false,
            backward: true,
        }
    }
}

/// Wall time of each stage of a pass, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PassTimings {
    /// Upload of ids / loss terms and recording of the command buffer.
    pub prepare_ms: f64,
    /// Forward + backward on the device, submit to completion.
    pub compute_ms: f64,
    /// Copying requested tensors back to the host.
    pub readback_ms: f64,
}

/// The result of one pass. Shapes use the vocabulary of `model.rs`; R is the number of loss rows.
#[derive(Debug, Clone)]
pub struct PassOutput {
    pub loss: f64,
    /// (R, V) logits at the loss rows; row 0 is the last prompt position.
    pub logits: Vec<f32>,
    /// (L, NH, T, T) softmax attention (before any patch).
    pub attention: Option<Vec<f32>>,
    /// (L, NH, T, T) R = dL/d(QKᵀ).
    pub reversed_attention: Option<Vec<f32>>,
    /// (L + 1, T, C): dL/dh_l for the input of block l = 0..L−1, then dL/d(ln_f input).
    pub hidden_grads: Option<Vec<f32>>,
    pub timings: PassTimings,
}

/// Anything that can run the pass: the GPU engine, or the float64 CPU reference.
pub trait Backend {
    /// A one-line description (adapter name and backend, or "cpu reference (f64)").
    fn describe(&self) -> String;
    fn run(
        &mut self,
        seq: &Sequence,
        options: &ForwardOptions,
        readback: Readback,
    ) -> Result<PassOutput>;
}

/// Checks a request against the model before any backend runs it, so that no kernel ever indexes
/// out of range: sequence length, token ids, loss rows and terms, patch size, ablated heads.
pub fn validate(config: &GptConfig, seq: &Sequence, options: &ForwardOptions) -> Result<()> {
    let fail = |msg: String| Err(Error::Input(msg));
    let t_len = seq.len();
    let (l, nh) = (config.n_layer, config.n_head);
    if t_len == 0 {
        return fail("the sequence is empty".into());
    }
    if t_len > config.n_positions {
        return fail(format!(
            "the sequence has {t_len} tokens but n_positions is {}",
            config.n_positions
        ));
    }
    if let Some(&id) = seq.ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        return fail(format!(
            "token id {id} is outside the vocabulary ({})",
            config.vocab_size
        ));
    }
    let plan = &seq.loss;
    if plan.rows.is_empty() || plan.rows.end > t_len || plan.lse_scale.len() != plan.rows.len() {
        return fail(format!(
            "the loss rows {:?} do not fit the sequence of {t_len} tokens",
            plan.rows
        ));
    }
    if let Some(term) = plan
        .terms
        .iter()
        .find(|tm| tm.row >= plan.rows.len() || tm.id as usize >= config.vocab_size)
    {
        return fail(format!("the loss term {term:?} is out of range"));
    }
    if let Some(p) = &options.patch {
        if p.maps.len() != l * nh * t_len * t_len {
            return fail(format!(
                "the attention patch has {} values, expected L·NH·T·T = {}",
                p.maps.len(),
                l * nh * t_len * t_len
            ));
        }
    }
    if let Some(&(al, ah)) = options
        .ablated_heads
        .iter()
        .find(|&&(al, ah)| al >= l || ah >= nh)
    {
        return fail(format!("ablated head ({al}, {ah}) does not exist"));
    }
    Ok(())
}
