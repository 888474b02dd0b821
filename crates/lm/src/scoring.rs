//! lm-eval-harness `loglikelihood_rolling`: every token of a document scored exactly once,
//! in windows of the model's context length (see SPEC.md, "Scoring").

use anyhow::{bail, Result};

use crate::model::LanguageModel;

/// One scoring window: the model reads `input` and its last `n_targets` positions predict
/// `targets`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub input: Vec<u32>,
    pub targets: Vec<u32>,
}

/// The windows of `get_rolling_token_windows(tokens, prefix, max_len, context_len=1)`
/// followed by `make_disjoint_window`:
/// the first window is `[prefix] + t[..L-1]` predicting `t[..L]`; later windows predict
/// blocks of L tokens conditioned on the one token before; the last, partial block gets a
/// full L-token left context.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<Window> {
    assert!(max_len >= 1);
    let n = tokens.len();
    if n == 0 {
        return Vec::new();
    }
    let mut windows = Vec::new();
    let first = n.min(max_len);
    let mut input = Vec::with_capacity(first);
    input.push(prefix);
    input.extend_from_slice(&tokens[..first - 1]);
    windows.push(Window { input, targets: tokens[..first].to_vec() });
    let mut predicted = first;
    while predicted < n {
        let pred_len = (n - predicted).min(max_len);
        let end = predicted + pred_len;
        // The window holds tokens[end-L-1 .. end-1] (L tokens) and predicts the last pred_len.
        let start = end - max_len - 1;
        windows.push(Window { input: tokens[start..end - 1].to_vec(), targets: tokens[predicted..end].to_vec() });
        predicted = end;
    }
    windows
}

/// Natural-log probability of every token of `tokens`, in order.
pub fn token_logprobs(model: &dyn LanguageModel, tokens: &[u32]) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        bail!("cannot score an empty token sequence");
    }
    let info = model.info();
    let mut out = Vec::with_capacity(tokens.len());
    for w in rolling_windows(tokens, info.prefix_token, info.context_length) {
        out.extend(model.target_logprobs(&w.input, &w.targets)?);
    }
    Ok(out)
}

/// The document's summed log-likelihood (f64 accumulation).
pub fn loglikelihood(model: &dyn LanguageModel, tokens: &[u32]) -> Result<f64> {
    Ok(token_logprobs(model, tokens)?.iter().map(|&x| x as f64).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once() {
        let t: Vec<u32> = (100..175).collect();
        let w = rolling_windows(&t, 7, 32);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].input[0], 7);
        assert_eq!(&w[0].input[1..], &t[..31]);
        assert_eq!(w[0].targets, &t[..32]);
        // Second window: conditioned on the one token before its block.
        assert_eq!(w[1].input, &t[31..63]);
        assert_eq!(w[1].targets, &t[32..64]);
        // Last, partial window: full 32-token context.
        assert_eq!(w[2].input, &t[42..74]);
        assert_eq!(w[2].targets, &t[64..75]);
        let all: Vec<u32> = w.iter().flat_map(|w| w.targets.clone()).collect();
        assert_eq!(all, t);
    }

    #[test]
    fn short_and_exact_documents() {
        let w = rolling_windows(&[5], 1, 4);
        assert_eq!(w, vec![Window { input: vec![1], targets: vec![5] }]);
        let w = rolling_windows(&[5, 6, 7, 8], 1, 4);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].input, vec![1, 5, 6, 7]);
        let w = rolling_windows(&[5, 6, 7, 8, 9], 1, 4);
        assert_eq!(w[1], Window { input: vec![5, 6, 7, 8], targets: vec![9] });
        assert!(rolling_windows(&[], 1, 4).is_empty());
    }
}
