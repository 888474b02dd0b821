//! Building an index: rows are buffered and written a whole shard at a time.

use crate::{io_err, Dtype, IndexError, IndexSpec, Manifest, FORMAT, SHARD_HEADER, SHARD_MAGIC, VERSION};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes (or resumes writing) an index directory.
pub struct IndexWriter {
    dir: PathBuf,
    spec: IndexSpec,
    rows_durable: u64,
    next_shard: usize,
    buf: Vec<f32>,
    complete: bool,
}

pub(crate) fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("shard-{i:05}.vec"))
}

pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest, IndexError> {
    let path = dir.join("vectors.json");
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| IndexError::BadManifest { path: path.clone(), message: e.to_string() })?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(IndexError::BadManifest {
            path,
            message: format!("format {:?} version {}, expected {FORMAT:?} version {VERSION}", m.format, m.version),
        });
    }
    Ok(m)
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), IndexError> {
    let path = dir.join("vectors.json");
    let tmp = dir.join("vectors.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(m).unwrap()).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
}

/// Reads and checks a shard's header against the manifest and the file size.
/// Returns the number of rows.
pub(crate) fn check_shard(path: &Path, bytes: &[u8], spec: &IndexSpec) -> Result<u64, IndexError> {
    let corrupt = |m: String| IndexError::CorruptShard { path: path.to_path_buf(), message: m };
    if bytes.len() < SHARD_HEADER || &bytes[0..8] != SHARD_MAGIC {
        return Err(corrupt("bad magic (expected TTNNVECS); the file is not a vector shard".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let (version, dtype, dim) = (u32_at(8), u32_at(12), u32_at(16) as usize);
    let rows = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    if version != VERSION {
        return Err(corrupt(format!("version {version}, expected {VERSION}")));
    }
    if dtype != spec.dtype.code() {
        return Err(corrupt(format!("dtype code {dtype}, the manifest says {:?}", spec.dtype)));
    }
    if dim != spec.dim {
        return Err(IndexError::DimMismatch { what: format!("shard {}", path.display()), got: dim, expected: spec.dim });
    }
    let expected = SHARD_HEADER as u64 + rows * dim as u64 * spec.dtype.size() as u64;
    if bytes.len() as u64 != expected {
        return Err(corrupt(format!(
            "{} bytes, but its header promises {rows} rows of {dim} {:?} ({expected} bytes): truncated or overwritten",
            bytes.len(),
            spec.dtype
        )));
    }
    Ok(rows)
}

impl IndexWriter {
    /// Creates `dir` with `spec`, or resumes the build found there: its spec must equal
    /// `spec` (same encoder, dim, metric, dtype, shard size), leftover `.tmp` shards are
    /// deleted, and [`IndexWriter::len`] says how many rows are already durable (the caller
    /// continues from that row).
    pub fn create_or_resume(dir: &Path, spec: IndexSpec) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mpath = dir.join("vectors.json");
        let (rows_durable, next_shard, complete) = if mpath.exists() {
            let m = read_manifest(dir)?;
            if m.spec.encoder != spec.encoder {
                return Err(IndexError::EncoderMismatch {
                    path: mpath,
                    recorded: m.spec.encoder.to_string(),
                    given: spec.encoder.to_string(),
                });
            }
            if m.spec != spec {
                let show = |s: &IndexSpec| format!("dim {} metric {:?} dtype {:?} shard rows {}", s.dim, s.metric, s.dtype, s.shard_rows);
                return Err(IndexError::SpecMismatch { path: mpath, recorded: show(&m.spec), given: show(&spec) });
            }
            // Drop half-written shards, then count the whole ones.
            for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
                let p = entry.map_err(|e| io_err(dir, e))?.path();
                if p.extension().is_some_and(|e| e == "tmp") {
                    std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
                }
            }
            let mut rows = 0u64;
            let mut i = 0;
            while shard_path(dir, i).exists() {
                let p = shard_path(dir, i);
                let bytes = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
                rows += check_shard(&p, &bytes, &spec)?;
                i += 1;
            }
            (rows, i, m.complete)
        } else {
            (0, 0, false)
        };
        let w = Self { dir: dir.to_path_buf(), spec, rows_durable, next_shard, buf: Vec::new(), complete };
        if !mpath.exists() {
            w.save_manifest(false)?;
        }
        Ok(w)
    }

    /// Rows already written to whole shards (and so safe across an interruption).
    pub fn len(&self) -> u64 {
        self.rows_durable
    }
    pub fn is_empty(&self) -> bool {
        self.rows_durable == 0 && self.buf.is_empty()
    }
    /// Whether a previous build finished (`finish` was called).
    pub fn is_complete(&self) -> bool {
        self.complete
    }
    pub fn spec(&self) -> &IndexSpec {
        &self.spec
    }
    /// Rows given to `add` but not yet in a shard.
    pub fn buffered_rows(&self) -> usize {
        self.buf.len() / self.spec.dim
    }

    fn save_manifest(&self, complete: bool) -> Result<(), IndexError> {
        write_manifest(
            &self.dir,
            &Manifest { format: FORMAT.into(), version: VERSION, spec: self.spec.clone(), complete, rows: self.rows_durable },
        )
    }

    /// Appends rows (`n * dim` values); writes a shard each time `shard_rows` are buffered.
    pub fn add(&mut self, rows: &[f32]) -> Result<(), IndexError> {
        let d = self.spec.dim;
        if !rows.len().is_multiple_of(d) {
            return Err(IndexError::DimMismatch { what: format!("{} values added", rows.len()), got: rows.len() % d, expected: d });
        }
        self.buf.extend_from_slice(rows);
        while self.buf.len() >= self.spec.shard_rows * d {
            let rest = self.buf.split_off(self.spec.shard_rows * d);
            let full = std::mem::replace(&mut self.buf, rest);
            self.write_shard(&full)?;
        }
        Ok(())
    }

    fn write_shard(&mut self, data: &[f32]) -> Result<(), IndexError> {
        let d = self.spec.dim;
        let rows = (data.len() / d) as u64;
        let path = shard_path(&self.dir, self.next_shard);
        let tmp = path.with_extension("vec.tmp");
        let mut out = Vec::with_capacity(SHARD_HEADER + data.len() * self.spec.dtype.size());
        out.extend_from_slice(SHARD_MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.spec.dtype.code().to_le_bytes());
        out.extend_from_slice(&(d as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&rows.to_le_bytes());
        match self.spec.dtype {
            Dtype::F32 => data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => data.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        }
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(&out).and_then(|_| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        self.next_shard += 1;
        self.rows_durable += rows;
        self.save_manifest(false)
    }

    /// Writes the last (partial) shard and marks the index complete.
    pub fn finish(mut self) -> Result<u64, IndexError> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.write_shard(&data)?;
        }
        self.save_manifest(true)?;
        Ok(self.rows_durable)
    }
}
