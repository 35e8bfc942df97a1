//! A small client of the streaming server's WebSocket protocols, for tests and the benchmark
//! (kubectl's side: it masks its frames and speaks one channel protocol).

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::ws::{self, Message, Opcode, Protocol};

/// A connected session.
pub struct Client {
    rx: ws::Reader<ReadHalf<TcpStream>>,
    tx: WriteHalf<TcpStream>,
    pub protocol: Protocol,
    /// The subprotocol the server chose ("" when none was offered).
    pub negotiated: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

/// What an upgrade that did not happen answered.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// `http://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

/// Sends `request` (raw HTTP/1.1) to the host of `url`; answers the status, headers and the
/// connection.
async fn exchange(url: &str, request: String) -> std::io::Result<(u16, String, TcpStream)> {
    let (host, _) = split_url(url);
    let mut s = TcpStream::connect(&host).await?;
    s.write_all(request.as_bytes()).await?;
    // The response head, byte by byte up to the blank line (frames may follow it).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head, s))
}

impl Client {
    /// Upgrades `url` offering `protocols` (none: no header).
    pub async fn connect(
        url: &str,
        protocols: &[&str],
    ) -> std::io::Result<Result<Client, Refused>> {
        let (host, path) = split_url(url);
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if !protocols.is_empty() {
            req.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            ));
        }
        req.push_str("\r\n");
        let (status, head, mut s) = exchange(url, req).await?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        if status != 101 {
            let len: usize = header("content-length").parse().unwrap_or(0);
            let mut body = vec![0u8; len.min(64 * 1024)];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut body))
                    .await;
            let body = String::from_utf8_lossy(&body).into_owned();
            return Ok(Err(Refused { status, body }));
        }
        if header("sec-websocket-accept") != ws::accept_key(&key) {
            return Err(std::io::Error::other("wrong Sec-WebSocket-Accept"));
        }
        let negotiated = header("sec-websocket-protocol");
        let protocol = Protocol::parse(if negotiated.is_empty() {
            "channel.k8s.io"
        } else {
            &negotiated
        })
        .ok_or_else(|| std::io::Error::other(format!("server chose {negotiated:?}")))?;
        let (r, w) = tokio::io::split(s);
        Ok(Ok(Client {
            rx: ws::Reader::new(r),
            tx: w,
            protocol,
            negotiated,
        }))
    }

    /// A plain HTTP request to `url` with `headers`: its status (for refusals).
    pub async fn status_of(url: &str, headers: &str) -> std::io::Result<u16> {
        let (host, path) = split_url(url);
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
        Ok(exchange(url, req).await?.0)
    }

    /// `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        let (op, frame) = self.protocol.encode(channel, data);
        ws::write_frame(
            &mut self.tx,
            op,
            &frame,
            Some(fastrand::u32(..).to_le_bytes()),
        )
        .await
    }

    /// v5's close signal for `channel` (stdin EOF).
    pub async fn close_channel(&mut self, channel: u8) -> std::io::Result<()> {
        ws::write_frame(
            &mut self.tx,
            Opcode::Binary,
            &[ws::CLOSE_SIGNAL, channel],
            Some(fastrand::u32(..).to_le_bytes()),
        )
        .await
    }

    /// The next (channel, data) the server sent; None once it closed.
    pub async fn recv(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            match self.rx.next().await? {
                None => return Ok(None),
                Some(Message {
                    op: Opcode::Close, ..
                }) => return Ok(None),
                Some(Message {
                    op: Opcode::Text | Opcode::Binary,
                    data,
                }) => {
                    if let Some(m) = self.protocol.decode(&data) {
                        return Ok(Some(m));
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Everything the server sends until it closes, by channel.
    pub async fn collect(&mut self) -> std::io::Result<std::collections::BTreeMap<u8, Vec<u8>>> {
        let mut out = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        while let Some((c, d)) = self.recv().await? {
            out.entry(c).or_default().extend_from_slice(&d);
        }
        Ok(out)
    }

    /// Closes the connection without a close frame (a client that went away).
    pub async fn abandon(mut self) {
        let _ = self.tx.shutdown().await;
    }
}
