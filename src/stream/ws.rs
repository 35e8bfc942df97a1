//! WebSocket (RFC 6455) as kubelet's clients speak it to a streaming server: the handshake's
//! accept key, frames (server frames unmasked, client frames masked), and the Kubernetes channel
//! protocols on top: `channel.k8s.io` and its versions (one channel byte, then data, in binary
//! messages) and the `base64.` ones (an ASCII channel digit, then base64 data, in text messages).

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The RFC 6455 GUID appended to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest message accepted from a client (frames are reassembled up to this; clients send
/// stdin and port-forward data in pieces of tens of KiB).
pub const MAX_MESSAGE: usize = 4 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The channel protocols concord speaks, best first.
pub const CHANNEL_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// One negotiated channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// 1 for `channel.k8s.io`, else the `vN.` number.
    pub version: u8,
    pub base64: bool,
}

impl Protocol {
    /// The protocol named `name` (one of [`CHANNEL_PROTOCOLS`]).
    pub fn parse(name: &str) -> Option<Protocol> {
        if !CHANNEL_PROTOCOLS.contains(&name) {
            return None;
        }
        let base64 = name.contains("base64.");
        let version = name
            .strip_prefix('v')
            .and_then(|r| r.split('.').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Some(Protocol { version, base64 })
    }

    /// The first of the client's offered protocols (comma-separated headers) concord speaks;
    /// with none offered, plain `channel.k8s.io`.
    pub fn negotiate<'a>(
        offered: impl Iterator<Item = &'a str>,
    ) -> Option<(&'static str, Protocol)> {
        let offered: Vec<&str> = offered
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            return Some(("", Protocol::parse("channel.k8s.io")?));
        }
        CHANNEL_PROTOCOLS
            .iter()
            .find(|p| offered.contains(p))
            .and_then(|p| Some((*p, Protocol::parse(p)?)))
    }

    /// The frame carrying `data` on `channel`.
    pub fn encode(&self, channel: u8, data: &[u8]) -> (Opcode, Vec<u8>) {
        if self.base64 {
            let mut v = vec![b'0' + channel];
            v.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            (Opcode::Text, v)
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            (Opcode::Binary, v)
        }
    }

    /// A client message as (channel, data); None for an empty or undecodable one. v5's close
    /// signal comes out as channel [`CLOSE_SIGNAL`] with the closed channel as its data.
    pub fn decode(&self, msg: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&first, rest) = msg.split_first()?;
        if self.version >= 5 && first == CLOSE_SIGNAL {
            return Some((CLOSE_SIGNAL, rest.to_vec()));
        }
        if self.base64 {
            let channel = first.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((channel, data))
        } else {
            Some((first, rest.to_vec()))
        }
    }
}

/// v5's "close this channel" message marker.
pub const CLOSE_SIGNAL: u8 = 255;

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }
    fn of(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }
}

/// Writes one unfragmented frame; `mask` (clients must mask) with that key.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    op: Opcode,
    data: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(14);
    head.push(0x80 | op.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    match data.len() {
        n if n < 126 => head.push(m | n as u8),
        n if n <= 0xffff => {
            head.push(m | 126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(m | 127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut frame = head;
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(data),
    }
    // A client that reads nothing for this long is gone.
    let write = async {
        w.write_all(&frame).await?;
        w.flush().await
    };
    tokio::time::timeout(super::WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for too long",
            )
        })?
}

/// A whole message: data messages reassembled from their fragments; control frames as they
/// come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: Opcode,
    pub data: Vec<u8>,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads messages from one side of a connection. Control frames may arrive between the
/// fragments of a data message; the fragments read so far are kept across calls.
pub struct Reader<R> {
    inner: R,
    partial: Option<Message>,
    /// The peer is a client: its frames must be masked (RFC 6455 5.1).
    masked_only: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of a server's frames (unmasked).
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            partial: None,
            masked_only: false,
        }
    }

    /// A reader of a client's frames: an unmasked one ends the connection.
    pub fn from_client(inner: R) -> Reader<R> {
        Reader {
            inner,
            partial: None,
            masked_only: true,
        }
    }

    /// The next message (None at EOF). Frames the RFC forbids end the connection: reserved
    /// bits set (no extension was agreed), an unmasked client frame, a control frame that is
    /// fragmented or longer than 125 bytes, a length past the message limit.
    pub async fn next(&mut self) -> std::io::Result<Option<Message>> {
        let r = &mut self.inner;
        loop {
            let mut head = [0u8; 2];
            match r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && self.partial.is_none() =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            let fin = head[0] & 0x80 != 0;
            if head[0] & 0x70 != 0 {
                return Err(invalid("websocket frame with reserved bits set"));
            }
            let op =
                Opcode::of(head[0] & 0x0f).ok_or_else(|| invalid("unknown websocket opcode"))?;
            let masked = head[1] & 0x80 != 0;
            if self.masked_only && !masked {
                return Err(invalid("unmasked websocket frame from a client"));
            }
            let control = matches!(op, Opcode::Close | Opcode::Ping | Opcode::Pong);
            if control && (!fin || head[1] & 0x7f > 125) {
                return Err(invalid("fragmented or long websocket control frame"));
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    r.read_exact(&mut b).await?;
                    u16::from_be_bytes(b) as u64
                }
                127 => {
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b).await?;
                    u64::from_be_bytes(b)
                }
                n => n as u64,
            };
            let so_far = self.partial.as_ref().map_or(0, |m| m.data.len()) as u64;
            if len.saturating_add(so_far) > MAX_MESSAGE as u64 {
                return Err(invalid("websocket message too large"));
            }
            let mut key = [0u8; 4];
            if masked {
                r.read_exact(&mut key).await?;
            }
            let mut data = vec![0u8; len as usize];
            r.read_exact(&mut data).await?;
            if masked {
                for (i, b) in data.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            match op {
                Opcode::Close | Opcode::Ping | Opcode::Pong => {
                    return Ok(Some(Message { op, data }));
                }
                Opcode::Continuation => match &mut self.partial {
                    Some(m) => m.data.extend_from_slice(&data),
                    None => return Err(invalid("continuation without a message")),
                },
                Opcode::Text | Opcode::Binary => {
                    if self.partial.is_some() {
                        return Err(invalid("new message inside a fragmented one"));
                    }
                    self.partial = Some(Message { op, data });
                }
            }
            if fin {
                return Ok(self.partial.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn negotiation_prefers_the_newest_offered() {
        let (name, p) = Protocol::negotiate(
            ["channel.k8s.io, v4.channel.k8s.io", "v5.channel.k8s.io"].into_iter(),
        )
        .unwrap();
        assert_eq!((name, p.version, p.base64), ("v5.channel.k8s.io", 5, false));
        let (name, p) = Protocol::negotiate(["base64.channel.k8s.io"].into_iter()).unwrap();
        assert_eq!(
            (name, p.version, p.base64),
            ("base64.channel.k8s.io", 1, true)
        );
        assert!(Protocol::negotiate(["v9.bogus"].into_iter()).is_none());
        assert_eq!(Protocol::negotiate([].into_iter()).unwrap().1.version, 1);
    }

    #[test]
    fn channel_messages_round_trip_in_both_codings() {
        for name in CHANNEL_PROTOCOLS {
            let p = Protocol::parse(name).unwrap();
            let (op, frame) = p.encode(2, b"hello\0");
            assert_eq!(op == Opcode::Text, p.base64);
            assert_eq!(p.decode(&frame), Some((2, b"hello\0".to_vec())));
        }
        let v5 = Protocol::parse("v5.channel.k8s.io").unwrap();
        assert_eq!(v5.decode(&[255, 0]), Some((CLOSE_SIGNAL, vec![0])));
    }

    #[tokio::test]
    async fn frames_round_trip_masked_fragmented_and_long() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let long = vec![7u8; 70_000];
        write_frame(&mut a, Opcode::Binary, &long, Some([1, 2, 3, 4]))
            .await
            .unwrap();
        // A fragmented text message with a ping in between.
        a.write_all(&[0x01, 0x03, b'a', b'b', b'c']).await.unwrap();
        write_frame(&mut a, Opcode::Ping, b"p", None).await.unwrap();
        a.write_all(&[0x80, 0x02, b'd', b'e']).await.unwrap();
        drop(a);
        let mut r = Reader::new(&mut b);
        let m = r.next().await.unwrap().unwrap();
        assert_eq!((m.op, m.data.len()), (Opcode::Binary, 70_000));
        assert!(m.data.iter().all(|&x| x == 7));
        // The ping between the fragments comes first, then the whole text message.
        let m = r.next().await.unwrap().unwrap();
        assert_eq!(
            m,
            Message {
                op: Opcode::Ping,
                data: b"p".to_vec()
            }
        );
        let m = r.next().await.unwrap().unwrap();
        assert_eq!(
            m,
            Message {
                op: Opcode::Text,
                data: b"abcde".to_vec()
            }
        );
        assert!(r.next().await.unwrap().is_none());
    }

    /// Frames the RFC forbids end the connection with an error, never a panic or a huge
    /// allocation.
    #[tokio::test]
    async fn forbidden_frames_are_refused() {
        let masked = |b: &[u8]| {
            let mut v = b.to_vec();
            v[1] |= 0x80;
            v.extend_from_slice(&[0, 0, 0, 0]);
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "reserved bits",
                masked(&[0x82 | 0x40, 0x01])
                    .into_iter()
                    .chain([b'x'])
                    .collect(),
            ),
            ("unmasked", vec![0x82, 0x01, b'x']),
            ("fragmented ping", masked(&[0x09, 0x00])),
            ("long ping", {
                let mut v = masked(&[0x89, 126]);
                v.splice(2..2, [0u8, 200]);
                v
            }),
            // A 64-bit length that would overflow a sum with the fragments so far.
            ("huge length", {
                let mut v = vec![0x02, 0x80 | 0x01, 0, 0, 0, 0, b'a'];
                v.extend([0x00, 0x80 | 127]);
                v.extend(u64::MAX.to_be_bytes());
                v.extend([0, 0, 0, 0]);
                v
            }),
        ];
        for (what, bytes) in cases {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            a.write_all(&bytes).await.unwrap();
            drop(a);
            let mut r = Reader::from_client(&mut b);
            let got = r.next().await;
            assert!(got.is_err(), "{what}: {got:?}");
        }
    }
}
