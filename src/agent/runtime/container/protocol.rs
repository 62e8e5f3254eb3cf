//! The messages between the agent and a shim over the shim's unix socket.
//!
//! One connection carries one request, a JSON object on one line, and one response, also one
//! JSON line. `Wait` is answered only when the container has exited. Shared by both sides;
//! holds no I/O.
//!
//! `Attach` turns its connection, after the response line, into an attach session of
//! [frames](encode_frame): a kind byte, a 4-byte big-endian length and the payload. The shim
//! sends [`FRAME_STDOUT`] and [`FRAME_STDERR`] (the container's output from then on); the
//! agent sends [`FRAME_STDIN`], [`FRAME_RESIZE`] (`<columns> <rows>`) and
//! [`FRAME_CLOSE_STDIN`] (the client's stdin ended; shutting down the write side means the
//! same). The shim closes the connection when the container's output has ended, or when the
//! client's stdin ended and the container does not close its stdin then (not `stdinOnce`, or
//! a terminal), as containerd ends such a session.

use serde::{Deserialize, Serialize};

use super::state::ShimStatus;

/// What the agent asks a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// The current status.
    Status,
    /// Start the created container's process.
    Start,
    /// Send a signal to the container's init process, or to all its processes.
    Kill { signal: i32, all: bool },
    /// Answer once the container has exited, with its final status.
    Wait,
    /// Attach to the container's stdio: the connection then carries frames.
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

/// A shim's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The status after the request was carried out.
    pub status: Option<ShimStatus>,
    /// Why the request failed.
    pub error: Option<String>,
}

/// Input for the container (agent → shim).
pub const FRAME_STDIN: u8 = 0;
/// The container's stdout, or its terminal (shim → agent).
pub const FRAME_STDOUT: u8 = 1;
/// The container's stderr (shim → agent).
pub const FRAME_STDERR: u8 = 2;
/// A terminal size, `<columns> <rows>` (agent → shim).
pub const FRAME_RESIZE: u8 = 4;
/// The client's stdin ended (agent → shim), no payload.
pub const FRAME_CLOSE_STDIN: u8 = 255;

/// Kind byte and length.
pub const FRAME_HEADER: usize = 5;
/// The largest payload either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attach frame of {0} bytes is larger than {MAX_FRAME}")]
pub struct FrameTooLarge(pub usize);

/// One frame: kind, length, payload (`payload` must not exceed [`MAX_FRAME`]).
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A decoded frame, borrowed from the buffer it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
    /// How many bytes of the buffer it took.
    pub len: usize,
}

/// The first complete frame in `buf`, or `None` when more bytes are needed.
pub fn decode_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameTooLarge> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameTooLarge(len));
    }
    match buf.get(FRAME_HEADER..FRAME_HEADER + len) {
        Some(payload) => Ok(Some(Frame {
            kind: header[0],
            payload,
            len: FRAME_HEADER + len,
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_all_their_bytes() {
        let mut buf = encode_frame(FRAME_STDIN, b"hello\n");
        buf.extend(encode_frame(FRAME_CLOSE_STDIN, b""));
        assert_eq!(decode_frame(&buf[..3]), Ok(None));
        assert_eq!(decode_frame(&buf[..8]), Ok(None));
        let first = decode_frame(&buf).expect("valid").expect("complete");
        assert_eq!((first.kind, first.payload), (FRAME_STDIN, &b"hello\n"[..]));
        let second = decode_frame(&buf[first.len..])
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (second.kind, second.payload.len(), first.len + second.len),
            (FRAME_CLOSE_STDIN, 0, buf.len())
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = vec![FRAME_STDIN];
        buf.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert_eq!(decode_frame(&buf), Err(FrameTooLarge(MAX_FRAME + 1)));
    }

    #[test]
    fn attach_requests_are_one_json_line() {
        let request = Request::Attach {
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let line = serde_json::to_string(&request).expect("serialize");
        assert_eq!(
            line,
            r#"{"op":"attach","stdin":true,"stdout":true,"stderr":false}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(&line).expect("parse"),
            request
        );
    }
}
