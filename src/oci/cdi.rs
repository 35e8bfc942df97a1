//! CDI (the Container Device Interface, spec versions 0.1 to 0.8): the devices a device plugin
//! or a DRA driver hands over by fully qualified name (`vendor.com/class=name`), in
//! `ContainerConfig.cdi_devices` or in `cdi.k8s.io/*` container annotations, resolved against
//! the spec files (`.json`, `.yaml`) of the configured directories and applied to the OCI spec
//! as their container edits say: environment, device nodes (with their cgroup rules), mounts,
//! hooks, Intel RDT, additional groups. Spec-level edits once per spec file, then each device's,
//! in the order the devices were asked for, as the CDI reference library does.
//!
//! Spec files are host configuration written by root (drivers, `nvidia-ctk`...), read on each
//! CreateContainer that asks for a device (no watcher: a file written a moment ago is seen).
//! A later directory has the higher priority; the same device in two files of one directory
//! is a conflict, and neither is used. Files are bounded in size and number.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIntelRdt, Mount, Spec,
};
use serde::Deserialize;

use crate::cri;

use super::SpecError;

/// The annotation prefix of CDI device requests (the value: qualified names, comma-separated).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// The newest spec version understood.
pub const MAX_VERSION: (u32, u32, u32) = (0, 8, 0);
/// Largest spec file read.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// Spec files read per directory.
const MAX_FILES: usize = 1024;
/// Devices one container may ask for.
const MAX_REQUESTS: usize = 256;

const FIELD: &str = "config.cdi_devices";

/// A CDI spec file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<CdiDevice>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// The edits a device (or a whole spec) makes to a container's OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub hooks: Vec<CdiHook>,
    #[serde(default)]
    pub mounts: Vec<CdiMount>,
    #[serde(default)]
    pub intel_rdt: Option<IntelRdt>,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: String,
    #[serde(default, rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default, rename = "type")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiHook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntelRdt {
    #[serde(default, rename = "closID")]
    pub clos_id: String,
    #[serde(default)]
    pub l3_cache_schema: String,
    #[serde(default)]
    pub mem_bw_schema: String,
    #[serde(default, rename = "enableCMT")]
    pub enable_cmt: bool,
    #[serde(default, rename = "enableMBM")]
    pub enable_mbm: bool,
}

const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Parses and validates a spec file's bytes (YAML, of which JSON is a subset).
pub fn parse(bytes: &[u8]) -> Result<CdiSpec, String> {
    let spec: CdiSpec = match serde_json::from_slice(bytes) {
        Ok(s) => s,
        Err(json) => serde_yaml::from_slice(bytes).map_err(|yaml| match bytes.first() {
            Some(b'{') => json.to_string(),
            _ => yaml.to_string(),
        })?,
    };
    validate(&spec)?;
    Ok(spec)
}

fn version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.strip_prefix('v').unwrap_or(v).split('.');
    let mut next = || parts.next()?.parse::<u32>().ok();
    let version = (next()?, next()?, next()?);
    parts.next().is_none().then_some(version)
}

/// The oldest version a spec's contents need (the CDI library's `MinimumRequiredVersion`).
fn required_version(spec: &CdiSpec) -> (u32, u32, u32) {
    let all_edits = || {
        std::iter::once(&spec.container_edits)
            .chain(spec.devices.iter().map(|d| &d.container_edits))
    };
    if all_edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
        return (0, 7, 0);
    }
    let class = spec.kind.split_once('/').map(|(_, c)| c).unwrap_or("");
    if !spec.annotations.is_empty()
        || spec.devices.iter().any(|d| !d.annotations.is_empty())
        || class.contains('.')
    {
        return (0, 6, 0);
    }
    let digit_name = spec.devices.iter().any(|d| {
        d.name
            .as_bytes()
            .first()
            .is_some_and(|c| !c.is_ascii_alphabetic())
    });
    if digit_name || all_edits().any(|e| e.device_nodes.iter().any(|n| !n.host_path.is_empty())) {
        return (0, 5, 0);
    }
    if all_edits().any(|e| e.mounts.iter().any(|m| !m.typ.is_empty())) {
        return (0, 4, 0);
    }
    (0, 3, 0)
}

/// The CDI validator's rules: a known version the contents fit, a valid kind, unique valid
/// device names, each device editing something, and well-formed edits.
pub fn validate(spec: &CdiSpec) -> Result<(), String> {
    let v = version(&spec.cdi_version)
        .filter(|v| *v >= (0, 1, 0) && *v <= MAX_VERSION && v.2 == 0)
        .ok_or_else(|| format!("unknown cdiVersion {:?}", spec.cdi_version))?;
    let needed = required_version(spec);
    if needed > v {
        return Err(format!(
            "the spec uses features of cdiVersion {}.{}.{}, newer than its {:?}",
            needed.0, needed.1, needed.2, spec.cdi_version
        ));
    }
    let (vendor, class) = spec
        .kind
        .split_once('/')
        .ok_or_else(|| format!("kind {:?} is not vendor/class", spec.kind))?;
    check_qualifier("vendor", vendor)?;
    check_qualifier("class", class)?;
    check_edits(&spec.container_edits)?;
    let mut seen = HashSet::new();
    for d in &spec.devices {
        check_device_name(&d.name)?;
        if !seen.insert(d.name.as_str()) {
            return Err(format!("device {:?} is named twice", d.name));
        }
        if d.container_edits == ContainerEdits::default() {
            return Err(format!("device {:?} has no container edits", d.name));
        }
        check_edits(&d.container_edits).map_err(|e| format!("device {:?}: {e}", d.name))?;
    }
    Ok(())
}

/// A vendor or class: a letter first, a letter or digit last, `_ - .` between.
fn check_qualifier(what: &str, name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(c));
    ok.then_some(())
        .ok_or_else(|| format!("invalid {what} {name:?}"))
}

/// A device name: a letter or digit first and last, `_ - . :` between.
fn check_device_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.:".contains(c));
    ok.then_some(())
        .ok_or_else(|| format!("invalid device name {name:?}"))
}

/// Splits a fully qualified device name `vendor/class=name` into its kind and name.
pub fn parse_qualified(device: &str) -> Result<(&str, &str), String> {
    let (kind, name) = device.split_once('=').ok_or_else(|| {
        format!("{device:?} is not a qualified CDI device name (vendor/class=name)")
    })?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("{device:?} has no vendor (vendor/class=name)"))?;
    check_qualifier("vendor", vendor)
        .and_then(|_| check_qualifier("class", class))
        .and_then(|_| check_device_name(name))
        .map_err(|e| format!("{device:?}: {e}"))?;
    Ok((kind, name))
}

fn check_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|v| v.find('=').unwrap_or(0) == 0) {
        Some(v) => Err(format!("invalid environment variable {v:?}")),
        None => Ok(()),
    }
}

fn check_edits(e: &ContainerEdits) -> Result<(), String> {
    check_env(&e.env)?;
    for d in &e.device_nodes {
        if !d.path.starts_with('/') {
            return Err(format!("device node path {:?} is not absolute", d.path));
        }
        if !["", "b", "c", "u", "p"].contains(&d.typ.as_str()) {
            return Err(format!("device {:?}: invalid type {:?}", d.path, d.typ));
        }
        if !d.permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(format!(
                "device {:?}: invalid permissions {:?}",
                d.path, d.permissions
            ));
        }
    }
    for h in &e.hooks {
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(format!("invalid hook name {:?}", h.hook_name));
        }
        if h.path.is_empty() {
            return Err(format!("hook {:?} has an empty path", h.hook_name));
        }
        check_env(&h.env).map_err(|e| format!("hook {:?}: {e}", h.hook_name))?;
    }
    for m in &e.mounts {
        if m.host_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(format!(
                "mount {:?} → {:?}: a host path and an absolute container path are required",
                m.host_path, m.container_path
            ));
        }
    }
    if let Some(rdt) = &e.intel_rdt {
        let c = &rdt.clos_id;
        if c.len() >= 4096 || c == "." || c == ".." || c.contains(['/', '\n']) {
            return Err(format!("invalid Intel RDT closID {c:?}"));
        }
    }
    Ok(())
}

/// The devices a container asks for: its `cdi.k8s.io/*` annotations (by key) then
/// `cdi_devices`, in order, each once.
pub fn requested(config: &cri::ContainerConfig) -> Result<Vec<String>, SpecError> {
    let mut keys: Vec<&String> = config
        .annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    let from_annotations = keys.into_iter().flat_map(|k| {
        config.annotations[k]
            .split(',')
            .map(move |d| (k.as_str(), d.trim()))
    });
    let from_field = config.cdi_devices.iter().map(|d| ("", d.name.as_str()));
    let mut names = Vec::new();
    for (key, name) in from_annotations.chain(from_field) {
        parse_qualified(name).map_err(|e| match key {
            "" => SpecError::new(FIELD, e),
            key => SpecError::new("config.annotations", format!("{key}: {e}")),
        })?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.len() > MAX_REQUESTS {
        return Err(SpecError::new(
            FIELD,
            format!("{} devices asked for; at most {MAX_REQUESTS}", names.len()),
        ));
    }
    Ok(names)
}

/// The spec files of `dirs` (in increasing priority), each device by its qualified name.
#[derive(Debug, Default)]
pub struct Registry {
    specs: Vec<(PathBuf, CdiSpec)>,
    /// Qualified name → (spec index, device index, priority).
    devices: BTreeMap<String, (usize, usize, usize)>,
    /// Spec files that could not be used, and devices in conflict, with why.
    pub errors: Vec<String>,
}

impl Registry {
    /// Reads every `.json` and `.yaml` file of each directory (not their subdirectories); a
    /// missing directory has no devices.
    pub fn scan(dirs: &[PathBuf]) -> Registry {
        let mut r = Registry::default();
        let mut conflicts = HashSet::new();
        for (priority, dir) in dirs.iter().enumerate() {
            for path in spec_files(dir, &mut r.errors) {
                let spec = match read_spec(&path) {
                    Ok(spec) => spec,
                    Err(e) => {
                        r.errors.push(format!("{}: {e}", path.display()));
                        continue;
                    }
                };
                r.add(path, spec, priority, &mut conflicts);
            }
        }
        for name in conflicts {
            r.devices.remove(&name);
        }
        r
    }

    fn add(&mut self, path: PathBuf, spec: CdiSpec, prio: usize, conflicts: &mut HashSet<String>) {
        let index = self.specs.len();
        for (i, d) in spec.devices.iter().enumerate() {
            let name = format!("{}={}", spec.kind, d.name);
            match self.devices.get(&name) {
                Some(&(other, _, p)) if p == prio => {
                    let other = self.specs[other].0.display();
                    self.errors.push(format!(
                        "device {name} is in both {other} and {}: neither is used",
                        path.display()
                    ));
                    conflicts.insert(name);
                }
                _ => {
                    self.devices.insert(name, (index, i, prio));
                }
            }
        }
        self.specs.push((path, spec));
    }

    /// The edits of `names`, in order: each spec's own edits before its first device's.
    pub fn resolve(
        &self,
        names: &[String],
        dirs: &[PathBuf],
    ) -> Result<Vec<ContainerEdits>, SpecError> {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !self.devices.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            let mut why = format!(
                "unresolvable CDI devices {}: no spec file in {} names them",
                unknown.join(", "),
                if dirs.is_empty() {
                    "(CDI is off: runtime.cdi_spec_dirs is empty)".into()
                } else {
                    dirs.join(", ")
                }
            );
            for e in self.errors.iter().take(3) {
                why.push_str("; ");
                why.push_str(e);
            }
            return Err(SpecError::new(FIELD, why));
        }
        let mut edits = Vec::new();
        let mut specs_seen = HashSet::new();
        for name in names {
            let (s, d, _) = self.devices[name];
            let spec = &self.specs[s].1;
            if specs_seen.insert(s) {
                edits.push(spec.container_edits.clone());
            }
            edits.push(spec.devices[d].container_edits.clone());
        }
        Ok(edits)
    }
}

/// The edits the devices `config` asks for, resolved against `dirs`; none asked, none read.
pub fn resolve(
    config: &cri::ContainerConfig,
    dirs: &[PathBuf],
) -> Result<Vec<ContainerEdits>, SpecError> {
    let names = requested(config)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    Registry::scan(dirs).resolve(&names, dirs)
}

fn spec_files(dir: &Path, errors: &mut Vec<String>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("json" | "yaml")
            )
        })
        .collect();
    files.sort();
    if files.len() > MAX_FILES {
        errors.push(format!(
            "{}: more than {MAX_FILES} spec files; the rest are not read",
            dir.display()
        ));
        files.truncate(MAX_FILES);
    }
    files
}

fn read_spec(path: &Path) -> Result<CdiSpec, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    parse(&bytes)
}

/// Applies `edits` (from [`resolve`]) to a container's spec, as the CDI library does: env
/// set by name, a device node replacing one of the same path (its numbers and type read from
/// the host where the spec leaves them out) with an allow rule, a mount replacing one of the
/// same destination (mounts then ordered by depth), hooks appended by name, RDT, groups.
pub fn apply(spec: &mut Spec, edits: &[ContainerEdits]) -> Result<(), SpecError> {
    for e in edits {
        apply_env(spec, &e.env);
        for node in &e.device_nodes {
            apply_device(spec, node)?;
        }
        apply_mounts(spec, &e.mounts);
        apply_hooks(spec, &e.hooks);
        if let Some(rdt) = &e.intel_rdt {
            let mut r = LinuxIntelRdt::default();
            r.set_clos_id(Some(rdt.clos_id.clone()).filter(|c| !c.is_empty()))
                .set_l3_cache_schema(Some(rdt.l3_cache_schema.clone()).filter(|c| !c.is_empty()))
                .set_mem_bw_schema(Some(rdt.mem_bw_schema.clone()).filter(|c| !c.is_empty()))
                .set_enable_cmt(rdt.enable_cmt.then_some(true))
                .set_enable_mbm(rdt.enable_mbm.then_some(true));
            linux(spec).set_intel_rdt(Some(r));
        }
        let groups: Vec<u32> = e
            .additional_gids
            .iter()
            .copied()
            .filter(|g| *g != 0)
            .collect();
        if !groups.is_empty() {
            let mut process = spec.process().clone().unwrap_or_default();
            let mut user = process.user().clone();
            let mut all = user.additional_gids().clone().unwrap_or_default();
            for g in groups {
                if !all.contains(&g) {
                    all.push(g);
                }
            }
            user.set_additional_gids(Some(all));
            process.set_user(user);
            spec.set_process(Some(process));
        }
    }
    Ok(())
}

fn linux(spec: &mut Spec) -> &mut oci_spec::runtime::Linux {
    if spec.linux().is_none() {
        spec.set_linux(Some(Default::default()));
    }
    spec.linux_mut().as_mut().expect("set above")
}

fn apply_env(spec: &mut Spec, env: &[String]) {
    if env.is_empty() {
        return;
    }
    let mut process = spec.process().clone().unwrap_or_default();
    let mut all = process.env().clone().unwrap_or_default();
    for kv in env {
        let name = kv.split('=').next().unwrap_or_default();
        match all.iter_mut().find(|e| e.split('=').next() == Some(name)) {
            Some(existing) => *existing = kv.clone(),
            None => all.push(kv.clone()),
        }
    }
    process.set_env(Some(all));
    spec.set_process(Some(process));
}

/// A device node's type and numbers, from the spec or else from the host's node.
fn fill_device(node: &DeviceNode) -> Result<(String, i64, i64), String> {
    let host = if node.host_path.is_empty() {
        &node.path
    } else {
        &node.host_path
    };
    if !node.typ.is_empty() && (node.major != 0 || node.typ == "p") {
        return Ok((node.typ.clone(), node.major, node.minor));
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m =
        std::fs::metadata(host).map_err(|e| format!("cannot stat CDI host device {host}: {e}"))?;
    let ft = m.file_type();
    let host_type = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Err(format!("CDI host device {host} is not a device"));
    };
    let typ = match node.typ.as_str() {
        "" => host_type.to_string(),
        t if t == host_type || (t == "u" && host_type == "c") => t.to_string(),
        t => {
            return Err(format!(
                "CDI device {}: type {t} but {host} is {host_type}",
                node.path
            ))
        }
    };
    if node.major != 0 || typ == "p" {
        return Ok((typ, node.major, node.minor));
    }
    let rdev = m.rdev();
    Ok((
        typ,
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
    ))
}

fn apply_device(spec: &mut Spec, node: &DeviceNode) -> Result<(), SpecError> {
    let (typ, major, minor) = fill_device(node).map_err(|e| SpecError::new(FIELD, e))?;
    let kind = match typ.as_str() {
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    };
    let user = spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    let mut dev = LinuxDevice::default();
    dev.set_path(node.path.clone().into())
        .set_typ(kind)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(node.file_mode)
        .set_uid(node.uid.or((user.uid() > 0).then_some(user.uid())))
        .set_gid(node.gid.or((user.gid() > 0).then_some(user.gid())));
    let l = linux(spec);
    let mut devices = l.devices().clone().unwrap_or_default();
    devices.retain(|d| d.path() != Path::new(&node.path));
    devices.push(dev);
    l.set_devices(Some(devices));
    if matches!(kind, LinuxDeviceType::B | LinuxDeviceType::C) {
        let access = if node.permissions.is_empty() {
            "rwm"
        } else {
            &node.permissions
        };
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(kind))
            .set_major(Some(major))
            .set_minor(Some(minor))
            .set_access(Some(access.to_string()));
        let mut resources = l.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.push(rule);
        resources.set_devices(Some(rules));
        l.set_resources(Some(resources));
    }
    Ok(())
}

fn apply_mounts(spec: &mut Spec, mounts: &[CdiMount]) {
    if mounts.is_empty() {
        return;
    }
    let mut all = spec.mounts().clone().unwrap_or_default();
    for m in mounts {
        all.retain(|x| x.destination() != Path::new(&m.container_path));
        let mut mount = Mount::default();
        mount
            .set_destination(m.container_path.clone().into())
            .set_source(Some(m.host_path.clone().into()))
            .set_options(Some(m.options.clone()).filter(|o| !o.is_empty()))
            .set_typ(Some(m.typ.clone()).filter(|t| !t.is_empty()));
        all.push(mount);
    }
    // Shallower destinations first, so a mount never hides one beneath it (stable).
    let depth = |m: &Mount| m.destination().components().count();
    all.sort_by(|a, b| {
        depth(a)
            .cmp(&depth(b))
            .then_with(|| a.destination().cmp(b.destination()))
    });
    spec.set_mounts(Some(all));
}

fn apply_hooks(spec: &mut Spec, hooks: &[CdiHook]) {
    if hooks.is_empty() {
        return;
    }
    let mut all = spec.hooks().clone().unwrap_or_default();
    for h in hooks {
        let mut hook = Hook::default();
        hook.set_path(h.path.clone().into())
            .set_args(Some(h.args.clone()).filter(|a| !a.is_empty()))
            .set_env(Some(h.env.clone()).filter(|e| !e.is_empty()))
            .set_timeout(h.timeout);
        #[allow(deprecated)] // prestart: deprecated by OCI, still run by runc and asked for by CDI
        let list = match h.hook_name.as_str() {
            "prestart" => all.prestart_mut(),
            "createRuntime" => all.create_runtime_mut(),
            "createContainer" => all.create_container_mut(),
            "startContainer" => all.start_container_mut(),
            "poststart" => all.poststart_mut(),
            _ => all.poststop_mut(),
        };
        list.get_or_insert_with(Vec::new).push(hook);
    }
    spec.set_hooks(Some(all));
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: example.com/test
annotations:
  origin: unit-test
containerEdits:
  env: ["VENDOR=example"]
devices:
  - name: dev0
    containerEdits:
      env: ["CDI_DEV=dev0", "PATH=/cdi/bin"]
      deviceNodes:
        - path: /dev/cdi-test0
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: /tmp
          containerPath: /cdi
          options: [rbind, ro]
      hooks:
        - hookName: createContainer
          path: /bin/true
          args: ["true", "dev0"]
  - name: "1"
    containerEdits:
      additionalGids: [0, 4242]
"#;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn config(names: &[&str], annotations: &[(&str, &str)]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            cdi_devices: names
                .iter()
                .map(|n| cri::CdiDevice {
                    name: n.to_string(),
                })
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn yaml_and_json_specs_parse() {
        let spec = parse(YAML.as_bytes()).unwrap_err();
        // additionalGids needs 0.7.0.
        assert!(spec.contains("0.7.0"), "{spec}");
        let yaml = YAML.replace("0.6.0", "0.8.0");
        let spec = parse(yaml.as_bytes()).unwrap();
        assert_eq!(spec.kind, "example.com/test");
        assert_eq!(spec.devices.len(), 2);
        assert_eq!(
            spec.devices[0].container_edits.device_nodes[0].host_path,
            "/dev/null"
        );
        let json = r#"{"cdiVersion":"0.3.0","kind":"example.com/json","devices":[
            {"name":"a","containerEdits":{"env":["A=1"]}}]}"#;
        assert_eq!(parse(json.as_bytes()).unwrap().devices[0].name, "a");
    }

    #[test]
    fn invalid_specs_are_refused_with_why() {
        let cases = [
            (
                r#"{"cdiVersion":"0.9.0","kind":"a.com/b","devices":[]}"#,
                "unknown cdiVersion",
            ),
            (
                r#"{"cdiVersion":"1.0.0","kind":"a.com/b","devices":[]}"#,
                "unknown cdiVersion",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"b","devices":[]}"#,
                "not vendor/class",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"-a/b","devices":[]}"#,
                "invalid vendor",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{}}]}"#,
                "no container edits",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["=1"]}}]}"#,
                "invalid environment",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"hooks":[{"hookName":"later","path":"/x"}]}}]}"#,
                "invalid hook name",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}]}"#,
                "not absolute",
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null"}]}}]}"#,
                "0.5.0",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["A=1"]}},{"name":"x","containerEdits":{"env":["A=1"]}}]}"#,
                "named twice",
            ),
            ("kind: [", "kind"),
            ("cdiVersion: 0.5.0\nkind: a.com/b\ndevices: 7\n", "devices"),
        ];
        for (body, why) in cases {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
        }
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            parse_qualified("vendor.com/gpu=0").unwrap(),
            ("vendor.com/gpu", "0")
        );
        assert_eq!(parse_qualified("a/b=c:d.e").unwrap(), ("a/b", "c:d.e"));
        for bad in [
            "gpu0",
            "/dev/null",
            "vendor.com=0",
            "vendor.com/gpu=",
            "v/c=-x",
            "1v/c=x",
        ] {
            assert!(parse_qualified(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_come_from_annotations_then_the_field_each_once() {
        let c = config(
            &["example.com/test=dev0", "example.com/test=1"],
            &[
                ("cdi.k8s.io/z_plugin", "example.com/test=1"),
                (
                    "cdi.k8s.io/a_plugin",
                    "example.com/test=dev0,example.com/other=x",
                ),
                ("unrelated", "not-a-device"),
            ],
        );
        assert_eq!(
            requested(&c).unwrap(),
            [
                "example.com/test=dev0",
                "example.com/other=x",
                "example.com/test=1"
            ]
        );
        let err = requested(&config(&["nvidia"], &[])).unwrap_err();
        assert_eq!(err.field, "config.cdi_devices");
        let err = requested(&config(&[], &[("cdi.k8s.io/x", "bad")])).unwrap_err();
        assert_eq!(err.field, "config.annotations");
        assert!(err.reason.contains("cdi.k8s.io/x"), "{err}");
    }

    #[test]
    fn a_later_directory_wins_and_a_conflict_in_one_is_dropped() {
        let (low, high) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let spec = |env: &str| {
            format!(
                r#"{{"cdiVersion":"0.5.0","kind":"example.com/t","devices":[{{"name":"a","containerEdits":{{"env":["{env}"]}}}}]}}"#
            )
        };
        write(low.path(), "low.json", &spec("FROM=low"));
        write(high.path(), "high.json", &spec("FROM=high"));
        write(high.path(), "ignored.txt", "not a spec");
        write(low.path(), "broken.yaml", "cdiVersion: [");
        let dirs = vec![low.path().to_path_buf(), high.path().to_path_buf()];
        let names = vec!["example.com/t=a".to_string()];
        let reg = Registry::scan(&dirs);
        let edits = reg.resolve(&names, &dirs).unwrap();
        assert_eq!(edits[1].env, ["FROM=high"]);
        assert_eq!(reg.errors.len(), 1, "{:?}", reg.errors);
        write(high.path(), "again.json", &spec("FROM=again"));
        let err = Registry::scan(&dirs).resolve(&names, &dirs).unwrap_err();
        assert!(
            err.reason
                .contains("unresolvable CDI devices example.com/t=a"),
            "{err}"
        );
        assert!(err.reason.contains("neither is used"), "{err}");
        let err = Registry::scan(&[]).resolve(&names, &[]).unwrap_err();
        assert!(err.reason.contains("CDI is off"), "{err}");
    }

    #[test]
    fn edits_apply_as_the_cdi_library_applies_them() {
        let spec_file = parse(YAML.replace("0.6.0", "0.7.0").as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t.yaml", &YAML.replace("0.6.0", "0.7.0"));
        let dirs = vec![dir.path().to_path_buf()];
        let c = config(&["example.com/test=dev0", "example.com/test=1"], &[]);
        let edits = resolve(&c, &dirs).unwrap();
        assert_eq!(edits.len(), 3);
        assert_eq!(edits[0], spec_file.container_edits);

        let mut spec = super::super::spec_opts::blank_spec();
        let mut process = oci_spec::runtime::Process::default();
        process.set_env(Some(vec!["PATH=/usr/bin".into(), "KEEP=1".into()]));
        let mut user = process.user().clone();
        user.set_uid(1000).set_gid(1000);
        process.set_user(user);
        spec.set_process(Some(process));
        let mut deep = Mount::default();
        deep.set_destination("/cdi/deeper/still".into());
        spec.set_mounts(Some(vec![deep]));
        apply(&mut spec, &edits).unwrap();

        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/cdi/bin", "KEEP=1", "VENDOR=example", "CDI_DEV=dev0"]
        );
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[4242]);
        let linux = spec.linux().as_ref().unwrap();
        let dev = &linux.devices().as_ref().unwrap()[0];
        assert_eq!(dev.path(), Path::new("/dev/cdi-test0"));
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!((dev.uid(), dev.gid()), (Some(1000), Some(1000)));
        let rule = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0];
        assert_eq!(rule.access().as_deref(), Some("rw"));
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        assert_eq!(
            dests,
            [PathBuf::from("/cdi"), PathBuf::from("/cdi/deeper/still")]
        );
        let hooks = spec
            .hooks()
            .as_ref()
            .unwrap()
            .create_container()
            .as_ref()
            .unwrap();
        assert_eq!(hooks[0].path(), Path::new("/bin/true"));

        let missing = r#"{"cdiVersion":"0.5.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/nonexistent/dev"}]}}]}"#;
        let edits = vec![parse(missing.as_bytes()).unwrap().devices[0]
            .container_edits
            .clone()];
        let err = apply(&mut super::super::spec_opts::blank_spec(), &edits).unwrap_err();
        assert!(err.reason.contains("/nonexistent/dev"), "{err}");
    }
}
