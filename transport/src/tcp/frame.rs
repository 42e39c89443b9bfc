//! The multiplexer's frames. Each is a 9-byte header — kind (u8), stream id
//! (u32, big-endian), payload length (u32, big-endian) — then the payload.
//! Stream 0 is the connection itself. Every length and id is checked before
//! anything is allocated: a hostile peer gets a protocol error, never a panic
//! or an unbounded buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 9;
/// Largest payload of a DATA frame.
pub(crate) const MAX_DATA: usize = 64 * 1024;
/// Largest datagram (larger than any DNS message and its envelope).
pub(crate) const MAX_DATAGRAM: usize = 96 * 1024;
/// Largest reason of a CLOSE frame.
pub(crate) const MAX_REASON: usize = 1024;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const FIN: u8 = 2;
const RESET: u8 = 3;
const STOP: u8 = 4;
const WINDOW: u8 = 5;
const DATAGRAM: u8 = 6;
const PING: u8 = 7;
const PONG: u8 = 8;
const CLOSE: u8 = 9;

/// CLOSE sent by the application.
pub(crate) const CLOSE_APPLICATION: u8 = 0;
/// CLOSE sent because the peer broke the protocol.
pub(crate) const CLOSE_PROTOCOL: u8 = 1;

/// One frame of the multiplexer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A new stream; `uni` when only its opener sends.
    Open { id: u32, uni: bool },
    /// Stream bytes.
    Data { id: u32, data: Bytes },
    /// The sender's half-close: no more bytes on this stream.
    Fin { id: u32 },
    /// The sender abandoned its half of the stream.
    Reset { id: u32, code: u32 },
    /// The receiver will read no more: the sender should stop.
    Stop { id: u32, code: u32 },
    /// More flow-control credit (stream 0: the whole connection).
    Window { id: u32, increment: u32 },
    /// An unreliable message, dropped rather than queued without bound.
    Datagram(Bytes),
    /// Liveness probe; answered with [`Frame::Pong`].
    Ping,
    /// Answer to [`Frame::Ping`].
    Pong,
    /// The connection ends.
    Close { kind: u8, code: u32, reason: Bytes },
}

/// Why bytes from the peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FrameError(pub(crate) String);

/// Appends a frame header: kind, stream id, payload length.
fn put_header(out: &mut BytesMut, kind: u8, id: u32, len: usize) {
    out.put_u8(kind);
    out.put_u32(id);
    // Payloads are bounded by the MAX_* constants, far below u32::MAX.
    out.put_u32(len as u32);
}

fn bad(msg: impl Into<String>) -> FrameError {
    FrameError(msg.into())
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let header = |out: &mut BytesMut, kind: u8, id: u32, len: usize| {
            out.reserve(HEADER + len);
            put_header(out, kind, id, len);
        };
        match self {
            Frame::Open { id, uni } => {
                header(out, OPEN, *id, 1);
                out.put_u8(u8::from(*uni));
            }
            Frame::Data { id, data } => {
                header(out, DATA, *id, data.len());
                out.put_slice(data);
            }
            Frame::Fin { id } => header(out, FIN, *id, 0),
            Frame::Reset { id, code } => {
                header(out, RESET, *id, 4);
                out.put_u32(*code);
            }
            Frame::Stop { id, code } => {
                header(out, STOP, *id, 4);
                out.put_u32(*code);
            }
            Frame::Window { id, increment } => {
                header(out, WINDOW, *id, 4);
                out.put_u32(*increment);
            }
            Frame::Datagram(data) => {
                header(out, DATAGRAM, 0, data.len());
                out.put_slice(data);
            }
            Frame::Ping => header(out, PING, 0, 0),
            Frame::Pong => header(out, PONG, 0, 0),
            Frame::Close { kind, code, reason } => {
                let reason = &reason[..reason.len().min(MAX_REASON)];
                header(out, CLOSE, 0, 5 + reason.len());
                out.put_u8(*kind);
                out.put_u32(*code);
                out.put_slice(reason);
            }
        }
    }

    /// Appends the frame to `out` like [`Frame::encode`], except that a
    /// payload of at least `by_ref` bytes is left out and returned, for the
    /// caller to send right after what was appended (without copying it).
    pub(crate) fn encode_head(&self, out: &mut BytesMut, by_ref: usize) -> Option<Bytes> {
        let (kind, id, data) = match self {
            Frame::Data { id, data } if data.len() >= by_ref => (DATA, *id, data),
            Frame::Datagram(data) if data.len() >= by_ref => (DATAGRAM, 0, data),
            _ => {
                self.encode(out);
                return None;
            }
        };
        put_header(out, kind, id, data.len());
        Some(data.clone())
    }

    /// Takes one frame off the front of `buf`: `Ok(None)` while it is
    /// incomplete, an error when it can never be valid.
    pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
        let (max, conn_level) = match kind {
            OPEN => (1, false),
            DATA => (MAX_DATA, false),
            FIN => (0, false),
            RESET | STOP => (4, false),
            WINDOW => (4, id == 0),
            DATAGRAM => (MAX_DATAGRAM, true),
            PING | PONG => (0, true),
            CLOSE => (5 + MAX_REASON, true),
            other => return Err(bad(format!("unknown frame kind {other}"))),
        };
        if len > max {
            return Err(bad(format!(
                "frame kind {kind} of {len} bytes (at most {max})"
            )));
        }
        if conn_level != (id == 0) {
            return Err(bad(format!("frame kind {kind} on stream {id}")));
        }
        if buf.len() < HEADER + len {
            // Reserve once for the whole frame: bounded by `max` above.
            buf.reserve(HEADER + len - buf.len());
            return Ok(None);
        }
        // Copied out, so a small payload kept by a slow reader does not pin
        // the whole read buffer: buffered memory stays what flow control says.
        let mut p = Bytes::copy_from_slice(&buf[HEADER..HEADER + len]);
        buf.advance(HEADER + len);
        let exact = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(bad(format!(
                    "frame kind {kind} of {len} bytes (want {want})"
                )))
            }
        };
        let frame = match kind {
            OPEN => {
                exact(1)?;
                match p.get_u8() {
                    0 => Frame::Open { id, uni: false },
                    1 => Frame::Open { id, uni: true },
                    f => return Err(bad(format!("open frame with flags {f}"))),
                }
            }
            // An empty DATA frame carries nothing and would only cost the
            // receiver a queue entry: never sent, refused.
            DATA if len == 0 => return Err(bad(format!("empty data frame on stream {id}"))),
            DATA => Frame::Data { id, data: p },
            FIN => Frame::Fin { id },
            RESET => {
                exact(4)?;
                Frame::Reset {
                    id,
                    code: p.get_u32(),
                }
            }
            STOP => {
                exact(4)?;
                Frame::Stop {
                    id,
                    code: p.get_u32(),
                }
            }
            WINDOW => {
                exact(4)?;
                Frame::Window {
                    id,
                    increment: p.get_u32(),
                }
            }
            DATAGRAM => Frame::Datagram(p),
            PING => Frame::Ping,
            PONG => Frame::Pong,
            _ => {
                if len < 5 {
                    return Err(bad("close frame too short"));
                }
                let kind = p.get_u8();
                let code = p.get_u32();
                Frame::Close {
                    kind,
                    code,
                    reason: p,
                }
            }
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let frames = [
            Frame::Open { id: 1, uni: false },
            Frame::Open { id: 2, uni: true },
            Frame::Data {
                id: 3,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Fin { id: 3 },
            Frame::Reset { id: 5, code: 7 },
            Frame::Stop { id: 5, code: 8 },
            Frame::Window {
                id: 0,
                increment: 1 << 20,
            },
            Frame::Datagram(Bytes::from_static(b"dns")),
            Frame::Ping,
            Frame::Pong,
            Frame::Close {
                kind: CLOSE_APPLICATION,
                code: 3,
                reason: Bytes::from_static(b"bye"),
            },
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        // Fed one byte at a time, every frame comes out whole and in order.
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        for b in buf.iter() {
            input.put_u8(*b);
            while let Some(f) = Frame::decode(&mut input).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn a_head_and_its_payload_by_reference_are_the_whole_frame() {
        let frames = [
            Frame::Data {
                id: 3,
                data: Bytes::from(vec![7u8; 5000]),
            },
            Frame::Data {
                id: 5,
                data: Bytes::from_static(b"small"),
            },
            Frame::Datagram(Bytes::from(vec![9u8; 4096])),
            Frame::Datagram(Bytes::from_static(b"dns")),
            Frame::Window {
                id: 0,
                increment: 1 << 20,
            },
        ];
        let mut whole = BytesMut::new();
        let mut parts = BytesMut::new();
        let mut by_ref = 0;
        for f in &frames {
            f.encode(&mut whole);
            if let Some(payload) = f.encode_head(&mut parts, 4096) {
                by_ref += 1;
                parts.extend_from_slice(&payload);
            }
        }
        assert_eq!(by_ref, 2, "the two payloads of 4096 bytes or more");
        assert_eq!(parts, whole);
    }

    #[test]
    fn rejects_bad_frames() {
        let cases: [&[u8]; 6] = [
            &[42, 0, 0, 0, 1, 0, 0, 0, 0],          // unknown kind
            &[DATA, 0, 0, 0, 1, 0xff, 0, 0, 0],     // huge data frame
            &[DATA, 0, 0, 0, 0, 0, 0, 0, 0],        // data on stream 0
            &[PING, 0, 0, 0, 1, 0, 0, 0, 0],        // ping on a stream
            &[OPEN, 0, 0, 0, 1, 0, 0, 0, 1, 9],     // bad open flags
            &[RESET, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0], // short reset
        ];
        for case in cases {
            let mut buf = BytesMut::from(case);
            assert!(Frame::decode(&mut buf).is_err(), "{case:?}");
        }
    }
}
