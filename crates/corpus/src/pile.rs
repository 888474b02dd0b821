//! Pile-format JSONL: one JSON object per line, `{"text": ..., "meta": {"pile_set_name": ...}}`.
//! Plain `.jsonl` or zstd-compressed `.jsonl.zst`, read as a stream (never whole in memory).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One document of a Pile-format file.
#[derive(Debug, Clone, PartialEq)]
pub struct PileDocument {
    /// 1-based line number in the (decompressed) file.
    pub line: usize,
    pub text: String,
    /// `meta.pile_set_name`, or `None` when the line has no such field.
    pub task: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PileError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: cannot read: {source}")]
    Read { path: PathBuf, line: usize, source: std::io::Error },
    #[error("{path}:{line}: not a JSON object: {message}")]
    NotJson { path: PathBuf, line: usize, message: String },
    #[error("{path}:{line}: no string field \"text\"")]
    NoText { path: PathBuf, line: usize },
    #[error("{path}:{line}: empty document (\"text\" is \"\")")]
    EmptyText { path: PathBuf, line: usize },
}

impl PileError {
    /// Errors about one line's content (as opposed to the file being unreadable):
    /// these may be skipped with `--skip-bad-lines`.
    pub fn is_bad_line(&self) -> bool {
        matches!(self, Self::NotJson { .. } | Self::NoText { .. } | Self::EmptyText { .. })
    }
}

/// Opens a `.jsonl` or `.jsonl.zst` file as a line reader.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>, PileError> {
    let file = File::open(path).map_err(|source| PileError::Open { path: path.into(), source })?;
    let reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(
            zstd::Decoder::new(file).map_err(|source| PileError::Open { path: path.into(), source })?,
        )
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Parses one JSONL line into a document. Blank lines are `Ok(None)`.
pub fn parse_line(path: &Path, line_no: usize, line: &str) -> Result<Option<PileDocument>, PileError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| PileError::NotJson {
        path: path.into(),
        line: line_no,
        message: e.to_string(),
    })?;
    let obj = value.as_object().ok_or_else(|| PileError::NotJson {
        path: path.into(),
        line: line_no,
        message: "a JSON value but not an object".into(),
    })?;
    let text = obj
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or_else(|| PileError::NoText { path: path.into(), line: line_no })?;
    if text.is_empty() {
        return Err(PileError::EmptyText { path: path.into(), line: line_no });
    }
    let task = obj
        .get("meta")
        .and_then(|m| m.get("pile_set_name"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    Ok(Some(PileDocument { line: line_no, text: text.to_owned(), task }))
}

/// Streams the documents of a Pile-format file, one `Result` per non-blank line.
pub fn read_pile(path: &Path) -> Result<impl Iterator<Item = Result<PileDocument, PileError>>, PileError> {
    let reader = open_lines(path)?;
    let path = path.to_path_buf();
    Ok(reader
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| match line {
            Err(source) => Some(Err(PileError::Read { path: path.clone(), line: i + 1, source })),
            Ok(line) => parse_line(&path, i + 1, &line).transpose(),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tttnn-pile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn reads_plain_and_zst() {
        let body = b"{\"text\": \"a b\", \"meta\": {\"pile_set_name\": \"Github\"}}\n\n{\"text\": \"\\u00e9\"}\n";
        let plain = write("x.jsonl", body);
        let zst = write("x.jsonl.zst", &zstd::encode_all(&body[..], 3).unwrap());
        for p in [plain, zst] {
            let docs: Vec<_> = read_pile(&p).unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(docs.len(), 2);
            assert_eq!(docs[0].task.as_deref(), Some("Github"));
            assert_eq!(docs[1].text, "é");
            assert_eq!(docs[1].line, 3);
            assert_eq!(docs[1].task, None);
        }
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let p = write("bad.jsonl", b"{\"text\": \"ok\"}\nnot json\n{\"meta\": {}}\n{\"text\": \"\"}\n");
        let results: Vec<_> = read_pile(&p).unwrap().collect();
        assert!(results[0].is_ok());
        let errs: Vec<String> = results[1..].iter().map(|r| r.as_ref().unwrap_err().to_string()).collect();
        assert!(errs[0].contains("bad.jsonl:2") && errs[0].contains("not a JSON object"), "{}", errs[0]);
        assert!(errs[1].contains("bad.jsonl:3") && errs[1].contains("\"text\""), "{}", errs[1]);
        assert!(errs[2].contains("bad.jsonl:4") && errs[2].contains("empty document"), "{}", errs[2]);
        assert!(results[1..].iter().all(|r| r.as_ref().unwrap_err().is_bad_line()));
    }
}
