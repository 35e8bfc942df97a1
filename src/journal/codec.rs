//! The journal's on-disk encoding (schema 2), owned by concord.
//!
//! Events and the snapshot are JSON of concord's own types ([`super::Event`], [`super::State`]).
//! The CRI messages they carry (pod and container configs, resources) are stored as their
//! protobuf encoding, base64 in a JSON string: the wire format every CRI version shares, so a
//! newer api.proto (a new field) changes nothing on disk and an older journal still decodes.
//! Never serde of a codegen's structs.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

/// `#[serde(with = "cri_bytes")]` for a CRI message field (or a `Box` of one).
pub mod cri_bytes {
    use super::*;

    pub fn serialize<M: prost::Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec()))
    }

    pub fn deserialize<'de, M, D>(d: D) -> Result<M, D::Error>
    where
        M: prost::Message + Default,
        D: Deserializer<'de>,
    {
        use serde::de::Error;
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| D::Error::custom(format!("CRI message: not base64: {e}")))?;
        M::decode(bytes.as_slice())
            .map_err(|e| D::Error::custom(format!("CRI message: not protobuf: {e}")))
    }
}

/// `#[serde(default, with = "cri_bytes_opt")]` for an optional CRI message field: absent or
/// null when None, else as [`cri_bytes`].
pub mod cri_bytes_opt {
    use super::*;

    pub fn serialize<M: prost::Message, S: Serializer>(
        m: &Option<M>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => cri_bytes::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, M, D>(d: D) -> Result<Option<M>, D::Error>
    where
        M: prost::Message + Default,
        D: Deserializer<'de>,
    {
        #[derive(Deserialize)]
        struct Wrap<M: prost::Message + Default>(#[serde(with = "cri_bytes")] M);
        Ok(Option::<Wrap<M>>::deserialize(d)?.map(|w| w.0))
    }
}

/// Schema 1 (concord 0.1 until the CRI proto became concord's own): the CRI messages were serde
/// JSON of the k8s-cri 0.11 crate's structs. Upgrading rewrites each of them, in the JSON tree,
/// to schema 2's protobuf string; the rest of the tree is concord's own and unchanged. k8s-cri
/// 0.11.0 is kept (pinned) only as this decoder.
pub mod schema1 {
    use base64::Engine;
    use prost::Message;
    use serde_json::Value;

    /// Which CRI message a JSON object holds.
    #[derive(Clone, Copy)]
    enum Kind {
        Sandbox,
        Container,
        Resources,
    }

    fn to_bytes(kind: Kind, v: Value) -> Result<Value, String> {
        let bytes = match kind {
            Kind::Sandbox => serde_json::from_value::<k8s_cri::v1::PodSandboxConfig>(v)
                .map(|m| m.encode_to_vec()),
            Kind::Container => {
                serde_json::from_value::<k8s_cri::v1::ContainerConfig>(v).map(|m| m.encode_to_vec())
            }
            Kind::Resources => serde_json::from_value::<k8s_cri::v1::LinuxContainerResources>(v)
                .map(|m| m.encode_to_vec()),
        }
        .map_err(|e| format!("schema-1 CRI message does not decode: {e}"))?;
        Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ))
    }

    fn rewrite(obj: &mut Value, field: &str, kind: Kind) -> Result<(), String> {
        if let Some(slot) = obj.get_mut(field) {
            *slot = to_bytes(kind, slot.take())?;
        }
        Ok(())
    }

    /// A schema-1 event as schema 2 JSON.
    pub fn upgrade_event(bytes: &[u8]) -> Result<Value, String> {
        let mut v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match v.get("type").and_then(Value::as_str) {
            Some("SandboxRequested") => rewrite(&mut v, "config", Kind::Sandbox)?,
            Some("ContainerRequested") => rewrite(&mut v, "config", Kind::Container)?,
            Some("ContainerResourcesUpdated") => rewrite(&mut v, "resources", Kind::Resources)?,
            _ => {}
        }
        Ok(v)
    }

    /// A schema-1 snapshot as schema 2 JSON.
    pub fn upgrade_state(bytes: &[u8]) -> Result<Value, String> {
        let mut v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for (table, kind) in [
            ("sandboxes", Kind::Sandbox),
            ("containers", Kind::Container),
        ] {
            if let Some(Value::Object(records)) = v.get_mut(table) {
                for record in records.values_mut() {
                    rewrite(record, "config", kind)?;
                }
            }
        }
        Ok(v)
    }
}
