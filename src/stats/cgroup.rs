//! Reading one cgroup's CPU, memory and pids counters from cgroupfs (v1 or the unified v2).

use std::path::{Path, PathBuf};

/// Counters of one cgroup at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    pub memory_usage: u64,
    /// Usage minus inactive file pages (what the kubelet evicts on).
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The memory limit; None when unlimited.
    pub memory_limit: Option<u64>,
    pub pids: Option<u64>,
}

impl CgroupCounters {
    /// The sum of several cgroups' counters (a pod with no cgroup of its own); the limit is
    /// unknown for a sum.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a CgroupCounters>) -> Option<CgroupCounters> {
        let mut total: Option<CgroupCounters> = None;
        for p in parts {
            let t = total.get_or_insert_with(CgroupCounters::default);
            t.cpu_ns += p.cpu_ns;
            t.memory_usage += p.memory_usage;
            t.working_set += p.working_set;
            t.rss += p.rss;
            t.page_faults += p.page_faults;
            t.major_page_faults += p.major_page_faults;
            t.pids = match (t.pids, p.pids) {
                (a, None) => a,
                (None, b) => b,
                (Some(a), Some(b)) => Some(a + b),
            };
        }
        total
    }
}

/// Where cgroups are mounted and which hierarchy is in use.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    unified: bool,
}

/// A v1 memory limit at or above this is "no limit" (the kernel's page-rounded i64::MAX).
const V1_UNLIMITED: u64 = 1 << 62;

impl Cgroups {
    /// The host's cgroup mount at /sys/fs/cgroup.
    pub fn host() -> Cgroups {
        Cgroups::at(Path::new("/sys/fs/cgroup"))
    }

    /// Cgroups mounted at `root` (v2 when `root/cgroup.controllers` exists).
    pub fn at(root: &Path) -> Cgroups {
        Cgroups {
            root: root.to_owned(),
            unified: root.join("cgroup.controllers").exists(),
        }
    }

    /// Counters of the cgroup at `path` (as an OCI spec's cgroupsPath names it); None when it
    /// does not exist (the task is gone).
    pub fn read(&self, path: &str) -> Option<CgroupCounters> {
        let rel = path.trim_start_matches('/');
        if self.unified {
            self.read_v2(&self.root.join(rel))
        } else {
            self.read_v1(rel)
        }
    }

    fn read_v2(&self, dir: &Path) -> Option<CgroupCounters> {
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let inactive = field(&stat, "inactive_file").unwrap_or(0);
        Some(CgroupCounters {
            cpu_ns: field(&cpu, "usage_usec").unwrap_or(0) * 1000,
            memory_usage: usage,
            working_set: usage.saturating_sub(inactive),
            rss: field(&stat, "anon").unwrap_or(0),
            page_faults: field(&stat, "pgfault").unwrap_or(0),
            major_page_faults: field(&stat, "pgmajfault").unwrap_or(0),
            memory_limit: read_u64(&dir.join("memory.max")),
            pids: read_u64(&dir.join("pids.current")),
        })
    }

    fn read_v1(&self, rel: &str) -> Option<CgroupCounters> {
        // cpuacct is mounted alone or together with cpu, depending on the distribution.
        let cpu_ns = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
            .iter()
            .find_map(|c| read_u64(&self.root.join(c).join(rel).join("cpuacct.usage")));
        let mem = self.root.join("memory").join(rel);
        let usage = read_u64(&mem.join("memory.usage_in_bytes"));
        if cpu_ns.is_none() && usage.is_none() {
            return None;
        }
        let usage = usage.unwrap_or(0);
        let stat = std::fs::read_to_string(mem.join("memory.stat")).unwrap_or_default();
        let inactive = field(&stat, "total_inactive_file").unwrap_or(0);
        Some(CgroupCounters {
            cpu_ns: cpu_ns.unwrap_or(0),
            memory_usage: usage,
            working_set: usage.saturating_sub(inactive),
            rss: field(&stat, "total_rss").unwrap_or(0),
            page_faults: field(&stat, "total_pgfault").unwrap_or(0),
            major_page_faults: field(&stat, "total_pgmajfault").unwrap_or(0),
            memory_limit: read_u64(&mem.join("memory.limit_in_bytes"))
                .filter(|&l| l < V1_UNLIMITED),
            pids: read_u64(&self.root.join("pids").join(rel).join("pids.current")),
        })
    }
}

/// A file holding one number ("max" and unreadable files are None).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed stat file (`key value` per line).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn v1_counters_with_separate_cpuacct_and_no_limit() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cpuacct/k8s.io/c1"), "cpuacct.usage", "123456789\n");
        let mem = r.join("memory/k8s.io/c1");
        write(&mem, "memory.usage_in_bytes", "10485760\n");
        write(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        write(
            &mem,
            "memory.stat",
            "cache 1\nrss 5\ntotal_rss 4096000\ntotal_inactive_file 2097152\ntotal_pgfault 77\ntotal_pgmajfault 3\n",
        );
        write(&r.join("pids/k8s.io/c1"), "pids.current", "2\n");
        let c = Cgroups::at(r).read("/k8s.io/c1").unwrap();
        assert_eq!(c.cpu_ns, 123456789);
        assert_eq!(c.memory_usage, 10485760);
        assert_eq!(c.working_set, 10485760 - 2097152);
        assert_eq!(c.rss, 4096000);
        assert_eq!((c.page_faults, c.major_page_faults), (77, 3));
        assert_eq!(c.memory_limit, None);
        assert_eq!(c.pids, Some(2));
        assert!(Cgroups::at(r).read("/k8s.io/gone").is_none());
    }

    #[test]
    fn v2_counters_with_a_limit() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "cgroup.controllers", "cpu memory pids\n");
        let d = r.join("pods/c2");
        write(
            &d,
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(&d, "memory.current", "8192\n");
        write(&d, "memory.max", "65536\n");
        write(
            &d,
            "memory.stat",
            "anon 4096\nfile 4096\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
        );
        write(&d, "pids.current", "1\n");
        let c = Cgroups::at(r).read("pods/c2").unwrap();
        assert_eq!(c.cpu_ns, 2_500_000);
        assert_eq!((c.memory_usage, c.working_set, c.rss), (8192, 7168, 4096));
        assert_eq!(c.memory_limit, Some(65536));
        assert_eq!(c.pids, Some(1));
        write(&d, "memory.max", "max\n");
        assert_eq!(Cgroups::at(r).read("pods/c2").unwrap().memory_limit, None);
    }

    #[test]
    fn a_sum_adds_counters_and_drops_the_limit() {
        let a = CgroupCounters {
            cpu_ns: 1,
            memory_usage: 10,
            working_set: 5,
            memory_limit: Some(100),
            pids: Some(1),
            ..Default::default()
        };
        let b = CgroupCounters {
            cpu_ns: 2,
            memory_usage: 20,
            working_set: 7,
            pids: None,
            ..Default::default()
        };
        let s = CgroupCounters::sum([&a, &b]).unwrap();
        assert_eq!((s.cpu_ns, s.memory_usage, s.working_set), (3, 30, 12));
        assert_eq!((s.memory_limit, s.pids), (None, Some(1)));
        assert!(CgroupCounters::sum([]).is_none());
    }
}
