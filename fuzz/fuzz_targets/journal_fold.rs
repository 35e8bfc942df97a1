//! The journal fold, as a property: for any sequence of events (generated from the input over a
//! small pool of ids, so they collide and come out of order), folding all of them equals folding
//! a prefix, snapshotting that state (serialized and read back, as compaction stores it) and
//! folding the rest; every event survives its own encoding; applying never panics.
#![no_main]
use concord::cri;
use concord::journal::{Event, State};
use libfuzzer_sys::fuzz_target;

struct Gen<'a>(&'a [u8]);

impl Gen<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn pick<'s>(&mut self, from: &[&'s str]) -> Option<&'s str> {
        Some(from[self.byte()? as usize % from.len()])
    }
    fn num(&mut self) -> Option<i64> {
        let b = self.byte()?;
        Some(match b % 4 {
            0 => 0,
            1 => i64::MAX,
            2 => -1,
            _ => b as i64 * 1_000_000_007,
        })
    }
}

const SANDBOXES: [&str; 3] = ["s0", "s1", "s2"];
const CONTAINERS: [&str; 3] = ["c0", "c1", "c2"];
const NAMES: [&str; 3] = ["web", "db", ""];

fn resources(n: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares: n * 2,
        memory_limit_in_bytes: n << 20,
        ..Default::default()
    }
}

fn event(g: &mut Gen) -> Option<Event> {
    let s = g.pick(&SANDBOXES)?.to_string();
    let c = g.pick(&CONTAINERS)?.to_string();
    Some(match g.byte()? % 20 {
        0 => Event::PodCidrRequested {
            cidr: g.pick(&["10.0.0.0/24", ""])?.into(),
        },
        1 => Event::SandboxRequested {
            id: s,
            config: Box::new(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: g.pick(&NAMES)?.into(),
                    namespace: "default".into(),
                    uid: g.pick(&["u1", "u2"])?.into(),
                    attempt: g.byte()? as u32 % 2,
                }),
                ..Default::default()
            }),
            runtime_handler: g.pick(&["", "runc"])?.into(),
            netns_path: Some("/var/run/netns/x".into()),
            created_at: g.num()?,
        },
        2 => Event::SandboxNetworkReady {
            id: s,
            ips: vec!["10.0.0.2".into()],
        },
        3 => Event::SandboxStarted {
            id: s,
            pid: g.byte()? as u32,
        },
        4 => Event::SandboxExited { id: s },
        5 => Event::SandboxFailed {
            id: s,
            error: "cni".into(),
        },
        6 => Event::SandboxStopRequested { id: s },
        7 => Event::SandboxStopped { id: s },
        8 => Event::SandboxRemoveRequested { id: s },
        9 => Event::SandboxRemoved { id: s },
        10 => Event::ContainerRequested {
            id: c,
            sandbox_id: s,
            config: Box::new(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: g.pick(&NAMES)?.into(),
                    attempt: g.byte()? as u32 % 2,
                }),
                ..Default::default()
            }),
            image_id: "sha256:aa".into(),
            image_name: "busybox".into(),
            log_path: String::new(),
            created_at: g.num()?,
            image_volumes: match g.byte()? % 2 {
                0 => vec![],
                _ => vec!["sha256:bb".into()],
            },
        },
        11 => Event::ContainerCreated { id: c, user: None },
        12 => Event::ContainerStartRequested { id: c },
        13 => Event::ContainerStarted {
            id: c,
            pid: g.byte()? as u32,
            started_at: g.num()?,
        },
        14 => Event::ContainerExited {
            id: c,
            exit_code: g.byte()? as i32 - 128,
            finished_at: g.num()?,
            reason: "Completed".into(),
            message: String::new(),
        },
        15 => Event::ContainerStopRequested {
            id: c,
            timeout_seconds: g.num()?,
            requested_at: g.num()?,
        },
        16 => Event::ContainerRemoveRequested { id: c },
        17 => Event::ContainerRemoved { id: c },
        18 => Event::SandboxResourcesUpdated {
            id: s,
            overhead: (g.byte()? % 2 == 0).then(|| Box::new(resources(1))),
            resources: Some(Box::new(resources(g.byte()? as i64))),
        },
        _ => Event::ContainerResourcesUpdated {
            id: c,
            resources: Box::new(resources(g.byte()? as i64)),
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut g = Gen(rest);
    let mut events = Vec::new();
    while let Some(e) = event(&mut g) {
        events.push(e);
    }
    let mut all = State::default();
    for (i, e) in events.iter().enumerate() {
        let text = serde_json::to_vec(e).unwrap();
        assert_eq!(&serde_json::from_slice::<Event>(&text).unwrap(), e);
        all.apply(i as u64 + 1, e);
    }
    let k = if events.is_empty() {
        0
    } else {
        cut as usize % (events.len() + 1)
    };
    let mut prefix = State::default();
    for (i, e) in events[..k].iter().enumerate() {
        prefix.apply(i as u64 + 1, e);
    }
    let snapshot = serde_json::to_vec(&prefix).unwrap();
    let mut resumed: State = serde_json::from_slice(&snapshot).unwrap();
    assert_eq!(resumed, prefix);
    for (i, e) in events.iter().enumerate().skip(k) {
        resumed.apply(i as u64 + 1, e);
    }
    assert_eq!(resumed, all);
});
