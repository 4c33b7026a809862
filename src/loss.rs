//! Losses and the token sequence they run on.
//!
//! Every supported loss has the same shape, which lets one GPU kernel (and one CPU function)
//! serve them all. For the logit rows r = 0..R (sequence positions `rows.start + r`):
//!
//!   loss = Σ_r lse_scale[r] · logsumexp(logits[r]) + Σ_terms coef · logits[term.row, term.id]
//!   dloss/dlogits[r] = lse_scale[r] · softmax(logits[r]) + Σ_{terms in row r} coef · onehot(id)
//!
//! - `nll` (the official demo loss): prompt only, one row (the last prompt position),
//!   −Σ_k log p(y_k) = K·lse − Σ_k logit[y_k]  →  lse_scale = K, coef = −1 for every target id.
//! - `ce` (the official experiments' loss): prompt + target, teacher-forced, mean over the n
//!   target tokens; row r predicts target token r  →  lse_scale = 1/n, coef = −1/n.
//! - `logit-diff`: logit[foil] − logit[target] at the last prompt position  →  lse_scale = 0,
//!   coef −1 on the target's first id and +1 on the foil's first id.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::tokenizer::Gpt2Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// −Σ log p(target ids) at the last prompt position (prompt only): the official demo loss.
    Nll,
    /// Teacher-forced mean cross-entropy over the target tokens of prompt+target.
    Ce,
    /// logit[foil] − logit[target] at the last prompt position (first token of each).
    LogitDiff,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Nll => "nll",
            LossKind::Ce => "ce",
            LossKind::LogitDiff => "logit-diff",
        }
    }
}

/// One `coef · logits[row, id]` term of the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossTerm {
    pub row: usize,
    pub id: u32,
    pub coef: f32,
}

/// Which logits the loss reads and how it combines them.
#[derive(Debug, Clone, PartialEq)]
pub struct LossPlan {
    /// Sequence positions whose logits are computed; row r is position rows.start + r.
    pub rows: Range<usize>,
    /// (R) coefficient of logsumexp(logits[r]).
    pub lse_scale: Vec<f32>,
    pub terms: Vec<LossTerm>,
}

impl LossPlan {
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }
}

/// A tokenized request: the sequence the forward pass runs on and its loss.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// (T) token ids.
    pub ids: Vec<u32>,
    /// Number of prompt tokens (BOS included); logits_last is read at position prompt_len − 1.
    pub prompt_len: usize,
    pub loss: LossPlan,
    pub kind: LossKind,
}

/// What the user asked for, before tokenization.
#[derive(Debug, Clone)]
pub struct LossRequest<'a> {
    pub prompt: &'a str,
    pub target: &'a str,
    pub foil: Option<&'a str>,
    pub kind: LossKind,
    /// Prepend <|endoftext|>.
    pub bos: bool,
}

impl Sequence {
    /// Tokenizes the request and lays out the loss; checks every bad-input case with a one-line error.
    pub fn build(tok: &Gpt2Tokenizer, req: &LossRequest, n_positions: usize) -> Result<Self> {
        if req.prompt.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        if req.target.is_empty() {
            return Err(Error::Input("the target is empty".into()));
        }
        let mut ids = Vec::new();
        if req.bos {
            ids.push(tok.end_of_text()?);
        }
        ids.extend(tok.encode(req.prompt)?);
        let prompt_len = ids.len();
        if prompt_len == 0 {
            return Err(Error::Input("the prompt tokenizes to nothing".into()));
        }
        let target = tok.encode(req.target)?;
        if target.is_empty() {
            return Err(Error::Input(format!(
                "the target {:?} tokenizes to nothing",
                req.target
            )));
        }
        let foil = match req.kind {
            LossKind::LogitDiff => {
                let foil_text = req
                    .foil
                    .ok_or_else(|| Error::Input("--loss logit-diff needs --foil TEXT".into()))?;
                if foil_text.is_empty() {
                    return Err(Error::Input("the foil is empty".into()));
                }
                let Some(&foil_id) = tok.encode(foil_text)?.first() else {
                    return Err(Error::Input(format!(
                        "the foil {foil_text:?} tokenizes to nothing"
                    )));
                };
                if foil_id == target[0] {
                    return Err(Error::Input(
                        "the foil and the target start with the same token".into(),
                    ));
                }
                Some(foil_id)
            }
            _ => None,
        };
        let seq = Sequence::from_ids(ids, req.kind, &target, foil);
        if seq.len() > n_positions {
            return Err(Error::Input(format!(
                "the sequence has {} tokens but the model's n_positions is {n_positions}",
                seq.len()
            )));
        }
        Ok(seq)
    }

    /// Lays out the loss for already-tokenized input: `prompt` ids (BOS included when wanted),
    /// `target` ids, and for `logit-diff` the foil's first id. `ce` appends the target.
    pub fn from_ids(prompt: Vec<u32>, kind: LossKind, target: &[u32], foil: Option<u32>) -> Self {
        assert!(!prompt.is_empty() && !target.is_empty());
        let prompt_len = prompt.len();
        let last = prompt_len - 1;
        let term = |row, id, coef| LossTerm { row, id, coef };
        let (ids, loss) = match kind {
            LossKind::Nll => (
                prompt,
                LossPlan {
                    rows: last..last + 1,
                    lse_scale: vec![target.len() as f32],
                    terms: target.iter().map(|&id| term(0, id, -1.0)).collect(),
                },
            ),
            LossKind::Ce => {
                let n = target.len();
                let mut ids = prompt;
                ids.extend_from_slice(target);
                let plan = LossPlan {
                    rows: last..last + n,
                    lse_scale: vec![1.0 / n as f32; n],
                    terms: target
                        .iter()
                        .enumerate()
                        .map(|(r, &id)| term(r, id, -1.0 / n as f32))
                        .collect(),
                };
                (ids, plan)
            }
            LossKind::LogitDiff => (
                prompt,
                LossPlan {
                    rows: last..last + 1,
                    lse_scale: vec![0.0],
                    terms: vec![
                        term(0, target[0], -1.0),
                        term(0, foil.expect("logit-diff needs a foil id"), 1.0),
                    ],
                },
            ),
        };
        Sequence {
            ids,
            prompt_len,
            loss,
            kind,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A training batch: B sequences of T tokens, right-padded, and the next-token target of every
/// position (−1 = no loss there: padding, prompt text). The loss is the mean over the positions
/// that have a target of −log softmax(logits[b, t])[target[b, t]]. Causal attention means padding
/// after a sequence never changes its real positions, so no key mask is needed.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    pub b: usize,
    pub t: usize,
    /// (B, T) token ids; padding is any valid id.
    pub ids: Vec<u32>,
    /// (B, T) target id at each position, or −1.
    pub targets: Vec<i32>,
}

impl TrainBatch {
    /// Number of positions that carry a loss term.
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }

    /// The rows (b·T + t) that have a target, in order.
    pub fn target_rows(&self) -> Vec<u32> {
        (0..self.targets.len() as u32)
            .filter(|&r| self.targets[r as usize] >= 0)
            .collect()
    }

    /// The loss as a [`LossPlan`] over the target rows only (row r of the plan is
    /// `target_rows()[r]`): lse_scale = 1/n and one term −1/n per row.
    pub fn loss_plan(&self) -> LossPlan {
        let rows = self.target_rows();
        let n = rows.len().max(1) as f32;
        LossPlan {
            rows: 0..rows.len(),
            lse_scale: vec![1.0 / n; rows.len()],
            terms: rows
                .iter()
                .enumerate()
                .map(|(r, &row)| LossTerm {
                    row: r,
                    id: self.targets[row as usize] as u32,
                    coef: -1.0 / n,
                })
                .collect(),
        }
    }
}
