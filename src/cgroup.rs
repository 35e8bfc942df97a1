//! Where a pod's cgroups go (the cgroupfs form the specs name): the one formula the spec
//! builder, the reconcilers and the stats share.

/// The parent of a pod's cgroups when its config names none.
pub const DEFAULT_PARENT: &str = "/k8s.io";

/// The cgroup path of object `id` (a pause container or a container) of a pod whose config
/// names `parent` ("" for none).
pub fn path(parent: &str, id: &str) -> String {
    let parent = if parent.is_empty() {
        DEFAULT_PARENT
    } else {
        parent
    };
    format!("{}/{}", parent.trim_end_matches('/'), id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_parent_and_a_trailing_slash() {
        assert_eq!(super::path("", "c1"), "/k8s.io/c1");
        assert_eq!(super::path("/kubepods/pod1/", "c1"), "/kubepods/pod1/c1");
    }
}
