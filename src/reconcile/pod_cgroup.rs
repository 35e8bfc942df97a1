//! UpdatePodSandboxResources' side effect: the pod's limits written to its cgroup (the config's
//! `linux.cgroup_parent`) as cgroupfs files, v2 or v1.
//!
//! The kubelet sizes the pod cgroup itself before it calls the RPC, to the containers' sum plus
//! the pod overhead; writing that same sum again is idempotent, and a pod whose cgroup does not
//! exist (or that names none: the shared default parent is not the pod's) is only recorded.

use std::path::{Path, PathBuf};

use crate::cri::LinuxContainerResources;

/// One cgroupfs write: the controller dir (v1: `cpu`, `memory` ...; v2: ""), the file and
/// the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

fn write(controller: &'static str, file: &str, value: impl ToString) -> Write {
    Write {
        controller,
        file: file.into(),
        value: value.to_string(),
    }
}

/// The pod cgroup's resources: the containers' sum plus the overhead (as the kubelet sizes it).
/// A limit stays unset (0) when the sum sets none: the overhead alone limits nothing.
pub fn pod_total(
    overhead: Option<&LinuxContainerResources>,
    resources: Option<&LinuxContainerResources>,
) -> Option<LinuxContainerResources> {
    let mut total = resources?.clone();
    let Some(o) = overhead else {
        return Some(total);
    };
    let add = |a: i64, b: i64| if a > 0 { a.saturating_add(b.max(0)) } else { a };
    total.cpu_shares = add(total.cpu_shares, o.cpu_shares);
    total.memory_limit_in_bytes = add(total.memory_limit_in_bytes, o.memory_limit_in_bytes);
    // Quotas add up over one period (the overhead's, scaled to the pod's when they differ).
    if total.cpu_quota > 0 && o.cpu_quota > 0 {
        let period = if total.cpu_period > 0 {
            total.cpu_period
        } else {
            100_000
        };
        let o_period = if o.cpu_period > 0 {
            o.cpu_period
        } else {
            100_000
        };
        total.cpu_quota = total
            .cpu_quota
            .saturating_add(o.cpu_quota.saturating_mul(period) / o_period);
    }
    Some(total)
}

/// cgroup v2's `cpu.weight` for v1 `cpu.shares` (runc's and the kubelet's formula).
fn cpu_weight(shares: i64) -> u64 {
    let shares = shares.clamp(2, 262_144) as u64;
    1 + ((shares - 2) * 9999) / 262_142
}

/// The writes that give a cgroup `r`'s limits (unset values left alone).
pub fn writes(r: &LinuxContainerResources, unified: bool) -> Vec<Write> {
    let mut out = Vec::new();
    let period = if r.cpu_period > 0 {
        r.cpu_period
    } else {
        100_000
    };
    if unified {
        if r.cpu_shares > 0 {
            out.push(write("", "cpu.weight", cpu_weight(r.cpu_shares)));
        }
        if r.cpu_quota != 0 || r.cpu_period > 0 {
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".into()
            };
            out.push(write("", "cpu.max", format!("{quota} {period}")));
        }
        if r.memory_limit_in_bytes > 0 {
            out.push(write("", "memory.max", r.memory_limit_in_bytes));
        }
    } else {
        if r.cpu_shares > 0 {
            out.push(write("cpu", "cpu.shares", r.cpu_shares));
        }
        if r.cpu_period > 0 {
            out.push(write("cpu", "cpu.cfs_period_us", r.cpu_period));
        }
        if r.cpu_quota != 0 {
            out.push(write("cpu", "cpu.cfs_quota_us", r.cpu_quota.max(-1)));
        }
        if r.memory_limit_in_bytes > 0 {
            out.push(write(
                "memory",
                "memory.limit_in_bytes",
                r.memory_limit_in_bytes,
            ));
        }
    }
    let (cpuset, cpus, mems) = if unified {
        ("", "cpuset.cpus", "cpuset.mems")
    } else {
        ("cpuset", "cpuset.cpus", "cpuset.mems")
    };
    if !r.cpuset_cpus.is_empty() {
        out.push(write(cpuset, cpus, &r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        out.push(write(cpuset, mems, &r.cpuset_mems));
    }
    out
}

/// What applying found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The pod names no cgroup parent, or it sets no limits: nothing to write.
    Nothing,
    /// The pod cgroup does not exist (yet, or any more): recorded only.
    NoCgroup,
    /// These files were written.
    Written(Vec<String>),
}

/// Writes `r` to the cgroup `parent` (cgroupfs path) under `root` (/sys/fs/cgroup).
pub fn apply(root: &Path, parent: &str, r: &LinuxContainerResources) -> std::io::Result<Applied> {
    if parent.is_empty() {
        return Ok(Applied::Nothing);
    }
    // RunPodSandbox refused such a parent; a journal from before that check is not trusted.
    if parent.split('/').any(|p| p == "..") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cgroup parent {parent:?} leaves the cgroup tree"),
        ));
    }
    let unified = root.join("cgroup.controllers").exists();
    let rel = parent.trim_start_matches('/');
    let todo = writes(r, unified);
    if todo.is_empty() {
        return Ok(Applied::Nothing);
    }
    let dir = |controller: &str| -> Option<PathBuf> {
        if unified {
            return Some(root.join(rel));
        }
        // v1 cpu is mounted alone or together with cpuacct, depending on the distribution.
        let names: &[&str] = match controller {
            "cpu" => &["cpu", "cpu,cpuacct", "cpuacct,cpu"],
            other => &[other][..],
        };
        names
            .iter()
            .map(|n| root.join(n).join(rel))
            .find(|d| d.is_dir())
    };
    let mut written = Vec::new();
    for w in &todo {
        let Some(dir) = dir(w.controller).filter(|d| d.is_dir()) else {
            continue;
        };
        let path = dir.join(&w.file);
        std::fs::write(&path, &w.value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        written.push(path.display().to_string());
    }
    Ok(if written.is_empty() {
        Applied::NoCgroup
    } else {
        Applied::Written(written)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(shares: i64, quota: i64, period: i64, memory: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_shares: shares,
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn the_pod_total_adds_the_overhead_to_set_limits_only() {
        let t = pod_total(
            Some(&res(10, 10_000, 100_000, 1 << 20)),
            Some(&res(512, 50_000, 100_000, 0)),
        )
        .unwrap();
        assert_eq!(
            (t.cpu_shares, t.cpu_quota, t.memory_limit_in_bytes),
            (522, 60_000, 0)
        );
        assert_eq!(pod_total(Some(&res(1, 0, 0, 0)), None), None);
        assert_eq!(
            pod_total(None, Some(&res(2, 0, 0, 5))),
            Some(res(2, 0, 0, 5))
        );
    }

    #[test]
    fn v2_and_v1_writes() {
        let r = LinuxContainerResources {
            cpuset_cpus: "0".into(),
            ..res(1024, 50_000, 100_000, 64 << 20)
        };
        let v2: Vec<_> = writes(&r, true)
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect();
        assert_eq!(
            v2,
            [
                ("cpu.weight".into(), "39".into()),
                ("cpu.max".into(), "50000 100000".into()),
                ("memory.max".into(), (64u64 << 20).to_string()),
                ("cpuset.cpus".into(), "0".into()),
            ]
        );
        let v1: Vec<_> = writes(&r, false)
            .into_iter()
            .map(|w| format!("{}/{}={}", w.controller, w.file, w.value))
            .collect();
        assert_eq!(
            v1,
            [
                "cpu/cpu.shares=1024",
                "cpu/cpu.cfs_period_us=100000",
                "cpu/cpu.cfs_quota_us=50000",
                "memory/memory.limit_in_bytes=67108864",
                "cpuset/cpuset.cpus=0",
            ]
        );
        // No quota: unlimited on v2 when a period is given.
        assert_eq!(writes(&res(0, -1, 100_000, 0), true)[0].value, "max 100000");
        assert!(writes(&res(0, 0, 0, 0), true).is_empty());
    }

    #[test]
    fn apply_writes_existing_cgroups_and_records_only_otherwise() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let limits = res(256, 0, 0, 1 << 30);
        assert_eq!(apply(r, "", &limits).unwrap(), Applied::Nothing);
        assert_eq!(
            apply(r, "/kubepods/pod1", &limits).unwrap(),
            Applied::NoCgroup
        );
        std::fs::create_dir_all(r.join("cpu/kubepods/pod1")).unwrap();
        std::fs::create_dir_all(r.join("memory/kubepods/pod1")).unwrap();
        let Applied::Written(files) = apply(r, "/kubepods/pod1", &limits).unwrap() else {
            panic!("nothing written");
        };
        assert_eq!(files.len(), 2);
        let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
        assert_eq!(read("cpu/kubepods/pod1/cpu.shares"), "256");
        assert_eq!(
            read("memory/kubepods/pod1/memory.limit_in_bytes"),
            "1073741824"
        );
        assert!(apply(r, "/kubepods/../../etc", &limits).is_err());
    }
}
