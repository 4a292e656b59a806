//! `metrics.jsonl`: the one JSON-lines log every training recipe writes, one line per step or
//! check, that a resumed run continues instead of repeating.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, TrainerError};

/// An open `metrics.jsonl`, appended a JSON line at a time.
pub(crate) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log at `path`, keeping the lines already there for which `keep` holds and
    /// dropping the rest: a fresh run keeps none, a resumed one the lines up to the state it
    /// resumes from, so each step appears once (lines that do not parse are dropped too).
    ///
    /// Errors: `Io` when the log cannot be read, rewritten or opened.
    pub(crate) fn open(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<Self> {
        let io = |e| TrainerError::io(path, e);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let kept: String = text
                    .lines()
                    .filter(|l| serde_json::from_str(l).is_ok_and(|v| keep(&v)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(path, kept).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `line`.
    pub(crate) fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| TrainerError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reopened_log_keeps_only_what_the_resumed_run_does_not_redo() {
        let path = std::env::temp_dir().join(format!("mrl-metrics-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut log = MetricsLog::open(&path, |_| true).unwrap();
        for step in 0..5 {
            log.write(&json!({ "step": step })).unwrap();
        }
        drop(log);
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "{torn").unwrap();
        let mut log = MetricsLog::open(&path, |v| v["step"].as_u64() <= Some(2)).unwrap();
        log.write(&json!({ "step": 3 })).unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [0, 1, 2, 3]);
        MetricsLog::open(&path, |_| false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_file(&path).unwrap();
    }
}
