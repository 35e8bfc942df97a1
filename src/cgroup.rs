//! Where a pod's cgroups go: the one formula the spec builder, the reconcilers and the stats
//! share, in both drivers' forms.
//!
//! - cgroupfs: the spec names a directory, `<parent>/<id>` (`/k8s.io/<id>` without a parent).
//! - systemd: the spec names a unit as runc's systemd driver reads it, `<slice>:<prefix>:<id>`,
//!   the transient scope `<prefix>-<id>.scope` in `<slice>` (containerd's CRI `getCgroupsPath`:
//!   the slice is the last component of the parent the kubelet hands, which may be the slice's
//!   name or its expanded path; `system.slice` without a parent, as runc defaults).
//!
//! The prefix is containerd's, `cri-containerd`: cAdvisor and node tooling that look at the
//! cgroup tree take `cri-containerd-<id>.scope` for a CRI container (cAdvisor's containerd
//! factory extracts the 64-hex id from the last path component; the same name keeps dashboards
//! and alerts written for containerd nodes matching).
//!
//! Stats, OOM detection and the pod-cgroup writes read the cgroupfs directory behind either
//! form ([`dir`]): a slice name expands as systemd nests slices (`a-b-c.slice` lives at
//! `a.slice/a-b.slice/a-b-c.slice`), the same below every v1 controller and in the v2 tree.

use crate::config::CgroupDriver;

/// The parent of a pod's cgroups when its config names none (cgroupfs driver).
pub const DEFAULT_PARENT: &str = "/k8s.io";

/// The slice of a pod's scopes when its config names none (systemd driver; runc's default).
pub const DEFAULT_SLICE: &str = "system.slice";

/// The prefix of a container's scope name (systemd driver): containerd's CRI's.
pub const SCOPE_PREFIX: &str = "cri-containerd";

/// The cgroup path a spec names (`linux.cgroupsPath`) for object `id` (a pause container or a
/// container) of a pod whose config names `parent` ("" for none).
pub fn path(driver: CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = if parent.is_empty() {
                DEFAULT_PARENT
            } else {
                parent
            };
            format!("{}/{}", parent.trim_end_matches('/'), id)
        }
        CgroupDriver::Systemd => format!("{}:{SCOPE_PREFIX}:{id}", slice_of(parent)),
    }
}

/// The slice a systemd-driver parent names: its last path component (`system.slice` for none).
fn slice_of(parent: &str) -> &str {
    match parent.trim_end_matches('/').rsplit('/').next() {
        Some("") | None => DEFAULT_SLICE,
        Some(base) => base,
    }
}

/// The cgroupfs directory (relative to a hierarchy's root, with a leading `/`) of the cgroup
/// path `path` of `driver`'s form; None for a systemd form that names no valid slice.
pub fn dir(driver: CgroupDriver, path: &str) -> Option<String> {
    match driver {
        CgroupDriver::Cgroupfs => Some(format!("/{}", path.trim_start_matches('/'))),
        CgroupDriver::Systemd => {
            let mut parts = path.splitn(3, ':');
            let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
            let slice = if slice.is_empty() {
                DEFAULT_SLICE
            } else {
                slice
            };
            let unit = if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            Some(format!("{}/{unit}", expand_slice(slice).ok()?).replace("//", "/"))
        }
    }
}

/// The pod's own cgroup directory (as [`dir`]) named by its config's `parent`: None when it
/// names none (pods then share the default parent, which is not theirs) or an invalid slice.
pub fn pod_dir(driver: CgroupDriver, parent: &str) -> Option<String> {
    if parent.is_empty() {
        return None;
    }
    match driver {
        CgroupDriver::Cgroupfs => dir(driver, parent),
        CgroupDriver::Systemd => expand_slice(slice_of(parent)).ok(),
    }
}

/// Where systemd puts slice `slice` in the cgroup tree: each `-` separated prefix is a parent
/// slice (`a-b.slice` → `/a.slice/a-b.slice`; `-.slice` is the root). Errors say why the name
/// is not a slice (runc's `ExpandSlice` rules: `.slice` suffix, no `/`, no empty component).
pub fn expand_slice(slice: &str) -> Result<String, String> {
    const SUFFIX: &str = ".slice";
    let Some(name) = slice.strip_suffix(SUFFIX).filter(|n| !n.is_empty()) else {
        return Err(format!(
            "{slice:?} is not a systemd slice name (<name>.slice)"
        ));
    };
    if slice.contains('/') {
        return Err(format!("slice name {slice:?} must not contain '/'"));
    }
    if name == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(format!(
                "slice name {slice:?} has an empty component ('-' leading, trailing or doubled)"
            ));
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(SUFFIX);
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// Checks a pod config's `cgroup_parent` for `driver` (RunPodSandbox); the error says why.
/// systemd: empty, a slice name, or a path whose last component is one (the kubelet's systemd
/// cgroup manager hands the expanded path, e.g. `/kubepods.slice/kubepods-besteffort.slice/
/// kubepods-besteffort-pod<uid>.slice`; as containerd, its last component is the slice).
pub fn check_parent(driver: CgroupDriver, parent: &str) -> Result<(), String> {
    if parent.is_empty() || driver == CgroupDriver::Cgroupfs {
        return Ok(());
    }
    expand_slice(slice_of(parent))
        .map(drop)
        .map_err(|e| format!("{parent:?}: the systemd cgroup driver needs a slice: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::{Cgroupfs, Systemd};

    #[test]
    fn cgroupfs_paths_the_default_parent_and_a_trailing_slash() {
        assert_eq!(path(Cgroupfs, "", "c1"), "/k8s.io/c1");
        assert_eq!(path(Cgroupfs, "/kubepods/pod1/", "c1"), "/kubepods/pod1/c1");
        assert_eq!(
            dir(Cgroupfs, "/kubepods/pod1/c1").unwrap(),
            "/kubepods/pod1/c1"
        );
        assert_eq!(pod_dir(Cgroupfs, "").as_deref(), None);
        assert_eq!(
            pod_dir(Cgroupfs, "/kubepods/pod1").unwrap(),
            "/kubepods/pod1"
        );
    }

    #[test]
    fn systemd_paths_name_the_slice_the_prefix_and_the_id() {
        assert_eq!(
            path(Systemd, "kubepods-burstable-pod1.slice", "c1"),
            "kubepods-burstable-pod1.slice:cri-containerd:c1"
        );
        // The kubelet's systemd manager hands the expanded path: its base is the slice.
        let expanded = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice";
        assert_eq!(
            path(Systemd, expanded, "c1"),
            "kubepods-burstable-pod1.slice:cri-containerd:c1"
        );
        assert_eq!(path(Systemd, "", "c1"), "system.slice:cri-containerd:c1");
    }

    #[test]
    fn slices_expand_as_systemd_nests_them() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        // The kubelet escapes a uid's '-' as '_': one component.
        assert_eq!(
            expand_slice("kubepods-pod12_34.slice").unwrap(),
            "/kubepods.slice/kubepods-pod12_34.slice"
        );
        for bad in [
            "",
            ".slice",
            "kubepods",
            "a.scope",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn systemd_dirs_are_the_scope_in_the_expanded_slice() {
        let p = path(Systemd, "kubepods-burstable-pod1.slice", "c1");
        assert_eq!(
            dir(Systemd, &p).unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope"
        );
        assert_eq!(
            dir(Systemd, &path(Systemd, "", "c1")).unwrap(),
            "/system.slice/cri-containerd-c1.scope"
        );
        assert_eq!(dir(Systemd, "-.slice::c1").unwrap(), "/c1.scope");
        assert_eq!(dir(Systemd, "a--b.slice:p:c1"), None);
        assert_eq!(dir(Systemd, "no-colons"), None);
        assert_eq!(
            pod_dir(Systemd, "/kubepods.slice/kubepods-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-pod1.slice"
        );
        assert_eq!(pod_dir(Systemd, ""), None);
    }

    #[test]
    fn parents_are_checked_for_the_systemd_driver_only() {
        assert!(check_parent(Cgroupfs, "/kubepods/burstable/pod1").is_ok());
        assert!(check_parent(Systemd, "").is_ok());
        assert!(check_parent(Systemd, "kubepods-burstable-pod1.slice").is_ok());
        assert!(check_parent(
            Systemd,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        )
        .is_ok());
        for bad in [
            "/kubepods/burstable/pod1",
            "kubepods--x.slice",
            "pod1.scope",
        ] {
            let e = check_parent(Systemd, bad).unwrap_err();
            assert!(e.contains("systemd"), "{e}");
        }
    }
}
