//! The document store: per document, where its text lives (file, byte offset, length), never
//! the text itself, except for `.zst` inputs, whose lines are re-compressed into independently
//! decompressible zstd frames (~256 KiB of text each) so one document is read by one seek and
//! one small decompression instead of decompressing the whole file.
//!
//! Layout of a store directory (all integers little-endian):
//! - `store.json`: `{"format": "tttnn-docstore", "version": 1, "files": [...], "tasks": [...],
//!   "n_docs": N, ...}`; written last, so a store without it is incomplete.
//! - `docs.idx`: magic `TTNNDIDX`, u32 version (1), u32 record size (48), u64 n_docs, then one
//!   48-byte record per document id: `file u32, task u32, line u64, src_offset u64, src_len u64,
//!   blob_offset u64, blob_len u32, in_frame u32`. `src_offset`/`src_len` locate the JSON line
//!   (or the whole text file) in the source; for `.zst` sources they count decompressed bytes
//!   and `blob_offset`/`blob_len`/`in_frame` locate the line in `docs.zst`
//!   (`blob_offset = u64::MAX` when the source is read directly).
//! - `docs.zst`: magic `TTNNBLOB`, u32 version (1), u32 zero, then zstd frames.
//! - `splits.tsv` (folders only): `split<TAB>folder<TAB>relative path` for every file seen.
//! - `test.jsonl` (folders only): the test-side documents, Pile format, never indexed.
//!
//! Every file is written under a `.tmp` name and renamed when complete.

use crate::folder::{list_files, split_of, Split};
use crate::pile::{open_lines, parse_line, PileError};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const IDX_MAGIC: &[u8; 8] = b"TTNNDIDX";
const BLOB_MAGIC: &[u8; 8] = b"TTNNBLOB";
const VERSION: u32 = 1;
const RECORD: usize = 48;
const HEADER: usize = 24;
const FRAME_BYTES: usize = 256 * 1024;
const NO_BLOB: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Pile(#[from] PileError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not a tttnn document store file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("document id {id} out of range (the store has {n} documents)")]
    NoSuchDoc { id: u64, n: u64 },
    #[error("{path}: source file changed since the store was built (size {now}, recorded {recorded}); rebuild the index")]
    Changed { path: PathBuf, now: u64, recorded: u64 },
    #[error("{0}")]
    Input(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// How a source file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Pile JSONL, read in place.
    Jsonl,
    /// Pile JSONL compressed with zstd; documents read from `docs.zst`.
    Zst,
    /// A whole text file is one document.
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub size: u64,
}

/// One corpus input given on the command line.
#[derive(Debug, Clone)]
pub enum CorpusInput {
    /// A `.jsonl` or `.jsonl.zst` file; documents without `meta.pile_set_name` get `default_task`.
    Pile { path: PathBuf, default_task: String },
    /// A folder: every file one document of `task`; `test_fraction` of them (by path hash) go
    /// to `test.jsonl` instead of the store.
    Folder { path: PathBuf, task: String, test_fraction: f64 },
}

impl CorpusInput {
    /// A path from the command line: folders become `Folder`, `.jsonl`/`.zst` files `Pile`.
    pub fn from_path(path: &Path, task: Option<&str>, test_fraction: f64) -> Result<Self, StoreError> {
        let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.is_dir() {
            let task = task.map(str::to_owned).unwrap_or_else(|| {
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "text".into())
            });
            return Ok(Self::Folder { path: path.to_path_buf(), task, test_fraction });
        }
        let name = path.to_string_lossy();
        if name.ends_with(".jsonl") || name.ends_with(".zst") || name.ends_with(".json") {
            Ok(Self::Pile { path: path.to_path_buf(), default_task: task.unwrap_or("unknown").to_owned() })
        } else {
            Err(StoreError::Input(format!(
                "{}: expected a folder, a .jsonl or a .jsonl.zst file",
                path.display()
            )))
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreStats {
    pub n_docs: u64,
    pub bytes_read: u64,
    pub bad_lines_skipped: u64,
    pub files_skipped: u64,
    pub test_docs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreManifest {
    pub format: String,
    pub version: u32,
    pub files: Vec<SourceFile>,
    pub tasks: Vec<String>,
    pub n_docs: u64,
    pub stats: StoreStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    file: u32,
    task: u32,
    line: u64,
    src_offset: u64,
    src_len: u64,
    blob_offset: u64,
    blob_len: u32,
    in_frame: u32,
}

impl Record {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..4].copy_from_slice(&self.file.to_le_bytes());
        b[4..8].copy_from_slice(&self.task.to_le_bytes());
        b[8..16].copy_from_slice(&self.line.to_le_bytes());
        b[16..24].copy_from_slice(&self.src_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.src_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.blob_offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.blob_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.in_frame.to_le_bytes());
        b
    }
    fn from_bytes(b: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Self {
            file: u32_at(0),
            task: u32_at(4),
            line: u64_at(8),
            src_offset: u64_at(16),
            src_len: u64_at(24),
            blob_offset: u64_at(32),
            blob_len: u32_at(40),
            in_frame: u32_at(44),
        }
    }
}

/// Where a document's text lives in its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    pub file: PathBuf,
    /// 1-based line in the (decompressed) JSONL file; 0 for a whole-file document.
    pub line: u64,
    /// Byte offset of the line (or file) in the source; for `.zst` in the decompressed stream.
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    pub id: u64,
    pub text: String,
    pub task: String,
    pub source: SourceLocation,
}

/// Options of a store build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Skip (and count) malformed JSONL lines instead of failing on the first.
    pub skip_bad_lines: bool,
}

struct Builder {
    idx_tmp: PathBuf,
    idx: BufWriter<File>,
    blob_tmp: PathBuf,
    blob: BufWriter<File>,
    blob_pos: u64,
    frame: Vec<u8>,
    pending: Vec<Record>,
    files: Vec<SourceFile>,
    tasks: Vec<String>,
    task_ids: HashMap<String, u32>,
    stats: StoreStats,
}

impl Builder {
    fn task_id(&mut self, task: &str) -> u32 {
        if let Some(&t) = self.task_ids.get(task) {
            return t;
        }
        let t = self.tasks.len() as u32;
        self.tasks.push(task.to_owned());
        self.task_ids.insert(task.to_owned(), t);
        t
    }

    fn push(&mut self, r: Record) -> Result<(), StoreError> {
        self.idx.write_all(&r.to_bytes()).map_err(|e| io_err(&self.idx_tmp, e))?;
        self.stats.n_docs += 1;
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compressed = zstd::bulk::compress(&self.frame, 3).map_err(|e| io_err(&self.blob_tmp, e))?;
        self.blob.write_all(&compressed).map_err(|e| io_err(&self.blob_tmp, e))?;
        let pending = std::mem::take(&mut self.pending);
        for mut r in pending {
            r.blob_offset = self.blob_pos;
            r.blob_len = compressed.len() as u32;
            self.push(r)?;
        }
        self.blob_pos += compressed.len() as u64;
        self.frame.clear();
        Ok(())
    }
}

/// Builds a document store in `dir` from `inputs`, streaming (memory stays at a few MB
/// whatever the corpus size). `progress` is called with the number of source bytes consumed
/// since the last call. Returns the manifest (also written to `dir/store.json`).
pub fn build_store(
    dir: &Path,
    inputs: &[CorpusInput],
    opts: &BuildOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<StoreManifest, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let idx_tmp = dir.join("docs.idx.tmp");
    let blob_tmp = dir.join("docs.zst.tmp");
    let mut idx = BufWriter::with_capacity(1 << 20, File::create(&idx_tmp).map_err(|e| io_err(&idx_tmp, e))?);
    idx.write_all(&[0u8; HEADER]).map_err(|e| io_err(&idx_tmp, e))?;
    let mut blob = BufWriter::with_capacity(1 << 20, File::create(&blob_tmp).map_err(|e| io_err(&blob_tmp, e))?);
    blob.write_all(BLOB_MAGIC).and_then(|_| blob.write_all(&VERSION.to_le_bytes())).and_then(|_| blob.write_all(&0u32.to_le_bytes()))
        .map_err(|e| io_err(&blob_tmp, e))?;
    let mut b = Builder {
        idx_tmp: idx_tmp.clone(),
        idx,
        blob_tmp: blob_tmp.clone(),
        blob,
        blob_pos: 16,
        frame: Vec::with_capacity(FRAME_BYTES + 65536),
        pending: Vec::new(),
        files: Vec::new(),
        tasks: Vec::new(),
        task_ids: HashMap::new(),
        stats: StoreStats::default(),
    };
    let mut splits: Option<BufWriter<File>> = None;
    let mut test_out: Option<BufWriter<File>> = None;
    let splits_tmp = dir.join("splits.tsv.tmp");
    let test_tmp = dir.join("test.jsonl.tmp");

    for input in inputs {
        match input {
            CorpusInput::Pile { path, default_task } => {
                let abs = std::fs::canonicalize(path).map_err(|e| io_err(path, e))?;
                let size = std::fs::metadata(&abs).map_err(|e| io_err(path, e))?.len();
                let zst = abs.extension().is_some_and(|e| e == "zst");
                let file_id = b.files.len() as u32;
                b.files.push(SourceFile { path: abs.clone(), kind: if zst { SourceKind::Zst } else { SourceKind::Jsonl }, size });
                let mut reader = open_lines(&abs)?;
                let mut buf = Vec::new();
                let mut offset = 0u64;
                let mut line_no = 0u64;
                let mut since_report = 0u64;
                loop {
                    buf.clear();
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .map_err(|source| PileError::Read { path: abs.clone(), line: line_no as usize + 1, source })?;
                    if n == 0 {
                        break;
                    }
                    line_no += 1;
                    let line_off = offset;
                    offset += n as u64;
                    since_report += n as u64;
                    if since_report >= 1 << 20 {
                        progress(if zst { since_report * size / offset.max(1) } else { since_report });
                        since_report = 0;
                    }
                    let mut content = &buf[..];
                    while let Some((&last, rest)) = content.split_last() {
                        if last == b'\n' || last == b'\r' { content = rest } else { break }
                    }
                    let parsed = match std::str::from_utf8(content) {
                        Ok(s) => parse_line(&abs, line_no as usize, s),
                        Err(e) => Err(PileError::NotJson { path: abs.clone(), line: line_no as usize, message: format!("invalid UTF-8: {e}") }),
                    };
                    let doc = match parsed {
                        Ok(Some(d)) => d,
                        Ok(None) => continue,
                        Err(e) if opts.skip_bad_lines && e.is_bad_line() => {
                            b.stats.bad_lines_skipped += 1;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let task = b.task_id(doc.task.as_deref().unwrap_or(default_task));
                    let mut r = Record {
                        file: file_id,
                        task,
                        line: line_no,
                        src_offset: line_off,
                        src_len: content.len() as u64,
                        blob_offset: NO_BLOB,
                        blob_len: 0,
                        in_frame: 0,
                    };
                    if zst {
                        r.in_frame = b.frame.len() as u32;
                        b.frame.extend_from_slice(content);
                        b.pending.push(r);
                        if b.frame.len() >= FRAME_BYTES {
                            b.flush_frame()?;
                        }
                    } else {
                        b.push(r)?;
                    }
                }
                b.flush_frame()?;
                progress(if zst { since_report * size / offset.max(1) } else { since_report });
                b.stats.bytes_read += offset;
            }
            CorpusInput::Folder { path, task, test_fraction } => {
                let root = std::fs::canonicalize(path).map_err(|e| io_err(path, e))?;
                let files = list_files(&root).map_err(|e| io_err(&root, e))?;
                let task_id = b.task_id(task);
                if splits.is_none() {
                    splits = Some(BufWriter::new(File::create(&splits_tmp).map_err(|e| io_err(&splits_tmp, e))?));
                    test_out = Some(BufWriter::new(File::create(&test_tmp).map_err(|e| io_err(&test_tmp, e))?));
                }
                for (abs, rel) in files {
                    let bytes = std::fs::read(&abs).map_err(|e| io_err(&abs, e))?;
                    progress(bytes.len() as u64);
                    b.stats.bytes_read += bytes.len() as u64;
                    let text = match String::from_utf8(bytes) {
                        Ok(t) if !t.trim().is_empty() && !t.contains('\0') => t,
                        _ => {
                            b.stats.files_skipped += 1;
                            continue;
                        }
                    };
                    let split = split_of(&rel, *test_fraction);
                    let s = splits.as_mut().unwrap();
                    writeln!(s, "{}\t{}\t{}", if split == Split::Test { "test" } else { "train" }, root.display(), rel)
                        .map_err(|e| io_err(&splits_tmp, e))?;
                    if split == Split::Test {
                        let obj = serde_json::json!({"text": text, "meta": {"pile_set_name": task, "path": abs}});
                        writeln!(test_out.as_mut().unwrap(), "{obj}").map_err(|e| io_err(&test_tmp, e))?;
                        b.stats.test_docs += 1;
                        continue;
                    }
                    let file_id = b.files.len() as u32;
                    b.files.push(SourceFile { path: abs, kind: SourceKind::Text, size: text.len() as u64 });
                    b.push(Record {
                        file: file_id,
                        task: task_id,
                        line: 0,
                        src_offset: 0,
                        src_len: text.len() as u64,
                        blob_offset: NO_BLOB,
                        blob_len: 0,
                        in_frame: 0,
                    })?;
                }
            }
        }
    }

    // Finish docs.idx: patch the header with the count.
    let n = b.stats.n_docs;
    let mut idx_file = b.idx.into_inner().map_err(|e| io_err(&idx_tmp, e.error()))?;
    idx_file.seek(SeekFrom::Start(0)).map_err(|e| io_err(&idx_tmp, e))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(IDX_MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(RECORD as u32).to_le_bytes());
    header.extend_from_slice(&n.to_le_bytes());
    idx_file.write_all(&header).and_then(|_| idx_file.sync_all()).map_err(|e| io_err(&idx_tmp, e))?;
    let blob_file = b.blob.into_inner().map_err(|e| io_err(&blob_tmp, e.error()))?;
    blob_file.sync_all().map_err(|e| io_err(&blob_tmp, e))?;
    rename(&idx_tmp, &dir.join("docs.idx"))?;
    rename(&blob_tmp, &dir.join("docs.zst"))?;
    if let (Some(s), Some(t)) = (splits, test_out) {
        s.into_inner().map_err(|e| io_err(&splits_tmp, e.error()))?;
        t.into_inner().map_err(|e| io_err(&test_tmp, e.error()))?;
        rename(&splits_tmp, &dir.join("splits.tsv"))?;
        rename(&test_tmp, &dir.join("test.jsonl"))?;
    }
    let manifest = StoreManifest {
        format: "tttnn-docstore".into(),
        version: VERSION,
        files: b.files,
        tasks: b.tasks,
        n_docs: n,
        stats: b.stats,
    };
    let json_tmp = dir.join("store.json.tmp");
    std::fs::write(&json_tmp, serde_json::to_vec_pretty(&manifest).unwrap()).map_err(|e| io_err(&json_tmp, e))?;
    rename(&json_tmp, &dir.join("store.json"))?;
    Ok(manifest)
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| io_err(to, format!("cannot rename {} into place: {e}", from.display())))
}

/// An opened document store: the records are memory-mapped, texts read on demand.
/// `Send + Sync`; each `get` opens the source file (use [`DocStore::reader`] for many reads).
pub struct DocStore {
    dir: PathBuf,
    manifest: StoreManifest,
    idx: Mmap,
}

impl DocStore {
    /// True when `dir` holds a complete store (its `store.json` exists).
    pub fn exists(dir: &Path) -> bool {
        dir.join("store.json").is_file()
    }

    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let json = dir.join("store.json");
        let bytes = std::fs::read(&json).map_err(|e| io_err(&json, e))?;
        let manifest: StoreManifest = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: json.clone(), message: e.to_string() })?;
        if manifest.format != "tttnn-docstore" || manifest.version != VERSION {
            return Err(StoreError::Corrupt {
                path: json,
                message: format!("format {:?} version {}, expected \"tttnn-docstore\" version {VERSION}", manifest.format, manifest.version),
            });
        }
        let idx_path = dir.join("docs.idx");
        let f = File::open(&idx_path).map_err(|e| io_err(&idx_path, e))?;
        // SAFETY: the file is only read; the store is immutable once renamed into place.
        let idx = unsafe { Mmap::map(&f) }.map_err(|e| io_err(&idx_path, e))?;
        let corrupt = |m: String| StoreError::Corrupt { path: idx_path.clone(), message: m };
        if idx.len() < HEADER || &idx[0..8] != IDX_MAGIC {
            return Err(corrupt("bad magic (expected TTNNDIDX)".into()));
        }
        let version = u32::from_le_bytes(idx[8..12].try_into().unwrap());
        let rec = u32::from_le_bytes(idx[12..16].try_into().unwrap()) as usize;
        let n = u64::from_le_bytes(idx[16..24].try_into().unwrap());
        if version != VERSION || rec != RECORD {
            return Err(corrupt(format!("version {version} record size {rec}, expected {VERSION} and {RECORD}")));
        }
        if idx.len() as u64 != HEADER as u64 + n * RECORD as u64 || n != manifest.n_docs {
            return Err(corrupt(format!(
                "size {} bytes does not hold {} records of {RECORD} bytes (store.json says {})",
                idx.len(), n, manifest.n_docs
            )));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, idx })
    }

    pub fn len(&self) -> u64 {
        self.manifest.n_docs
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn manifest(&self) -> &StoreManifest {
        &self.manifest
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record(&self, id: u64) -> Result<Record, StoreError> {
        if id >= self.len() {
            return Err(StoreError::NoSuchDoc { id, n: self.len() });
        }
        let at = HEADER + id as usize * RECORD;
        Ok(Record::from_bytes(&self.idx[at..at + RECORD]))
    }

    /// The task and source location of a document, without reading its text.
    pub fn locate(&self, id: u64) -> Result<(String, SourceLocation), StoreError> {
        let r = self.record(id)?;
        let f = &self.manifest.files[r.file as usize];
        Ok((
            self.manifest.tasks[r.task as usize].clone(),
            SourceLocation { file: f.path.clone(), line: r.line, offset: r.src_offset, len: r.src_len },
        ))
    }

    /// Reads one document (text, task, source) by id.
    pub fn get(&self, id: u64) -> Result<StoredDoc, StoreError> {
        self.reader().get(id)
    }

    /// A reader that keeps its last file handle and last decompressed frame, for sequential
    /// or repeated reads.
    pub fn reader(&self) -> StoreReader<'_> {
        StoreReader { store: self, file: None, frame: None }
    }
}

pub struct StoreReader<'a> {
    store: &'a DocStore,
    file: Option<(u32, File)>,
    frame: Option<(u64, Vec<u8>)>,
}

impl StoreReader<'_> {
    pub fn get(&mut self, id: u64) -> Result<StoredDoc, StoreError> {
        let r = self.store.record(id)?;
        let sf = &self.store.manifest.files[r.file as usize];
        let task = self.store.manifest.tasks[r.task as usize].clone();
        let source = SourceLocation { file: sf.path.clone(), line: r.line, offset: r.src_offset, len: r.src_len };
        let line_bytes: Vec<u8>;
        let bytes: &[u8] = if r.blob_offset != NO_BLOB {
            if self.frame.as_ref().map(|f| f.0) != Some(r.blob_offset) {
                let blob_path = self.store.dir.join("docs.zst");
                let mut f = File::open(&blob_path).map_err(|e| io_err(&blob_path, e))?;
                f.seek(SeekFrom::Start(r.blob_offset)).map_err(|e| io_err(&blob_path, e))?;
                let mut comp = vec![0u8; r.blob_len as usize];
                f.read_exact(&mut comp).map_err(|e| io_err(&blob_path, format!("frame at {}: {e}", r.blob_offset)))?;
                let frame = zstd::stream::decode_all(&comp[..])
                    .map_err(|e| StoreError::Corrupt { path: blob_path.clone(), message: format!("frame at {}: {e}", r.blob_offset) })?;
                self.frame = Some((r.blob_offset, frame));
            }
            let frame = &self.frame.as_ref().unwrap().1;
            let (a, b) = (r.in_frame as usize, r.in_frame as usize + r.src_len as usize);
            if b > frame.len() {
                return Err(StoreError::Corrupt { path: self.store.dir.join("docs.zst"), message: format!("document {id} runs past its frame") });
            }
            &frame[a..b]
        } else {
            if self.file.as_ref().map(|f| f.0) != Some(r.file) {
                let f = File::open(&sf.path).map_err(|e| io_err(&sf.path, e))?;
                let now = f.metadata().map_err(|e| io_err(&sf.path, e))?.len();
                if now != sf.size {
                    return Err(StoreError::Changed { path: sf.path.clone(), now, recorded: sf.size });
                }
                self.file = Some((r.file, f));
            }
            let f = &mut self.file.as_mut().unwrap().1;
            f.seek(SeekFrom::Start(r.src_offset)).map_err(|e| io_err(&sf.path, e))?;
            let mut v = vec![0u8; r.src_len as usize];
            f.read_exact(&mut v).map_err(|e| io_err(&sf.path, format!("document {id} at offset {}: {e}", r.src_offset)))?;
            line_bytes = v;
            &line_bytes
        };
        let text = if sf.kind == SourceKind::Text {
            String::from_utf8(bytes.to_vec()).map_err(|e| io_err(&sf.path, e))?
        } else {
            let s = std::str::from_utf8(bytes).map_err(|e| io_err(&sf.path, format!("line {}: {e}", r.line)))?;
            match parse_line(&sf.path, r.line as usize, s)? {
                Some(d) => d.text,
                None => return Err(StoreError::Corrupt { path: sf.path.clone(), message: format!("line {} is blank", r.line) }),
            }
        };
        Ok(StoredDoc { id, text, task, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tttnn-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pile_body(n: usize) -> (String, Vec<(String, String)>) {
        let mut body = String::new();
        let mut docs = Vec::new();
        for i in 0..n {
            let text = format!("document {i} — ünïcode ✓ {}\nsecond line \"quoted\"", "x".repeat(i % 300));
            let task = if i % 3 == 0 { "Github" } else { "Wikipedia (en)" };
            body.push_str(&serde_json::json!({"text": text, "meta": {"pile_set_name": task}}).to_string());
            body.push('\n');
            if i % 10 == 0 {
                body.push('\n'); // blank lines are skipped
            }
            docs.push((text, task.to_owned()));
        }
        (body, docs)
    }

    #[test]
    fn round_trip_jsonl_zst_and_folder() {
        let d = tmp("rt");
        let (body, docs) = pile_body(3000);
        std::fs::write(d.join("a.jsonl"), &body).unwrap();
        std::fs::write(d.join("b.jsonl.zst"), zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        let folder = d.join("src");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        let mut files = Vec::new();
        for i in 0..50 {
            let rel = format!("sub/f{i}.rs");
            let text = format!("fn f{i}() {{ /* é */ }}\n");
            std::fs::write(folder.join(&rel), &text).unwrap();
            files.push((rel, text));
        }
        let inputs = vec![
            CorpusInput::from_path(&d.join("a.jsonl"), None, 0.0).unwrap(),
            CorpusInput::from_path(&d.join("b.jsonl.zst"), None, 0.0).unwrap(),
            CorpusInput::from_path(&folder, Some("code"), 0.2).unwrap(),
        ];
        let out = d.join("store");
        let mut seen = 0;
        let m = build_store(&out, &inputs, &BuildOptions::default(), &mut |b| seen += b).unwrap();
        let n_test = files.iter().filter(|(r, _)| split_of(r, 0.2) == Split::Test).count();
        assert!(n_test > 0 && n_test < 50);
        assert_eq!(m.n_docs as usize, 6000 + 50 - n_test);
        assert_eq!(m.stats.test_docs as usize, n_test);
        let store = DocStore::open(&out).unwrap();
        let mut reader = store.reader();
        for (i, (text, task)) in docs.iter().enumerate() {
            for id in [i as u64, (docs.len() + i) as u64] {
                let doc = reader.get(id).unwrap();
                assert_eq!(&doc.text, text);
                assert_eq!(&doc.task, task);
                // The fresh-handle path agrees with the cached reader.
                if i % 500 == 0 {
                    assert_eq!(store.get(id).unwrap(), doc);
                }
            }
        }
        let mut train: Vec<_> = files.iter().filter(|(r, _)| split_of(r, 0.2) == Split::Train).collect();
        train.sort();
        for (j, (_, text)) in train.iter().enumerate() {
            let doc = store.get(6000 + j as u64).unwrap();
            assert_eq!(&doc.text, text);
            assert_eq!(doc.task, "code");
        }
        // Random access from the end backwards (frames decompressed on demand).
        let doc = store.get(2 * 3000 - 1).unwrap();
        assert_eq!(doc.text, docs[2999].0);
        assert!(doc.source.file.ends_with("b.jsonl.zst"));
        // test.jsonl holds exactly the test files, readable as Pile format.
        let test: Vec<_> = crate::read_pile(&out.join("test.jsonl")).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(test.len(), n_test);
        let splits = std::fs::read_to_string(out.join("splits.tsv")).unwrap();
        assert_eq!(splits.lines().count(), 50);
        assert!(matches!(store.get(m.n_docs), Err(StoreError::NoSuchDoc { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn malformed_jsonl_names_file_and_line() {
        let d = tmp("bad");
        std::fs::write(d.join("bad.jsonl"), "{\"text\": \"ok\"}\n{\"text\": oops}\n").unwrap();
        let inputs = vec![CorpusInput::from_path(&d.join("bad.jsonl"), None, 0.0).unwrap()];
        let err = build_store(&d.join("s"), &inputs, &BuildOptions::default(), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2") && err.contains("not a JSON object"), "{err}");
        assert!(!DocStore::exists(&d.join("s")));
        let m = build_store(&d.join("s"), &inputs, &BuildOptions { skip_bad_lines: true }, &mut |_| {}).unwrap();
        assert_eq!((m.n_docs, m.stats.bad_lines_skipped), (1, 1));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_index_file_is_reported() {
        let d = tmp("corrupt");
        std::fs::write(d.join("a.jsonl"), "{\"text\": \"ok\"}\n").unwrap();
        let inputs = vec![CorpusInput::from_path(&d.join("a.jsonl"), None, 0.0).unwrap()];
        build_store(&d.join("s"), &inputs, &BuildOptions::default(), &mut |_| {}).unwrap();
        let idx = d.join("s/docs.idx");
        let mut bytes = std::fs::read(&idx).unwrap();
        bytes.truncate(bytes.len() - 5);
        std::fs::write(&idx, bytes).unwrap();
        let err = DocStore::open(&d.join("s")).err().unwrap().to_string();
        assert!(err.contains("docs.idx") && err.contains("records"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
