//! A small client of the streaming server's WebSocket protocols, for tests and the benchmark
//! (kubectl's side: it masks its frames and speaks one channel protocol).

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::spdy;
use super::ws::{self, Message, Opcode, Protocol};

/// A connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// A connected WebSocket session.
pub struct Client {
    rx: ws::Reader<ReadHalf<BoxIo>>,
    tx: WriteHalf<BoxIo>,
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

/// `http(s)://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

/// Sends `request` (raw HTTP/1.1) to the host of `url`; answers the status, headers and the
/// connection.
async fn exchange(url: &str, request: String) -> std::io::Result<(u16, String, BoxIo)> {
    let (host, _) = split_url(url);
    let mut s = connect(url, &host).await?;
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

/// Connects to `host` (TLS for an https `url`, trusting [`trust`]'s roots).
async fn connect(url: &str, host: &str) -> std::io::Result<BoxIo> {
    let tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    if !url.starts_with("https://") {
        return Ok(Box::new(tcp));
    }
    let config = TLS
        .get()
        .ok_or_else(|| std::io::Error::other("an https URL needs client::trust first"))?;
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let name = rustls::pki_types::ServerName::try_from(name.trim_matches(['[', ']']).to_string())
        .map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

static TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Trusts the PEM certificates in `ca` for https URLs (once per process).
pub fn trust(ca: &[u8]) -> std::io::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let _ = TLS.set(std::sync::Arc::new(config));
    Ok(())
}

/// The response header `name` in `head`.
fn response_header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The body of a refusal.
async fn refusal(status: u16, head: &str, s: &mut BoxIo) -> Refused {
    let len: usize = response_header(head, "content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; len.min(64 * 1024)];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut body)).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    Refused { status, body }
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
        let header = |name: &str| response_header(&head, name);
        if status != 101 {
            return Ok(Err(refusal(status, &head, &mut s).await));
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

/// A SPDY/3.1 connection to the streaming server, as kubectl makes it.
pub struct SpdyClient {
    pub conn: spdy::Conn,
    /// The subprotocol the server chose (`X-Stream-Protocol-Version`; "" when none).
    pub negotiated: String,
}

impl SpdyClient {
    /// Upgrades `url` (POST, as kubelet forwards kubectl's request) offering `protocols`.
    pub async fn connect(
        url: &str,
        protocols: &[&str],
    ) -> std::io::Result<Result<SpdyClient, Refused>> {
        let (host, path) = split_url(url);
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
        );
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("\r\n");
        let (status, head, mut s) = exchange(url, req).await?;
        if status != 101 {
            return Ok(Err(refusal(status, &head, &mut s).await));
        }
        let (conn, _incoming) = spdy::Conn::client(s);
        Ok(Ok(SpdyClient {
            conn,
            negotiated: response_header(&head, "x-stream-protocol-version"),
        }))
    }

    /// Opens a stream with `headers`.
    pub async fn open(&self, headers: &[(&str, &str)]) -> std::io::Result<spdy::Stream> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.conn.open(headers, false).await
    }
}

/// A remote command (exec or attach) over SPDY: the streams kubectl opens, error first.
pub struct SpdyCommand {
    pub client: SpdyClient,
    pub error: spdy::Stream,
    pub stdin: Option<spdy::Stream>,
    pub stdout: Option<spdy::Stream>,
    pub stderr: Option<spdy::Stream>,
    pub resize: Option<spdy::Stream>,
}

/// What a remote command printed and its error stream.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: String,
}

impl SpdyCommand {
    /// Connects to `url` offering `protocols` and opens the streams for stdin, stdout,
    /// stderr (not with a TTY) and resize (with a TTY).
    pub async fn start(
        url: &str,
        protocols: &[&str],
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> std::io::Result<Result<SpdyCommand, Refused>> {
        let client = match SpdyClient::connect(url, protocols).await? {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let error = client.open(&[("streamType", "error")]).await?;
        // The server does not write to the error stream's client half.
        error.writer().finish().await?;
        let open = |on: bool, kind: &'static str| {
            let client = &client;
            async move {
                if on {
                    client.open(&[("streamType", kind)]).await.map(Some)
                } else {
                    Ok(None)
                }
            }
        };
        let stdin = open(stdin, "stdin").await?;
        let stdout = open(stdout, "stdout").await?;
        let stderr = open(stderr && !tty, "stderr").await?;
        let resize = open(tty, "resize").await?;
        for s in [&stdout, &stderr].into_iter().flatten() {
            s.writer().finish().await?;
        }
        Ok(Ok(SpdyCommand {
            client,
            error,
            stdin,
            stdout,
            stderr,
            resize,
        }))
    }

    /// Writes to the command's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> std::io::Result<()> {
        match &self.stdin {
            Some(s) => s.writer().write(data).await,
            None => Err(std::io::Error::other("no stdin stream")),
        }
    }

    /// Ends the command's stdin.
    pub async fn close_stdin(&self) -> std::io::Result<()> {
        match &self.stdin {
            Some(s) => s.writer().finish().await,
            None => Ok(()),
        }
    }

    /// Sends a terminal size.
    pub async fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        match &self.resize {
            Some(s) => {
                let size = serde_json::json!({"Width": width, "Height": height}).to_string();
                s.writer().write(size.as_bytes()).await
            }
            None => Err(std::io::Error::other("no resize stream")),
        }
    }

    /// Reads stdout, stderr and the error stream to their ends, then closes the connection.
    pub async fn finish(mut self) -> Outcome {
        let (stdout, stderr, error) = tokio::join!(
            read_all(self.stdout.as_mut()),
            read_all(self.stderr.as_mut()),
            self.error.read_to_end()
        );
        self.client.conn.close().await;
        Outcome {
            stdout,
            stderr,
            error: String::from_utf8_lossy(&error).into_owned(),
        }
    }

    /// Closes the connection at once (a client that went away).
    pub async fn abandon(self) {
        self.client.conn.close().await;
    }
}

async fn read_all(s: Option<&mut spdy::Stream>) -> Vec<u8> {
    match s {
        Some(s) => s.read_to_end().await,
        None => Vec::new(),
    }
}
