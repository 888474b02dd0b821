pub mod eval;
pub mod score;
pub mod bench_index;
pub mod bench_lm;
pub mod index;
pub mod search;
