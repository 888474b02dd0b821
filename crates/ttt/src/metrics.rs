//! lm-eval-harness's perplexity metrics, aggregated over documents (sums first, then the
//! ratio: documents are not averaged), and the Pile's task weighting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// UTF-8 bytes of a document.
pub fn byte_count(text: &str) -> u64 {
    text.len() as u64
}

/// Python's `len(re.split(r"\s+", text))`: one more than the number of whitespace runs, so
/// leading or trailing whitespace adds an empty field that counts.
pub fn word_count(text: &str) -> u64 {
    let mut runs = 0;
    let mut in_space = false;
    for c in text.chars() {
        let space = is_python_space(c);
        if space && !in_space {
            runs += 1;
        }
        in_space = space;
    }
    runs + 1
}

/// Python's `\s` on `str` patterns: `str.isspace()`, which is Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Summed log-likelihood (natural log), bytes and words over a set of documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub loglikelihood: f64,
    pub bytes: u64,
    pub words: u64,
    pub docs: u64,
}

impl Totals {
    pub fn add(&mut self, loglikelihood: f64, bytes: u64, words: u64) {
        self.loglikelihood += loglikelihood;
        self.bytes += bytes;
        self.words += words;
        self.docs += 1;
    }

    /// `-ΣLL / Σbytes / ln 2`
    pub fn bits_per_byte(&self) -> f64 {
        -self.loglikelihood / self.bytes as f64 / std::f64::consts::LN_2
    }

    /// `exp(-ΣLL / Σbytes)` = 2^bits_per_byte
    pub fn byte_perplexity(&self) -> f64 {
        (-self.loglikelihood / self.bytes as f64).exp()
    }

    /// `exp(-ΣLL / Σwords)`
    pub fn word_perplexity(&self) -> f64 {
        (-self.loglikelihood / self.words as f64).exp()
    }

    pub fn metrics(&self) -> Metrics {
        Metrics {
            bits_per_byte: self.bits_per_byte(),
            byte_perplexity: self.byte_perplexity(),
            word_perplexity: self.word_perplexity(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub bits_per_byte: f64,
    pub byte_perplexity: f64,
    pub word_perplexity: f64,
}

/// The Pile's 22 components: `meta.pile_set_name`, lm-eval-harness task name, weight (%).
pub const PILE_TASKS: &[(&str, &str, f64)] = &[
    ("Pile-CC", "pile_pile-cc", 18.11),
    ("PubMed Central", "pile_pubmed-central", 14.40),
    ("Books3", "pile_books3", 12.07),
    ("OpenWebText2", "pile_openwebtext2", 10.01),
    ("ArXiv", "pile_arxiv", 8.96),
    ("Github", "pile_github", 7.59),
    ("FreeLaw", "pile_freelaw", 6.12),
    ("StackExchange", "pile_stackexchange", 5.13),
    ("USPTO Backgrounds", "pile_uspto", 3.65),
    ("PubMed Abstracts", "pile_pubmed-abstracts", 3.07),
    ("Gutenberg (PG-19)", "pile_gutenberg", 2.17),
    ("OpenSubtitles", "pile_opensubtitles", 1.55),
    ("Wikipedia (en)", "pile_wikipedia", 1.53),
    ("DM Mathematics", "pile_dm-mathematics", 1.24),
    ("Ubuntu IRC", "pile_ubuntu-irc", 0.88),
    ("BookCorpus2", "pile_bookcorpus2", 0.75),
    ("EuroParl", "pile_europarl", 0.73),
    ("HackerNews", "pile_hackernews", 0.62),
    ("YoutubeSubtitles", "pile_youtubesubtitles", 0.60),
    ("PhilPapers", "pile_philpapers", 0.38),
    ("NIH ExPorter", "pile_nih-exporter", 0.30),
    ("Enron Emails", "pile_enron", 0.14),
];

fn simplify(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).flat_map(|c| c.to_lowercase()).collect()
}

/// The Pile weight (%) of a task given by its `pile_set_name`, its lm-eval task name, or a
/// short name (`github`, `wikipedia`, `dm_mathematics`, `arxiv`); None if not a Pile task.
pub fn pile_weight(task: &str) -> Option<f64> {
    let t = simplify(task);
    let t = t.strip_prefix("pile").filter(|r| !r.is_empty() && t != "pilecc").unwrap_or(&t);
    PILE_TASKS.iter().find_map(|(set_name, lm_eval, w)| {
        let a = simplify(set_name);
        let b = simplify(lm_eval.trim_start_matches("pile_"));
        let matches = t == a || t == b || a.starts_with(t) && t.len() >= 4;
        matches.then_some(*w)
    })
}

/// `Σ_task weight/100 × metric_task` over the Pile tasks present, with the weights
/// renormalised to sum to 1 over those tasks (equal to the paper's `pile_all` when all 22
/// are present). None if no task is a Pile task.
pub fn pile_weighted(per_task: &BTreeMap<String, Metrics>) -> Option<(Metrics, usize)> {
    let weighted: Vec<(f64, &Metrics)> =
        per_task.iter().filter_map(|(task, m)| pile_weight(task).map(|w| (w, m))).collect();
    if weighted.is_empty() {
        return None;
    }
    let total: f64 = weighted.iter().map(|(w, _)| w).sum();
    let avg = |f: fn(&Metrics) -> f64| weighted.iter().map(|(w, m)| w / total * f(m)).sum::<f64>();
    Some((
        Metrics {
            bits_per_byte: avg(|m| m.bits_per_byte),
            byte_perplexity: avg(|m| m.byte_perplexity),
            word_perplexity: avg(|m| m.word_perplexity),
        },
        weighted.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_count_follows_python_re_split() {
        // len(re.split(r"\s+", s)) computed by hand for each.
        assert_eq!(word_count("hello world"), 2);
        assert_eq!(word_count("  hello   world\n"), 4); // ['', 'hello', 'world', '']
        assert_eq!(word_count("a\t\tb\r\nc"), 3);
        assert_eq!(word_count("x"), 1);
        assert_eq!(word_count(" "), 2); // ['', '']
        assert_eq!(word_count("café naïve\u{00a0}東京"), 3); // NBSP is \s in Python 3
        assert_eq!(word_count("a\u{1f}b"), 2); // U+001F: str.isspace() is True
        assert_eq!(word_count("a\u{200b}b"), 1); // zero-width space is not \s
    }

    #[test]
    fn byte_count_is_utf8_length() {
        assert_eq!(byte_count("abc"), 3);
        assert_eq!(byte_count("é"), 2);
        assert_eq!(byte_count("東京"), 6);
        assert_eq!(byte_count("🚀"), 4);
    }

    #[test]
    fn metrics_aggregate_sums_not_means() {
        let mut t = Totals::default();
        t.add(-10.0 * std::f64::consts::LN_2, 10, 2); // 1 bit per byte
        t.add(-30.0 * std::f64::consts::LN_2, 10, 3); // 3 bits per byte
        assert_eq!(t.docs, 2);
        // (10 + 30) bits / 20 bytes = 2, not the mean of per-doc values weighted otherwise.
        assert!((t.bits_per_byte() - 2.0).abs() < 1e-12);
        assert!((t.byte_perplexity() - 4.0).abs() < 1e-12);
        let want_word = (40.0 * std::f64::consts::LN_2 / 5.0).exp();
        assert!((t.word_perplexity() - want_word).abs() < 1e-9);
    }

    #[test]
    fn pile_weights_by_any_name() {
        assert_eq!(pile_weight("Github"), Some(7.59));
        assert_eq!(pile_weight("pile_github"), Some(7.59));
        assert_eq!(pile_weight("github"), Some(7.59));
        assert_eq!(pile_weight("Wikipedia (en)"), Some(1.53));
        assert_eq!(pile_weight("wikipedia"), Some(1.53));
        assert_eq!(pile_weight("dm_mathematics"), Some(1.24));
        assert_eq!(pile_weight("pile_dm-mathematics"), Some(1.24));
        assert_eq!(pile_weight("Pile-CC"), Some(18.11));
        assert_eq!(pile_weight("pile_pile-cc"), Some(18.11));
        assert_eq!(pile_weight("USPTO Backgrounds"), Some(3.65));
        assert_eq!(pile_weight("my-own-corpus"), None);
        let sum: f64 = PILE_TASKS.iter().map(|t| t.2).sum();
        assert!((sum - 100.0).abs() < 0.05, "{sum}");
    }

    #[test]
    fn pile_weighted_renormalises() {
        let m = |b| Metrics { bits_per_byte: b, byte_perplexity: 2f64.powf(b), word_perplexity: 1.0 };
        let mut per = BTreeMap::new();
        per.insert("github".to_string(), m(1.0));
        per.insert("wikipedia".to_string(), m(2.0));
        per.insert("mine".to_string(), m(100.0));
        let (w, n) = pile_weighted(&per).unwrap();
        assert_eq!(n, 2);
        let want = (7.59 * 1.0 + 1.53 * 2.0) / (7.59 + 1.53);
        assert!((w.bits_per_byte - want).abs() < 1e-12);
    }
}
