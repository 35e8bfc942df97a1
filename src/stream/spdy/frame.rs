//! SPDY/3 frames on the wire: the 8-byte frame head, DATA frames, and control frames typed as
//! [`Control`], parsed and encoded with the body layout SPDY/3 gives each kind. A body too
//! short for its kind's fields is a protocol error, never a frame about stream 0.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const VERSION: u16 = 3;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// The largest frame accepted (a peer claiming more is a protocol error), and written.
const MAX_FRAME: usize = 4 << 20;

/// Stream ids and window deltas are 31 bits; SETTINGS ids 24.
const ID_MASK: u32 = 0x7fff_ffff;
const SETTINGS_ID_MASK: u32 = 0x00ff_ffff;

pub(super) fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// One frame off the wire.
#[derive(Debug)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        body: Vec<u8>,
    },
}

/// Reads one frame (None at a clean end of the connection).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("a {len}-byte frame (at most {MAX_FRAME})")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(bad(format!("SPDY version {version}, not 3")));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            body,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
            flags,
            data: body,
        }))
    }
}

/// A control frame's bytes, `body` as given (see [`Control::encode`] for typed frames).
pub fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A data frame's bytes.
pub fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & ID_MASK).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A control frame's body, parsed with the length SPDY/3 gives its kind: a body too short for
/// its fields is a protocol error (it used to read as stream 0). Trailing bytes are ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum Control<'a> {
    SynStream {
        id: u32,
        block: &'a [u8],
    },
    SynReply {
        id: u32,
        block: &'a [u8],
    },
    RstStream {
        id: u32,
        status: u32,
    },
    /// (id, value) pairs.
    Settings(Vec<(u32, u32)>),
    Ping(u32),
    /// `status` is 0 (OK) when a 4-byte body, as SPDY/2 wrote it, leaves it out.
    GoAway {
        last_id: u32,
        status: u32,
    },
    Headers {
        id: u32,
        block: &'a [u8],
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    /// A kind SPDY/3 does not define (ignored, as the draft says).
    Unknown(u16),
}

/// The name of a control frame `kind` SPDY/3 defines, and the fewest body bytes its fields
/// take.
fn layout(kind: u16) -> Option<(&'static str, usize)> {
    Some(match kind {
        SYN_STREAM => ("SYN_STREAM", 10),
        SYN_REPLY => ("SYN_REPLY", 4),
        RST_STREAM => ("RST_STREAM", 8),
        SETTINGS => ("SETTINGS", 4),
        PING => ("PING", 4),
        GOAWAY => ("GOAWAY", 4),
        HEADERS => ("HEADERS", 4),
        WINDOW_UPDATE => ("WINDOW_UPDATE", 8),
        _ => return None,
    })
}

/// Parses the body of a control frame of `kind`.
pub fn parse_control(kind: u16, body: &[u8]) -> std::io::Result<Control<'_>> {
    let Some((name, need)) = layout(kind) else {
        return Ok(Control::Unknown(kind));
    };
    if body.len() < need {
        return Err(bad(format!(
            "a {}-byte {name} frame (at least {need})",
            body.len()
        )));
    }
    let id = be32(body, 0) & ID_MASK;
    Ok(match kind {
        SYN_STREAM => Control::SynStream {
            id,
            block: &body[10..],
        },
        SYN_REPLY => Control::SynReply {
            id,
            block: &body[4..],
        },
        RST_STREAM => Control::RstStream {
            id,
            status: be32(body, 4),
        },
        SETTINGS => Control::Settings(parse_settings(body)?),
        PING => Control::Ping(be32(body, 0)),
        GOAWAY => Control::GoAway {
            last_id: id,
            status: if body.len() >= 8 { be32(body, 4) } else { 0 },
        },
        HEADERS => Control::Headers {
            id,
            block: &body[4..],
        },
        WINDOW_UPDATE => Control::WindowUpdate {
            id,
            delta: be32(body, 4) & ID_MASK,
        },
        other => Control::Unknown(other),
    })
}

/// SETTINGS entries (the body holds at least the count).
fn parse_settings(body: &[u8]) -> std::io::Result<Vec<(u32, u32)>> {
    let n = be32(body, 0) as usize;
    if n > (body.len() - 4) / 8 {
        return Err(bad(format!(
            "SETTINGS claims {n} entries in {} bytes",
            body.len()
        )));
    }
    Ok((0..n)
        .map(|i| {
            let at = 4 + i * 8;
            (be32(body, at) & SETTINGS_ID_MASK, be32(body, at + 4))
        })
        .collect())
}

impl Control<'_> {
    /// The frame's kind.
    pub fn kind(&self) -> u16 {
        match self {
            Control::SynStream { .. } => SYN_STREAM,
            Control::SynReply { .. } => SYN_REPLY,
            Control::RstStream { .. } => RST_STREAM,
            Control::Settings(_) => SETTINGS,
            Control::Ping(_) => PING,
            Control::GoAway { .. } => GOAWAY,
            Control::Headers { .. } => HEADERS,
            Control::WindowUpdate { .. } => WINDOW_UPDATE,
            Control::Unknown(kind) => *kind,
        }
    }

    /// The whole frame with `flags`, its body laid out as [`parse_control`] reads it (a
    /// SYN_STREAM with no associated stream and priority 0). A body past the largest frame
    /// is an error: the peer would refuse it, as concord does.
    pub fn encode(&self, flags: u8) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut put = |v: u32| body.extend_from_slice(&v.to_be_bytes());
        let block = match self {
            Control::SynStream { id, block } => {
                put(id & ID_MASK);
                put(0);
                body.extend_from_slice(&[0, 0]);
                Some(block)
            }
            Control::SynReply { id, block } | Control::Headers { id, block } => {
                put(id & ID_MASK);
                Some(block)
            }
            Control::RstStream { id, status } => {
                put(id & ID_MASK);
                put(*status);
                None
            }
            Control::Settings(entries) => {
                put(entries.len() as u32);
                for (id, value) in entries {
                    put(id & SETTINGS_ID_MASK);
                    put(*value);
                }
                None
            }
            Control::Ping(id) => {
                put(*id);
                None
            }
            Control::GoAway { last_id, status } => {
                put(last_id & ID_MASK);
                put(*status);
                None
            }
            Control::WindowUpdate { id, delta } => {
                put(id & ID_MASK);
                put(delta & ID_MASK);
                None
            }
            Control::Unknown(_) => None,
        };
        if let Some(block) = block {
            body.extend_from_slice(block);
        }
        if body.len() > MAX_FRAME {
            return Err(bad(format!(
                "a {}-byte control frame (at most {MAX_FRAME})",
                body.len()
            )));
        }
        Ok(control(self.kind(), flags, &body))
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|v| u32::from_be_bytes(v.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_control_frames_are_protocol_errors_not_stream_0() {
        for kind in [
            RST_STREAM,
            WINDOW_UPDATE,
            SYN_STREAM,
            SYN_REPLY,
            PING,
            SETTINGS,
            GOAWAY,
            HEADERS,
        ] {
            assert!(parse_control(kind, &[0, 0, 0]).is_err(), "kind {kind}");
            assert!(parse_control(kind, &[]).is_err(), "kind {kind}");
        }
        // One byte short of RST_STREAM's and WINDOW_UPDATE's 8.
        for kind in [RST_STREAM, WINDOW_UPDATE] {
            let e = parse_control(kind, &[0, 0, 0, 5, 0, 0, 0]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("a 7-byte"), "{e}");
        }
        assert!(parse_control(SYN_STREAM, &[0, 0, 0, 1, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            parse_control(RST_STREAM, &[0, 0, 0, 5, 0, 0, 0, 3]).unwrap(),
            Control::RstStream { id: 5, status: 3 }
        );
        assert_eq!(
            parse_control(WINDOW_UPDATE, &[0x80, 0, 0, 7, 0x80, 1, 0, 0]).unwrap(),
            Control::WindowUpdate {
                id: 7,
                delta: 0x0001_0000
            }
        );
        // A count past the body.
        assert!(parse_control(SETTINGS, &[0, 0, 0, 2, 0, 0, 0, 7, 0, 1, 0, 0]).is_err());
        assert_eq!(
            parse_control(SETTINGS, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0]).unwrap(),
            Control::Settings(vec![(7, 0x0001_0000)])
        );
        // SPDY/2's GOAWAY had no status.
        assert_eq!(
            parse_control(GOAWAY, &[0, 0, 0, 9]).unwrap(),
            Control::GoAway {
                last_id: 9,
                status: 0
            }
        );
        assert_eq!(parse_control(42, &[]).unwrap(), Control::Unknown(42));
    }

    #[test]
    fn frames_encode_as_the_draft_says() {
        let f = control(PING, 0, &7u32.to_be_bytes());
        assert_eq!(f, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        assert_eq!(Control::Ping(7).encode(0).unwrap(), f);
        let d = data_frame(5, FLAG_FIN, b"hi");
        assert_eq!(d, [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
        let syn = Control::SynStream {
            id: 3,
            block: b"xy",
        };
        assert_eq!(
            syn.encode(FLAG_FIN).unwrap(),
            [0x80, 3, 0, 1, 1, 0, 0, 12, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, b'x', b'y']
        );
        let rst = Control::RstStream { id: 5, status: 3 };
        assert_eq!(
            rst.encode(0).unwrap(),
            control(RST_STREAM, 0, &[0, 0, 0, 5, 0, 0, 0, 3])
        );
    }

    #[tokio::test]
    async fn typed_control_frames_round_trip_through_the_wire() {
        let frames = [
            Control::SynStream {
                id: 0x7fff_ffff,
                block: b"block",
            },
            Control::SynReply { id: 2, block: b"" },
            Control::RstStream {
                id: 9,
                status: CANCEL,
            },
            Control::Settings(vec![]),
            Control::Settings(vec![(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20), (4, 100)]),
            Control::Ping(u32::MAX),
            Control::GoAway {
                last_id: 11,
                status: 2,
            },
            Control::Headers { id: 1, block: b"h" },
            Control::WindowUpdate {
                id: 0,
                delta: 0x7fff_ffff,
            },
            Control::Unknown(42),
        ];
        for (i, c) in frames.iter().enumerate() {
            let flags = i as u8 & FLAG_FIN;
            let bytes = c.encode(flags).unwrap();
            let mut r = &bytes[..];
            let Some(Frame::Control {
                kind,
                flags: got,
                body,
            }) = read_frame(&mut r).await.unwrap()
            else {
                panic!("{c:?} read back as another frame");
            };
            assert!(r.is_empty(), "{c:?}: the length field covers the body");
            assert_eq!((kind, got), (c.kind(), flags));
            assert_eq!(&parse_control(kind, &body).unwrap(), c);
        }
        let mut r = &data_frame(7, FLAG_FIN, b"data")[..];
        match read_frame(&mut r).await.unwrap() {
            Some(Frame::Data {
                stream: 7,
                flags: FLAG_FIN,
                data,
            }) => assert_eq!(data, b"data"),
            other => panic!("{other:?}"),
        }
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[test]
    fn encoding_masks_reserved_bits_and_refuses_oversized_bodies() {
        let w = Control::WindowUpdate {
            id: 0x8000_0003,
            delta: 0xffff_ffff,
        };
        let bytes = w.encode(0).unwrap();
        assert_eq!(
            parse_control(WINDOW_UPDATE, &bytes[8..]).unwrap(),
            Control::WindowUpdate {
                id: 3,
                delta: 0x7fff_ffff
            }
        );
        let big = vec![0u8; MAX_FRAME];
        assert!(Control::SynReply { id: 1, block: &big }.encode(0).is_err());
        assert!(Control::SynReply {
            id: 1,
            block: &big[4..]
        }
        .encode(0)
        .is_ok());
    }

    #[tokio::test]
    async fn frames_past_the_limit_or_of_another_version_are_refused() {
        let mut huge = control(PING, 0, &[]);
        huge[5..8].copy_from_slice(&[0x40, 0, 1]);
        assert!(read_frame(&mut &huge[..]).await.is_err());
        let mut v2 = control(PING, 0, &[0, 0, 0, 1]);
        v2[1] = 2;
        assert!(read_frame(&mut &v2[..]).await.is_err());
        // A head cut short is an error, not a clean end.
        assert!(read_frame(&mut &v2[..5]).await.is_err());
    }
}
