//! Reversed Attention scores: per-head norms and head rankings (PAPER.md §4 C).

/// Frobenius norm of each T×T map in `maps` (n_maps, T, T) → (n_maps), accumulated in f64.
pub fn frobenius_norms(maps: &[f32], t: usize) -> Vec<f32> {
    maps.chunks(t * t)
        .map(|m| {
            m.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

/// One head's score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeadScore {
    pub layer: usize,
    pub head: usize,
    pub score: f32,
}

/// The `k` best heads of a (L, NH) score table, highest first. Ties keep the official code's
/// order: a stable ascending sort, then reversed (so among equal scores the later head comes first).
pub fn top_heads(scores: &[f32], n_head: usize, k: usize) -> Vec<HeadScore> {
    let mut all: Vec<HeadScore> = scores
        .iter()
        .enumerate()
        .map(|(i, &score)| HeadScore {
            layer: i / n_head,
            head: i % n_head,
            score,
        })
        .collect();
    all.sort_by(|a, b| a.score.total_cmp(&b.score));
    all.reverse();
    all.truncate(k);
    all
}

/// The T×T map of head (layer, head) inside an (L, NH, T, T) tensor.
pub fn head_map(maps: &[f32], n_head: usize, t: usize, layer: usize, head: usize) -> &[f32] {
    let start = (layer * n_head + head) * t * t;
    &maps[start..start + t * t]
}

/// The `k` most likely next tokens from one row of logits: (id, probability), highest first.
pub fn top_tokens(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    ids.into_iter()
        .take(k)
        .map(|id| (id, (logits[id as usize] as f64 - max).exp() / sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_and_ranking() {
        let maps = [3.0, 4.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let n = frobenius_norms(&maps, 2);
        assert_eq!(n, vec![5.0, 1.0, 1.0]);
        let top = top_heads(&n, 3, 3);
        assert_eq!((top[0].layer, top[0].head), (0, 0));
        // tie between heads 1 and 2: the later one first, as the official code orders it
        assert_eq!((top[1].head, top[2].head), (2, 1));
    }

    #[test]
    fn top_tokens_are_probabilities() {
        let t = top_tokens(&[0.0, 2.0, 1.0], 2);
        assert_eq!(t[0].0, 1);
        assert_eq!(t[1].0, 2);
        let z = 1.0 + 2f64.exp() + 1f64.exp();
        assert!((t[0].1 - 2f64.exp() / z).abs() < 1e-12);
    }
}
