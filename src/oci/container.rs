//! A container's OCI spec: the CRI ContainerConfig merged with the image config, joined to its
//! pod's namespaces and files. Built as oci-spec's typed [`Spec`] by the options of
//! [`super::spec_opts`]; [`validate`] refuses what they would refuse, without building one.

use std::path::{Component, Path, PathBuf};

use crate::cri;
use oci_spec::runtime::Spec;

use super::spec_opts::{self, OPTIONS};
use super::user::{user, UserDb};
pub use super::SpecError;
use crate::image::manifest::ImageConfig;

/// What the container's spec is built from besides its config and image.
#[derive(Debug, Clone)]
pub struct ContainerContext<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub sandbox: &'a cri::PodSandboxConfig,
    /// The pause process (whose namespaces the container joins).
    pub sandbox_pid: u32,
    /// The sandbox's hostname/hosts/resolv.conf directory.
    pub sandbox_files: PathBuf,
    pub image_name: &'a str,
    /// The pid of the TARGET container (pid namespace TARGET).
    pub target_pid: Option<u32>,
    /// Where the image's declared volumes get their (empty) directories.
    pub volumes_dir: PathBuf,
    /// The pod and container annotations the runtime handler lets into the spec.
    pub passthrough: super::annotations::Passthrough<'a>,
    /// The host directory each image mount (CRI `Mount.image`) binds, by mount index: its
    /// mounted snapshot view, `image_sub_path` resolved inside it. Empty for the API's early
    /// check, which makes nothing.
    pub image_volumes: std::collections::BTreeMap<usize, PathBuf>,
    /// How the spec names the container's cgroup (`runtime.cgroup_driver`).
    pub cgroup_driver: crate::config::CgroupDriver,
    /// The container edits of the CDI devices it asks for, resolved ([`super::cdi::resolve`]).
    pub cdi: Vec<super::cdi::ContainerEdits>,
}

/// Everything a container's spec is built from: the request, the image, the pod, and the
/// parts of the config every option reads.
pub struct Inputs<'a> {
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageConfig,
    pub ctx: &'a ContainerContext<'a>,
    /// The image's users and groups (None: the API's early check takes names on trust).
    pub users: Option<&'a UserDb>,
    pub sc: cri::LinuxContainerSecurityContext,
    pub pod_sc: cri::LinuxSandboxSecurityContext,
    pub resources: cri::LinuxContainerResources,
}

impl<'a> Inputs<'a> {
    pub fn new(
        config: &'a cri::ContainerConfig,
        image: &'a ImageConfig,
        ctx: &'a ContainerContext<'a>,
        users: Option<&'a UserDb>,
    ) -> Inputs<'a> {
        let linux = config.linux.clone().unwrap_or_default();
        Inputs {
            config,
            image,
            ctx,
            users,
            sc: linux.security_context.unwrap_or_default(),
            pod_sc: ctx
                .sandbox
                .linux
                .as_ref()
                .and_then(|l| l.security_context.clone())
                .unwrap_or_default(),
            resources: linux.resources.unwrap_or_default(),
        }
    }
}

/// The container's OCI spec: every option of [`spec_opts::OPTIONS`] applied to a blank spec.
pub fn container_spec(
    c: &cri::ContainerConfig,
    image: &ImageConfig,
    ctx: &ContainerContext,
    users: Option<&UserDb>,
) -> Result<Spec, SpecError> {
    let inputs = Inputs::new(c, image, ctx, users);
    let mut spec = spec_opts::blank_spec();
    for option in OPTIONS {
        option(&mut spec, &inputs)?;
    }
    Ok(spec)
}

/// Refuses, with its field, what [`container_spec`] would refuse (in the same order), running
/// each option's resolver without building a spec. Without `users`, user and group names are
/// taken on trust.
pub fn validate(inputs: &Inputs) -> Result<(), SpecError> {
    let (c, sc) = (inputs.config, &inputs.sc);
    process_args(c, inputs.image)?;
    working_dir(c, inputs.image)?;
    super::signal::check(c)?;
    let (_, gid, user_groups) = user(sc, inputs.image, inputs.users)?;
    spec_opts::additional_gids(inputs, gid, &user_groups)?;
    spec_opts::pid_namespace(inputs)?;
    super::userns::check_container(inputs.ctx.sandbox, sc.namespace_options.as_ref())?;
    for (i, m) in c.mounts.iter().enumerate() {
        match m.image {
            Some(_) => spec_opts::image_mount(i, m, Path::new("")).map(drop)?,
            None => spec_opts::user_mount(i, m).map(drop)?,
        }
    }
    super::resources::check_resources("config.linux.resources", &inputs.resources)?;
    for (i, dev) in c.devices.iter().enumerate() {
        spec_opts::device(i, dev)?;
    }
    if !sc.privileged {
        spec_opts::seccomp(sc, &super::capabilities::capabilities(sc))?;
    }
    spec_opts::apparmor(sc)?;
    Ok(())
}

/// The process arguments by the CRI rules: `command` replaces the image's Entrypoint (and its
/// Cmd), `args` replaces the Cmd.
pub fn process_args(
    c: &cri::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let ic = image.config.clone().unwrap_or_default();
    let mut args = if !c.command.is_empty() {
        c.command.clone()
    } else {
        ic.entrypoint.clone().unwrap_or_default()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(ic.cmd.clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(SpecError::new(
            "config.command",
            "no command: neither the config nor the image names one",
        ));
    }
    Ok(args)
}

/// Image env first, then the config's (a later key replaces an earlier one in place).
///
/// A config value is bytes since cri-api 0.34.9 (a Secret's need not be UTF-8). The OCI spec is
/// JSON, whose strings are Unicode: bytes that are not UTF-8 become U+FFFD, as containerd's (Go's
/// JSON encoding of config.json does the same). An older kubelet sends the same field as a string:
/// one wire format.
pub fn environment(c: &cri::ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match env.iter_mut().find(|(ek, _)| *ek == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    let image_env = image
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((&e, ""));
        set(k.to_string(), v.to_string());
    }
    for kv in &c.envs {
        set(
            kv.key.clone(),
            String::from_utf8_lossy(&kv.value).into_owned(),
        );
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A container path: absolute, no `..`, no NUL.
pub fn check_container_path(field: &'static str, p: &str) -> Result<(), SpecError> {
    let path = Path::new(p);
    if !path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
        || p.contains('\0')
    {
        return Err(SpecError::new(
            field,
            format!("{p:?} must be an absolute path without '..'"),
        ));
    }
    Ok(())
}

/// An image mount's `image_sub_path`: empty (the whole image) or relative, without `..` or NUL.
/// Where it leads inside the image is only known once the image is mounted
/// (`image::volume::resolve_sub_path` refuses symlinks out of it then).
pub fn check_image_sub_path(p: &str) -> Result<(), SpecError> {
    let path = Path::new(p);
    if path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
        || p.contains('\0')
    {
        return Err(SpecError::new(
            "config.mounts.image_sub_path",
            format!("{p:?} must be a path relative to the image's root without '..'"),
        ));
    }
    Ok(())
}

/// The working directory: the config's, else the image's, else `/`; an absolute path.
pub fn working_dir(c: &cri::ContainerConfig, image: &ImageConfig) -> Result<String, SpecError> {
    let (cwd, field) = if !c.working_dir.is_empty() {
        (c.working_dir.clone(), "config.working_dir")
    } else {
        let image_wd = image
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        (image_wd, "image")
    };
    check_container_path(field, &cwd)?;
    Ok(cwd)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use oci_spec::runtime::{LinuxNamespaceType, Mount};
    use serde_json::json;

    use super::*;

    /// Container c1 of pod sb (pause pid 42) from image `image`.
    fn test_ctx<'a>(sandbox: &'a cri::PodSandboxConfig, image: &'a str) -> ContainerContext<'a> {
        ContainerContext {
            id: "c1",
            sandbox_id: "sb",
            sandbox,
            sandbox_pid: 42,
            sandbox_files: "/state/sb".into(),
            image_name: image,
            target_pid: None,
            volumes_dir: "/state/c1/volumes".into(),
            passthrough: Default::default(),
            image_volumes: Default::default(),
            cgroup_driver: crate::config::CgroupDriver::Cgroupfs,
            cdi: Vec::new(),
        }
    }

    fn mounts(spec: &Spec) -> &[Mount] {
        spec.mounts().as_deref().unwrap_or_default()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        serde_json::from_value(json!({
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin", "A=image"], "User": "1000:2000"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "config".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn env_values_are_bytes_and_not_utf8_is_replaced() {
        let mut c = config(&["sh"], &[]);
        c.envs.push(cri::KeyValue {
            key: "BIN".into(),
            value: vec![b'a', 0xff, b'b'],
        });
        let env = environment(&c, &image(&[], &[]));
        assert_eq!(env, ["PATH=/bin", "A=config", "BIN=a\u{fffd}b"]);
    }

    #[test]
    fn command_and_args_follow_the_cri_rules() {
        let img = image(&["/ep"], &["cmd1"]);
        assert_eq!(
            process_args(&config(&[], &[]), &img).unwrap(),
            ["/ep", "cmd1"]
        );
        assert_eq!(
            process_args(&config(&[], &["a"]), &img).unwrap(),
            ["/ep", "a"]
        );
        assert_eq!(process_args(&config(&["/c"], &[]), &img).unwrap(), ["/c"]);
        assert_eq!(
            process_args(&config(&["/c"], &["a"]), &img).unwrap(),
            ["/c", "a"]
        );
        assert!(process_args(&config(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn spec_joins_the_pod_and_merges_env_and_user() {
        let sandbox = cri::PodSandboxConfig {
            hostname: "web".into(),
            ..Default::default()
        };
        let ctx = test_ctx(&sandbox, "busybox");
        let v = container_spec(&config(&[], &[]), &image(&["/ep"], &[]), &ctx, None).unwrap();
        let process = v.process().as_ref().unwrap();
        assert_eq!(
            process.env().as_deref(),
            Some(&["PATH=/bin".to_string(), "A=config".to_string()][..])
        );
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 2000));
        let nss = v.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let path_of = |t: LinuxNamespaceType| {
            let ns = nss.iter().find(|n| n.typ() == t).unwrap();
            ns.path().clone().unwrap()
        };
        assert_eq!(
            path_of(LinuxNamespaceType::Network),
            Path::new("/proc/42/ns/net")
        );
        assert_eq!(
            path_of(LinuxNamespaceType::Pid),
            Path::new("/proc/42/ns/pid")
        );
        let dests: Vec<&Path> = mounts(&v)
            .iter()
            .map(|m| m.destination().as_path())
            .collect();
        for d in [
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/dev/shm",
        ] {
            assert!(dests.contains(&Path::new(d)), "{d}");
        }
        assert_eq!(v.hostname().as_deref(), Some("web"));

        let mut bad_mount = config(&[], &[]);
        bad_mount.mounts = vec![cri::Mount {
            container_path: "../etc".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        let err = container_spec(&bad_mount, &image(&["/ep"], &[]), &ctx, None).unwrap_err();
        assert_eq!(err.field, "config.mounts.container_path");
    }

    /// Found by fuzz/ (userdb, container_spec): ids the kernel cannot take and working dirs
    /// that are not absolute paths were put into the spec, for runc to fail on.
    #[test]
    fn ids_out_of_range_and_relative_working_dirs_are_refused_with_their_field() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let img = |user: &str, wd: &str| -> ImageConfig {
            serde_json::from_value(json!({
                "config": {"Cmd": ["/x"], "User": user, "WorkingDir": wd},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap()
        };
        let field = |c: &cri::ContainerConfig, i: &ImageConfig| {
            container_spec(c, i, &ctx, None)
                .map(|_| ())
                .unwrap_err()
                .field
        };
        let plain = config(&[], &[]);
        assert_eq!(field(&plain, &img("99999999999999", "/")), "image");
        assert_eq!(field(&plain, &img("-1", "/")), "image");
        assert_eq!(field(&plain, &img("0:4294967295", "/")), "image");
        assert_eq!(field(&plain, &img("", "app")), "image");
        let with_sc = |sc: cri::LinuxContainerSecurityContext| cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..config(&[], &[])
        };
        let negative = Some(cri::Int64Value { value: -5 });
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    run_as_user: negative,
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.run_as_user"
        );
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1 }),
                    run_as_group: negative,
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.run_as_group"
        );
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![1, 1 << 40],
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.supplemental_groups"
        );
        let mut nul = config(&[], &[]);
        nul.working_dir = "/\0\u{12}ork".into();
        assert_eq!(field(&nul, &img("", "/")), "config.working_dir");
        // A passwd line with an id out of range is malformed: its user is not found.
        let db = UserDb::parse("big:x:4294967296:0::/:/bin/sh\nok:x:7:7::/:/bin/sh\n", "");
        assert_eq!(db.users, vec![("ok".to_string(), 7, 7)]);
    }

    #[test]
    fn the_images_volumes_get_directories_of_the_containers_own() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let img: ImageConfig = serde_json::from_value(json!({
            "config": {"Cmd": ["/x"], "Volumes": {"/var/cache/app": {}, "/data": {}}},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let mut c = config(&[], &[]);
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            ..Default::default()
        }];
        let v = container_spec(&c, &img, &ctx, None).unwrap();
        let find = |d: &str| {
            mounts(&v)
                .iter()
                .filter(|m| m.destination() == Path::new(d))
                .filter_map(|m| m.source().clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            find("/var/cache/app"),
            [Path::new("/state/c1/volumes/var_cache_app")]
        );
        assert_eq!(
            find("/data"),
            [Path::new("/srv/data")],
            "a CRI mount covers the declared volume"
        );
    }

    /// A mount of image `busybox` at `/iv` with `sub_path`.
    fn image_volume(sub_path: &str) -> cri::Mount {
        cri::Mount {
            container_path: "/iv".into(),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            image_sub_path: sub_path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_image_mount_is_a_read_only_bind_of_its_prepared_directory() {
        let sandbox = cri::PodSandboxConfig::default();
        let mut ctx = test_ctx(&sandbox, "img");
        ctx.image_volumes
            .insert(0, "/state/image-volumes/c1/0/bin".into());
        let mut c = config(&["sh"], &[]);
        // Even asked writable: an image volume is read-only by definition.
        c.mounts = vec![image_volume("bin")];
        let v = container_spec(&c, &image(&[], &[]), &ctx, None).unwrap();
        let m = mounts(&v)
            .iter()
            .find(|m| m.destination() == Path::new("/iv"))
            .unwrap();
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/state/image-volumes/c1/0/bin"))
        );
        assert_eq!(m.typ().as_deref(), Some("bind"));
        let opts = m.options().clone().unwrap();
        assert_eq!(opts, ["rbind", "rprivate", "ro", "nosuid", "nodev"]);
        // Without a prepared directory there is no spec.
        let err = container_spec(&c, &image(&[], &[]), &test_ctx(&sandbox, "img"), None);
        assert_eq!(err.unwrap_err().field, "config.mounts.image");
    }

    #[test]
    fn image_sub_paths_are_relative_without_parent_components() {
        for ok in ["", "bin", "usr/share/", "./a", "a..b/c"] {
            check_image_sub_path(ok).unwrap();
        }
        for bad in ["/etc", "../etc", "a/../../b", "a/..", "a\0b"] {
            let e = check_image_sub_path(bad).unwrap_err();
            assert_eq!(e.field, "config.mounts.image_sub_path", "{bad:?}");
        }
    }

    #[test]
    fn image_mounts_are_checked_before_anything_exists() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let img = image(&[], &[]);
        let field = |m: cri::Mount| {
            let mut c = config(&["sh"], &[]);
            c.mounts = vec![m];
            validate(&Inputs::new(&c, &img, &ctx, None)).map_err(|e| e.field)
        };
        assert_eq!(field(image_volume("bin")), Ok(()));
        assert_eq!(
            field(image_volume("../etc")),
            Err("config.mounts.image_sub_path")
        );
        let both = cri::Mount {
            host_path: "/srv".into(),
            ..image_volume("")
        };
        assert_eq!(field(both), Err("config.mounts.host_path"));
        let relative = cri::Mount {
            container_path: "iv".into(),
            ..image_volume("")
        };
        assert_eq!(field(relative), Err("config.mounts.container_path"));
        let sub_path_only = cri::Mount {
            host_path: "/srv".into(),
            container_path: "/srv".into(),
            image_sub_path: "bin".into(),
            ..Default::default()
        };
        assert_eq!(field(sub_path_only), Err("config.mounts.image_sub_path"));
    }

    /// A representative container: an entrypoint image, env, user and groups, a CRI mount, a
    /// device, resources, capabilities, the default seccomp profile.
    fn typical() -> (cri::PodSandboxConfig, cri::ContainerConfig) {
        let sandbox = cri::PodSandboxConfig {
            hostname: "web".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-0".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/podu1".into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    supplemental_groups: vec![3000],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            annotations: [("example.com/team".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let mut c = config(&["/bin/sh"], &["-c", "sleep 1"]);
        c.metadata = Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        });
        c.working_dir = "/work".into();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            ..Default::default()
        }];
        c.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: 128 << 20,
                oom_score_adj: 500,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["CHOWN".into()],
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                no_new_privs: true,
                supplemental_groups: vec![4000],
                ..Default::default()
            }),
        });
        (sandbox, c)
    }

    /// The keys of a JSON object, sorted.
    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        k
    }

    /// What runc reads: the JSON the untyped builder wrote, key for key (oci-spec leaves out
    /// nothing concord sets, adds no default of its own: no rlimits, no inheritable or ambient
    /// capabilities, no default namespaces or mounts).
    #[test]
    fn a_typical_spec_serializes_as_runc_expects() {
        let (sandbox, c) = typical();
        let ctx = test_ctx(&sandbox, "busybox");
        let spec = container_spec(&c, &image(&["/ep"], &[]), &ctx, None).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let top = [
            "annotations",
            "hostname",
            "linux",
            "mounts",
            "ociVersion",
            "process",
            "root",
        ];
        assert_eq!(keys(&v), top);
        assert_eq!(v["ociVersion"], "1.0.2");
        let p = &v["process"];
        let mut process_keys = keys(p);
        process_keys.retain(|k| *k != "apparmorProfile"); // where the host has AppArmor
        assert_eq!(
            process_keys,
            [
                "args",
                "capabilities",
                "cwd",
                "env",
                "noNewPrivileges",
                "oomScoreAdj",
                "terminal",
                "user"
            ]
        );
        assert_eq!(p["terminal"], false);
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "sleep 1"]));
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["oomScoreAdj"], 500);
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 2000, "additionalGids": [2000, 4000, 3000]})
        );
        assert_eq!(
            keys(&p["capabilities"]),
            ["bounding", "effective", "permitted"]
        );
        let caps = p["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), super::super::DEFAULT_CAPABILITIES.len());
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(v["root"], json!({"path": "rootfs", "readonly": false}));
        let data = v["mounts"].as_array().unwrap().last().unwrap();
        assert_eq!(
            data,
            &json!({"destination": "/data", "type": "bind", "source": "/srv/data",
                "options": ["rbind", "rprivate", "ro"]})
        );
        assert_eq!(v["mounts"].as_array().unwrap().len(), 11);
        assert_eq!(v["annotations"]["io.kubernetes.cri.sandbox-name"], "web-0");
        assert!(v["annotations"].get("example.com/team").is_none());
        let l = &v["linux"];
        assert_eq!(
            keys(l),
            [
                "cgroupsPath",
                "devices",
                "maskedPaths",
                "namespaces",
                "readonlyPaths",
                "resources",
                "seccomp"
            ]
        );
        assert_eq!(l["cgroupsPath"], "/kubepods/podu1/c1");
        assert_eq!(
            l["namespaces"],
            json!([{"type": "mount"}, {"type": "network", "path": "/proc/42/ns/net"},
                {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "pid", "path": "/proc/42/ns/pid"}])
        );
        assert_eq!(
            l["devices"],
            json!([{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                "fileMode": 0o666, "uid": 0, "gid": 0}])
        );
        assert_eq!(
            l["resources"],
            json!({
                "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                "memory": {"limit": 64 << 20, "swap": 128 << 20},
                "devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
            })
        );
        assert_eq!(l["maskedPaths"], json!(super::super::MASKED_PATHS));
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(l["seccomp"]["defaultErrnoRet"], 1);
    }

    /// The API's check refuses what building the spec refuses, with the same field, and
    /// passes what it builds.
    #[test]
    fn validation_refuses_what_the_spec_refuses() {
        let (sandbox, good) = typical();
        let ctx = test_ctx(&sandbox, "busybox");
        let img = image(&["/ep"], &[]);
        let check = |c: &cri::ContainerConfig| validate(&Inputs::new(c, &img, &ctx, None));
        assert_eq!(check(&good), Ok(()));
        let mut cases = Vec::new();
        let mut c = good.clone();
        c.mounts[0].host_path = "relative".into();
        cases.push(c);
        let mut c = good.clone();
        c.devices[0].host_path = "/nonexistent-device".into();
        cases.push(c);
        let mut c = good.clone();
        c.devices[0].permissions = "rwx".into();
        cases.push(c);
        let mut c = good.clone();
        c.working_dir = "rel".into();
        cases.push(c);
        let mut c = good.clone();
        let linux = c.linux.as_mut().unwrap();
        linux.resources.as_mut().unwrap().cpu_quota = 5;
        cases.push(c);
        let mut c = good.clone();
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.seccomp.as_mut().unwrap().profile_type = 42;
        cases.push(c);
        let mut c = good.clone();
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Target as i32,
            target_id: "gone".into(),
            ..Default::default()
        });
        cases.push(c);
        let mut c = good.clone();
        c.stop_signal = 99;
        cases.push(c);
        let mut c = good.clone();
        c.mounts[0].recursive_read_only = true;
        cases.push(c);
        let mut c = good.clone();
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.supplemental_groups_policy = 7;
        cases.push(c);
        for c in cases {
            let built = container_spec(&c, &img, &ctx, None).unwrap_err();
            assert_eq!(check(&c), Err(built));
        }
    }

    /// Merge (the default) adds the groups the image's /etc/group lists the user in; Strict
    /// (the container's or the pod's) only the config's. The primary group comes first.
    #[test]
    fn strict_supplemental_groups_leave_the_images_groups_out() {
        let db = UserDb::parse(
            "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n",
            "alice:x:1000:\nwheel:x:10:alice\nstaff:x:50000:bob,alice\n",
        );
        let img = |user: &str| -> ImageConfig {
            serde_json::from_value(json!({
                "config": {"Cmd": ["/x"], "User": user},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap()
        };
        let groups = |container: cri::SupplementalGroupsPolicy,
                      pod: cri::SupplementalGroupsPolicy| {
            let sandbox = cri::PodSandboxConfig {
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        supplemental_groups: vec![3000],
                        supplemental_groups_policy: pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let ctx = test_ctx(&sandbox, "img");
            let mut c = config(&[], &[]);
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![1234],
                    supplemental_groups_policy: container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
            let spec = container_spec(&c, &img("alice"), &ctx, Some(&db)).unwrap();
            let user = spec.process().as_ref().unwrap().user().clone();
            assert_eq!((user.uid(), user.gid()), (1000, 1000));
            user.additional_gids().clone().unwrap()
        };
        use cri::SupplementalGroupsPolicy::{Merge, Strict};
        assert_eq!(groups(Merge, Merge), [1000, 10, 50000, 1234, 3000]);
        assert_eq!(groups(Strict, Merge), [1000, 1234, 3000]);
        assert_eq!(groups(Merge, Strict), [1000, 1234, 3000]);
    }

    /// A recursive read-only mount is refused, naming the field: on a read-write mount the CRI
    /// forbids it, on a read-only one runc here cannot make it.
    #[test]
    fn recursive_read_only_mounts_are_refused_with_their_field() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let mut c = config(&[], &[]);
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            recursive_read_only: true,
            ..Default::default()
        }];
        let err = container_spec(&c, &image(&["/ep"], &[]), &ctx, None).unwrap_err();
        assert_eq!(err.field, "config.mounts.recursive_read_only");
        assert!(err.reason.contains("readonly"), "{err}");
        c.mounts[0].readonly = true;
        let err = container_spec(&c, &image(&["/ep"], &[]), &ctx, None).unwrap_err();
        assert_eq!(err.field, "config.mounts.recursive_read_only");
        assert!(err.reason.contains("RROUnsupported"), "{err}");
    }
}
