//! The Stream* list RPCs against a client whose message limit the List answer passes: the List
//! fails on the client, the stream delivers every item exactly once over several messages.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{container_config, pod, pod_daemon, remove_pod};
use concord::cri;
use concord::cri::image_service_client::ImageServiceClient;
use concord::cri::runtime_service_client::RuntimeServiceClient;

/// The client's limit: above the server's ~1 MiB batches, below the whole list.
const CLIENT_LIMIT: usize = 2 << 20;
/// Containers and the annotation bytes of each: 50 × 60 KiB ≈ 3 MiB of ListContainers.
const CONTAINERS: usize = 50;
const ANNOTATION_BYTES: usize = 60 << 10;

fn too_large(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_list_what_a_list_cannot_each_item_once() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "bulk").await;
    let channel = d.channel().await.unwrap();
    let mut rt = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(CLIENT_LIMIT);
    let mut images = ImageServiceClient::new(channel).max_decoding_message_size(CLIENT_LIMIT);

    let mut created = HashSet::new();
    for i in 0..CONTAINERS {
        let mut c = container_config(&format!("bulk-{i}"), "busybox", &["true"]);
        // Two annotations per container, each half of the bytes (distinct per container).
        for k in 0..2 {
            let fill = char::from(b'a' + ((i + k) % 26) as u8);
            c.annotations.insert(
                format!("bulk.example/part-{k}"),
                fill.to_string().repeat(ANNOTATION_BYTES / 2),
            );
        }
        created.insert(p.create(&d, c).await.unwrap());
    }

    let err = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap_err();
    assert!(
        too_large(&err),
        "ListContainers past the client's limit: {err:?}"
    );

    let mut stream = rt
        .stream_containers(cri::StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (mut messages, mut seen) = (0, Vec::new());
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a stream message within 30 s")
        .unwrap()
    {
        assert!(!msg.containers.is_empty(), "an empty batch");
        messages += 1;
        seen.extend(msg.containers.into_iter().map(|c| c.id));
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an item sent twice");
    assert_eq!(unique, created);
    assert!(messages >= 3, "{messages} messages for ~3 MiB");

    // Pods: the stream equals the list (which fits here).
    let listed: HashSet<String> = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut pods = rt
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = pods.message().await.unwrap() {
        streamed.extend(msg.pod_sandboxes.into_iter().map(|s| s.id));
    }
    assert_eq!(streamed.len(), listed.len());
    assert_eq!(streamed.into_iter().collect::<HashSet<_>>(), listed);
    assert!(listed.contains(&p.id));

    // Images: the same, busybox and the pause image at least.
    let listed: HashSet<String> = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.id)
        .collect();
    let mut imgs = images
        .stream_images(cri::StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = imgs.message().await.unwrap() {
        streamed.extend(msg.images.into_iter().map(|i| i.id));
    }
    assert!(!listed.is_empty());
    assert_eq!(streamed.len(), listed.len());
    assert_eq!(streamed.into_iter().collect::<HashSet<_>>(), listed);

    remove_pod(&d, &p.id).await;
}
