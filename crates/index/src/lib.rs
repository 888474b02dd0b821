//! Vector indexes: an exact (flat) index over memory-mapped shard files, behind the
//! [`VectorIndex`] trait so an approximate index or a remote engine can stand in later.
//!
//! The API the TTT loop uses:
//! ```no_run
//! use index::{FlatIndex, VectorIndex};
//! let idx = FlatIndex::open(std::path::Path::new("my-index/vectors")).unwrap();
//! let query = vec![0.0f32; idx.dim()];                 // one or more queries, row-major
//! let hits = idx.search(&query, 20).unwrap();          // per query: Vec<Neighbor>
//! for n in &hits[0] { println!("{} {}", n.id, n.distance); }
//! ```
//! Row `i` of the index is document id `i` of the store built alongside it.
//! Results are sorted by ascending `distance` (squared L2 for [`Metric::L2`], the negated
//! inner product for [`Metric::InnerProduct`]), ties broken by ascending id.
//!
//! Directory layout (little-endian): `vectors.json` (the manifest: format, version, dim,
//! metric, dtype, rows per shard, the encoder's identity as given by the caller, and
//! `complete`), and `shard-NNNNN.vec` files: magic `TTNNVECS`, u32 version (1), u32 dtype
//! (0 = f32, 1 = f16), u32 dim, u32 zero, u64 rows, then `rows * dim` values. A shard is
//! written as `shard-NNNNN.vec.tmp` and renamed when whole, so an interrupted build resumes
//! after its last whole shard and never takes a half-written one for complete.

mod flat;
mod writer;

pub use flat::FlatIndex;
pub use writer::IndexWriter;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    L2,
    #[serde(rename = "ip")]
    InnerProduct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
    fn code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
        }
    }
}

/// What an index holds; fixed when it is created, checked when it is resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSpec {
    pub dim: usize,
    pub metric: Metric,
    pub dtype: Dtype,
    pub shard_rows: usize,
    /// The identity of the encoder that made the vectors (opaque here; compared for equality).
    pub encoder: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    #[serde(flatten)]
    pub spec: IndexSpec,
    pub complete: bool,
    pub rows: u64,
}

pub const FORMAT: &str = "tttnn-flat-index";
pub const VERSION: u32 = 1;
pub(crate) const SHARD_MAGIC: &[u8; 8] = b"TTNNVECS";
pub(crate) const SHARD_HEADER: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    pub id: u64,
    pub distance: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: corrupt shard: {message}")]
    CorruptShard { path: PathBuf, message: String },
    #[error("{path}: not a tttnn index manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("dimension mismatch: {what} has dimension {got}, the index expects {expected}")]
    DimMismatch { what: String, got: usize, expected: usize },
    #[error("{path}: index/encoder mismatch: the index was built with {recorded}, but {given} was given")]
    EncoderMismatch { path: PathBuf, recorded: String, given: String },
    #[error("{path}: the index was created with {recorded}, resuming with {given}")]
    SpecMismatch { path: PathBuf, recorded: String, given: String },
    #[error("k must be at least 1")]
    BadK,
}

pub(crate) fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// Anything that answers top-k queries over vectors whose row number is the document id.
pub trait VectorIndex: Send + Sync {
    fn dim(&self) -> usize;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn metric(&self) -> Metric;
    /// `queries`: `nq * dim` values, row-major. Returns, per query, at most `k` neighbors
    /// sorted by (distance, id).
    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>, IndexError>;
}

/// Exact distance between two vectors, accumulated in f64 (used to re-rank the final top k,
/// and by tests as the brute-force reference).
pub fn exact_distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum::<f64>() as f32,
        Metric::InnerProduct => -(a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() as f32),
    }
}
