//! Where the concord process itself lives: its cgroup and its oom_score_adj, as the original
//! cri-containerd could set them at start.

use std::path::{Path, PathBuf};

/// Why the process could not be placed as configured.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Creating the cgroup or joining it failed.
    #[error("cannot place concord in cgroup {cgroup:?}: {file}: {source}")]
    Cgroup {
        cgroup: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No cgroup filesystem was found to join.
    #[error("cannot place concord in cgroup {cgroup:?}: no cgroup hierarchy found under {root}")]
    NoHierarchy { cgroup: String, root: PathBuf },
    /// The kernel refused the oom_score_adj.
    #[error("cannot set concord's oom_score_adj to {value}: {source}{hint}")]
    OomScoreAdj {
        value: i32,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Moves this process into `cgroup` (a path below the cgroup root), creating it, in every
/// hierarchy (cgroup v1) or in the unified one (v2).
pub fn join_cgroup(cgroup: &str, root: &Path) -> Result<(), ProcessError> {
    let rel = cgroup.trim_start_matches('/');
    let pid = std::process::id().to_string();
    let err = |file: PathBuf, source| ProcessError::Cgroup {
        cgroup: cgroup.to_string(),
        file,
        source,
    };
    let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_owned()]
    } else {
        let entries = std::fs::read_dir(root).map_err(|e| err(root.to_owned(), e))?;
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists())
            .collect()
    };
    if hierarchies.is_empty() {
        return Err(ProcessError::NoHierarchy {
            cgroup: cgroup.to_string(),
            root: root.to_owned(),
        });
    }
    for h in hierarchies {
        let mut dir = h.clone();
        for part in Path::new(rel).components() {
            let parent = dir.clone();
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).map_err(|e| err(dir.clone(), e))?;
                inherit_cpuset(&parent, &dir).map_err(|e| err(dir.clone(), e))?;
            }
        }
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|e| err(procs.clone(), e))?;
    }
    Ok(())
}

/// A new cgroup v1 cpuset starts with no CPUs and no memory nodes and refuses tasks until given
/// some: copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> std::io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(file);
        if !mine.exists() {
            continue;
        }
        if std::fs::read_to_string(&mine)?.trim().is_empty() {
            std::fs::write(&mine, std::fs::read_to_string(parent.join(file))?.trim())?;
        }
    }
    Ok(())
}

/// Sets this process's oom_score_adj.
pub fn set_oom_score_adj(value: i32) -> Result<(), ProcessError> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string()).map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
            " (lowering it needs CAP_SYS_RESOURCE, which this host does not grant; \
             choose a value at or above the current one or leave oom_score_adj unset)"
        } else {
            ""
        };
        ProcessError::OomScoreAdj {
            value,
            hint,
            source,
        }
    })
}

/// This process's current oom_score_adj.
pub fn oom_score_adj() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_a_cgroup_in_a_fake_v2_root_writes_our_pid() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory").unwrap();
        join_cgroup("/concord.slice/concord", root.path()).unwrap();
        let procs = root.path().join("concord.slice/concord/cgroup.procs");
        assert_eq!(
            std::fs::read_to_string(procs).unwrap(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn no_hierarchy_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let err = join_cgroup("x", root.path()).unwrap_err();
        assert!(err.to_string().contains("no cgroup hierarchy"), "{err}");
    }
}
