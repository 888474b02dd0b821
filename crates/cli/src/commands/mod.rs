pub mod score;
pub mod bench_index;
pub mod index;
pub mod search;
