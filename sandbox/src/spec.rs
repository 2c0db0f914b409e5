//! rbuild's default OCI runtime spec: what `docker run` gives a container by default.

use oci_spec::runtime::Spec;
use serde_json::json;

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The syscalls Docker's default seccomp profile (moby `profiles/seccomp/default.json`, Docker 25+)
/// allows to every container, whatever its capabilities. Names that do not exist on the running
/// architecture (the 32-bit `*32`/`*64`/`*_time64` variants...) are skipped when compiling.
/// As in Docker 25+, `io_uring_*` are not in the list.
#[rustfmt::skip]
pub const SECCOMP_ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    // Docker lists these three with `minKernel: 4.8` (ptrace could bypass seccomp before).
    "process_vm_readv", "process_vm_writev", "ptrace",
];

/// Architecture-specific additions of Docker's profile for the architectures rbuild builds for.
pub const SECCOMP_ALLOWED_ARCH: &[&str] = &[
    // amd64
    "arch_prctl",
    "modify_ldt",
    // arm64
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// Docker's capability-conditional groups: these syscalls are allowed only when the container holds
/// the capability (none of them is in [`DEFAULT_CAPABILITIES`] but `CAP_SYS_CHROOT`).
pub const SECCOMP_CAP_SYSCALLS: &[(&str, &[&str])] = &[
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
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
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
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `personality(2)` arguments Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32
/// and 0xffffffff (query).
pub const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The CLONE_NEW* flags Docker's profile refuses in clone(2) without CAP_SYS_ADMIN.
pub const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Docker's default seccomp profile for a container holding `caps`, as an OCI `linux.seccomp`
/// value: unlisted syscalls fail with EPERM; [`SECCOMP_ALLOWED`] and [`SECCOMP_ALLOWED_ARCH`] are
/// allowed; `socket` for every family but AF_VSOCK; `personality` with [`PERSONALITY_ALLOWED`]
/// only; the [`SECCOMP_CAP_SYSCALLS`] groups of the capabilities held; without CAP_SYS_ADMIN
/// `clone` only without [`CLONE_NS_FLAGS`] and `clone3` answering ENOSYS (so libcs fall back to
/// `clone`, whose flags can be inspected).
pub fn docker_seccomp(caps: &[&str]) -> serde_json::Value {
    let has = |c: &str| caps.contains(&c);
    let mut syscalls = vec![json!({
        "names": SECCOMP_ALLOWED.iter().chain(SECCOMP_ALLOWED_ARCH).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ALLOW",
    })];
    syscalls.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": libc::AF_VSOCK, "op": "SCMP_CMP_NE"}],
    }));
    for v in PERSONALITY_ALLOWED {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}],
        }));
    }
    for (cap, names) in SECCOMP_CAP_SYSCALLS {
        if has(cap) {
            syscalls.push(json!({"names": names, "action": "SCMP_ACT_ALLOW"}));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        let mask: u64 = CLONE_NS_FLAGS.iter().fold(0, |m, f| m | f);
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "syscalls": syscalls,
    })
}

/// Docker's default seccomp profile for a container with [`DEFAULT_CAPABILITIES`].
pub fn default_seccomp() -> serde_json::Value {
    docker_seccomp(&DEFAULT_CAPABILITIES)
}

/// Spec annotation asking for a minimal init as the container's PID 1 (`rbuild run --init`, as
/// `docker run --init`): it forks the program, forwards every signal it gets to it, reaps every
/// orphan of the pid namespace and exits with the program's status (128+N for signal N).
pub const INIT_ANNOTATION: &str = "org.rbuild.init";

/// Sets (or clears) [`INIT_ANNOTATION`] on `spec`.
pub fn set_init(spec: &mut Spec, init: bool) {
    let mut a = spec.annotations().clone().unwrap_or_default();
    if init {
        a.insert(INIT_ANNOTATION.to_string(), "true".to_string());
    } else {
        a.remove(INIT_ANNOTATION);
    }
    spec.set_annotations(Some(a));
}

/// Spec annotation naming a user whose supplementary groups PID 1 reads from the container's own
/// `/etc/group` (after `pivot_root`, so links resolve inside the root) and adds to
/// `process.user.additionalGids`: RUN steps as root get root's groups (`id -G` = `0 10` with a
/// `wheel:x:10:root` line, as BuildKit) without the solver mounting the root to read them first.
pub const GROUPS_OF_ANNOTATION: &str = "org.rbuild.groups-of";

/// Sets [`GROUPS_OF_ANNOTATION`] on `spec`.
pub fn set_groups_of(spec: &mut Spec, user: &str) {
    let mut a = spec.annotations().clone().unwrap_or_default();
    a.insert(GROUPS_OF_ANNOTATION.to_string(), user.to_string());
    spec.set_annotations(Some(a));
}

/// Spec annotation (`"true"`) asking for no `/etc/hostname` bind: BuildKit's RUN steps have none
/// (the hostname is set in the UTS namespace only); `docker run` containers do have one.
pub const NO_HOSTNAME_FILE_ANNOTATION: &str = "org.rbuild.no-hostname-file";

/// Sets [`NO_HOSTNAME_FILE_ANNOTATION`] on `spec`.
pub fn set_no_hostname_file(spec: &mut Spec) {
    let mut a = spec.annotations().clone().unwrap_or_default();
    a.insert(NO_HOSTNAME_FILE_ANNOTATION.to_string(), "true".to_string());
    spec.set_annotations(Some(a));
}

/// Whether `spec` asks for the init (see [`INIT_ANNOTATION`]).
pub fn wants_init(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(INIT_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Makes the container join the network namespace pinned at `path` (a bind-mounted
/// `/proc/PID/ns/net`, as `ip netns add` or rbuild's network crate make) instead of the host's or a
/// fresh one, so the namespace can be configured (netavark) before the program starts.
pub fn join_network_namespace(spec: &mut Spec, path: &std::path::Path) {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let mut ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    if let Ok(n) = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Network)
        .path(path)
        .build()
    {
        ns.push(n);
    }
    linux.set_namespaces(Some(ns));
}

/// The default spec for rbuild: Docker's default capabilities, namespaces (mount, pid, uts, ipc,
/// cgroup; network only when `network_isolated`), `/proc`, `/dev`, `/dev/pts`, `/dev/shm`,
/// `/dev/mqueue`, read-only `/sys` and `/sys/fs/cgroup` mounts, masked and read-only paths,
/// no_new_privileges and Docker's default seccomp policy. Runs as root (0:0) until the caller sets
/// `process.user`. `root.path` is unused by [`crate::spawn`].
pub fn default_spec(
    args: Vec<String>,
    env: Vec<String>,
    cwd: &str,
    network_isolated: bool,
) -> Spec {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if network_isolated {
        namespaces.push(json!({"type": "network"}));
    }
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    let v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": default_seccomp(),
        },
    });
    // The literal above is a valid spec by construction; fall back to the crate default otherwise.
    serde_json::from_value(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceType;

    #[test]
    fn default_spec_shape() {
        let s = default_spec(vec!["sh".into()], vec!["PATH=/bin".into()], "/work", false);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert_eq!(p.cwd().to_str(), Some("/work"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .len(),
            14
        );
        let l = s.linux().as_ref().unwrap();
        let ns: Vec<_> = l
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            ns.contains(&LinuxNamespaceType::Pid) && !ns.contains(&LinuxNamespaceType::Network)
        );
        assert!(l.seccomp().is_some());
        assert_eq!(s.mounts().as_ref().unwrap().len(), 7);
        let s = default_spec(vec![], vec![], "", true);
        let l = s.linux().as_ref().unwrap();
        assert!(l
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        assert_eq!(s.process().as_ref().unwrap().cwd().to_str(), Some("/"));
    }
}
