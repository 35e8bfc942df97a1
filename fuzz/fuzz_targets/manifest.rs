//! Registry documents: manifests, indexes and image configs from a hostile registry or
//! archive. Parsing never panics; a parsed index always yields a platform choice that is one of
//! its entries; a config's layers give one chain id each.
#![no_main]
use concord::image::manifest::{
    chain_ids, choose_manifest, node_platform, parse_document, Document, ImageConfig, Platform,
};
use libfuzzer_sys::fuzz_target;

const HINTS: [&str; 5] = [
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, doc)) = data.split_first() else {
        return;
    };
    let hint = HINTS[pick as usize % HINTS.len()];
    if let Ok((Document::Index(index), _)) = parse_document(doc, hint) {
        for want in [
            node_platform(),
            Platform {
                architecture: "arm".into(),
                os: "linux".into(),
                variant: Some("v7".into()),
            },
        ] {
            if let Some(d) = choose_manifest(&index, &want) {
                assert!(index.manifests.iter().any(|m| std::ptr::eq(m, d)));
                let p = d
                    .platform
                    .as_ref()
                    .expect("a chosen entry names its platform");
                assert_eq!((&p.os, &p.architecture), (&want.os, &want.architecture));
            }
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(doc) {
        let ids = chain_ids(&config.rootfs.diff_ids);
        assert_eq!(ids.len(), config.rootfs.diff_ids.len());
    }
});
