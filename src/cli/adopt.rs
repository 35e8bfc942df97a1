//! `concord adopt`: the way from containerd's CRI plugin to concord (remove what it left, see
//! `concord::adopt`), and `--reverse`, the way back (every pod concord runs stopped and removed
//! through its own CRI, so its addresses, ports and network namespaces are released before
//! containerd's CRI takes the node again).

use concord::config::Config;

use super::client::{runtime_client, Target};

/// Removes containerd's CRI leftovers and prints what went.
pub async fn forward(config: &Config) -> anyhow::Result<()> {
    let report = concord::adopt::adopt(config).await?;
    for id in &report.containers {
        println!("removed container {id}");
    }
    for (id, pod, netns) in &report.sandboxes {
        println!("removed sandbox {id} ({pod}); CNI DEL done, netns {netns} removed");
    }
    for id in &report.foreign {
        eprintln!("left alone: container {id} (not made by containerd's CRI nor concord)");
    }
    println!(
        "{} sandboxes and {} containers of containerd's CRI removed; {} of concord's left as they are",
        report.sandboxes.len(),
        report.containers.len(),
        report.concords
    );
    Ok(())
}

/// Stops and removes every pod of a running concord (its containers with it).
pub async fn reverse(target: &Target) -> anyhow::Result<()> {
    use concord::cri;
    let mut client = runtime_client(target).await?;
    let items = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .items;
    let n = items.len();
    for p in items {
        let id = p.id;
        let name = p.metadata.map(|m| format!("{}/{}", m.namespace, m.name));
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .and(
                client
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await,
            )
            .map_err(|s| anyhow::anyhow!("pod {id}: {}", s.message()))?;
        println!("removed pod {id} ({})", name.unwrap_or_default());
    }
    println!("{n} pods removed; stop concord, then start containerd's CRI plugin");
    Ok(())
}
