//! Reading documents: Pile-format JSONL (`.jsonl`, `.jsonl.zst`), and (later) folders of
//! text files and the seekable document store.

pub mod pile;

pub use pile::{read_pile, PileDocument, PileError};
