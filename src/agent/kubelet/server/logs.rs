//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log, as the kubelet serves
//! it, read from the CRI log files the shim writes (the live file and its rotated files).
//!
//! Query parameters as the kubelet's: `follow`, `tailLines`, `previous`, `timestamps`,
//! `sinceSeconds`, `sinceTime` (RFC 3339), `limitBytes`. The body is just the containers'
//! output (the CRI timestamp, stream and tag are stripped); with `timestamps` each record starts
//! with its RFC 3339 nano timestamp and a space. With `follow` the live file is followed (across
//! rotation: the renamed file is read to its end before the new one) until the container has
//! exited and everything is sent, the client goes away, or the server shuts down.
//!
//! Reads only log files; must not write or remove them (the runtime owns them).

use std::collections::HashMap;
use std::io::{self, BufRead as _, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use super::{container_instances, status_response, LookupError, ServerState};
use crate::agent::runtime::container::{logs as cri, State as ContainerState};

/// How often a followed log file is checked for more data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The kubelet's log options, parsed from the query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since: Option<jiff::Timestamp>,
    pub limit_bytes: Option<u64>,
}

/// An invalid query parameter (400).
#[derive(Debug, thiserror::Error)]
#[error("invalid {name} {value:?}: {reason}")]
pub struct OptionError {
    name: &'static str,
    value: String,
    reason: String,
}

impl LogOptions {
    /// Parses the kubelet's query parameters.
    pub fn parse(query: &HashMap<String, String>) -> Result<LogOptions, OptionError> {
        let flag = |name: &str| {
            query
                .get(name)
                .map(|v| v.is_empty() || v == "true" || v == "1")
                .unwrap_or(false)
        };
        let number = |name: &'static str| -> Result<Option<i64>, OptionError> {
            match query.get(name) {
                None => Ok(None),
                Some(v) => v.parse::<i64>().map(Some).map_err(|e| OptionError {
                    name,
                    value: v.clone(),
                    reason: e.to_string(),
                }),
            }
        };
        let non_negative =
            |name: &'static str, v: Option<i64>| -> Result<Option<u64>, OptionError> {
                match v {
                    Some(n) if n < 0 => Err(OptionError {
                        name,
                        value: n.to_string(),
                        reason: "must be zero or more".into(),
                    }),
                    other => Ok(other.map(|n| n as u64)),
                }
            };
        let mut since = None;
        if let Some(seconds) = number("sinceSeconds")? {
            if seconds < 1 {
                return Err(OptionError {
                    name: "sinceSeconds",
                    value: seconds.to_string(),
                    reason: "must be greater than 0".into(),
                });
            }
            since = jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(seconds))
                .ok();
        }
        if let Some(value) = query.get("sinceTime") {
            let t = value.parse::<jiff::Timestamp>().map_err(|e| OptionError {
                name: "sinceTime",
                value: value.clone(),
                reason: e.to_string(),
            })?;
            since = Some(t);
        }
        let limit_bytes = non_negative("limitBytes", number("limitBytes")?)?;
        if limit_bytes == Some(0) {
            return Err(OptionError {
                name: "limitBytes",
                value: "0".into(),
                reason: "must be greater than 0".into(),
            });
        }
        Ok(LogOptions {
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            tail_lines: non_negative("tailLines", number("tailLines")?)?,
            since,
            limit_bytes,
        })
    }
}

/// One parsed CRI record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord<'a> {
    pub timestamp: &'a str,
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses one CRI log line (without its newline): `<ts> <stream> <F|P> <text>`.
pub fn parse_line(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(&[]);
    Some(LogRecord {
        timestamp,
        full: tag != b"P",
        text,
    })
}

/// Renders the records of `lines` (CRI lines without newline) as the kubelet does.
/// `since` drops older records; `tail_lines` keeps the last N lines (a line ends with a full
/// record); `limit` caps the total bytes (the rest is cut).
pub fn render(lines: &[Vec<u8>], options: &LogOptions) -> Vec<u8> {
    let mut records: Vec<LogRecord<'_>> = lines
        .iter()
        .filter_map(|l| parse_line(l))
        .filter(|r| match &options.since {
            Some(since) => r
                .timestamp
                .parse::<jiff::Timestamp>()
                .map(|t| t >= *since)
                .unwrap_or(true),
            None => true,
        })
        .collect();
    if let Some(tail) = options.tail_lines {
        // Walk back over `tail` complete lines; partial records belong to the line they end in.
        let mut lines_seen = 0u64;
        let mut start = records.len();
        while start > 0 {
            let r = &records[start - 1];
            if r.full {
                if lines_seen == tail {
                    break;
                }
                lines_seen += 1;
            }
            start -= 1;
        }
        if tail == 0 {
            start = records.len();
        }
        records.drain(..start);
    }
    let mut out = Vec::new();
    for r in &records {
        write_record(&mut out, r, options.timestamps);
    }
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit as usize);
    }
    out
}

fn write_record(out: &mut Vec<u8>, r: &LogRecord<'_>, timestamps: bool) {
    if timestamps {
        out.extend_from_slice(r.timestamp.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(r.text);
    if r.full {
        out.push(b'\n');
    }
}

/// The handler.
pub(crate) async fn container_logs(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let options = match LogOptions::parse(&query) {
        Ok(options) => options,
        Err(err) => {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string())
        }
    };
    let instances = match container_instances(&state.runtime, &namespace, &pod, &container).await {
        Ok(instances) => instances,
        Err(err) => return err.into_response(),
    };
    let instance = if options.previous {
        match instances
            .len()
            .checked_sub(2)
            .and_then(|i| instances.get(i))
        {
            Some(c) => c.clone(),
            None => {
                return LookupError::NoPrevious {
                    pod: pod.clone(),
                    container: container.clone(),
                }
                .into_response()
            }
        }
    } else {
        match instances.last() {
            Some(c) => c.clone(),
            None => {
                return LookupError::NotFound {
                    namespace,
                    pod,
                    container,
                }
                .into_response()
            }
        }
    };
    // Following a previous (exited) container makes no sense: it ends at once, as the kubelet's.
    let follow = options.follow && !options.previous;
    let log_path = instance.log_path.clone();
    let initial = {
        let path = log_path.clone();
        let options = options.clone();
        tokio::task::spawn_blocking(move || read_all(&path, &options)).await
    };
    let (body, live_offset) = match initial {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("read log {}: {err}", log_path.display()),
            )
        }
        Err(err) => {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("read log: {err}"),
            )
        }
    };
    let headers = [(header::CONTENT_TYPE, "text/plain")];
    if !follow {
        return (StatusCode::OK, headers, body).into_response();
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let sent = body.len() as u64;
    let span = tracing::info_span!("follow_log", %namespace, %pod, %container);
    tokio::spawn(
        follow_file(
            state,
            instance.id.clone(),
            log_path,
            live_offset,
            options,
            sent,
            body,
            tx,
        )
        .instrument(span),
    );
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

/// Reads the rotated files (oldest first) and the live file; returns the rendered output and
/// the live file's identity and length at the time it was read.
fn read_all(path: &Path, options: &LogOptions) -> io::Result<(Vec<u8>, LiveFile)> {
    let mut files: Vec<PathBuf> = cri::rotated_files(path).unwrap_or_default();
    files.sort();
    let mut lines = Vec::new();
    for rotated in &files {
        match std::fs::read(rotated) {
            Ok(data) => lines.extend(split_lines(&data)),
            // Rotation removed it while we listed: nothing to read.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    let (data, live) = match std::fs::File::open(path) {
        Ok(mut file) => {
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            // Only complete lines count; a line being written is read on the next poll.
            let complete = data
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            data.truncate(complete);
            let live = LiveFile {
                inode: inode_of(&file),
                offset: complete as u64,
            };
            (data, live)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => (Vec::new(), LiveFile::default()),
        Err(err) => return Err(err),
    };
    lines.extend(split_lines(&data));
    Ok((render(&lines, options), live))
}

fn split_lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Which live file was read, and how far.
#[derive(Debug, Clone, Copy, Default)]
struct LiveFile {
    inode: u64,
    offset: u64,
}

fn inode_of(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    file.metadata().map(|m| m.ino()).unwrap_or(0)
}

/// Sends what is appended to the live file (and, after a rotation, the rest of the renamed
/// file and then the new one) until the container has exited and all is sent.
#[allow(clippy::too_many_arguments)]
async fn follow_file(
    state: ServerState,
    container_id: String,
    path: PathBuf,
    live: LiveFile,
    options: LogOptions,
    mut sent: u64,
    first: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
) {
    if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    // Records already filtered by tail/since: from now on everything new is sent (still
    // honouring sinceTime for records written before it, which cannot happen after now).
    let options = LogOptions {
        tail_lines: None,
        ..options
    };
    let mut reader: Option<(std::io::BufReader<std::fs::File>, u64)> = None;
    let mut pending = Vec::new();
    let mut expected_inode = live.inode;
    let mut start_offset = live.offset;
    loop {
        if let Some(limit) = options.limit_bytes {
            if sent >= limit {
                return;
            }
        }
        if reader.is_none() {
            match std::fs::File::open(&path) {
                Ok(file) => {
                    let inode = inode_of(&file);
                    let offset = if inode == expected_inode {
                        start_offset
                    } else {
                        0
                    };
                    let mut buffered = std::io::BufReader::new(file);
                    if buffered.seek(io::SeekFrom::Start(offset)).is_ok() {
                        reader = Some((buffered, inode));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
        let mut chunk = Vec::new();
        let mut got_data = false;
        if let Some((file, inode)) = reader.as_mut() {
            loop {
                let mut line = Vec::new();
                match file.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        got_data = true;
                        pending.extend_from_slice(&line);
                        if pending.ends_with(b"\n") {
                            pending.pop();
                            if let Some(r) = parse_line(&pending) {
                                let keep = match &options.since {
                                    Some(since) => r
                                        .timestamp
                                        .parse::<jiff::Timestamp>()
                                        .map(|t| t >= *since)
                                        .unwrap_or(true),
                                    None => true,
                                };
                                if keep {
                                    write_record(&mut chunk, &r, options.timestamps);
                                }
                            }
                            pending.clear();
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                }
            }
            // Rotated away? Once the old file is drained, switch to the new one.
            let current = std::fs::metadata(&path).ok().map(|m| {
                use std::os::unix::fs::MetadataExt as _;
                m.ino()
            });
            if current != Some(*inode) && !got_data {
                debug!("log file rotated, following the new one");
                expected_inode = current.unwrap_or(0);
                start_offset = 0;
                reader = None;
                continue;
            }
        }
        if !chunk.is_empty() {
            if let Some(limit) = options.limit_bytes {
                let room = limit.saturating_sub(sent) as usize;
                chunk.truncate(room);
            }
            sent += chunk.len() as u64;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            continue;
        }
        if !got_data {
            // Nothing new: stop once the container has exited (the shim has flushed by then).
            let exited = match state.runtime.status(&container_id).await {
                Ok(status) => !matches!(
                    status.state,
                    ContainerState::Running | ContainerState::Created
                ),
                Err(_) => true,
            };
            if exited {
                return;
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Vec<u8>> {
        text.lines().map(|l| l.as_bytes().to_vec()).collect()
    }

    const LOG: &str = "2026-01-01T00:00:01.5Z stdout F one
2026-01-01T00:00:02Z stderr P tw
2026-01-01T00:00:02.1Z stderr F o
2026-01-01T00:00:03Z stdout F three";

    #[test]
    fn payload_only_and_partial_records_joined() {
        let out = render(&lines(LOG), &LogOptions::default());
        assert_eq!(out, b"one\ntwo\nthree\n");
    }

    #[test]
    fn tail_counts_lines_not_records() {
        let options = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(render(&lines(LOG), &options), b"two\nthree\n");
        let options = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert_eq!(render(&lines(LOG), &options), b"");
    }

    #[test]
    fn timestamps_since_and_limit() -> Result<(), Box<dyn std::error::Error>> {
        let options = LogOptions {
            timestamps: true,
            since: Some("2026-01-01T00:00:02.05Z".parse()?),
            ..Default::default()
        };
        assert_eq!(
            render(&lines(LOG), &options),
            b"2026-01-01T00:00:02.1Z o\n2026-01-01T00:00:03Z three\n"
        );
        let options = LogOptions {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(render(&lines(LOG), &options), b"one\nt");
        Ok(())
    }

    #[test]
    fn options_parse_and_reject_bad_values() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let o = LogOptions::parse(&q(&[("follow", "true"), ("tailLines", "3")]))
            .expect("valid options");
        assert!(o.follow && !o.previous);
        assert_eq!(o.tail_lines, Some(3));
        assert!(LogOptions::parse(&q(&[("tailLines", "x")])).is_err());
        assert!(LogOptions::parse(&q(&[("limitBytes", "0")])).is_err());
        assert!(LogOptions::parse(&q(&[("sinceSeconds", "0")])).is_err());
        assert!(LogOptions::parse(&q(&[("sinceTime", "yesterday")])).is_err());
    }
}
