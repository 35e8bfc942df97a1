//! The streaming server kubelet proxies `kubectl exec`, `attach` and `port-forward` to.
//!
//! Exec, Attach and PortForward validate their request, park it under a random single-use
//! token that expires (`stream_token_ttl_seconds`) and answer `http://<stream_address>/<kind>/
//! <token>`. A client then upgrades that URL to a WebSocket speaking a Kubernetes channel
//! protocol (see [`ws`]); the session runs until the process exits or the client goes away (the
//! exec process is then killed), or it is idle for `stream_idle_timeout_seconds`.
//!
//! A malformed upgrade, an unknown, used or expired token get an HTTP 4xx and start nothing.

pub mod attach;
pub mod client;
pub mod exec;
pub mod link;
pub mod portforward;
pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cri;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::containerd::Containerd;
use crate::journal::JournalHandle;
use crate::metrics::Metrics;

/// A parked request.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Session {
    /// The streams an exec or attach needs.
    fn wanted(&self) -> link::Wanted {
        let (stdin, stdout, stderr, tty) = match self {
            Session::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Session::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Session::PortForward(_) => (false, false, false, false),
        };
        link::Wanted {
            stdin,
            stdout,
            stderr,
            tty,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Session::Exec(_) => "exec",
            Session::Attach(_) => "attach",
            Session::PortForward(_) => "portforward",
        }
    }
}

/// What sessions work with.
pub struct Context {
    pub containerd: Containerd,
    pub journal: JournalHandle,
    /// Where exec FIFOs and held stdin FIFOs are (the containers' state dirs).
    pub layout: crate::state_layout::StateLayout,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    /// The stdin FIFOs concord holds (containers with stdin, no TTY).
    pub attachments: Arc<crate::attach::Attachments>,
}

/// The TLS configuration from a PEM certificate chain and private key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    Ok(Arc::new(config))
}

/// 16 bytes from the kernel's CSPRNG (getrandom(2)), for tokens nobody may guess. Without it
/// there is no token (and no streaming), never a guessable one.
fn unguessable() -> std::io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: the pointer and length describe the unfilled part of `b`.
        let n =
            unsafe { nix::libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(b)
}

/// Longest a write to a streaming client may wait for it to read: past this the client is
/// taken for gone and its session ends (its buffers and process with it).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Connections the streaming server serves at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// A boxed writing half of a connection.
pub type BoxWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The remote-command subprotocols spoken over SPDY, in kubelet's order.
pub const SPDY_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward subprotocol spoken over SPDY.
pub const SPDY_PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The server: its address and the parked requests.
pub struct StreamServer {
    base: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Session, Instant)>>,
    ctx: Arc<Context>,
}

impl StreamServer {
    /// Binds `addr` (port 0: a free one), serving https with `tls`; answers the server and
    /// its task, which ends at `stop`.
    pub async fn bind(
        addr: SocketAddr,
        ttl: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
        ctx: Context,
        stop: CancellationToken,
    ) -> std::io::Result<(Arc<StreamServer>, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let server = Arc::new(StreamServer {
            base: format!("{scheme}://{bound}"),
            ttl,
            tokens: Mutex::new(HashMap::new()),
            ctx: Arc::new(ctx),
        });
        let this = server.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let metrics = server.ctx.metrics.clone();
        metrics.stream_connections_limit.set(MAX_CONNECTIONS as i64);
        let task = tokio::spawn(async move {
            let (mut refused, mut last_warned) = (0u64, None);
            loop {
                let (conn, _) = tokio::select! {
                    c = listener.accept() => match c {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "streaming server accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => return,
                };
                // At most MAX_CONNECTIONS at once (each holds buffers and a task): one more
                // is closed at once rather than queued.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(conn);
                    metrics.stream_connections_refused.inc();
                    // One line per 10 s with the count, not one per connection (a flood of
                    // connections would be a flood of log lines).
                    refused += 1;
                    if last_warned
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(10))
                    {
                        tracing::warn!(
                            max = MAX_CONNECTIONS,
                            refused,
                            "streaming server full: connections refused"
                        );
                        last_warned = Some(std::time::Instant::now());
                        refused = 0;
                    }
                    continue;
                };
                let this = this.clone();
                let acceptor = acceptor.clone();
                let _ = conn.set_nodelay(true);
                // The slot is held by the connection and, through the request, by the
                // session it upgrades to: sessions count against the cap too.
                let slot = Arc::new(Slot::new(slot, &metrics));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |mut req: Request<hyper::body::Incoming>| {
                            let this = this.clone();
                            req.extensions_mut().insert(slot.clone());
                            async move { Ok::<_, std::convert::Infallible>(this.handle(req)) }
                        },
                    );
                    let io: Box<dyn client::Io> = match acceptor {
                        None => Box::new(conn),
                        Some(a) => {
                            match tokio::time::timeout(Duration::from_secs(10), a.accept(conn))
                                .await
                            {
                                Ok(Ok(tls)) => Box::new(tls),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "streaming TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok((server, task))
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Parks `session` under a new token; answers its URL (an error when the kernel has no
    /// randomness to give).
    pub fn register(&self, session: Session) -> std::io::Result<String> {
        let token = hex::encode(unguessable()?);
        let url = format!("{}/{}/{}", self.base, session.kind(), token);
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token, (session, now + self.ttl));
        Ok(url)
    }

    /// The session parked under `token` for `kind`, once: None when unknown, used or expired.
    fn take(&self, kind: &str, token: &str) -> Option<Session> {
        let mut tokens = self.tokens.lock();
        let (session, expires) = tokens.remove(token)?;
        if expires <= Instant::now() || session.kind() != kind {
            return None;
        }
        Some(session)
    }

    fn handle(self: &Arc<Self>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |code: StatusCode, text: &str| {
            let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
            *r.status_mut() = code;
            r
        };
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
            return reply(StatusCode::NOT_FOUND, "no such stream");
        }
        let header = |name: &str| {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let upgrade = header("upgrade").join(",").to_ascii_lowercase();
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
            return reply(
                StatusCode::BAD_REQUEST,
                "a streaming request must be a GET or POST upgrading to websocket or SPDY/3.1",
            );
        }
        if upgrade.contains("spdy/3.1") {
            let offered = header("x-stream-protocol-version");
            return self.upgrade_spdy(req, kind, token, offered);
        }
        let key = header("sec-websocket-key").into_iter().next();
        if req.method() != hyper::Method::GET || !upgrade.contains("websocket") || key.is_none() {
            return reply(
                StatusCode::BAD_REQUEST,
                "a streaming request must upgrade to websocket (Upgrade: websocket, Sec-WebSocket-Key) or SPDY/3.1 (Upgrade: SPDY/3.1)",
            );
        }
        if header("sec-websocket-version").first().map(String::as_str) != Some("13") {
            return reply(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
        }
        let offered = header("sec-websocket-protocol");
        let Some((name, protocol)) = ws::Protocol::negotiate(offered.iter().map(String::as_str))
        else {
            return reply(
                StatusCode::BAD_REQUEST,
                &format!(
                    "none of the offered subprotocols {offered:?} is spoken here: {}",
                    ws::CHANNEL_PROTOCOLS.join(", ")
                ),
            );
        };
        let Some(session) = self.take(kind, token) else {
            return reply(
                StatusCode::NOT_FOUND,
                "unknown, used or expired stream token",
            );
        };
        tracing::debug!(kind, protocol = name, "streaming upgrade to websocket");
        let query = req.uri().query().unwrap_or("").to_string();
        self.on_upgraded(&mut req, session, move |ctx, session, io| async move {
            let kind = session.kind();
            match session {
                Session::PortForward(r) => portforward::run(&ctx, r, protocol, &query, io).await,
                command => {
                    let link = link::ws(io, protocol, ctx.metrics.clone(), kind);
                    run_command(&ctx, command, link).await
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", "websocket".parse().expect("static header"));
        h.insert("connection", "Upgrade".parse().expect("static header"));
        if let Ok(v) = ws::accept_key(&key.unwrap_or_default()).parse() {
            h.insert("sec-websocket-accept", v);
        }
        if !name.is_empty() {
            if let Ok(v) = name.parse() {
                h.insert("sec-websocket-protocol", v);
            }
        }
        r
    }

    /// A SPDY/3.1 upgrade offering the subprotocols `offered` (`X-Stream-Protocol-Version`).
    fn upgrade_spdy(
        self: &Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
        kind: &str,
        token: &str,
        offered: Vec<String>,
    ) -> Response<Full<Bytes>> {
        let supported: &[&str] = if kind == "portforward" {
            &[SPDY_PORTFORWARD_PROTOCOL]
        } else {
            SPDY_COMMAND_PROTOCOLS
        };
        let offered: Vec<String> = offered
            .iter()
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        // The client's first choice the server speaks; none offered: the oldest protocol.
        let chosen = if offered.is_empty() {
            String::new()
        } else {
            match offered.iter().find(|p| supported.contains(&p.as_str())) {
                Some(p) => p.clone(),
                None => {
                    let mut r = Response::new(Full::new(Bytes::from(format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}\n"
                    ))));
                    *r.status_mut() = StatusCode::FORBIDDEN;
                    return r;
                }
            }
        };
        let Some(session) = self.take(kind, token) else {
            let mut r = Response::new(Full::new(Bytes::from(
                "unknown, used or expired stream token\n",
            )));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        };
        let protocol = ws::Protocol::parse(if chosen.is_empty() || kind == "portforward" {
            "channel.k8s.io"
        } else {
            &chosen
        })
        .expect("the SPDY command protocols are channel protocols");
        tracing::debug!(kind, protocol = chosen, "streaming upgrade to SPDY/3.1");
        self.on_upgraded(&mut req, session, move |ctx, session, io| async move {
            let kind = session.kind();
            let (conn, incoming) = spdy::Conn::server(io);
            match session {
                Session::PortForward(r) => portforward::run_spdy(&ctx, r, conn, incoming).await,
                command => {
                    let wanted = command.wanted();
                    let m = ctx.metrics.clone();
                    let link = link::spdy(conn, incoming, protocol, wanted, m, kind).await?;
                    run_command(&ctx, command, link).await
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", "SPDY/3.1".parse().expect("static header"));
        h.insert("connection", "Upgrade".parse().expect("static header"));
        if let Ok(v) = chosen.parse() {
            if !chosen.is_empty() {
                h.insert("x-stream-protocol-version", v);
            }
        }
        r
    }
}

impl StreamServer {
    /// Runs `session` with `run` on the connection `req` upgrades to, counted as open while it
    /// runs.
    fn on_upgraded<F, Fut>(
        &self,
        req: &mut Request<hyper::body::Incoming>,
        session: Session,
        run: F,
    ) where
        F: FnOnce(Arc<Context>, Session, Upgraded) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), SessionError>> + Send,
    {
        let ctx = self.ctx.clone();
        let slot = req.extensions().get::<Arc<Slot>>().cloned();
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let _slot = slot;
            let io = match on_upgrade.await {
                Ok(u) => hyper_util::rt::TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "stream upgrade failed");
                    return;
                }
            };
            let kind = session.kind();
            let _open = OpenSession::new(&ctx.metrics, kind);
            if let Err(e) = run(ctx.clone(), session, io).await {
                tracing::debug!(kind, error = %e, "stream session ended with an error");
            }
        });
    }
}

/// An upgraded connection.
type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Why a session failed.
pub type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// Runs an exec or attach session over `link`.
async fn run_command(
    ctx: &Arc<Context>,
    session: Session,
    link: link::Link,
) -> Result<(), SessionError> {
    match session {
        Session::Exec(r) => exec::run(ctx, r, link).await,
        Session::Attach(r) => attach::run(ctx, r, link).await,
        Session::PortForward(_) => Err("a port-forward is not a command".into()),
    }
}

/// A connection's place under [`MAX_CONNECTIONS`], counted in `concord_stream_connections`
/// while the connection (or the session it upgraded to) holds it.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, metrics: &Arc<Metrics>) -> Slot {
        metrics.stream_connections.inc();
        Slot {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.stream_connections.dec();
    }
}

/// Counts a session as open while it lives.
struct OpenSession {
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl OpenSession {
    fn new(metrics: &Arc<Metrics>, kind: &'static str) -> OpenSession {
        metrics.stream_sessions.with_label_values(&[kind]).inc();
        metrics.streams_open.with_label_values(&[kind]).inc();
        OpenSession {
            metrics: metrics.clone(),
            kind,
        }
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.metrics
            .streams_open
            .with_label_values(&[self.kind])
            .dec();
    }
}

/// One WebSocket session's sending side, shared by its pumps.
pub struct Sender<W> {
    w: tokio::sync::Mutex<W>,
    protocol: ws::Protocol,
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Sender<BoxWrite> {
    /// A WebSocket connection's sending side (shared) and its reader.
    pub fn split<IO>(
        io: IO,
        protocol: ws::Protocol,
        metrics: Arc<Metrics>,
        kind: &'static str,
    ) -> (Arc<Self>, ws::Reader<tokio::io::ReadHalf<IO>>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let tx = Sender::new(Box::new(w) as BoxWrite, protocol, metrics, kind);
        (Arc::new(tx), ws::Reader::from_client(r))
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> Sender<W> {
    pub fn new(w: W, protocol: ws::Protocol, metrics: Arc<Metrics>, kind: &'static str) -> Self {
        Sender {
            w: tokio::sync::Mutex::new(w),
            protocol,
            metrics,
            kind,
        }
    }

    /// `data` on `channel`.
    pub async fn send(&self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        let (op, frame) = self.protocol.encode(channel, data);
        self.metrics
            .stream_bytes
            .with_label_values(&[self.kind, "out"])
            .inc_by(data.len() as u64);
        ws::write_frame(&mut *self.w.lock().await, op, &frame, None).await
    }

    /// The next data message from the client as (channel, data), pings answered and bytes
    /// counted; Err(why) once the client closed the session or went away.
    pub async fn receive<R: tokio::io::AsyncRead + Unpin>(
        &self,
        rx: &mut ws::Reader<R>,
    ) -> Result<(u8, Vec<u8>), &'static str> {
        loop {
            let msg = match rx.next().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return Err("client went away"),
            };
            match msg.op {
                ws::Opcode::Close => return Err("client closed the stream"),
                ws::Opcode::Ping => {
                    let _ = self.control(ws::Opcode::Pong, &msg.data).await;
                }
                ws::Opcode::Text | ws::Opcode::Binary => {
                    if let Some((channel, data)) = self.protocol.decode(&msg.data) {
                        self.metrics
                            .stream_bytes
                            .with_label_values(&[self.kind, "in"])
                            .inc_by(data.len() as u64);
                        return Ok((channel, data));
                    }
                }
                _ => {}
            }
        }
    }

    /// A control frame (close, pong).
    pub async fn control(&self, op: ws::Opcode, data: &[u8]) -> std::io::Result<()> {
        ws::write_frame(&mut *self.w.lock().await, op, data, None).await
    }

    /// A normal close.
    pub async fn close(&self) {
        let _ = self
            .control(ws::Opcode::Close, &1000u16.to_be_bytes())
            .await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut *self.w.lock().await).await;
    }
}
