//! gRPC channels over unix sockets (containerd's socket, concord's own for its CLI and tests).

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

fn endpoint() -> Endpoint {
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::]").connect_timeout(Duration::from_secs(2))
}

fn connector(
    path: &Path,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl std::future::Future<
        Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::UnixStream>>,
    > + Send,
> + Clone
       + Send
       + 'static {
    let path = path.to_path_buf();
    tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    })
}

/// A channel that connects on first use and reconnects by itself after transport errors.
pub fn lazy_channel(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path))
}

/// A channel connected now (an error when nothing listens on `path`).
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint().connect_with_connector(connector(path)).await
}

/// Like [`connect`], with HTTP/2 flow-control windows of `window` bytes: a peer that reads
/// slowly holds the sender back after that much (tests of slow stream consumers).
pub async fn connect_windowed(
    path: &Path,
    window: u32,
) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect_with_connector(connector(path))
        .await
}
