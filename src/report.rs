//! `--report FILE`: one JSON line per image, appended as each image finishes.
//!
//! The file is opened for appending (`O_APPEND`) and each line goes out in one write, so a task
//! killed midway leaves a valid report up to its last line, and several tasks may append to one
//! file on a local file system. Lines are
//! `{"input":…,"output":…,"status":"restored"|"skipped"|"failed","error":…,"seconds":…,"shard":…}`
//! with `error` null unless failed and `shard` (`"K/N"`) null without `--shard`.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

use crate::shard::Shard;

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Restored,
    /// Its output existed (and `--overwrite` was not given).
    Skipped,
    Failed,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line<'a> {
    pub input: &'a str,
    pub output: &'a str,
    pub status: Status,
    pub error: Option<&'a str>,
    pub seconds: f64,
    pub shard: Option<String>,
}

/// An open report file.
#[derive(Debug)]
pub struct Report {
    file: Mutex<File>,
    path: std::path::PathBuf,
    shard: Option<Shard>,
}

impl Report {
    /// Opens the report `path` for a run of `shard`.
    pub fn open(path: &Path, shard: Option<Shard>) -> anyhow::Result<Self> {
        Ok(Self {
            file: Mutex::new(
                crate::files::open_append(path)
                    .with_context(|| format!("cannot open the report '{}'", path.display()))?,
            ),
            path: path.to_owned(),
            shard,
        })
    }

    /// Appends the line for one image: `error` is given for a failure.
    pub fn record(
        &self,
        input: &Path,
        output: &Path,
        status: Status,
        error: Option<&str>,
        seconds: f64,
    ) -> anyhow::Result<()> {
        let (input, output) = (input.to_string_lossy(), output.to_string_lossy());
        let line = Line {
            input: &input,
            output: &output,
            status,
            error,
            seconds: (seconds * 1000.0).round() / 1000.0,
            shard: self.shard.map(|s| s.to_string()),
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write call for the whole line: appends from several processes do not interleave.
        crate::files::append(&mut file, &bytes)
            .with_context(|| format!("cannot write to the report '{}'", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_append_and_parse() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("r.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let r = Report::open(&path, Some(Shard { index: 1, count: 4 })).unwrap();
        r.record(
            Path::new("in/a.png"),
            Path::new("out/a.png"),
            Status::Restored,
            None,
            1.23456,
        )
        .unwrap();
        r.record(
            Path::new("in/\"b\".png"),
            Path::new("out/\"b\".png"),
            Status::Failed,
            Some("cannot read 'in/\"b\".png'"),
            0.0,
        )
        .unwrap();
        drop(r);
        let r = Report::open(&path, None).unwrap();
        r.record(
            Path::new("c"),
            Path::new("d"),
            Status::Skipped,
            None,
            0.0004,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "{\"earlier\":1}",
                r#"{"input":"in/a.png","output":"out/a.png","status":"restored","error":null,"seconds":1.235,"shard":"1/4"}"#,
                r#"{"input":"in/\"b\".png","output":"out/\"b\".png","status":"failed","error":"cannot read 'in/\"b\".png'","seconds":0.0,"shard":"1/4"}"#,
                r#"{"input":"c","output":"d","status":"skipped","error":null,"seconds":0.0,"shard":null}"#,
            ]
        );
        std::fs::write(tmp.path().join("a-file"), b"x").unwrap();
        let e = Report::open(&tmp.path().join("a-file/r.jsonl"), None).unwrap_err();
        assert!(
            format!("{e:#}").starts_with(&format!(
                "cannot open the report '{}': ",
                tmp.path().join("a-file/r.jsonl").display()
            )),
            "{e:#}"
        );
    }
}
