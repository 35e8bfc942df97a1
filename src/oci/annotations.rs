//! Which pod and container annotations reach an OCI spec. Runtimes and shims read some
//! annotations as instructions (`org.systemd.property.*` becomes systemd unit properties under
//! runc's systemd driver, `run.oci.*` crun options, `io.katacontainers.*` hypervisor settings:
//! the CVE-2024-3154 class), and pod authors choose annotations freely. So none passes unless
//! the admin allows it per runtime handler (`pod_annotations`, `container_annotations`: glob
//! patterns, as containerd's runtime options); the `io.kubernetes.cri.*` annotations concord sets
//! itself are added after, and win.

use std::collections::{BTreeMap, HashMap};

/// The admin's patterns for one runtime handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough<'a> {
    pub pod: &'a [String],
    pub container: &'a [String],
}

impl<'a> Passthrough<'a> {
    pub fn of(handler: &'a crate::config::RuntimeHandler) -> Passthrough<'a> {
        Passthrough {
            pod: &handler.pod_annotations,
            container: &handler.container_annotations,
        }
    }
}

/// The annotations of `all` that one of `patterns` matches.
pub fn allowed(patterns: &[String], all: &HashMap<String, String>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(k, _)| patterns.iter().any(|p| glob(p.as_bytes(), k.as_bytes())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The pod's CRI annotations (name, namespace, uid), on its sandbox's and its containers' specs.
pub fn insert_pod_identity(
    annotations: &mut BTreeMap<String, String>,
    pod: Option<&crate::cri::PodSandboxMetadata>,
) {
    if let Some(m) = pod {
        annotations.insert("io.kubernetes.cri.sandbox-name".into(), m.name.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            m.namespace.clone(),
        );
        annotations.insert("io.kubernetes.cri.sandbox-uid".into(), m.uid.clone());
    }
}

/// Shell-style match of the whole of `s`: `*` any run of bytes, `?` one byte.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear in practice, no recursion on hostile input.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_keys() {
        let g = |p: &str, s: &str| glob(p.as_bytes(), s.as_bytes());
        assert!(g(
            "io.katacontainers.*",
            "io.katacontainers.config.hypervisor.path"
        ));
        assert!(!g("io.katacontainers.*", "xio.katacontainers.a"));
        assert!(g("*", "anything"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "abbc"));
        assert!(g("*.example.com/*", "team.example.com/owner"));
        assert!(!g("exact", "exactly"));
        assert!(g("", ""));
        assert!(!g("", "x"));
        assert!(!g(&"*a".repeat(30), &"a".repeat(25)));
    }

    #[test]
    fn only_allowed_annotations_pass() {
        let all: HashMap<String, String> = [
            ("org.systemd.property.ExecStartPre", "/bin/evil"),
            ("run.oci.keep_original_groups", "1"),
            ("example.com/team", "a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(allowed(&[], &all).is_empty());
        let ok = allowed(&["example.com/*".to_string()], &all);
        assert_eq!(ok.keys().collect::<Vec<_>>(), vec!["example.com/team"]);
    }
}
