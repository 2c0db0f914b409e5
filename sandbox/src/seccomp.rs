//! Compiles an OCI `linux.seccomp` policy into BPF with `seccompiler` and installs it.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// `(name, number)` pairs from libc's `SYS_*` constants; the `SYS_` prefix is stripped on lookup.
macro_rules! syscall_table {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// Syscalls with the same name on x86_64 and aarch64 (every name Docker's default profile and
/// rbuild's tests mention that both architectures have).
#[rustfmt::skip]
const COMMON: &[(&str, i64)] = syscall_table!(
    SYS_accept, SYS_accept4, SYS_adjtimex, SYS_bind, SYS_brk, SYS_capget, SYS_capset, SYS_chdir,
    SYS_clock_adjtime, SYS_clock_getres, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close,
    SYS_close_range, SYS_connect, SYS_copy_file_range, SYS_dup, SYS_dup3, SYS_epoll_create1,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2, SYS_execve, SYS_execveat,
    SYS_exit, SYS_exit_group, SYS_faccessat, SYS_faccessat2, SYS_fadvise64, SYS_fallocate,
    SYS_fanotify_mark, SYS_fchdir, SYS_fchmod, SYS_fchmodat, SYS_fchown, SYS_fchownat, SYS_fcntl,
    SYS_fdatasync, SYS_fgetxattr, SYS_flistxattr, SYS_flock, SYS_fremovexattr, SYS_fsetxattr,
    SYS_fstat, SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_futex_waitv, SYS_getcpu,
    SYS_getcwd, SYS_getdents64, SYS_getegid, SYS_geteuid, SYS_getgid, SYS_getgroups, SYS_getitimer,
    SYS_getpeername, SYS_getpgid, SYS_getpid, SYS_getppid, SYS_getpriority, SYS_getrandom,
    SYS_getresgid, SYS_getresuid, SYS_get_robust_list, SYS_getrusage, SYS_getsid, SYS_getsockname,
    SYS_getsockopt, SYS_gettid, SYS_gettimeofday, SYS_getuid, SYS_getxattr, SYS_inotify_add_watch,
    SYS_inotify_init1, SYS_inotify_rm_watch, SYS_io_cancel, SYS_ioctl, SYS_io_destroy,
    SYS_io_getevents, SYS_ioprio_get, SYS_ioprio_set, SYS_io_setup, SYS_io_submit, SYS_kill,
    SYS_landlock_add_rule, SYS_landlock_create_ruleset, SYS_landlock_restrict_self, SYS_lgetxattr,
    SYS_linkat, SYS_listen, SYS_listxattr, SYS_llistxattr, SYS_lremovexattr, SYS_lseek,
    SYS_lsetxattr, SYS_madvise, SYS_membarrier, SYS_memfd_create, SYS_memfd_secret, SYS_mincore,
    SYS_mkdirat, SYS_mknodat, SYS_mlock, SYS_mlock2, SYS_mlockall, SYS_mmap, SYS_mprotect,
    SYS_mq_getsetattr, SYS_mq_notify, SYS_mq_open, SYS_mq_timedreceive, SYS_mq_timedsend,
    SYS_mq_unlink, SYS_mremap, SYS_msgctl, SYS_msgget, SYS_msgrcv, SYS_msgsnd, SYS_msync,
    SYS_munlock, SYS_munlockall, SYS_munmap, SYS_name_to_handle_at, SYS_nanosleep, SYS_newfstatat,
    SYS_openat, SYS_openat2, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_pipe2, SYS_pkey_alloc,
    SYS_pkey_free, SYS_pkey_mprotect, SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_preadv2,
    SYS_prlimit64, SYS_process_mrelease, SYS_pselect6, SYS_pwrite64, SYS_pwritev, SYS_pwritev2,
    SYS_read, SYS_readahead, SYS_readlinkat, SYS_readv, SYS_recvfrom, SYS_recvmmsg, SYS_recvmsg,
    SYS_remap_file_pages, SYS_removexattr, SYS_renameat2, SYS_restart_syscall, SYS_rseq,
    SYS_rt_sigaction, SYS_rt_sigpending, SYS_rt_sigprocmask, SYS_rt_sigqueueinfo, SYS_rt_sigreturn,
    SYS_rt_sigsuspend, SYS_rt_sigtimedwait, SYS_rt_tgsigqueueinfo, SYS_sched_getaffinity,
    SYS_sched_getattr, SYS_sched_getparam, SYS_sched_get_priority_max, SYS_sched_get_priority_min,
    SYS_sched_getscheduler, SYS_sched_rr_get_interval, SYS_sched_setaffinity, SYS_sched_setattr,
    SYS_sched_setparam, SYS_sched_setscheduler, SYS_sched_yield, SYS_seccomp, SYS_semctl,
    SYS_semget, SYS_semop, SYS_semtimedop, SYS_sendfile, SYS_sendmmsg, SYS_sendmsg, SYS_sendto,
    SYS_setfsgid, SYS_setfsuid, SYS_setgid, SYS_setgroups, SYS_setitimer, SYS_setpgid,
    SYS_setpriority, SYS_setregid, SYS_setresgid, SYS_setresuid, SYS_setreuid, SYS_set_robust_list,
    SYS_setsid, SYS_setsockopt, SYS_set_tid_address, SYS_setuid, SYS_setxattr, SYS_shmat,
    SYS_shmctl, SYS_shmdt, SYS_shmget, SYS_shutdown, SYS_sigaltstack, SYS_signalfd4,
    SYS_socketpair, SYS_splice, SYS_statfs, SYS_statx, SYS_symlinkat, SYS_sync, SYS_syncfs,
    SYS_sysinfo, SYS_tee, SYS_tgkill, SYS_timer_create, SYS_timer_delete, SYS_timer_getoverrun,
    SYS_timer_gettime, SYS_timer_settime, SYS_timerfd_create, SYS_timerfd_gettime,
    SYS_timerfd_settime, SYS_times, SYS_tkill, SYS_truncate, SYS_umask, SYS_uname, SYS_unlinkat,
    SYS_utimensat, SYS_vmsplice, SYS_wait4, SYS_waitid, SYS_write, SYS_writev,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_ptrace, SYS_socket, SYS_personality,
    SYS_open_by_handle_at, SYS_bpf, SYS_clone, SYS_clone3, SYS_fanotify_init, SYS_fsconfig,
    SYS_fsmount, SYS_fsopen, SYS_fspick, SYS_lookup_dcookie, SYS_mount, SYS_mount_setattr,
    SYS_move_mount, SYS_open_tree, SYS_perf_event_open, SYS_quotactl, SYS_quotactl_fd,
    SYS_setdomainname, SYS_sethostname, SYS_setns, SYS_syslog, SYS_umount2, SYS_unshare,
    SYS_reboot, SYS_chroot, SYS_delete_module, SYS_init_module, SYS_finit_module, SYS_acct,
    SYS_kcmp, SYS_pidfd_getfd, SYS_process_madvise, SYS_settimeofday, SYS_clock_settime,
    SYS_vhangup, SYS_get_mempolicy, SYS_mbind, SYS_set_mempolicy, SYS_set_mempolicy_home_node,
    SYS_keyctl, SYS_add_key, SYS_request_key, SYS_kexec_load, SYS_kexec_file_load, SYS_swapon,
    SYS_swapoff, SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register, SYS_userfaultfd,
    SYS_pivot_root, SYS_nfsservctl,
);

/// x86_64-only syscalls (legacy calls aarch64 replaced with their `*at` forms, and x86 specifics).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ARCH: &[(&str, i64)] = syscall_table!(
    SYS_access, SYS_alarm, SYS_chmod, SYS_chown, SYS_creat, SYS_dup2, SYS_epoll_create,
    SYS_epoll_ctl_old, SYS_epoll_wait, SYS_epoll_wait_old, SYS_eventfd, SYS_fchmodat2, SYS_fork,
    SYS_futimesat, SYS_getdents, SYS_getpgrp, SYS_getrlimit, SYS_get_thread_area, SYS_inotify_init,
    SYS_lchown, SYS_link, SYS_lstat, SYS_mkdir, SYS_mknod, SYS_open, SYS_pause, SYS_pipe, SYS_poll,
    SYS_readlink, SYS_rename, SYS_renameat, SYS_rmdir, SYS_select, SYS_setrlimit,
    SYS_set_thread_area, SYS_signalfd, SYS_stat, SYS_symlink, SYS_sync_file_range, SYS_time,
    SYS_unlink, SYS_utime, SYS_utimes, SYS_vfork, SYS_arch_prctl, SYS_modify_ldt, SYS_iopl,
    SYS_ioperm, SYS__sysctl, SYS_sysfs, SYS_uselib, SYS_ustat,
);

#[cfg(not(target_arch = "x86_64"))]
const ARCH: &[(&str, i64)] = &[];

/// Calls newer than this libc's constants (one syscall table for all architectures since 5.1), and
/// the few it lacks.
const NEWER: &[(&str, i64)] = &[
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    #[cfg(target_arch = "x86_64")]
    ("io_pgetevents", 333),
    #[cfg(target_arch = "aarch64")]
    ("io_pgetevents", 292),
    #[cfg(target_arch = "aarch64")]
    ("sync_file_range", 84),
];

/// The number of syscall `name` on this architecture; `None` if it does not exist here or rbuild
/// does not know it (such names are skipped, as libseccomp-based runtimes skip unknown names).
pub(crate) fn syscall_nr(name: &str) -> Option<i64> {
    COMMON
        .iter()
        .chain(ARCH)
        .find(|(n, _)| n.strip_prefix("SYS_") == Some(name))
        .or_else(|| NEWER.iter().find(|(n, _)| *n == name))
        .map(|(_, nr)| *nr)
}

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| Error::Seccomp(format!("architecture: {e}")))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Seccomp("SCMP_ACT_NOTIFY is not supported".into()));
        }
    })
}

/// Per syscall: (matched unconditionally, or-ed argument rules).
type Group = BTreeMap<i64, (bool, Vec<SeccompRule>)>;

/// How restrictive an action is, in the kernel's order (higher wins when several filters apply).
fn strength(a: &SeccompAction) -> u8 {
    match a {
        SeccompAction::Allow => 0,
        SeccompAction::Log => 1,
        SeccompAction::Trace(_) => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trap => 4,
        SeccompAction::KillThread => 5,
        SeccompAction::KillProcess => 6,
    }
}

fn rule_of(sc: &oci_spec::runtime::LinuxSyscall) -> Result<Option<SeccompRule>> {
    let args = sc.args().as_deref().unwrap_or(&[]);
    if args.is_empty() {
        return Ok(None);
    }
    let mut conds = Vec::new();
    for a in args {
        let (op, val) = match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
            // libseccomp's meaning: (arg & value) == valueTwo.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(a.value()),
                a.value_two().unwrap_or(0),
            ),
        };
        let index = u8::try_from(a.index())
            .map_err(|_| Error::Seccomp(format!("argument index {} out of range", a.index())))?;
        conds.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, val)
                .map_err(|e| Error::Seccomp(format!("condition on {:?}: {e}", sc.names())))?,
        );
    }
    Ok(Some(SeccompRule::new(conds).map_err(|e| {
        Error::Seccomp(format!("rule on {:?}: {e}", sc.names()))
    })?))
}

fn add_rule(group: &mut Group, nr: i64, rule: &Option<SeccompRule>) {
    let entry = group.entry(nr).or_insert((false, Vec::new()));
    match rule {
        None => entry.0 = true,
        Some(r) => entry.1.push(r.clone()),
    }
}

fn program(group: Group, mismatch: SeccompAction, matched: SeccompAction) -> Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = group
        .into_iter()
        .map(|(nr, (uncond, rules))| (nr, if uncond { Vec::new() } else { rules }))
        .collect();
    let f = SeccompFilter::new(rules, mismatch, matched, target_arch()?)
        .map_err(|e| Error::Seccomp(e.to_string()))?;
    BpfProgram::try_from(f).map_err(|e| Error::Seccomp(e.to_string()))
}

/// Compiles `policy` into BPF programs, installed in order. seccompiler filters have one match and
/// one mismatch action, so a policy is split, relying on the kernel's rule for stacked filters: the
/// most restrictive result wins, and among equally restrictive ERRNO results the most recently
/// installed filter's errno wins.
///
/// - Default ALLOW (a deny list): one program per other action, each matching its syscalls.
/// - Any other default (an allow list, as Docker's profile): first the main program, which allows
///   the ALLOW rules (and the rules of actions weaker than the default, so they can apply) and gives
///   the default to everything else; then one program per non-ALLOW action, matching its syscalls
///   and allowing the rest. So `clone3 -> ERRNO(ENOSYS)` overrides the default `ERRNO(EPERM)`.
pub(crate) fn compile(policy: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    let default_errno = policy.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(
        policy.default_action(),
        policy.default_errno_ret(),
        default_errno,
    )?;
    let mut allowed = Group::new();
    // action -> syscall -> (unconditional, rules), in first-seen order.
    let mut groups: Vec<(SeccompAction, Group)> = Vec::new();
    for sc in policy.syscalls().as_deref().unwrap_or(&[]) {
        let act = action(sc.action(), sc.errno_ret(), default_errno)?;
        if act == default {
            continue;
        }
        let rule = rule_of(sc)?;
        let nrs: Vec<i64> = sc.names().iter().filter_map(|n| syscall_nr(n)).collect();
        if default != SeccompAction::Allow && strength(&act) < strength(&default) {
            for nr in &nrs {
                add_rule(&mut allowed, *nr, &rule);
            }
        }
        if act == SeccompAction::Allow {
            continue;
        }
        let idx = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act, Group::new()));
                groups.len() - 1
            }
        };
        for nr in nrs {
            add_rule(&mut groups[idx].1, nr, &rule);
        }
    }
    let mut progs = Vec::new();
    if default != SeccompAction::Allow {
        progs.push(program(allowed, default, SeccompAction::Allow)?);
    }
    for (act, group) in groups {
        progs.push(program(group, SeccompAction::Allow, act)?);
    }
    Ok(progs)
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Installs the programs on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
pub(crate) fn install(progs: &[BpfProgram]) -> Result<()> {
    for p in progs {
        let len = u16::try_from(p.len())
            .map_err(|_| Error::Seccomp("filter longer than 65535 instructions".into()))?;
        let prog = SockFprog {
            len,
            filter: p.as_ptr(),
        };
        // SAFETY: the kernel copies the program; `p` outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const SockFprog,
            )
        };
        if r != 0 {
            return Err(Error::Seccomp(format!(
                "install filter: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_compiles_to_two_filters() {
        let p: LinuxSeccomp = serde_json::from_value(crate::spec::default_seccomp()).unwrap();
        let progs = compile(&p).unwrap();
        // The allow list (default EPERM) and the ENOSYS group for clone3.
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn profile_names_are_known_here() {
        for n in crate::spec::SECCOMP_ALLOWED {
            // Only the 32-bit and multiplexed variants are absent on 64-bit architectures.
            let absent_ok = n.ends_with("32")
                || n.ends_with("64")
                || n.starts_with('_')
                || [
                    "ipc",
                    "recv",
                    "send",
                    "sigprocmask",
                    "sigreturn",
                    "socketcall",
                    "waitpid",
                    "ugetrlimit",
                    "mmap2",
                ]
                .contains(n);
            assert!(absent_ok || syscall_nr(n).is_some(), "{n} unknown");
        }
        for n in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "kexec_load",
            "swapon",
        ] {
            assert!(syscall_nr(n).is_some(), "{n}");
        }
        assert!(syscall_nr("no_such_call").is_none());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(syscall_nr("read"), Some(0));
            assert_eq!(syscall_nr("fchmodat2"), Some(452));
            assert_eq!(syscall_nr("arch_prctl"), Some(158));
        }
    }

    #[test]
    fn allow_list_with_other_actions_compiles() {
        let p: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_KILL"},
                {"names": ["getpid"], "action": "SCMP_ACT_LOG"}
            ]
        }))
        .unwrap();
        assert_eq!(compile(&p).unwrap().len(), 3);
    }

    /// Runs `f` in a forked child after installing `progs`; returns the child's exit code. The
    /// child only makes raw syscalls (fork in a threaded test binary).
    fn in_child(progs: &[BpfProgram], f: fn() -> i32) -> i32 {
        // SAFETY: the child calls only async-signal-safe functions (prctl, seccomp, syscalls, _exit).
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain prctl.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if install(progs).is_ok() { f() } else { 99 };
                // SAFETY: leave the child at once.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut st = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                assert!(libc::WIFEXITED(st), "child status {st:#x}");
                libc::WEXITSTATUS(st)
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn docker_profile_semantics() {
        let p: LinuxSeccomp = serde_json::from_value(crate::spec::default_seccomp()).unwrap();
        let progs = compile(&p).unwrap();
        let code = in_child(&progs, || {
            // SAFETY: raw syscalls with harmless arguments; each result is checked.
            unsafe {
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 1;
                }
                if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) != -1
                    || errno() != libc::EPERM
                {
                    return 3;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                    return 4;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) == -1 {
                    return 5;
                }
                // ADDR_NO_RANDOMIZE is not in Docker's list.
                if libc::syscall(libc::SYS_personality, 0x0040000u64) != -1
                    || errno() != libc::EPERM
                {
                    return 6;
                }
                if libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1
                    || errno() != libc::EPERM
                {
                    return 7;
                }
                let s = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if s < 0 {
                    return 8;
                }
                libc::close(s as i32);
                if libc::syscall(libc::SYS_swapon, c"/nonexistent".as_ptr(), 0) != -1
                    || errno() != libc::EPERM
                {
                    return 9;
                }
                // clone with a namespace flag: refused before the kernel sees it.
                if libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWNET | libc::SIGCHLD,
                    0,
                    0,
                    0,
                    0,
                ) != -1
                    || errno() != libc::EPERM
                {
                    return 10;
                }
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed in the filtered child");
    }
}
