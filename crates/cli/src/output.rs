//! Files that appear complete or not at all: written to `<name>.tmp-<pid>` beside the
//! target, renamed over it on `commit`. Dropped without commit, the temp file is removed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct AtomicFile {
    writer: Option<BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<Self> {
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut name = target.file_name().context("output path has no file name")?.to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        let tmp = target.with_file_name(name);
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self { writer: Some(BufWriter::new(file)), tmp, target: target.to_path_buf() })
    }

    pub fn commit(mut self) -> Result<()> {
        let w = self.writer.take().unwrap();
        let file = w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", self.tmp.display()))?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.target)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.target.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().unwrap().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
