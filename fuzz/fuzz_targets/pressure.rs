//! The cgroup pressure file parser: never panics on any bytes; what it accepts has averages of
//! at most 100 % and a `some` line, and printing it back the kernel's way parses to the same.
#![no_main]
use concord::stats::psi::{parse, Pressure, PsiLine, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fn line(kind: &str, l: &PsiLine) -> String {
    let pct = |v: u32| format!("{}.{:02}", v / 100, v % 100);
    format!(
        "{kind} avg10={} avg60={} avg300={} total={}\n",
        pct(l.avg10),
        pct(l.avg60),
        pct(l.avg300),
        l.total_us
    )
}

fn print(p: &Pressure) -> String {
    let mut s = line("some", &p.some);
    if let Some(f) = &p.full {
        s += &line("full", f);
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_LEN);
    for l in [Some(&p.some), p.full.as_ref()].into_iter().flatten() {
        assert!(
            l.avg10 <= 10_000 && l.avg60 <= 10_000 && l.avg300 <= 10_000,
            "{p:?}"
        );
    }
    assert_eq!(parse(print(&p).as_bytes()), Ok(p));
});
