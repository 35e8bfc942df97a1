//! The process's own metrics (`process_*`, the names every Prometheus client library uses), read
//! from /proc/self at each scrape. The prometheus crate's collector counts CPU in whole seconds,
//! which makes `rate(process_cpu_seconds_total[1m])` of a mostly idle daemon read 0; this one
//! keeps the clock ticks' resolution.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

/// Collects `process_*` from /proc/self.
pub struct ProcessCollector {
    cpu: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_memory: IntGauge,
    resident_memory: IntGauge,
    start_time: Gauge,
    threads: IntGauge,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).unwrap();
        let c = ProcessCollector {
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "User and system CPU time the concord process spent, in seconds",
            )
            .unwrap(),
            open_fds: gauge(
                "process_open_fds",
                "File descriptors the concord process has open",
            ),
            max_fds: gauge(
                "process_max_fds",
                "The concord process's limit of open file descriptors (soft RLIMIT_NOFILE)",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size of the concord process, in bytes",
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory (RSS) of the concord process, in bytes",
            ),
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Unix time the concord process started, in seconds",
            )
            .unwrap(),
            threads: gauge("process_threads", "OS threads of the concord process"),
        };
        if let (Ok(boot), Ok(stat)) = (procfs::boot_time_secs(), myself_stat()) {
            let ticks = procfs::ticks_per_second() as f64;
            c.start_time
                .set(boot as f64 + stat.starttime as f64 / ticks);
        }
        c
    }

    fn gauges(&self) -> [&IntGauge; 5] {
        [
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.threads,
        ]
    }

    /// Reads /proc/self into the metrics (what cannot be read keeps its last value).
    fn refresh(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(n as i64);
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                self.max_fds.set(max as i64);
            }
        }
        if let Ok(stat) = me.stat() {
            self.virtual_memory.set(stat.vsize as i64);
            self.resident_memory
                .set((stat.rss * procfs::page_size()) as i64);
            self.threads.set(stat.num_threads);
            let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
            let past = self.cpu.get();
            if cpu > past {
                self.cpu.inc_by(cpu - past);
            }
        }
    }
}

fn myself_stat() -> procfs::ProcResult<procfs::process::Stat> {
    procfs::process::Process::myself()?.stat()
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut out = self.cpu.desc();
        out.extend(self.start_time.desc());
        out.extend(self.gauges().into_iter().flat_map(|g| g.desc()));
        out
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut out = self.cpu.collect();
        out.extend(self.start_time.collect());
        out.extend(self.gauges().into_iter().flat_map(|g| g.collect()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let c = ProcessCollector::new();
        c.refresh();
        assert!(c.resident_memory.get() > 1 << 20);
        assert!(c.virtual_memory.get() >= c.resident_memory.get());
        assert!(c.open_fds.get() >= 3 && c.max_fds.get() >= c.open_fds.get());
        assert!(c.threads.get() >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = c.start_time.get();
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
        // Sub-second CPU time is kept (the clock tick is 10 ms): spinning until the counter
        // moves moves it by less than a second, where whole seconds would move it by 0 or 1.
        // (The total itself can be a whole number of seconds: once it was exactly 1.)
        let before = c.cpu.get();
        let spin = std::time::Instant::now();
        while c.cpu.get() == before && spin.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                std::hint::black_box(0u64);
            }
            c.refresh();
        }
        let moved = c.cpu.get() - before;
        assert!(moved > 0.0 && moved < 1.0, "{before} -> {}", c.cpu.get());
        assert_eq!(c.collect().len(), 7);
    }
}
