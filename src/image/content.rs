//! containerd's content store: streaming writes with the digest verified on the way, reads, and
//! the GC labels that tie an image's blobs and snapshots together.

use crate::containerd::rpc;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ImageError;
use crate::containerd::{Containerd, ContainerdError};

/// Largest chunk sent in one Content.Write message.
const CHUNK: usize = 1 << 20;

/// How long reading one (small) blob may take: the image index is rebuilt under a lock while
/// it reads, so a containerd that stops answering must not hold every image update.
pub const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads a whole (small) blob, within [`READ_DEADLINE`].
pub async fn read(
    ctd: &Containerd,
    digest: &str,
    limit: usize,
) -> Result<Vec<u8>, ContainerdError> {
    match tokio::time::timeout(READ_DEADLINE, read_all(ctd, digest, limit)).await {
        Ok(r) => r,
        Err(_) => Err(ContainerdError::Call {
            call: rpc::CONTENT_READ.name,
            status: tonic::Status::deadline_exceeded(format!(
                "reading {digest} took longer than {READ_DEADLINE:?}"
            )),
        }),
    }
}

async fn read_all(
    ctd: &Containerd,
    digest: &str,
    limit: usize,
) -> Result<Vec<u8>, ContainerdError> {
    let mut blob = ctd.read_blob(digest).await?;
    let mut out = Vec::new();
    while let Some(piece) = blob.next().await? {
        out.extend_from_slice(&piece);
        if out.len() > limit {
            return Err(ContainerdError::Call {
                call: rpc::CONTENT_READ.name,
                status: tonic::Status::resource_exhausted(format!(
                    "{digest} is larger than {limit} bytes"
                )),
            });
        }
    }
    Ok(out)
}

/// Sets labels on existing content.
pub async fn set_labels(
    ctd: &Containerd,
    digest: &str,
    labels: &HashMap<String, String>,
) -> Result<(), ContainerdError> {
    if labels.is_empty() {
        return Ok(());
    }
    let req = UpdateRequest {
        info: Some(Info {
            digest: digest.into(),
            labels: labels.clone(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
        }),
    };
    ctd.call(rpc::CONTENT_UPDATE, ctd.content().update(ctd.request(req)))
        .await?;
    Ok(())
}

/// What a write reports back.
pub struct Written {
    /// Bytes actually transferred (0 when the blob was already there).
    pub bytes: u64,
}

/// Whether `digest` is present; when it is, adds whichever of `labels` it lacks.
pub async fn ensure_labels(
    ctd: &Containerd,
    digest: &str,
    labels: &HashMap<String, String>,
) -> Result<bool, ContainerdError> {
    let req = InfoRequest {
        digest: digest.into(),
    };
    let info = match ctd
        .call(rpc::CONTENT_INFO, ctd.content().info(ctd.request(req)))
        .await
    {
        Ok(r) => r.info.unwrap_or_default(),
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    let missing: HashMap<String, String> = labels
        .iter()
        .filter(|(k, v)| info.labels.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    set_labels(ctd, digest, &missing).await?;
    Ok(true)
}

/// Writes a blob under `lease`, streaming what `open` answers and verifying size and digest on
/// the way; content that is already present is only labelled (and `open` never called). On any
/// failure the partial ingest is aborted.
#[allow(clippy::too_many_arguments)]
pub async fn write<S, F, Fut>(
    ctd: &Containerd,
    lease: &str,
    reference: &str,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    open: F,
    stall: Duration,
) -> Result<Written, ImageError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<S, ImageError>>,
{
    let present = ensure_labels(ctd, digest, &labels)
        .await
        .map_err(|source| ImageError::Containerd {
            reference: reference.to_string(),
            step: "checking content",
            source,
        })?;
    if present {
        return Ok(Written { bytes: 0 });
    }
    let data = open().await?;
    // A fresh ingest per attempt: never resume what a failed attempt left half-written.
    let ingest = format!("concord-{digest}-{}", fastrand::u32(..));
    let result = stream_in(
        ctd, lease, reference, &ingest, digest, size, labels, data, stall,
    )
    .await;
    if result.is_err() {
        let req = AbortRequest {
            r#ref: ingest.clone(),
        };
        let _ = ctd
            .call(rpc::CONTENT_ABORT, ctd.content().abort(ctd.request(req)))
            .await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn stream_in<S>(
    ctd: &Containerd,
    lease: &str,
    reference: &str,
    ingest: &str,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    mut data: S,
    stall: Duration,
) -> Result<Written, ImageError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    let mut w = Ingest::open(ctd, lease, reference, ingest, digest, size).await?;
    while let Some(chunk) = next_chunk(&mut data, stall, reference, digest).await? {
        for piece in chunk.chunks(CHUNK) {
            w.write(piece).await?;
        }
    }
    w.verify()?;
    w.commit(labels).await
}

/// The next chunk of a download, or `None` at its end; a download that makes no progress for
/// `stall` is aborted.
async fn next_chunk<S>(
    data: &mut S,
    stall: Duration,
    reference: &str,
    digest: &str,
) -> Result<Option<Bytes>, ImageError>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    match tokio::time::timeout(stall, data.next()).await {
        Err(_) => Err(ImageError::Stalled {
            reference: reference.to_string(),
            step: format!("downloading {digest}"),
            after: stall,
        }),
        Ok(None) => Ok(None),
        Ok(Some(Err(detail))) => Err(ImageError::Unavailable {
            reference: reference.to_string(),
            step: "downloading a blob",
            host: digest.to_string(),
            detail,
        }),
        Ok(Some(Ok(b))) => Ok(Some(b)),
    }
}

/// One ingest's Content.Write stream: the requests sent, containerd's answers, and the size and
/// digest of what went through, checked on the way.
struct Ingest<'a> {
    reference: &'a str,
    ingest: &'a str,
    digest: &'a str,
    size: i64,
    tx: tokio::sync::mpsc::Sender<WriteContentRequest>,
    responses: tonic::Streaming<WriteContentResponse>,
    hasher: Sha256,
    offset: i64,
    transferred: u64,
}

impl<'a> Ingest<'a> {
    /// Opens the write stream under `lease` and waits for the ingest's status.
    async fn open(
        ctd: &Containerd,
        lease: &str,
        reference: &'a str,
        ingest: &'a str,
        digest: &'a str,
        size: i64,
    ) -> Result<Ingest<'a>, ImageError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let req = ctd
            .request_with_lease(ReceiverStream::new(rx), lease)
            .map_err(|s| write_error(reference, s))?;
        // The first message must be queued before the call: containerd answers headers only then.
        let first = write_request(WriteAction::Stat, ingest, digest, size);
        tx.send(first).await.expect("receiver alive");
        let mut client = ctd.content();
        let responses = client
            .write(req)
            .await
            .map_err(|s| write_error(reference, s))?
            .into_inner();
        let mut w = Ingest {
            reference,
            ingest,
            digest,
            size,
            tx,
            responses,
            hasher: Sha256::new(),
            // Start over whatever a previous attempt left in this ingest.
            offset: 0,
            transferred: 0,
        };
        let stat = w.next_response().await?;
        let _ = stat.offset;
        Ok(w)
    }

    /// Sends one piece (at most [`CHUNK`] bytes) and waits for its acknowledgement; refuses to
    /// go past the announced size.
    async fn write(&mut self, piece: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(piece);
        let msg = WriteContentRequest {
            offset: self.offset,
            data: piece.to_vec(),
            ..self.request(WriteAction::Write)
        };
        self.offset += piece.len() as i64;
        self.transferred += piece.len() as u64;
        if self.offset > self.size {
            return Err(ImageError::DigestMismatch {
                reference: self.reference.to_string(),
                what: format!("blob {}", self.digest),
                expected: format!("{} bytes", self.size),
                got: format!("more than {} bytes", self.size),
            });
        }
        self.send(msg).await?;
        self.next_response().await?;
        Ok(())
    }

    /// Whether what went through has the announced size and digest.
    fn verify(&self) -> Result<(), ImageError> {
        let got = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if self.offset != self.size || got != self.digest {
            return Err(ImageError::DigestMismatch {
                reference: self.reference.to_string(),
                what: format!("blob of {} bytes", self.offset),
                expected: format!("{} ({} bytes)", self.digest, self.size),
                got,
            });
        }
        Ok(())
    }

    /// Commits the ingest with `labels`; content another writer committed meanwhile is fine.
    async fn commit(mut self, labels: HashMap<String, String>) -> Result<Written, ImageError> {
        let commit = WriteContentRequest {
            offset: self.size,
            labels,
            ..self.request(WriteAction::Commit)
        };
        self.send(commit).await?;
        match self.responses.next().await {
            Some(Err(status)) if status.code() == tonic::Code::AlreadyExists => {}
            other => {
                self.answer(other)?;
            }
        }
        drop(self.tx);
        Ok(Written {
            bytes: self.transferred,
        })
    }

    fn request(&self, action: WriteAction) -> WriteContentRequest {
        write_request(action, self.ingest, self.digest, self.size)
    }

    async fn send(&self, msg: WriteContentRequest) -> Result<(), ImageError> {
        self.tx.send(msg).await.map_err(|_| {
            write_error(
                self.reference,
                tonic::Status::aborted("write stream closed"),
            )
        })
    }

    async fn next_response(&mut self) -> Result<WriteContentResponse, ImageError> {
        let r = self.responses.next().await;
        self.answer(r)
    }

    /// containerd's answer, or why there is none.
    fn answer(
        &self,
        r: Option<Result<WriteContentResponse, tonic::Status>>,
    ) -> Result<WriteContentResponse, ImageError> {
        match r {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(status)) => Err(write_error(self.reference, status)),
            None => Err(write_error(
                self.reference,
                tonic::Status::aborted("containerd closed the write stream"),
            )),
        }
    }
}

/// A Content.Write message for `ingest`, expecting `digest` of `size` bytes.
fn write_request(
    action: WriteAction,
    ingest: &str,
    digest: &str,
    size: i64,
) -> WriteContentRequest {
    WriteContentRequest {
        action: action as i32,
        r#ref: ingest.to_string(),
        total: size,
        expected: digest.to_string(),
        ..Default::default()
    }
}

fn write_error(reference: &str, status: tonic::Status) -> ImageError {
    ImageError::Containerd {
        reference: reference.to_string(),
        step: "writing content",
        source: ContainerdError::Call {
            call: "Content.Write",
            status,
        },
    }
}

/// Writes bytes already in memory.
pub async fn write_bytes(
    ctd: &Containerd,
    lease: &str,
    reference: &str,
    digest: &str,
    bytes: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<Written, ImageError> {
    let size = bytes.len() as i64;
    let open = || async move {
        Ok(futures::stream::iter(vec![Ok::<_, String>(Bytes::from(
            bytes,
        ))]))
    };
    write(
        ctd,
        lease,
        reference,
        digest,
        size,
        labels,
        open,
        Duration::from_secs(60),
    )
    .await
}
