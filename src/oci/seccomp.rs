//! Seccomp: which profile a pod or container asks for (CRI `SecurityProfile`, or the deprecated
//! `seccomp_profile_path`), and the runtime's default profile: an allow-list with EPERM for
//! everything else, the same syscalls containerd's and Docker's defaults allow, widened by the
//! capabilities the process holds.

use std::path::Path;

use crate::cri;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::SpecError;

/// What a process is confined by.
#[derive(Debug, Clone, PartialEq)]
pub enum Seccomp {
    Unconfined,
    /// The runtime's default profile.
    RuntimeDefault,
    /// A profile file on the node (absolute path).
    Localhost(String),
}

impl Seccomp {
    /// The profile a security context asks for: `profile` when set, else the deprecated path
    /// (`runtime/default`, `docker/default`, `unconfined`, `localhost/<path>`; empty is
    /// unconfined, as containerd's default). `field` names the request field in errors.
    pub fn requested(
        profile: Option<&cri::SecurityProfile>,
        deprecated_path: &str,
        field: &'static str,
    ) -> Result<Seccomp, SpecError> {
        use cri::security_profile::ProfileType;
        let s = match profile {
            Some(p) => match ProfileType::try_from(p.profile_type) {
                Ok(ProfileType::RuntimeDefault) => Seccomp::RuntimeDefault,
                Ok(ProfileType::Unconfined) => Seccomp::Unconfined,
                Ok(ProfileType::Localhost) => Seccomp::Localhost(p.localhost_ref.clone()),
                Err(_) => {
                    return Err(SpecError::new(
                        field,
                        format!("profile_type: unknown type {}", p.profile_type),
                    ))
                }
            },
            None => match deprecated_path {
                "" | "unconfined" => Seccomp::Unconfined,
                "runtime/default" | "docker/default" => Seccomp::RuntimeDefault,
                p if p.starts_with("localhost/") => {
                    Seccomp::Localhost(p.trim_start_matches("localhost/").to_string())
                }
                other => {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "unknown seccomp profile {other:?} (runtime/default, unconfined \
                             or localhost/<path>)"
                        ),
                    ))
                }
            },
        };
        if let Seccomp::Localhost(p) = &s {
            if !Path::new(p).is_absolute() {
                return Err(SpecError::new(
                    field,
                    format!("localhost profile {p:?} is not an absolute path"),
                ));
            }
        }
        Ok(s)
    }

    /// The spec's `linux.seccomp` for a process holding `capabilities` (None: unconfined).
    /// `field` names the request field in errors.
    pub fn profile(
        &self,
        capabilities: &[&str],
        field: &'static str,
    ) -> Result<Option<LinuxSeccomp>, SpecError> {
        match self {
            Seccomp::Unconfined => Ok(None),
            Seccomp::RuntimeDefault => Ok(Some(default_profile(capabilities))),
            Seccomp::Localhost(p) => {
                let bad = |why: String| SpecError::new(field, why);
                let text = std::fs::read_to_string(p)
                    .map_err(|e| bad(format!("reading seccomp profile {p}: {e}")))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("seccomp profile {p} is not JSON: {e}")))?;
                if !v.get("defaultAction").is_some_and(|a| a.is_string()) {
                    return Err(bad(format!("seccomp profile {p} has no defaultAction")));
                }
                let profile = serde_json::from_value(v).map_err(|e| {
                    bad(format!(
                        "seccomp profile {p} is not an OCI seccomp profile: {e}"
                    ))
                })?;
                Ok(Some(profile))
            }
        }
    }
}

/// The pause container's profile, as the pod's security context asks (privileged pods run
/// unconfined). Errors name the request field.
pub fn for_sandbox(c: &cri::PodSandboxConfig) -> Result<Option<LinuxSeccomp>, SpecError> {
    const FIELD: &str = "config.linux.security_context.seccomp";
    let sc = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    if sc.privileged {
        return Ok(None);
    }
    // kubelet still fills the deprecated path for pods of older API objects.
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.clone();
    Seccomp::requested(sc.seccomp.as_ref(), &path, FIELD)?
        .profile(crate::oci::DEFAULT_CAPABILITIES, FIELD)
}

/// Allowed for every process.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "syslog",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed to a process holding the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "adjtimex",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
];

/// Namespace flags clone(2) may not carry without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x0200_0000; // CLONE_NEWCGROUP

/// One rule: `names` get `action`, when `args` match (all of them).
fn rule(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_args((!args.is_empty()).then_some(args));
    r
}

/// A condition on argument `index`: `op` against `value` (and `value_two`, for a mask).
fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let a = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let a = match value_two {
        Some(v) => a.value_two(v),
        None => a,
    };
    // Cannot fail: the builder defaults every field it is not given.
    a.build().expect("a seccomp argument builds")
}

/// The runtime's default profile for a process holding `capabilities`.
pub fn default_profile(capabilities: &[&str]) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let mut syscalls = vec![rule(ALLOWED, Allow, vec![])];
    // personality(2) only for the harmless personas (Linux, 32-bit, query).
    for persona in [0x0u64, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        let persona = arg(0, persona, None, LinuxSeccompOperator::ScmpCmpEq);
        syscalls.push(rule(&["personality"], Allow, vec![persona]));
    }
    if cfg!(target_arch = "x86_64") {
        syscalls.push(rule(&["arch_prctl", "modify_ldt"], Allow, vec![]));
    }
    for (cap, names) in BY_CAPABILITY {
        if capabilities.contains(cap) {
            syscalls.push(rule(names, Allow, vec![]));
        }
    }
    if !capabilities.contains(&"CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 (flags out of reach of seccomp) answers ENOSYS
        // so that libc falls back to clone.
        let no_namespaces = arg(
            0,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        );
        syscalls.push(rule(&["clone"], Allow, vec![no_namespaces]));
        let mut clone3 = rule(&["clone3"], Errno, vec![]);
        clone3.set_errno_ret(Some(38));
        syscalls.push(clone3);
    }
    let architectures = if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![]
    };
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(Errno)
        .set_default_errno_ret(Some(1))
        .set_architectures(Some(architectures))
        .set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_or_the_deprecated_path_picks_the_profile() {
        use cri::security_profile::ProfileType;
        let p = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let f = "config.linux.security_context.seccomp";
        assert_eq!(
            Seccomp::requested(Some(&p(ProfileType::RuntimeDefault, "")), "", f),
            Ok(Seccomp::RuntimeDefault)
        );
        assert_eq!(
            Seccomp::requested(Some(&p(ProfileType::Unconfined, "")), "runtime/default", f),
            Ok(Seccomp::Unconfined)
        );
        assert_eq!(
            Seccomp::requested(Some(&p(ProfileType::Localhost, "/p.json")), "", f),
            Ok(Seccomp::Localhost("/p.json".into()))
        );
        assert!(
            Seccomp::requested(Some(&p(ProfileType::Localhost, "p.json")), "", f)
                .unwrap_err()
                .reason
                .contains("absolute")
        );
        assert_eq!(Seccomp::requested(None, "", f), Ok(Seccomp::Unconfined));
        assert_eq!(
            Seccomp::requested(None, "docker/default", f),
            Ok(Seccomp::RuntimeDefault)
        );
        assert_eq!(
            Seccomp::requested(None, "localhost//x.json", f),
            Ok(Seccomp::Localhost("/x.json".into()))
        );
        let bogus = Seccomp::requested(None, "bogus", f).unwrap_err();
        assert_eq!(bogus.field, f);
        assert!(bogus.reason.contains("bogus"));
    }

    #[test]
    fn the_default_profile_denies_by_default_and_widens_with_capabilities() {
        let plain = default_profile(&["CAP_CHOWN", "CAP_SYS_CHROOT"]);
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        let plain = serde_json::to_value(&plain).unwrap();
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        let text = plain.to_string();
        assert!(text.contains("\"chroot\""));
        assert!(!text.contains("\"mount\""));
        assert!(!text.contains("\"ptrace\""));
        assert!(
            text.contains("SCMP_CMP_MASKED_EQ"),
            "clone without namespaces"
        );
        let admin = serde_json::to_string(&default_profile(&["CAP_SYS_ADMIN"])).unwrap();
        assert!(admin.contains("\"mount\""));
        assert!(!admin.contains("SCMP_CMP_MASKED_EQ"));
    }
}
