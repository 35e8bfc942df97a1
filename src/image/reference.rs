//! Image references, normalised the way docker and containerd do:
//! `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;

/// Registry host of unqualified references.
pub const DEFAULT_DOMAIN: &str = "docker.io";

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
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        check_domain(&domain).map_err(|r| err(&r))?;
        check_path(&path).map_err(|r| err(&r))?;
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

/// Checks `sha256:<64 hex>` (and other algorithms with a hex or base64url encoded part).
pub fn check_digest(d: &str) -> Result<(), String> {
    let (algo, hex) = d.split_once(':').ok_or("digest needs algorithm:encoded")?;
    if algo.is_empty()
        || !algo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
    {
        return Err("invalid digest algorithm".into());
    }
    if algo == "sha256"
        && (hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    {
        return Err("a sha256 digest needs 64 lowercase hex characters".into());
    }
    if hex.is_empty() {
        return Err("empty digest".into());
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("invalid port in registry host {d:?}"));
        }
    }
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {d:?}"))
    }
}

fn check_path(p: &str) -> Result<(), String> {
    for comp in p.split('/') {
        let ok = !comp.is_empty()
            && comp
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && comp
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && comp
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!("invalid repository path component {comp:?} (lowercase letters, digits and . _ - only)"));
        }
    }
    Ok(())
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
}
