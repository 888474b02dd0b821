//! Plain-text and Markdown tables of per-task metrics.

use std::collections::BTreeMap;

use ttt::metrics::{pile_weighted, Metrics, Totals};

/// A Markdown table: one row per task, then the Pile-weighted row when any task is a Pile task.
pub fn task_table(per_task: &BTreeMap<String, Totals>) -> String {
    let mut out = String::from("| task | docs | bits/byte | byte ppl | word ppl |\n|---|---:|---:|---:|---:|\n");
    let mut metrics = BTreeMap::new();
    for (task, t) in per_task {
        let m = t.metrics();
        out += &format!(
            "| {task} | {} | {:.4} | {:.4} | {:.3} |\n",
            t.docs, m.bits_per_byte, m.byte_perplexity, m.word_perplexity
        );
        metrics.insert(task.clone(), m);
    }
    if let Some((m, n)) = pile_weighted(&metrics) {
        out += &format!("| {} | | {:.4} | {:.4} | {:.3} |\n", pile_label(n), m.bits_per_byte, m.byte_perplexity, m.word_perplexity);
    }
    out
}

/// The name of the Pile-weighted row: `pile_all` only when all 22 tasks are present.
pub fn pile_label(n_tasks: usize) -> String {
    if n_tasks == ttt::metrics::PILE_TASKS.len() {
        "pile_all".into()
    } else {
        format!("pile-weighted ({n_tasks} tasks)")
    }
}


/// Per-task and Pile-weighted metrics at every k of an evaluation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The largest k any document reached.
    pub max_k: usize,
    /// The k values the tables show: 0, 1, 5, 10, 20, 50 up to `max_k`, and `max_k`.
    pub table_ks: Vec<usize>,
    pub tasks: BTreeMap<String, TaskCurve>,
    /// Weights renormalised over the Pile tasks present; `label` says over how many.
    pub pile_weighted: Option<(String, Vec<Metrics>)>,
    pub docs: usize,
    pub docs_without_neighbors: usize,
    pub seconds_per_neighbor: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskCurve {
    pub docs: u64,
    /// Metrics at k = 0..=max_k. A document with fewer neighbors than k counts with its
    /// last score (after all the neighbors it had).
    pub curve: Vec<Metrics>,
    pub seconds_per_neighbor: f64,
    pub mean_neighbors: f64,
}

impl Summary {
    pub fn from_records(records: &[crate::commands::eval::DocumentRecord], k_limit: usize) -> Self {
        let max_k = records.iter().map(|r| r.loglikelihood.len().saturating_sub(1)).max().unwrap_or(0).min(k_limit);
        let mut by_task: BTreeMap<String, Vec<&crate::commands::eval::DocumentRecord>> = BTreeMap::new();
        for r in records {
            by_task.entry(r.task.clone()).or_default().push(r);
        }
        let secs_per = |rs: &[&crate::commands::eval::DocumentRecord]| {
            let (s, n) = rs.iter().flat_map(|r| &r.neighbors).fold((0.0, 0usize), |(s, n), x| (s + x.seconds, n + 1));
            if n == 0 { 0.0 } else { s / n as f64 }
        };
        let mut tasks = BTreeMap::new();
        for (task, rs) in &by_task {
            let curve = (0..=max_k)
                .map(|k| {
                    let mut t = Totals::default();
                    for r in rs {
                        t.add(r.loglikelihood[k.min(r.loglikelihood.len() - 1)], r.bytes, r.words);
                    }
                    t.metrics()
                })
                .collect();
            let mean_neighbors = rs.iter().map(|r| r.neighbors.len()).sum::<usize>() as f64 / rs.len() as f64;
            tasks.insert(
                task.clone(),
                TaskCurve { docs: rs.len() as u64, curve, seconds_per_neighbor: secs_per(rs), mean_neighbors },
            );
        }
        let pile_weighted = {
            let per_k: Vec<Option<(Metrics, usize)>> = (0..=max_k)
                .map(|k| pile_weighted(&tasks.iter().map(|(t, c)| (t.clone(), c.curve[k])).collect()))
                .collect();
            per_k.first().cloned().flatten().map(|(_, n)| (pile_label(n), per_k.into_iter().map(|m| m.unwrap().0).collect()))
        };
        let mut table_ks: Vec<usize> = [0, 1, 5, 10, 20, 50].into_iter().filter(|&k| k <= max_k).collect();
        if !table_ks.contains(&max_k) {
            table_ks.push(max_k);
        }
        let all: Vec<_> = records.iter().collect();
        Summary {
            max_k,
            table_ks,
            tasks,
            pile_weighted,
            docs: records.len(),
            docs_without_neighbors: records.iter().filter(|r| r.neighbors.is_empty()).count(),
            seconds_per_neighbor: secs_per(&all),
        }
    }

    /// Markdown: bits per byte at each table k (and the change from k = 0), then byte and
    /// word perplexity at k = 0 and the largest k.
    pub fn markdown(&self, settings: &str) -> String {
        let ks = &self.table_ks;
        let k_max = self.max_k;
        let mut s = format!("# TTT-NN evaluation\n\n{settings}\n\n## Bits per byte\n\n| task | docs |");
        for k in ks {
            s += &format!(" k={k} |");
        }
        s += " change |\n|---|---:|";
        s += &"---:|".repeat(ks.len() + 1);
        s += "\n";
        let row = |name: &str, docs: String, curve: &[Metrics]| {
            let mut r = format!("| {name} | {docs} |");
            for &k in ks {
                r += &format!(" {:.4} |", curve[k].bits_per_byte);
            }
            let (a, b) = (curve[0].bits_per_byte, curve[k_max].bits_per_byte);
            r += &format!(" {:+.1}% |\n", (b - a) / a * 100.0);
            r
        };
        for (task, c) in &self.tasks {
            s += &row(task, c.docs.to_string(), &c.curve);
        }
        if let Some((label, curve)) = &self.pile_weighted {
            s += &row(label, String::new(), curve);
        }
        s += &format!(
            "\n## Perplexity\n\n| task | byte ppl k=0 | byte ppl k={k_max} | word ppl k=0 | word ppl k={k_max} | s/neighbor | neighbors/doc |\n|---|---:|---:|---:|---:|---:|---:|\n"
        );
        for (task, c) in &self.tasks {
            let (a, b) = (&c.curve[0], &c.curve[k_max]);
            s += &format!(
                "| {task} | {:.4} | {:.4} | {:.3} | {:.3} | {:.2} | {:.1} |\n",
                a.byte_perplexity, b.byte_perplexity, a.word_perplexity, b.word_perplexity, c.seconds_per_neighbor, c.mean_neighbors
            );
        }
        s += &format!(
            "\n{} documents, {:.2} s per neighbor (train + rescore) overall",
            self.docs, self.seconds_per_neighbor
        );
        if self.docs_without_neighbors > 0 {
            s += &format!("; {} documents got no neighbors (counted at k = 0 throughout)", self.docs_without_neighbors);
        }
        s += ".\n";
        s
    }
}
