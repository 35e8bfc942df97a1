//! Image references, normalised the way docker and containerd do:
//! `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;

/// Registry host of unqualified references.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// The registry host docker once used, the same as [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";

/// The longest `domain/path`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a reference is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

/// A normalised reference: domain, repository path, and a tag and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/busybox`.
    pub path: String,
    /// Tag, when given (or `latest` when neither tag nor digest was).
    pub tag: Option<String>,
    /// Digest (`sha256:<hex>`), when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or is too long"));
        }
        if s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err(
                "a 64-character hex string is an image id, not a repository name",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|r| err(&r))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(err("invalid tag"));
            }
        }
        if name.is_empty() {
            return Err(err("no repository name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        check_domain(&domain).map_err(|r| err(&r))?;
        check_path(&path).map_err(|r| err(&r))?;
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(err("the repository name is longer than 255 characters"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `repo:tag`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.repository()))
    }

    /// `repo@digest` for a given digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks a digest as go-digest does: `algorithm:encoded` with a supported algorithm (sha256,
/// sha384, sha512) and its length of lowercase hex.
pub fn check_digest(d: &str) -> Result<(), String> {
    let (algo, hex) = d.split_once(':').ok_or("digest needs algorithm:encoded")?;
    let algo_ok = algo.split(['-', '_', '+', '.']).all(|c| {
        c.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && c.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if !algo_ok {
        return Err("invalid digest algorithm".into());
    }
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algo:?}")),
    };
    if hex.len() != len || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "a {algo} digest needs {len} lowercase hex characters"
        ));
    }
    Ok(())
}

/// Checks a registry host: DNS labels (letters, digits, inner '-') joined by '.', or an IPv6
/// address in brackets; then an optional port.
fn check_domain(d: &str) -> Result<(), String> {
    let bad = || format!("invalid registry host {d:?}");
    let (host_ok, port) = match d.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip_ok = !ip.is_empty() && ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
            match after {
                "" => (ip_ok, None),
                _ => (ip_ok, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        }
        None => {
            let (host, port) = match d.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (d, None),
            };
            let label_ok = |l: &str| {
                l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && l.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && l.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
            };
            (host.split('.').all(label_ok), port)
        }
    };
    if !host_ok {
        return Err(bad());
    }
    // Distribution takes any digits; a port that cannot exist is refused here.
    match port {
        Some(p) if !p.bytes().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err() => {
            Err(format!("invalid port in registry host {d:?}"))
        }
        _ => Ok(()),
    }
}

/// Checks the repository path: components of lowercase letters and digits, separated inside
/// by one '.', one or two '_', or any number of '-'.
fn check_path(p: &str) -> Result<(), String> {
    for comp in p.split('/') {
        if !component_ok(comp) {
            return Err(format!("invalid repository path component {comp:?} (lowercase letters and digits, separated by . _ __ or dashes)"));
        }
    }
    Ok(())
}

fn component_ok(comp: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let seps: Vec<&str> = comp.split(alnum).filter(|s| !s.is_empty()).collect();
    comp.chars().next().is_some_and(alnum)
        && comp.chars().last().is_some_and(alnum)
        && seps
            .iter()
            .all(|s| matches!(*s, "." | "_" | "__") || s.chars().all(|c| c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_names_are_normalised() {
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            Reference::parse("busybox:1.36").unwrap().to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            Reference::parse("user/app").unwrap().to_string(),
            "docker.io/user/app:latest"
        );
        assert_eq!(
            Reference::parse("registry.k8s.io/pause:3.9")
                .unwrap()
                .to_string(),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a/b").unwrap().to_string(),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(
            Reference::parse("localhost/x:1").unwrap().domain,
            "localhost"
        );
    }

    #[test]
    fn digests_and_tags_combine() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), D);
        let r = Reference::parse(&format!("quay.io/a/b:v1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), D);
        assert_eq!(r.with_digest(D), format!("quay.io/a/b@{D}"));
    }

    #[test]
    fn malformed_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "upper/CASE",
            "busybox:",
            "busybox@sha256:123",
            "a b",
            "busy box",
            "-x",
            "x:tag with space",
            "host:99999/x",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid image reference"),
                "{bad}: {e}"
            );
        }
    }

    const F64: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// Vectors from distribution/reference (reference_test.go `TestReferenceParse`,
    /// normalize_test.go `TestValidateReferenceName`, `TestValidateRemoteName`,
    /// `TestParseRepositoryInfo`, `TestNormalizedSplitHostname`, `TestParseAnyReference`), read
    /// the way `ParseNormalizedNamed` + `TagNameOnly` (containerd's CRI) read them: each input
    /// and its normalised form, or None when it is refused.
    fn distribution_vectors() -> Vec<(String, Option<String>)> {
        let f64 = F64;
        let f128 = format!("sha512:{}", "f".repeat(128));
        let hex64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";
        let long = "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_".repeat(4);
        let ok = |i: &str, o: &str| (i.to_string(), Some(o.to_string()));
        let no = |i: &str| (i.to_string(), None);
        vec![
            ok("test_com", "docker.io/library/test_com:latest"),
            ok("test.com:tag", "docker.io/library/test.com:tag"),
            ok("test.com:5000", "docker.io/library/test.com:5000"),
            ok("test.com/repo:tag", "test.com/repo:tag"),
            ok("test:5000/repo", "test:5000/repo:latest"),
            ok("test:5000/repo:tag", "test:5000/repo:tag"),
            ok(&format!("test:5000/repo@{f64}"), &format!("test:5000/repo@{f64}")),
            ok(&format!("test:5000/repo:tag@{f64}"), &format!("test:5000/repo:tag@{f64}")),
            no(""),
            no(":justtag"),
            no(&format!("@{f64}")),
            no("repo@sha256:ffffffffffffffffffffffffffffffffff"),
            no(&format!("validname@invaliddigest:{}", &f64[7..])),
            no("Uppercase:tag"),
            no("test:5000/Uppercase/lowercase:tag"),
            ok("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase"),
            no(&format!("{}a:tag", "a/".repeat(128))),
            // 255 characters unnormalised; docker.io/ makes it too long.
            no(&format!("{}a:tag-puts-this-over-max", "a/".repeat(127))),
            ok(&format!("a.b/{}a", "a/".repeat(125)), &format!("a.b/{}a:latest", "a/".repeat(125))),
            no(&format!("a.b/{}a", "a/".repeat(126))),
            no("aa/asdf$$^/aa"),
            ok("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux:latest"),
            ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
            ok("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io/test.example.com/my-app:test.example.com"),
            ok("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com"),
            ok(&format!("xn--7o8h.com/myimage:xn--7o8h.com@{f128}"), &format!("xn--7o8h.com/myimage:xn--7o8h.com@{f128}")),
            ok("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080"),
            ok("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
            ok("192.168.1.1", "docker.io/library/192.168.1.1:latest"),
            ok("192.168.1.1:tag", "docker.io/library/192.168.1.1:tag"),
            ok("192.168.1.1/repo", "192.168.1.1/repo:latest"),
            ok("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050"),
            no("[2001:db8::1]"),
            no("[2001:db8::1]:5000"),
            no("[2001:db8::1]:tag"),
            ok("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest"),
            ok("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag"),
            ok(&format!("[2001:db8::1]:5000/repo:tag@{f64}"), &format!("[2001:db8::1]:5000/repo:tag@{f64}")),
            ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo:latest"),
            ok("[::1]:5000/repo", "[::1]:5000/repo:latest"),
            no("[fe80::1%eth0]:5000/repo"),
            no("[fe80::1%@invalidzone]:5000/repo"),
            no("[2001:db8:3:4::192.0.2.33]:5000/debian"),
            no("fc00::1:5000/debian"),
            // normalize_test.go
            ok("docker/docker", "docker.io/docker/docker:latest"),
            ok("library/debian", "docker.io/library/debian:latest"),
            ok("docker.io/debian", "docker.io/library/debian:latest"),
            ok("index.docker.io/docker/docker", "docker.io/docker/docker:latest"),
            ok("index.docker.io/debian", "docker.io/library/debian:latest"),
            ok("127.0.0.1:5000/library/debian", "127.0.0.1:5000/library/debian:latest"),
            ok("192.168.0.1:80", "docker.io/library/192.168.0.1:80"),
            ok("192.168.0.1:8/debian", "192.168.0.1:8/debian:latest"),
            ok("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest"),
            ok(&format!("docker.io/{hex64}"), &format!("docker.io/library/{hex64}:latest")),
            ok("Docker/docker", "Docker/docker:latest"),
            ok("DOCKER/docker", "DOCKER/docker:latest"),
            ok("localhost/x", "localhost/x:latest"),
            no("https://github.com/docker/docker"),
            no("docker/Docker"),
            no("-docker"),
            no("-docker/docker"),
            no("-docker.io/docker/docker"),
            no("docker///docker"),
            no("docker.io/docker/Docker"),
            no("[fc00::1]"),
            no("[fc00::1]:5000"),
            no(hex64),
            ok("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest"),
            ok("docker---rules/docker", "docker.io/docker---rules/docker:latest"),
            ok("d/docker", "docker.io/d/docker:latest"),
            ok("jess/t", "docker.io/jess/t:latest"),
            ok("dock__er/docker", "docker.io/dock__er/docker:latest"),
            no("docker-/docker"),
            no("-docker-/docker"),
            no("____/____"),
            no("_docker/_docker"),
            no("dock..er/docker"),
            no("dock_.er/docker"),
            no("dock-.er/docker"),
            no("dock___er/docker"),
            no("docker/"),
            no(&format!("{long}/docker")),
            ok("library/foo/bar", "docker.io/library/foo/bar:latest"),
            ok("Foo/bar", "Foo/bar:latest"),
            ok(
                "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
                "docker.io/library/busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
            ),
            ok(&format!("{hex64}:tag"), &format!("docker.io/library/{hex64}:tag")),
            ok(&hex64[..63], &format!("docker.io/library/{}:latest", &hex64[..63])),
            no("busybox:-foo"),
            no(&format!("busybox:{}", "t".repeat(129))),
            ok(&format!("busybox:{}", "t".repeat(128)), &format!("docker.io/library/busybox:{}", "t".repeat(128))),
            no("busybox@foo"),
            no(&format!("busybox@sha256:{}", "F".repeat(64))),
        ]
    }

    #[test]
    fn distribution_reference_vectors_parse_as_docker_normalises_them() {
        for (input, want) in distribution_vectors() {
            let got = Reference::parse(&input).map(|r| r.to_string());
            match (&got, &want) {
                (Ok(g), Some(w)) => assert_eq!(g, w, "{input}"),
                (Err(e), None) => assert!(e.to_string().contains("invalid image reference")),
                _ => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
