//! Exact search: per block of rows, one matrix product (queries x rows^T) with the `gemm`
//! crate, then a bounded max-heap per query; blocks of every shard are spread over the rayon
//! pool and the per-thread heaps merged; the final top k is re-ranked with exact distances.

use crate::writer::{check_shard, read_manifest, shard_path};
use crate::{exact_distance, io_err, Dtype, IndexError, IndexSpec, Manifest, Metric, Neighbor, VectorIndex, SHARD_HEADER};
use memmap2::Mmap;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

const BLOCK_ROWS: usize = 4096;

enum Data {
    Mmap(Mmap),
    Owned(Vec<f32>),
}

struct Shard {
    data: Data,
    rows: usize,
    first_id: u64,
}

impl Shard {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mmap(m) => &m[SHARD_HEADER..],
            Data::Owned(_) => &[],
        }
    }
}

/// An exact index over memory-mapped shards (or, for tests and benchmarks, owned rows).
pub struct FlatIndex {
    spec: IndexSpec,
    shards: Vec<Shard>,
    rows: u64,
}

#[derive(Clone, Copy, PartialEq)]
struct Hit(f32, u64);
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Hit {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

struct Scratch {
    heaps: Vec<BinaryHeap<Hit>>,
    scores: Vec<f32>,
    conv: Vec<f32>,
    norms: Vec<f32>,
}

impl FlatIndex {
    /// Opens a complete index directory (see the crate docs for its layout).
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let m: Manifest = read_manifest(dir)?;
        if !m.complete {
            return Err(IndexError::BadManifest {
                path: dir.join("vectors.json"),
                message: "the build did not finish (complete: false); rerun `tttnn index` to resume it".into(),
            });
        }
        let mut shards = Vec::new();
        let mut rows = 0u64;
        let mut i = 0;
        while shard_path(dir, i).exists() {
            let p = shard_path(dir, i);
            let f = std::fs::File::open(&p).map_err(|e| io_err(&p, e))?;
            // SAFETY: shards are immutable once renamed into place; we only read them.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| io_err(&p, e))?;
            let n = check_shard(&p, &mmap, &m.spec)?;
            shards.push(Shard { data: Data::Mmap(mmap), rows: n as usize, first_id: rows });
            rows += n;
            i += 1;
        }
        if rows != m.rows {
            return Err(IndexError::CorruptShard {
                path: dir.to_path_buf(),
                message: format!("the shards hold {rows} rows, vectors.json says {}: a shard is missing", m.rows),
            });
        }
        Ok(Self { spec: m.spec, shards, rows })
    }

    /// An in-memory index over `data` (`n * dim` values), split into shards of `shard_rows`.
    pub fn from_vectors(dim: usize, metric: Metric, data: Vec<f32>, shard_rows: usize) -> Self {
        let n = data.len() / dim;
        let mut shards = Vec::new();
        let mut start = 0;
        while start < n {
            let end = (start + shard_rows).min(n);
            shards.push(Shard { data: Data::Owned(data[start * dim..end * dim].to_vec()), rows: end - start, first_id: start as u64 });
            start = end;
        }
        let spec = IndexSpec { dim, metric, dtype: Dtype::F32, shard_rows, encoder: serde_json::Value::Null };
        Self { spec, shards, rows: n as u64 }
    }

    pub fn spec(&self) -> &IndexSpec {
        &self.spec
    }

    /// Row `id` as f32 (converted from f16 when stored so).
    pub fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let s = self.shards.iter().find(|s| id >= s.first_id && id < s.first_id + s.rows as u64)?;
        let r = (id - s.first_id) as usize;
        let mut buf = Vec::new();
        Some(self.rows_f32(s, r, r + 1, &mut buf).to_vec())
    }

    /// Rows [a, b) of a shard as f32, into `out` (or borrowed when stored as owned f32).
    fn rows_f32<'a>(&self, s: &'a Shard, a: usize, b: usize, out: &'a mut Vec<f32>) -> &'a [f32] {
        let d = self.spec.dim;
        match (&s.data, self.spec.dtype) {
            (Data::Owned(v), _) => &v[a * d..b * d],
            (Data::Mmap(_), Dtype::F32) => {
                let bytes = &s.bytes()[a * d * 4..b * d * 4];
                if (bytes.as_ptr() as usize).is_multiple_of(4) && cfg!(target_endian = "little") {
                    // SAFETY: aligned, in bounds, any bit pattern is a valid f32.
                    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, (b - a) * d) }
                } else {
                    out.clear();
                    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
                    out
                }
            }
            (Data::Mmap(_), Dtype::F16) => {
                let bytes = &s.bytes()[a * d * 2..b * d * 2];
                out.resize((b - a) * d, 0.0);
                if (bytes.as_ptr() as usize).is_multiple_of(2) && cfg!(target_endian = "little") {
                    use half::slice::HalfFloatSliceExt;
                    // SAFETY: aligned, in bounds, any bit pattern is a valid f16.
                    let h = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const half::f16, (b - a) * d) };
                    h.convert_to_f32_slice(out);
                } else {
                    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
                out
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn search_block(&self, q: &[f32], qnorm: &[f32], k: usize, s: &Shard, a: usize, b: usize, st: &mut Scratch) {
        let d = self.spec.dim;
        let nq = qnorm.len();
        let n = b - a;
        let mut conv = std::mem::take(&mut st.conv);
        let x = self.rows_f32(s, a, b, &mut conv);
        st.scores.resize(nq * n, 0.0);
        // SAFETY: dst is nq x n row-major, lhs nq x d row-major, rhs = x^T (d x n) read from
        // x (n x d row-major) via strides; all in bounds.
        unsafe {
            gemm::gemm(
                nq, n, d,
                st.scores.as_mut_ptr(), 1, n as isize, false,
                q.as_ptr(), 1, d as isize,
                x.as_ptr(), d as isize, 1,
                0.0f32, 1.0f32, false, false, false,
                gemm::Parallelism::None,
            );
        }
        let l2 = self.spec.metric == Metric::L2;
        if l2 {
            st.norms.clear();
            st.norms.extend(x.chunks_exact(d).map(|r| r.iter().map(|v| v * v).sum::<f32>()));
        }
        for (qi, heap) in st.heaps.iter_mut().enumerate() {
            let row = &st.scores[qi * n..(qi + 1) * n];
            let mut worst = if heap.len() == k { heap.peek().unwrap().0 } else { f32::INFINITY };
            for (j, &sc) in row.iter().enumerate() {
                let dist = if l2 { qnorm[qi] + st.norms[j] - 2.0 * sc } else { -sc };
                if dist <= worst {
                    let hit = Hit(dist, s.first_id + (a + j) as u64);
                    if heap.len() < k {
                        heap.push(hit);
                    } else if hit < *heap.peek().unwrap() {
                        heap.pop();
                        heap.push(hit);
                    }
                    if heap.len() == k {
                        worst = heap.peek().unwrap().0;
                    }
                }
            }
        }
        st.conv = conv;
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.spec.dim
    }
    fn len(&self) -> u64 {
        self.rows
    }
    fn metric(&self) -> Metric {
        self.spec.metric
    }

    fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>, IndexError> {
        let d = self.spec.dim;
        if k == 0 {
            return Err(IndexError::BadK);
        }
        if !queries.len().is_multiple_of(d) || queries.is_empty() {
            return Err(IndexError::DimMismatch { what: format!("a query batch of {} values", queries.len()), got: queries.len(), expected: d });
        }
        let nq = queries.len() / d;
        let qnorm: Vec<f32> = queries.chunks_exact(d).map(|r| r.iter().map(|v| v * v).sum()).collect();
        let blocks: Vec<(usize, usize, usize)> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(si, s)| (0..s.rows).step_by(BLOCK_ROWS).map(move |a| (si, a, (a + BLOCK_ROWS).min(s.rows))))
            .collect();
        let new_scratch = || Scratch { heaps: vec![BinaryHeap::with_capacity(k + 1); nq], scores: Vec::new(), conv: Vec::new(), norms: Vec::new() };
        let merged = blocks
            .par_iter()
            .fold(new_scratch, |mut st, &(si, a, b)| {
                self.search_block(queries, &qnorm, k, &self.shards[si], a, b, &mut st);
                st
            })
            .map(|st| st.heaps)
            .reduce(
                || vec![BinaryHeap::new(); nq],
                |mut x, y| {
                    for (hx, hy) in x.iter_mut().zip(y) {
                        for h in hy {
                            if hx.len() < k {
                                hx.push(h);
                            } else if h < *hx.peek().unwrap() {
                                hx.pop();
                                hx.push(h);
                            }
                        }
                    }
                    x
                },
            );
        // Re-rank the top k with exact distances, so the order does not depend on blocking.
        let out = merged
            .into_par_iter()
            .enumerate()
            .map(|(qi, heap)| {
                let q = &queries[qi * d..(qi + 1) * d];
                let mut hits: Vec<Hit> = heap
                    .into_iter()
                    .map(|h| Hit(exact_distance(self.spec.metric, q, &self.vector(h.1).unwrap()), h.1))
                    .collect();
                hits.sort();
                hits.into_iter().map(|h| Neighbor { id: h.1, distance: h.0 }).collect()
            })
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IndexWriter;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    fn brute(metric: Metric, data: &[f32], q: &[f32], d: usize, k: usize) -> Vec<u64> {
        let mut all: Vec<(f32, u64)> =
            data.chunks_exact(d).enumerate().map(|(i, x)| (exact_distance(metric, q, x), i as u64)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|x| x.1).collect()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tttnn-index-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn spec(dim: usize, metric: Metric, dtype: Dtype, shard_rows: usize) -> IndexSpec {
        IndexSpec { dim, metric, dtype, shard_rows, encoder: serde_json::json!({"name": "test", "dim": dim}) }
    }

    #[test]
    fn flat_equals_brute_force_l2_and_ip() {
        let (n, d, nq, k) = (10_000, 48, 13, 25);
        let data = random(n, d, 1);
        let queries = random(nq, d, 2);
        for metric in [Metric::L2, Metric::InnerProduct] {
            // Owned shards and on-disk (mmapped, several shards, a partial last one).
            let dir = tmp(&format!("bf-{metric:?}"));
            let mut w = IndexWriter::create_or_resume(&dir, spec(d, metric, Dtype::F32, 3000)).unwrap();
            w.add(&data).unwrap();
            assert_eq!(w.finish().unwrap(), n as u64);
            let disk = FlatIndex::open(&dir).unwrap();
            let mem = FlatIndex::from_vectors(d, metric, data.clone(), 4500);
            for idx in [&disk, &mem] {
                let res = idx.search(&queries, k).unwrap();
                for (qi, hits) in res.iter().enumerate() {
                    let q = &queries[qi * d..(qi + 1) * d];
                    let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
                    assert_eq!(ids, brute(metric, &data, q, d, k), "query {qi} {metric:?}");
                    assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
                }
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn ties_broken_by_id_and_f16_recall() {
        let d = 8;
        // Duplicate vectors: equal distances, must come back by ascending id.
        let mut data = random(100, d, 3);
        let dup = data[..d].to_vec();
        for i in [10, 50, 99] {
            data[i * d..(i + 1) * d].copy_from_slice(&dup);
        }
        let idx = FlatIndex::from_vectors(d, Metric::L2, data.clone(), 7);
        let hits = idx.search(&dup, 4).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.id).collect::<Vec<_>>(), vec![0, 10, 50, 99]);
        // f16 shards: the same neighbors on well-separated data.
        let dir = tmp("f16");
        let big = random(2000, 32, 4);
        let mut w = IndexWriter::create_or_resume(&dir, spec(32, Metric::L2, Dtype::F16, 512)).unwrap();
        w.add(&big).unwrap();
        w.finish().unwrap();
        let f16 = FlatIndex::open(&dir).unwrap();
        let q = &big[5 * 32..6 * 32];
        assert_eq!(f16.search(q, 1).unwrap()[0][0].id, 5);
        let size: u64 = std::fs::metadata(dir.join("shard-00000.vec")).unwrap().len();
        assert_eq!(size, 32 + 512 * 32 * 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_after_interruption() {
        let (n, d) = (1000, 16);
        let data = random(n, d, 5);
        let dir = tmp("resume");
        {
            let mut w = IndexWriter::create_or_resume(&dir, spec(d, Metric::L2, Dtype::F32, 300)).unwrap();
            w.add(&data[..700 * d]).unwrap(); // two whole shards, 100 rows buffered
            assert_eq!(w.len(), 600);
            // Simulated crash: the writer is dropped without finish(), and a half-written
            // shard lies around.
            std::fs::write(dir.join("shard-00002.vec.tmp"), b"TTNNVECS half").unwrap();
        }
        assert!(FlatIndex::open(&dir).is_err(), "an unfinished index must not open");
        let mut w = IndexWriter::create_or_resume(&dir, spec(d, Metric::L2, Dtype::F32, 300)).unwrap();
        assert_eq!(w.len(), 600);
        assert!(!dir.join("shard-00002.vec.tmp").exists());
        w.add(&data[600 * d..]).unwrap();
        w.finish().unwrap();
        let idx = FlatIndex::open(&dir).unwrap();
        assert_eq!(idx.len(), n as u64);
        for i in [0u64, 599, 600, 999] {
            assert_eq!(idx.vector(i).unwrap(), data[i as usize * d..(i as usize + 1) * d]);
        }
        let res = idx.search(&data[777 * d..778 * d], 1).unwrap();
        assert_eq!(res[0][0].id, 777);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_errors() {
        let d = 16;
        let dir = tmp("errors");
        let mut w = IndexWriter::create_or_resume(&dir, spec(d, Metric::L2, Dtype::F32, 100)).unwrap();
        w.add(&random(250, d, 6)).unwrap();
        w.finish().unwrap();
        // Dimension mismatch of a query.
        let idx = FlatIndex::open(&dir).unwrap();
        let e = idx.search(&[0.0; 15], 3).unwrap_err().to_string();
        assert!(e.contains("dimension mismatch") && e.contains("16"), "{e}");
        drop(idx);
        // Index/encoder mismatch on resume.
        let mut other = spec(d, Metric::L2, Dtype::F32, 100);
        other.encoder = serde_json::json!({"name": "another-encoder", "dim": d});
        let e = IndexWriter::create_or_resume(&dir, other).err().unwrap().to_string();
        assert!(e.contains("index/encoder mismatch") && e.contains("another-encoder"), "{e}");
        // Corrupt (truncated) shard.
        let p = dir.join("shard-00001.vec");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = FlatIndex::open(&dir).err().unwrap().to_string();
        assert!(e.contains("shard-00001.vec") && e.contains("corrupt shard") && e.contains("truncated"), "{e}");
        // Garbage magic.
        std::fs::write(&p, b"hello world, this is not a shard at all!").unwrap();
        let e = FlatIndex::open(&dir).err().unwrap().to_string();
        assert!(e.contains("shard-00001.vec") && e.contains("bad magic"), "{e}");
        // A shard of another dimension.
        let mut b2 = bytes.clone();
        b2[16..20].copy_from_slice(&8u32.to_le_bytes());
        std::fs::write(&p, &b2).unwrap();
        let e = FlatIndex::open(&dir).err().unwrap().to_string();
        assert!(e.contains("dimension mismatch") && e.contains("shard-00001.vec"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
