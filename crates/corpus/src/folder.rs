//! Folders of plain text / source files: one document per file, the task named by the caller,
//! and a deterministic train/test split by a hash of the file's path relative to the folder.

use std::path::{Path, PathBuf};

/// Which side of the split a document is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// FNV-1a, 64 bits: stable across platforms and Rust versions (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The split of a file, from the hash of its path relative to the folder given on the
/// command line (with `/` separators), so the same tree splits the same way on every machine.
/// `test_fraction` in [0, 1]: the share of files that go to the test side.
pub fn split_of(relative_path: &str, test_fraction: f64) -> Split {
    let bucket = fnv1a64(relative_path.as_bytes()) % 1_000_000;
    if (bucket as f64) < test_fraction * 1_000_000.0 {
        Split::Test
    } else {
        Split::Train
    }
}

/// Every regular file under `root`, recursively, sorted by relative path (deterministic).
/// Hidden entries (names starting with `.`) are skipped. Returns (absolute, relative) pairs.
pub fn list_files(root: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display())))?;
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type()?;
            let p = entry.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((p, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_near_fraction() {
        let paths: Vec<String> = (0..10_000).map(|i| format!("src/dir{}/file{i}.rs", i % 7)).collect();
        let a: Vec<Split> = paths.iter().map(|p| split_of(p, 0.1)).collect();
        let b: Vec<Split> = paths.iter().map(|p| split_of(p, 0.1)).collect();
        assert_eq!(a, b);
        let n_test = a.iter().filter(|s| **s == Split::Test).count();
        assert!((800..1200).contains(&n_test), "{n_test}");
        // Known values pin the hash so a change of hash function is caught.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert!(paths.iter().all(|p| split_of(p, 0.0) == Split::Train));
        assert!(paths.iter().all(|p| split_of(p, 1.0) == Split::Test));
    }

    #[test]
    fn lists_sorted_relative_paths() {
        let dir = std::env::temp_dir().join(format!("tttnn-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        std::fs::write(dir.join("b/c/z.txt"), "z").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join(".hidden"), "h").unwrap();
        let files = list_files(&dir).unwrap();
        let rel: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(rel, vec!["a.txt", "b/c/z.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
