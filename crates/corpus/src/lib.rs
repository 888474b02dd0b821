//! Reading documents and finding them again by id.
//!
//! - [`pile`]: Pile-format JSONL (`.jsonl`, `.jsonl.zst`), streamed.
//! - [`folder`]: folders of text/source files, one document per file, with a deterministic
//!   train/test split by a hash of the relative path ([`split_of`]).
//! - [`store`]: the document store: byte offsets per document (seekable frames for `.zst`).
//!
//! The API the TTT loop uses:
//! ```no_run
//! let store = corpus::DocStore::open(std::path::Path::new("my-index/store")).unwrap();
//! let doc = store.get(42).unwrap(); // one seek
//! println!("{} {} {:?}", doc.task, doc.text.len(), doc.source);
//! ```

pub mod folder;
pub mod pile;
pub mod store;

pub use folder::{fnv1a64, split_of, Split};
pub use pile::{read_pile, PileDocument, PileError};
pub use store::{build_store, BuildOptions, CorpusInput, DocStore, SourceLocation, StoreError, StoreManifest, StoredDoc};
