//! SPDY/3.1 framing, as spoken by Kubernetes clients (`k8s.io/apimachinery`'s httpstream/spdy,
//! built on moby/spdystream and Go's SPDY framer): a byte-stream [`Decoder`] that yields whole
//! frames however the bytes were cut into messages, and an [`Encoder`] that writes them.
//!
//! Header blocks are compressed with zlib primed with the SPDY/3 dictionary: one zlib stream
//! per direction for the whole session, each block ended by a sync flush. So one session needs
//! exactly one `Decoder` for what the peer sends and one `Encoder` for what it is sent, used in
//! frame order.
//!
//! Owns only the bytes of frames; what frames mean for a session is the caller's business.
//! Flow control is not enforced here: the Go peers neither send WINDOW_UPDATE nor honour it
//! (spdystream ignores SETTINGS and WINDOW_UPDATE), so the frames are only parsed.

use std::sync::OnceLock;

use axum::body::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FLAG_FIN, for DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL, for SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The largest payload a frame can carry (the length is 24 bits).
pub const MAX_FRAME_LENGTH: usize = 0x00ff_ffff;
/// The largest header block accepted once decompressed.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes (SPDY/3 section 2.6.6).
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header name/value pairs. Names are lower case on the wire; a value holding several values
/// separates them with NUL, as SPDY does.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// Why bytes are not a valid SPDY/3 session.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("invalid {kind} frame: {reason}")]
    Invalid { kind: &'static str, reason: String },
    #[error("invalid header block: {0}")]
    HeaderBlock(String),
    #[error("header compression: {0}")]
    Zlib(String),
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(usize),
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Invalid {
        kind,
        reason: reason.into(),
    }
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1): length-prefixed common header
/// names and values, then a run of common text.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,public",
            "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut out = Vec::new();
        for word in WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(TAIL.as_bytes());
        out
    })
}

fn be32(bytes: &[u8], at: usize, kind: &'static str) -> Result<u32, SpdyError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| invalid(kind, "too short"))
}

/// Reads frames from the peer's byte stream.
pub struct Decoder {
    buffer: Vec<u8>,
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            buffer: Vec::new(),
            inflate: Decompress::new(true),
        }
    }

    /// Appends bytes as they arrived (any cut: frames need not be aligned to messages).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, or `None` until more bytes arrive. Control frames of unknown
    /// types are skipped, as the protocol asks.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        loop {
            if self.buffer.len() < 8 {
                return Ok(None);
            }
            let length =
                u32::from_be_bytes([0, self.buffer[5], self.buffer[6], self.buffer[7]]) as usize;
            if self.buffer.len() < 8 + length {
                return Ok(None);
            }
            let first = be32(&self.buffer, 0, "frame")?;
            let flags = self.buffer[4];
            let payload: Vec<u8> = self.buffer.drain(..8 + length).skip(8).collect();
            if first & 0x8000_0000 == 0 {
                let stream_id = first & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(invalid("DATA", "stream id 0"));
                }
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data: Bytes::from(payload),
                }));
            }
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::Version(version));
            }
            let frame_type = (first & 0xffff) as u16;
            if let Some(frame) = self.control(frame_type, flags, &payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn control(
        &mut self,
        frame_type: u16,
        flags: u8,
        payload: &[u8],
    ) -> Result<Option<Frame>, SpdyError> {
        let stream_id = |kind| -> Result<u32, SpdyError> {
            let id = be32(payload, 0, kind)? & 0x7fff_ffff;
            if id == 0 {
                return Err(invalid(kind, "stream id 0"));
            }
            Ok(id)
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                let kind = "SYN_STREAM";
                if payload.len() < 10 {
                    return Err(invalid(kind, "too short"));
                }
                Frame::SynStream {
                    stream_id: stream_id(kind)?,
                    associated_to: be32(payload, 4, kind)? & 0x7fff_ffff,
                    priority: payload[8] >> 5,
                    slot: payload[9],
                    flags,
                    headers: self.headers(&payload[10..])?,
                }
            }
            TYPE_SYN_REPLY => Frame::SynReply {
                stream_id: stream_id("SYN_REPLY")?,
                flags,
                headers: self.headers(&payload[4..])?,
            },
            TYPE_HEADERS => Frame::Headers {
                stream_id: stream_id("HEADERS")?,
                flags,
                headers: self.headers(&payload[4..])?,
            },
            TYPE_RST_STREAM => Frame::RstStream {
                stream_id: stream_id("RST_STREAM")?,
                status: be32(payload, 4, "RST_STREAM")?,
            },
            TYPE_SETTINGS => {
                let count = be32(payload, 0, "SETTINGS")? as usize;
                if payload.len() != 4 + count.saturating_mul(8) {
                    return Err(invalid("SETTINGS", "length does not match the entries"));
                }
                let mut entries = Vec::with_capacity(count);
                for i in 0..count {
                    let at = 4 + 8 * i;
                    let flags_id = be32(payload, at, "SETTINGS")?;
                    entries.push(Setting {
                        flags: (flags_id >> 24) as u8,
                        id: flags_id & 0x00ff_ffff,
                        value: be32(payload, at + 4, "SETTINGS")?,
                    });
                }
                Frame::Settings { flags, entries }
            }
            TYPE_PING => Frame::Ping {
                id: be32(payload, 0, "PING")?,
            },
            TYPE_GOAWAY => Frame::GoAway {
                last_good_stream_id: be32(payload, 0, "GOAWAY")? & 0x7fff_ffff,
                status: be32(payload, 4, "GOAWAY")?,
            },
            TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: be32(payload, 0, "WINDOW_UPDATE")? & 0x7fff_ffff,
                delta: be32(payload, 4, "WINDOW_UPDATE")? & 0x7fff_ffff,
            },
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let plain = self.inflate_block(block)?;
        parse_header_block(&plain)
    }

    /// Decompresses one header block: everything up to the sender's sync flush.
    fn inflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlock("too large".into()));
                }
                out.reserve(out.capacity());
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result =
                self.inflate
                    .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - in_before) as usize;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Zlib("the peer ended its header stream".into()))
                }
                Ok(_) => {
                    let done = consumed == block.len() && out.len() < out.capacity();
                    let stuck = self.inflate.total_in() == in_before && out.len() == out_before;
                    if done || (stuck && out.len() < out.capacity()) {
                        break;
                    }
                }
                Err(err) => match err.needs_dictionary() {
                    Some(adler) => {
                        let ours = self
                            .inflate
                            .set_dictionary(dictionary())
                            .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                        if adler != ours {
                            return Err(SpdyError::Zlib(format!(
                                "the peer's dictionary {adler:#x} is not SPDY/3's ({ours:#x})"
                            )));
                        }
                    }
                    None => return Err(SpdyError::Zlib(err.to_string())),
                },
            }
        }
        if consumed != block.len() {
            return Err(SpdyError::HeaderBlock(
                "compressed block has trailing bytes".into(),
            ));
        }
        Ok(out)
    }
}

fn parse_header_block(plain: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |reason: &str| SpdyError::HeaderBlock(reason.to_string());
    let mut at = 0usize;
    let read_u32 = |at: &mut usize| -> Result<usize, SpdyError> {
        let value = plain
            .get(*at..*at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad("truncated"))?;
        *at += 4;
        Ok(value)
    };
    let count = read_u32(&mut at)?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let field = |at: &mut usize| -> Result<String, SpdyError> {
            let len = read_u32(at)?;
            let bytes = plain.get(*at..*at + len).ok_or_else(|| bad("truncated"))?;
            *at += len;
            String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8"))
        };
        let name = field(&mut at)?.to_ascii_lowercase();
        let value = field(&mut at)?;
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        headers.push((name, value));
    }
    if at != plain.len() {
        return Err(bad("bytes after the last header"));
    }
    Ok(headers)
}

fn header_block(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Writes frames for the peer.
pub struct Encoder {
    deflate: Compress,
}

impl Encoder {
    pub fn new() -> Result<Self, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .map_err(|e| SpdyError::Zlib(e.to_string()))?;
        Ok(Encoder { deflate })
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut body = Vec::new();
        let (frame_type, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&length_word(*flags, data.len()));
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x07) << 5);
                body.push(*slot);
                body.extend(self.deflate_block(&header_block(headers))?);
                (TYPE_SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend(self.deflate_block(&header_block(headers))?);
                (TYPE_SYN_REPLY, *flags)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend(self.deflate_block(&header_block(headers))?);
                (TYPE_HEADERS, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&status.to_be_bytes());
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for entry in entries {
                    let flags_id = (u32::from(entry.flags) << 24) | (entry.id & 0x00ff_ffff);
                    body.extend_from_slice(&flags_id.to_be_bytes());
                    body.extend_from_slice(&entry.value.to_be_bytes());
                }
                (TYPE_SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                body.extend_from_slice(&id.to_be_bytes());
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                body.extend_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&status.to_be_bytes());
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                (TYPE_WINDOW_UPDATE, 0)
            }
        };
        if body.len() > MAX_FRAME_LENGTH {
            return Err(SpdyError::TooLarge(body.len()));
        }
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&frame_type.to_be_bytes());
        out.extend_from_slice(&length_word(flags, body.len()));
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Compresses one header block and sync-flushes it, so the peer can read it whole.
    fn deflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn length_word(flags: u8, length: usize) -> [u8; 4] {
    ((u32::from(flags) << 24) | (length as u32 & 0x00ff_ffff)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: 7,
                    value: 1 << 20,
                }],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 5,
                status: goaway::OK,
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[("x-multi", "a\0b")]),
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 65536,
            },
            Frame::SynStream {
                stream_id: 7,
                associated_to: 1,
                priority: 7,
                slot: 2,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "1")]),
            },
        ]
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        // The Adler-32 a zlib stream primed with it announces (its FDICT checksum).
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in dict {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn every_frame_type_round_trips_in_one_session() {
        let mut encoder = Encoder::new().expect("encoder");
        let mut decoder = Decoder::new();
        let mut wire = Vec::new();
        for frame in all_frames() {
            encoder.encode(&frame, &mut wire).expect("encode");
        }
        decoder.push(&wire);
        for frame in all_frames() {
            assert_eq!(decoder.next_frame().expect("decode"), Some(frame));
        }
        assert_eq!(decoder.next_frame().expect("end"), None);
    }

    #[test]
    fn frames_cut_at_every_byte_still_decode() {
        let mut encoder = Encoder::new().expect("encoder");
        let mut wire = Vec::new();
        for frame in all_frames() {
            encoder.encode(&frame, &mut wire).expect("encode");
        }
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame().expect("decode") {
                got.push(frame);
            }
        }
        assert_eq!(got, all_frames());
    }

    #[test]
    fn the_first_header_block_announces_the_spdy_dictionary() {
        let mut encoder = Encoder::new().expect("encoder");
        let mut wire = Vec::new();
        encoder
            .encode(
                &Frame::SynReply {
                    stream_id: 1,
                    flags: 0,
                    headers: Headers::new(),
                },
                &mut wire,
            )
            .expect("encode");
        assert_eq!(&wire[..4], &[0x80, 0x03, 0x00, 0x02]);
        let length = u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
        assert_eq!(wire.len(), 8 + length);
        let zlib = &wire[12..];
        // CMF/FLG with FDICT set, then the dictionary's checksum; ends with a sync flush.
        assert_eq!(zlib[0], 0x78);
        assert_ne!(zlib[1] & 0x20, 0);
        assert_eq!(u16::from_be_bytes([zlib[0], zlib[1]]) % 31, 0);
        assert_eq!(&zlib[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        assert_eq!(&zlib[zlib.len() - 4..], &[0x00, 0x00, 0xff, 0xff]);
    }

    /// Two SYN_STREAMs whose header blocks were compressed by another zlib implementation
    /// (C zlib, level 9, primed with the SPDY/3 dictionary, sync flush after each block), as
    /// kubectl opens a port-forward's error then data stream.
    #[test]
    fn header_blocks_from_another_zlib_decode() {
        let block1 = hex(concat!(
            "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20",
            "d198094ade8c0600000000ffff"
        ));
        let block2 = hex("c2aa19540e2512d60b000000ffff");
        let mut wire = Vec::new();
        for (id, block) in [(1u32, &block1), (3, &block2)] {
            wire.extend_from_slice(&[0x80, 0x03, 0x00, 0x01, 0x00]);
            wire.extend_from_slice(&((block.len() + 10) as u32).to_be_bytes()[1..]);
            wire.extend_from_slice(&id.to_be_bytes());
            wire.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            wire.extend_from_slice(block);
        }
        let mut decoder = Decoder::new();
        decoder.push(&wire);
        let expect = |id: u32, kind: &str| Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: headers(&[("streamtype", kind), ("port", "8080"), ("requestid", "0")]),
        };
        assert_eq!(
            decoder.next_frame().expect("first"),
            Some(expect(1, "error"))
        );
        assert_eq!(
            decoder.next_frame().expect("second"),
            Some(expect(3, "data"))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = Decoder::new();
        // A SYN_STREAM whose header block is not zlib.
        decoder.push(&[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0c]);
        decoder.push(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xde, 0xad]);
        assert!(decoder.next_frame().is_err());
        let mut decoder = Decoder::new();
        decoder.push(&[0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]);
        assert!(matches!(decoder.next_frame(), Err(SpdyError::Version(2))));
        let mut decoder = Decoder::new();
        decoder.push(&[0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0, 0]);
        assert!(decoder.next_frame().is_err());
        // An unknown control frame type is skipped.
        let mut decoder = Decoder::new();
        decoder.push(&[0x80, 0x03, 0x00, 0x63, 0x00, 0x00, 0x00, 0x01, 0xff]);
        decoder.push(&[0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 9]);
        assert_eq!(
            decoder.next_frame().expect("ping"),
            Some(Frame::Ping { id: 9 })
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
