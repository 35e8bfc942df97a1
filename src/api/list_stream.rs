//! The Stream* list RPCs of CRI 1.36 (KEP-5825, kubelet's CRIListStreaming): the answer of the
//! matching List RPC, sent as a server stream of batches so that a node whose list passes gRPC's
//! message size limit is still listed. Each item is in exactly one batch, a batch has at least
//! one item (an empty list is an empty stream), and the stream ends after the last batch.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use super::{ApiError, Server};
use crate::cri;

/// The batches of one Stream* answer.
pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Encoded bytes a batch aims at: far below the 4 MiB a gRPC client accepts by default (and
/// kubelet's 16 MiB). One item larger than this is a batch of its own.
pub const BATCH_BYTES: usize = 1 << 20;

/// `items` in batches of about `budget` encoded bytes, each wrapped by `wrap`.
pub fn batches<I: prost::Message>(items: Vec<I>, budget: usize) -> Vec<Vec<I>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for item in items {
        // The item's length-delimited field: a tag, a length varint, the bytes.
        let len = item.encoded_len();
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !batch.is_empty() && size + cost > budget {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += cost;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn stream<I, R>(items: Vec<I>, wrap: fn(Vec<I>) -> R) -> ListStream<R>
where
    I: prost::Message + 'static,
    R: Send + 'static,
{
    let batches = batches(items, BATCH_BYTES).into_iter().map(wrap).map(Ok);
    Box::pin(futures::stream::iter(batches.collect::<Vec<_>>()))
}

impl Server {
    pub async fn stream_pod_sandboxes(
        &self,
        req: cri::StreamPodSandboxesRequest,
    ) -> Result<ListStream<cri::StreamPodSandboxesResponse>, ApiError> {
        let filter = req.filter;
        let list = self
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await?;
        Ok(stream(list.items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        }))
    }

    pub async fn stream_containers(
        &self,
        req: cri::StreamContainersRequest,
    ) -> Result<ListStream<cri::StreamContainersResponse>, ApiError> {
        let filter = req.filter;
        let list = self
            .list_containers(cri::ListContainersRequest { filter })
            .await?;
        Ok(stream(list.into_containers(), |containers| {
            cri::StreamContainersResponse { containers }
        }))
    }

    pub async fn stream_container_stats(
        &self,
        req: cri::StreamContainerStatsRequest,
    ) -> Result<ListStream<cri::StreamContainerStatsResponse>, ApiError> {
        let filter = req.filter;
        let list = self
            .list_container_stats(cri::ListContainerStatsRequest { filter })
            .await?;
        Ok(stream(list.stats, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        }))
    }

    pub async fn stream_pod_sandbox_stats(
        &self,
        req: cri::StreamPodSandboxStatsRequest,
    ) -> Result<ListStream<cri::StreamPodSandboxStatsResponse>, ApiError> {
        let filter = req.filter;
        let list = self
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter })
            .await?;
        Ok(stream(list.stats, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        }))
    }

    pub async fn stream_pod_sandbox_metrics(
        &self,
        _req: cri::StreamPodSandboxMetricsRequest,
    ) -> Result<ListStream<cri::StreamPodSandboxMetricsResponse>, ApiError> {
        let list = self
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await?;
        Ok(stream(list.pod_metrics, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        }))
    }

    pub async fn stream_images(
        &self,
        req: cri::StreamImagesRequest,
    ) -> Result<ListStream<cri::StreamImagesResponse>, ApiError> {
        let filter = req.filter;
        let list = self.list_images(cri::ListImagesRequest { filter }).await?;
        Ok(stream(list.images, |images| cri::StreamImagesResponse {
            images,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn image(n: usize) -> cri::Image {
        cri::Image {
            id: format!("sha256:{n:064}"),
            size: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn every_item_is_in_exactly_one_batch_within_the_budget() {
        let items: Vec<_> = (0..1000).map(image).collect();
        let one = items[0].encoded_len() + 2; // every item is this long
        let out = batches(items.clone(), one * 10);
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|b| !b.is_empty() && b.len() <= 10));
        assert_eq!(out.concat(), items);
        let whole = cri::ListImagesResponse {
            images: items.clone(),
        };
        assert!(out.iter().all(|b| {
            let r = cri::StreamImagesResponse { images: b.clone() };
            prost::Message::encoded_len(&r) <= one * 10
        }));
        assert!(prost::Message::encoded_len(&whole) > one * 10);
    }

    #[test]
    fn an_empty_list_is_an_empty_stream_and_a_big_item_a_batch_alone() {
        assert!(batches(Vec::<cri::Image>::new(), 100).is_empty());
        let out = batches(vec![image(1), image(2)], 10);
        assert_eq!(out.len(), 2);
    }
}
