//! The image's `/etc/passwd` and `/etc/group` (image-controlled) and the user they resolve to
//! with the image's `User` and the pod's security context: never panics, and any identity
//! resolved is one the kernel can take (0 ..= 2^32-2, no more than 65536 extra groups).
#![no_main]
use concord::cri;
use concord::image::manifest::ImageConfig;
use concord::oci::user::{user, UserDb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\0');
    let (passwd, group) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let image_user = parts.next().unwrap_or("");
    let run_as = parts.next().unwrap_or("");
    let db = UserDb::parse(passwd, group);
    let image: ImageConfig = serde_json::from_value(serde_json::json!({
        "config": {"User": image_user},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("an image config");
    let mut contexts = vec![cri::LinuxContainerSecurityContext::default()];
    if let Ok(n) = run_as.parse::<i64>() {
        contexts.push(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: n }),
            run_as_group: Some(cri::Int64Value { value: n }),
            ..Default::default()
        });
    } else if !run_as.is_empty() {
        contexts.push(cri::LinuxContainerSecurityContext {
            run_as_username: run_as.to_string(),
            ..Default::default()
        });
    }
    for sc in &contexts {
        for db in [None, Some(&db)] {
            if let Ok((uid, gid, groups)) = user(sc, &image, db) {
                let ok = |id: i64| (0..=u32::MAX as i64 - 1).contains(&id);
                assert!(
                    ok(uid) && ok(gid),
                    "uid {uid} gid {gid} from {image_user:?}/{run_as:?}"
                );
                assert!(groups.iter().all(|g| ok(*g)), "groups {groups:?}");
                assert!(groups.len() <= 65536);
            }
        }
    }
});
