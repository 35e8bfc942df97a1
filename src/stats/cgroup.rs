//! Reading one cgroup's CPU, memory and pids counters from cgroupfs (v1 or the unified v2),
//! and its pressure stall information from the unified hierarchy.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::psi::{self, Pressure};

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
    /// `cpu.pressure`, `memory.pressure`, `io.pressure`; None where the host has no such file
    /// (no unified hierarchy, PSI disabled) or it does not parse.
    pub cpu_psi: Option<Pressure>,
    pub memory_psi: Option<Pressure>,
    pub io_psi: Option<Pressure>,
}

impl CgroupCounters {
    /// The sum of several cgroups' counters (a pod with no cgroup of its own); the limit and
    /// the pressure (a share of time, which does not add up) are unknown for a sum.
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
    /// The cgroup v2 tree holding the pressure files: the root on a unified host, the
    /// `unified` mount of a hybrid v1 host (runc mirrors each cgroup there), else None.
    pressure_root: Option<PathBuf>,
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
        let unified = root.join("cgroup.controllers").exists();
        let hybrid = root.join("unified");
        let pressure_root = if unified {
            Some(root.to_owned())
        } else if hybrid.join("cgroup.controllers").exists() {
            Some(hybrid)
        } else {
            None
        };
        Cgroups {
            root: root.to_owned(),
            unified,
            pressure_root,
        }
    }

    /// Counters of the cgroup at `path` (as an OCI spec's cgroupsPath names it); None when it
    /// does not exist (the task is gone).
    pub fn read(&self, path: &str) -> Option<CgroupCounters> {
        let rel = path.trim_start_matches('/');
        let mut counters = if self.unified {
            self.read_v2(&self.root.join(rel))
        } else {
            self.read_v1(rel)
        }?;
        if let Some(dir) = self.pressure_root.as_ref().map(|r| r.join(rel)) {
            counters.cpu_psi = read_pressure(&dir.join("cpu.pressure"));
            counters.memory_psi = read_pressure(&dir.join("memory.pressure"));
            counters.io_psi = read_pressure(&dir.join("io.pressure"));
        }
        Some(counters)
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
            ..Default::default()
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
            ..Default::default()
        })
    }
}

/// A file holding one number ("max" and unreadable files are None).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A pressure file, read up to [`psi::MAX_LEN`] + 1 bytes: None when missing, unreadable
/// (EOPNOTSUPP where PSI is disabled at boot) or malformed.
fn read_pressure(path: &Path) -> Option<Pressure> {
    let mut buf = Vec::with_capacity(256);
    std::fs::File::open(path)
        .ok()?
        .take(psi::MAX_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .ok()?;
    psi::parse(&buf)
        .inspect_err(
            |e| tracing::debug!(path = %path.display(), error = %e, "pressure file skipped"),
        )
        .ok()
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

    const PRESSURE: &str = "some avg10=1.50 avg60=0.25 avg300=0.00 total=1200\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";

    #[test]
    fn pressure_comes_from_the_unified_tree_and_is_absent_without_it() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // A hybrid host: v1 controllers plus a v2 mount at unified/ holding the pressure files.
        write(&r.join("cpuacct/k8s.io/c1"), "cpuacct.usage", "1\n");
        let v1 = Cgroups::at(r).read("/k8s.io/c1").unwrap();
        assert_eq!((v1.cpu_psi, v1.memory_psi, v1.io_psi), (None, None, None));
        write(&r.join("unified"), "cgroup.controllers", "\n");
        let u = r.join("unified/k8s.io/c1");
        write(&u, "cpu.pressure", PRESSURE);
        write(&u, "memory.pressure", "garbage\n");
        let c = Cgroups::at(r).read("/k8s.io/c1").unwrap();
        let cpu = c.cpu_psi.unwrap();
        assert_eq!(
            (cpu.some.total_us, cpu.some.avg10, cpu.some.avg60),
            (1200, 150, 25)
        );
        assert_eq!(cpu.full.unwrap().total_us, 7);
        // Malformed or missing: absent, never zeros.
        assert_eq!((c.memory_psi, c.io_psi), (None, None));
    }

    #[test]
    fn pressure_on_a_unified_host() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "cgroup.controllers", "cpu memory io\n");
        let d = r.join("pods/c3");
        write(&d, "cpu.stat", "usage_usec 1\n");
        for f in ["cpu.pressure", "memory.pressure", "io.pressure"] {
            write(&d, f, PRESSURE);
        }
        let c = Cgroups::at(r).read("pods/c3").unwrap();
        assert!(c.cpu_psi.is_some() && c.memory_psi.is_some() && c.io_psi.is_some());
        assert!(CgroupCounters::sum([&c]).unwrap().cpu_psi.is_none());
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
