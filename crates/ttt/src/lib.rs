//! The TTT-NN method: metrics over documents and tasks (and, with the evaluation issue,
//! the per-document train-on-neighbors loop).

pub mod metrics;
