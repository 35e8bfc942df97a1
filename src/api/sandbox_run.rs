//! RunPodSandbox: validate, reserve the name, record the intent (naming everything it will
//! create), wait for the loop. A retry with the same metadata answers the same id.

use std::time::Duration;

use crate::config::CgroupDriver;
use crate::cri;

use super::{ApiError, Server};
use crate::journal::{sandbox_name, Event, ObjectKey, SandboxDesired};

impl Server {
    pub async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
        deadline: Duration,
    ) -> Result<cri::RunPodSandboxResponse, ApiError> {
        let started = std::time::Instant::now();
        let config = req
            .config
            .ok_or_else(|| ApiError::invalid("config", "required"))?;
        validate(&config, self.config.runtime.cgroup_driver)?;
        if self.config.runtime.handler(&req.runtime_handler).is_none() {
            let known: Vec<&str> = self
                .config
                .runtime
                .handlers
                .keys()
                .map(String::as_str)
                .collect();
            return Err(ApiError::invalid(
                "runtime_handler",
                format!(
                    "unknown handler {:?} (configured: {})",
                    req.runtime_handler,
                    known.join(", ")
                ),
            ));
        }
        let name = sandbox_name(config.metadata.as_ref().expect("validated"));
        let state = self.journal.state();
        let created = !state.sandbox_names.contains_key(&name);
        let (id, generation) = match state.sandbox_names.get(&name).and_then(|id| state.sandboxes.get(id)) {
            // A retry (kubelet gave up waiting, or asks again): the same sandbox.
            Some(rec) if rec.desired == SandboxDesired::Ready => (rec.id.clone(), rec.generation),
            Some(rec) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "pod sandbox name {name:?} is reserved by sandbox {} which is being stopped or removed",
                    rec.id
                )))
            }
            None => {
                let id = super::new_id();
                let host_network = config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.as_ref())
                    .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
                let netns_path = (!host_network).then(|| self.config.netns_dir.join(&id).display().to_string());
                let created_at = super::now_nanos();
                let state = self
                    .record(vec![Event::SandboxRequested {
                        id: id.clone(),
                        config: Box::new(config.clone()),
                        runtime_handler: req.runtime_handler.clone(),
                        netns_path,
                        created_at,
                    }])
                    .await?;
                let g = state.generation(&ObjectKey::Sandbox(id.clone()));
                (id, g)
            }
        };
        let key = ObjectKey::Sandbox(id.clone());
        self.controller.wake(key.clone());
        self.controller
            .wait(&key, generation, deadline)
            .await
            .map_err(|source| ApiError::Converge {
                what: format!("running pod sandbox {name}"),
                source,
            })?;
        if created {
            let handler = &req.runtime_handler;
            self.metrics
                .pod_started(&self.config.runtime, handler, started);
        }
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }
}

fn validate(c: &cri::PodSandboxConfig, driver: CgroupDriver) -> Result<(), ApiError> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| ApiError::invalid("config.metadata", "required"))?;
    for (field, v) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(ApiError::invalid(field, "required"));
        }
        if v.contains('/') || v.contains("..") || v.len() > 253 {
            return Err(ApiError::invalid(
                field,
                format!("{v:?} must not contain '/' or '..' and be at most 253 characters"),
            ));
        }
    }
    crate::network::capabilities::validate(c).map_err(|e| ApiError::invalid(e.field, e.reason))?;
    let parent = c
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    if parent.contains('\0') || parent.split('/').any(|p| p == "..") || parent.len() > 4096 {
        // concord writes under this path (UpdatePodSandboxResources): it stays inside the
        // cgroup tree.
        return Err(ApiError::invalid(
            "config.linux.cgroup_parent",
            format!("{parent:?} must not contain '..' or NUL"),
        ));
    }
    crate::cgroup::check_parent(driver, parent)
        .map_err(|e| ApiError::invalid("config.linux.cgroup_parent", e))?;
    crate::oci::userns::check_pod(c).map_err(|e| ApiError::invalid(e.field, e.reason))?;
    if let Some(sc) = c.linux.as_ref().and_then(|l| l.security_context.as_ref()) {
        use crate::oci::user::check_id;
        const SC: &str = "config.linux.security_context";
        let ids = sc
            .run_as_user
            .iter()
            .map(|v| ("config.linux.security_context.run_as_user", v.value))
            .chain(
                sc.run_as_group
                    .iter()
                    .map(|v| ("config.linux.security_context.run_as_group", v.value)),
            )
            .chain(
                sc.supplemental_groups
                    .iter()
                    .map(|g| ("config.linux.security_context.supplemental_groups", *g)),
            );
        for (field, id) in ids {
            check_id(field, "id", id)?;
        }
        if sc.supplemental_groups.len() > 65536 {
            return Err(ApiError::invalid(
                SC,
                format!(
                    "{} supplemental groups (at most 65536)",
                    sc.supplemental_groups.len()
                ),
            ));
        }
    }
    crate::oci::seccomp::for_sandbox(c)?;
    let size = |m: &std::collections::HashMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    if size(&c.labels) > 256 << 10 {
        return Err(ApiError::invalid("config.labels", "larger than 256 KiB"));
    }
    if size(&c.annotations) > 256 << 10 {
        return Err(ApiError::invalid(
            "config.annotations",
            "larger than 256 KiB",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid pod config naming cgroup parent `parent`.
    fn config(parent: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                namespace: "n".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: parent.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_cgroup_parent_that_leaves_the_tree_is_refused() {
        let fs = CgroupDriver::Cgroupfs;
        assert!(validate(&config("/kubepods/burstable/pod1"), fs).is_ok());
        assert!(validate(&config("kubepods-burstable-pod1.slice"), fs).is_ok());
        for bad in ["/kubepods/../../etc", "..", "/a/\0"] {
            let e = validate(&config(bad), fs).unwrap_err();
            assert!(e.to_string().contains("config.linux.cgroup_parent"), "{e}");
        }
    }

    #[test]
    fn the_systemd_driver_takes_slices_only() {
        let sd = CgroupDriver::Systemd;
        for good in [
            "",
            "kubepods-burstable-pod1.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
        ] {
            assert!(validate(&config(good), sd).is_ok(), "{good:?}");
        }
        for bad in [
            "/kubepods/burstable/pod1",
            "kubepods--pod1.slice",
            "pod.scope",
        ] {
            let e = validate(&config(bad), sd).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("config.linux.cgroup_parent"), "{text}");
            assert!(text.contains("systemd"), "{text}");
            assert!(matches!(e, ApiError::InvalidArgument { .. }), "{e:?}");
        }
    }
}
