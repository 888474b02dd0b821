//! The TTT-NN method: the per-document train-on-neighbors loop ([`trainer`]) and the
//! metrics over documents and tasks ([`metrics`]).

pub mod metrics;
pub mod trainer;

pub use trainer::{chunks, DocumentOutcome, NeighborStep, OptimizerReset, TestTimeTrainer, TttConfig};
