//! Compiles an OCI `linux.seccomp` policy into BPF with `seccompiler` and installs it.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The number of syscall `name` on this architecture; `None` if it does not exist here (such names
/// are skipped, as libseccomp-based runtimes do).
pub(crate) fn syscall_nr(name: &str) -> Option<i64> {
    use libc::*;
    let n = match name {
        "acct" => SYS_acct,
        "add_key" => SYS_add_key,
        "bpf" => SYS_bpf,
        "clock_adjtime" => SYS_clock_adjtime,
        "clock_settime" => SYS_clock_settime,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "delete_module" => SYS_delete_module,
        "finit_module" => SYS_finit_module,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fsopen" => SYS_fsopen,
        "fspick" => SYS_fspick,
        "init_module" => SYS_init_module,
        "io_uring_enter" => SYS_io_uring_enter,
        "io_uring_register" => SYS_io_uring_register,
        "io_uring_setup" => SYS_io_uring_setup,
        "kcmp" => SYS_kcmp,
        "kexec_file_load" => SYS_kexec_file_load,
        "kexec_load" => SYS_kexec_load,
        "keyctl" => SYS_keyctl,
        "lookup_dcookie" => SYS_lookup_dcookie,
        "mount" => SYS_mount,
        "mount_setattr" => SYS_mount_setattr,
        "move_mount" => SYS_move_mount,
        "nfsservctl" => SYS_nfsservctl,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "open_tree" => SYS_open_tree,
        "perf_event_open" => SYS_perf_event_open,
        "pivot_root" => SYS_pivot_root,
        "ptrace" => SYS_ptrace,
        "personality" => SYS_personality,
        "quotactl" => SYS_quotactl,
        "quotactl_fd" => SYS_quotactl_fd,
        "reboot" => SYS_reboot,
        "request_key" => SYS_request_key,
        "setns" => SYS_setns,
        "settimeofday" => SYS_settimeofday,
        "sethostname" => SYS_sethostname,
        "setdomainname" => SYS_setdomainname,
        "swapoff" => SYS_swapoff,
        "swapon" => SYS_swapon,
        "syslog" => SYS_syslog,
        "umount2" => SYS_umount2,
        "unshare" => SYS_unshare,
        "userfaultfd" => SYS_userfaultfd,
        "vhangup" => SYS_vhangup,
        "chroot" => SYS_chroot,
        "getpid" => SYS_getpid,
        _ => x86_only(name)?,
    };
    Some(n)
}

#[cfg(target_arch = "x86_64")]
fn x86_only(name: &str) -> Option<i64> {
    use libc::*;
    Some(match name {
        "ioperm" => SYS_ioperm,
        "iopl" => SYS_iopl,
        "_sysctl" => SYS__sysctl,
        "sysfs" => SYS_sysfs,
        "uselib" => SYS_uselib,
        "ustat" => SYS_ustat,
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_only(_name: &str) -> Option<i64> {
    None
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

/// Compiles `policy` into one BPF program per distinct non-default action. The kernel applies the
/// most restrictive result of all installed filters, so with an allowing default action each group
/// blocks its own syscalls independently. A non-allowing default supports one group only.
pub(crate) fn compile(policy: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    let arch = target_arch()?;
    let default_errno = policy.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(
        policy.default_action(),
        policy.default_errno_ret(),
        default_errno,
    )?;
    // action -> syscall -> (unconditional, rules)
    let mut groups: Vec<(SeccompAction, Group)> = Vec::new();
    for sc in policy.syscalls().as_deref().unwrap_or(&[]) {
        let act = action(sc.action(), sc.errno_ret(), default_errno)?;
        if act == default {
            continue;
        }
        let idx = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act, BTreeMap::new()));
                groups.len() - 1
            }
        };
        let args = sc.args().as_deref().unwrap_or(&[]);
        let rule = if args.is_empty() {
            None
        } else {
            let mut conds = Vec::new();
            for a in args {
                let (op, val) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                    LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => (
                        SeccompCmpOp::MaskedEq(a.value()),
                        a.value_two().unwrap_or(0),
                    ),
                };
                let index = u8::try_from(a.index()).map_err(|_| {
                    Error::Seccomp(format!("argument index {} out of range", a.index()))
                })?;
                conds.push(
                    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, val).map_err(
                        |e| Error::Seccomp(format!("condition on {:?}: {e}", sc.names())),
                    )?,
                );
            }
            Some(
                SeccompRule::new(conds)
                    .map_err(|e| Error::Seccomp(format!("rule on {:?}: {e}", sc.names())))?,
            )
        };
        for name in sc.names() {
            let Some(nr) = syscall_nr(name) else { continue };
            let entry = groups[idx].1.entry(nr).or_insert((false, Vec::new()));
            match &rule {
                None => entry.0 = true,
                Some(r) => entry.1.push(r.clone()),
            }
        }
    }
    if default != SeccompAction::Allow && groups.len() > 1 {
        return Err(Error::Seccomp(
            "a policy whose default action is not SCMP_ACT_ALLOW may have only one other action"
                .into(),
        ));
    }
    let mut progs = Vec::new();
    if groups.is_empty() && default != SeccompAction::Allow {
        let f = SeccompFilter::new(BTreeMap::new(), default.clone(), SeccompAction::Allow, arch)
            .map_err(|e| Error::Seccomp(e.to_string()))?;
        progs.push(BpfProgram::try_from(f).map_err(|e| Error::Seccomp(e.to_string()))?);
    }
    for (act, rules) in groups {
        let rules: BTreeMap<i64, Vec<SeccompRule>> = rules
            .into_iter()
            .map(|(nr, (uncond, rules))| (nr, if uncond { Vec::new() } else { rules }))
            .collect();
        let f = SeccompFilter::new(rules, default.clone(), act, arch)
            .map_err(|e| Error::Seccomp(e.to_string()))?;
        progs.push(BpfProgram::try_from(f).map_err(|e| Error::Seccomp(e.to_string()))?);
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
        // EPERM group and ENOSYS group.
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn blocked_names_are_known_here() {
        for n in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "kexec_load",
            "reboot",
        ] {
            assert!(syscall_nr(n).is_some(), "{n}");
        }
        assert!(syscall_nr("no_such_call").is_none());
    }

    #[test]
    fn allowlist_with_two_actions_is_refused() {
        let p: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_KILL"}
            ]
        }))
        .unwrap();
        assert!(compile(&p).is_err());
    }
}
