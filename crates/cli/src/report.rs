//! Plain-text and Markdown tables of per-task metrics.

use std::collections::BTreeMap;

use ttt::metrics::{pile_weighted, Totals};

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

