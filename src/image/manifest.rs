//! OCI and Docker image manifests, indexes and configs, and choosing the node's platform.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What the registry is asked to send, most preferred first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The platform an index entry is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// Where manifest `digest` sits in the index (0 when it is not there): the GC label that ties
    /// the index to it names this position.
    pub fn position_of(&self, digest: &str) -> usize {
        self.manifests
            .iter()
            .position(|d| d.digest == digest)
            .unwrap_or(0)
    }
}

/// A single-platform image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config concord uses (the raw JSON is kept beside it).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// The runtime defaults an image declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Paths the image declares as volumes (the values are empty objects).
    #[serde(default)]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The image's labels (copied onto its containers, as containerd's CRI does).
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// The layers' uncompressed digests.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Whether `d` is `<algorithm>:<hex>` of a digest concord verifies (sha256, sha512): digests
/// become URL paths and file names, so anything else is refused before use.
pub fn valid_digest(d: &str) -> bool {
    let hex_of = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match d.split_once(':') {
        Some(("sha256", h)) => hex_of(h, 64),
        Some(("sha512", h)) => hex_of(h, 128),
        _ => false,
    }
}

fn check_descriptor(d: &Descriptor) -> Result<(), String> {
    if !valid_digest(&d.digest) {
        return Err(format!(
            "descriptor digest {:?} is not a sha256 or sha512 digest",
            d.digest
        ));
    }
    if d.size < 0 {
        return Err(format!("descriptor {} has a negative size", d.digest));
    }
    Ok(())
}

/// Parses a manifest or index; the media type comes from the document, else the transport
/// (Content-Type / descriptor), else its shape (Docker v2 manifests may lack `mediaType`).
pub fn parse_document(bytes: &[u8], hint: &str) -> Result<(Document, String), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let declared = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let media = if !declared.is_empty() {
        declared.to_string()
    } else if !hint.is_empty() && hint != "application/json" && hint != "application/octet-stream" {
        hint.to_string()
    } else if v.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else if v.get("config").is_some() && v.get("layers").is_some() {
        OCI_MANIFEST.to_string()
    } else {
        return Err("neither an image index nor an image manifest".into());
    };
    match media.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let i: Index = serde_json::from_value(v).map_err(|e| format!("bad index: {e}"))?;
            i.manifests.iter().try_for_each(check_descriptor)?;
            Ok((Document::Index(i), media))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest =
                serde_json::from_value(v).map_err(|e| format!("bad manifest: {e}"))?;
            std::iter::once(&m.config)
                .chain(&m.layers)
                .try_for_each(check_descriptor)?;
            if m.schema_version != 2 {
                return Err(format!(
                    "manifest schema version {} is not supported",
                    m.schema_version
                ));
            }
            Ok((Document::Manifest(m), media))
        }
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => {
            Err("Docker schema 1 manifests are not supported".into())
        }
        other => Err(format!("unsupported manifest media type {other:?}")),
    }
}

/// The platform concord runs containers for.
pub fn node_platform() -> Platform {
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: variant.map(Into::into),
    }
}

/// Picks the index entry for `want`: same os and architecture, the exact variant preferred,
/// an entry without a variant accepted.
pub fn choose_manifest<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == want.variant.as_ref())
        .or_else(|| {
            candidates
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
        })
        .or_else(|| candidates.first())
        .copied()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Chain ids of a layer stack: `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
    }

    #[test]
    fn docker_manifest_without_media_type_is_recognised_by_shape() {
        let doc = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{}","size":1}},"layers":[]}}"#,
            "c".repeat(64)
        );
        let doc = doc.as_bytes();
        let (d, media) = parse_document(doc, "").unwrap();
        assert!(matches!(d, Document::Manifest(_)));
        assert_eq!(media, OCI_MANIFEST);
        let (_, media) = parse_document(doc, DOCKER_MANIFEST).unwrap();
        assert_eq!(media, DOCKER_MANIFEST);
    }

    #[test]
    fn the_node_platform_is_chosen_from_an_index() {
        let index: Index = serde_json::from_str(
            r#"{"manifests":[
                {"mediaType":"x","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
                {"mediaType":"x","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux"}},
                {"mediaType":"x","digest":"sha256:win","size":1,"platform":{"architecture":"amd64","os":"windows"}}
            ]}"#,
        )
        .unwrap();
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(choose_manifest(&index, &amd).unwrap().digest, "sha256:amd");
        let arm = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(choose_manifest(&index, &arm).unwrap().digest, "sha256:arm");
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(choose_manifest(&index, &s390).is_none());
    }

    #[test]
    fn schema1_is_refused() {
        for bad in [
            "../../etc/passwd",
            "sha256:abc",
            "sha256:../x",
            "md5:00",
            "SHA256:",
        ] {
            let doc = format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{bad}","size":1}},"layers":[]}}"#
            );
            let e = parse_document(doc.as_bytes(), OCI_MANIFEST).unwrap_err();
            assert!(e.contains("digest"), "{bad}: {e}");
        }
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}", "A".repeat(64))));
        let e = parse_document(
            br#"{"schemaVersion":1}"#,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        .unwrap_err();
        assert!(e.contains("schema 1"), "{e}");
    }
}
