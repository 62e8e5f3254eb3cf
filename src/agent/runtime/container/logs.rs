//! Container logs in the CRI format, as containerd writes them and the kubelet reads them.
//!
//! Owns the log file of one container: `<log-root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`,
//! one record per line, `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`. A line longer
//! than [`MAX_LINE`] is cut into partial (`P`) records, as is a last line without a newline; the
//! full (`F`) record ends a line. When a record would take the file past its size limit, the
//! file is first renamed with the kubelet's `<name>.<YYYYMMDD-hhmmss>` suffix and a new one is
//! started; only the newest `max_files - 1` rotated files are kept (uncompressed: the kubelet
//! gzips older rotated files, this does not yet).
//!
//! This module runs inside the shim (synchronous, no tokio). It must not know about containers
//! beyond the two streams it is handed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Longest line written as one record; containerd's default (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Default size at which a log file is rotated (the kubelet's containerLogMaxSize).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;

/// Default number of log files kept, the live one included (containerLogMaxFiles).
pub const DEFAULT_MAX_FILES: u32 = 5;

/// The path of a container's log file, as the kubelet lays it out.
pub fn log_path(
    log_root: &Path,
    namespace: &str,
    pod_name: &str,
    pod_uid: &str,
    container: &str,
    restart: u32,
) -> PathBuf {
    log_root
        .join(format!("{namespace}_{pod_name}_{pod_uid}"))
        .join(container)
        .join(format!("{restart}.log"))
}

/// One of the two output streams of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits a byte stream into CRI records: complete lines, and pieces of at most [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

/// A record to write: the text without its newline, and whether it ends a line.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub text: Vec<u8>,
    pub full: bool,
}

impl LineSplitter {
    /// Feeds bytes read from the stream; returns the records that are complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        for &byte in data {
            if byte == b'\n' {
                let mut text = std::mem::take(&mut self.pending);
                if text.last() == Some(&b'\r') {
                    text.pop();
                }
                records.push(Record { text, full: true });
            } else {
                self.pending.push(byte);
                if self.pending.len() >= MAX_LINE {
                    records.push(Record {
                        text: std::mem::take(&mut self.pending),
                        full: false,
                    });
                }
            }
        }
        records
    }

    /// The stream ended: whatever is left is a partial record (as containerd writes it).
    pub fn finish(&mut self) -> Option<Record> {
        if self.pending.is_empty() {
            None
        } else {
            Some(Record {
                text: std::mem::take(&mut self.pending),
                full: false,
            })
        }
    }
}

/// Formats one record as a CRI log line (with its newline).
pub fn format_record(timestamp: &jiff::Timestamp, stream: Stream, record: &Record) -> Vec<u8> {
    let head = format!(
        "{} {} {} ",
        timestamp,
        stream.tag(),
        if record.full { "F" } else { "P" }
    );
    let mut line = Vec::with_capacity(head.len() + record.text.len() + 1);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(&record.text);
    line.push(b'\n');
    line
}

/// The log file of one container, with rotation by size.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    stdout: LineSplitter,
    stderr: LineSplitter,
}

impl LogWriter {
    /// Opens (appends to) the log file, creating its directory. `max_size` 0 never rotates.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
        })
    }

    /// Writes what the container wrote on `stream`.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let records = match stream {
            Stream::Stdout => self.stdout.push(data),
            Stream::Stderr => self.stderr.push(data),
        };
        for record in records {
            self.write_record(stream, &record)?;
        }
        Ok(())
    }

    /// The stream reached its end: flush its partial line.
    pub fn close_stream(&mut self, stream: Stream) -> io::Result<()> {
        let record = match stream {
            Stream::Stdout => self.stdout.finish(),
            Stream::Stderr => self.stderr.finish(),
        };
        match record {
            Some(record) => self.write_record(stream, &record),
            None => Ok(()),
        }
    }

    fn write_record(&mut self, stream: Stream, record: &Record) -> io::Result<()> {
        let line = format_record(&jiff::Timestamp::now(), stream, record);
        // Rotate before a record would take the file past its limit, so the live file always
        // ends with the newest record.
        if self.max_size > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Renames the live file with a timestamp suffix, starts a new one, drops the oldest.
    fn rotate(&mut self) -> io::Result<()> {
        let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
        let mut rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        // Two rotations in one second: keep both rather than overwrite.
        let mut n = 1;
        while rotated.exists() {
            rotated = PathBuf::from(format!("{}.{stamp}-{n}", self.path.display()));
            n += 1;
        }
        fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let mut old = rotated_files(&self.path)?;
        let keep = (self.max_files - 1) as usize;
        if old.len() > keep {
            old.sort();
            for path in &old[..old.len() - keep] {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode_0640()
        .open(path)
}

/// The rotated files of a log file (`<name>.<stamp>`), unsorted.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

trait OpenMode {
    fn mode_0640(&mut self) -> &mut Self;
}

impl OpenMode for OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o640)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_and_carriage_returns_dropped() {
        let mut splitter = LineSplitter::default();
        let records = splitter.push(b"one\ntwo\r\nthr");
        assert_eq!(
            records,
            vec![
                Record {
                    text: b"one".to_vec(),
                    full: true
                },
                Record {
                    text: b"two".to_vec(),
                    full: true
                },
            ]
        );
        assert_eq!(splitter.push(b"ee\n")[0].text, b"three".to_vec());
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn long_lines_become_partial_records_and_the_last_unterminated_line_is_partial() {
        let mut splitter = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let records = splitter.push(&long);
        assert_eq!(records.len(), 1);
        assert!(!records[0].full);
        assert_eq!(records[0].text.len(), MAX_LINE);
        let end = splitter.finish().expect("rest of the line");
        assert_eq!(end.text.len(), 10);
        assert!(!end.full);
    }

    #[test]
    fn a_record_is_formatted_as_the_kubelet_parses_it() {
        let ts: jiff::Timestamp = "2024-01-02T03:04:05.120Z".parse().expect("timestamp");
        let line = format_record(
            &ts,
            Stream::Stderr,
            &Record {
                text: b"hello".to_vec(),
                full: true,
            },
        );
        assert_eq!(
            String::from_utf8_lossy(&line),
            "2024-01-02T03:04:05.12Z stderr F hello\n"
        );
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = log_path(dir.path(), "ns", "pod", "uid", "c", 0);
        let mut writer = LogWriter::open(&path, 100, 3).expect("open");
        for i in 0..40 {
            writer
                .write(
                    Stream::Stdout,
                    format!("line {i:04} of the log\n").as_bytes(),
                )
                .expect("write");
        }
        let rotated = rotated_files(&path).expect("list");
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let live = fs::read_to_string(&path).expect("live file");
        assert!(live.ends_with("line 0039 of the log\n"), "{live}");
    }
}
