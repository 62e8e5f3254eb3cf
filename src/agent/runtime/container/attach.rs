//! Attach: the agent's side of an attach session with a container's shim, for
//! `kubectl attach` and `kubectl run -i`.
//!
//! [`Runtime::attach`](super::Runtime::attach) sends `Attach` on the shim's socket and hands
//! back the two halves of the session ([`super::protocol`] frames): [`AttachOutput`] yields
//! the container's output from then on and ends when the shim ends the session;
//! [`AttachInput`] sends input, terminal sizes and the end of the client's stdin. Dropping
//! [`AttachInput`] also ends the client's stdin; dropping both detaches.
//!
//! This module only speaks the protocol; it must not touch the container otherwise.

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::logs::Stream;
use super::protocol::{
    encode_frame, FRAME_CLOSE_STDIN, FRAME_HEADER, FRAME_RESIZE, FRAME_STDERR, FRAME_STDIN,
    FRAME_STDOUT, MAX_FRAME,
};

/// Which streams an attach client takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The container's output, as the shim relays it.
#[derive(Debug)]
pub struct AttachOutput {
    pub(super) reader: BufReader<OwnedReadHalf>,
}

/// Input to the container.
#[derive(Debug)]
pub struct AttachInput {
    pub(super) writer: OwnedWriteHalf,
}

impl AttachOutput {
    /// The next piece of output, or `None` when the session is over.
    pub async fn next(&mut self) -> io::Result<Option<(Stream, Vec<u8>)>> {
        loop {
            let mut header = [0u8; FRAME_HEADER];
            match self.reader.read_exact(&mut header).await {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(err) => return Err(err),
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::other(format!(
                    "attach frame of {len} bytes from the shim"
                )));
            }
            let mut payload = vec![0u8; len];
            self.reader.read_exact(&mut payload).await?;
            match header[0] {
                FRAME_STDOUT => return Ok(Some((Stream::Stdout, payload))),
                FRAME_STDERR => return Ok(Some((Stream::Stderr, payload))),
                _ => continue,
            }
        }
    }
}

impl AttachInput {
    /// Sends input for the container's stdin (ignored by the shim unless the session was
    /// opened with `stdin` and the container has a stdin).
    pub async fn stdin(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(MAX_FRAME);
            self.writer
                .write_all(&encode_frame(FRAME_STDIN, &data[..n]))
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// The client's stdin ended.
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        self.writer
            .write_all(&encode_frame(FRAME_CLOSE_STDIN, b""))
            .await
    }

    /// Sets the size of the container's terminal (ignored without a terminal).
    pub async fn resize(&mut self, columns: u16, rows: u16) -> io::Result<()> {
        let size = format!("{columns} {rows}");
        self.writer
            .write_all(&encode_frame(FRAME_RESIZE, size.as_bytes()))
            .await
    }
}
