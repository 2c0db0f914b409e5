//! Processes identified by pid AND start time, never by pid (or an inode) alone.

/// Field 22 of `/proc/PID/stat` (`starttime`, clock ticks after boot), or `None` when no such
/// process exists. The command name (field 2) may hold spaces and parentheses, so the fields are
/// counted after its last `)`.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; starttime is field 22, the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and is the process that had `start` as its start time (a zombie counts
/// as gone).
pub fn alive(pid: i32, start: u64) -> bool {
    if start_time(pid) != Some(start) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Sends `signal` to `pid` only if it is still the process started at `start`. Uses a pidfd
/// opened after the check, then checks again, so a pid reused in between is never signalled.
/// Returns whether the signal was sent.
pub fn signal_checked(pid: i32, start: u64, signal: i32) -> bool {
    if !alive(pid, start) {
        return false;
    }
    // SAFETY: pidfd_open with a plain pid.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return false;
    }
    // The pidfd now pins this exact process; if it is still the one we checked, signal it.
    let ok = alive(pid, start)
        // SAFETY: a pidfd we own, no siginfo.
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd as i32,
                signal,
                std::ptr::null::<u8>(),
                0,
            )
        } == 0;
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd as i32) };
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_and_of_a_name_with_parens() {
        let me = std::process::id() as i32;
        let s = start_time(me).unwrap();
        assert!(alive(me, s));
        assert!(!alive(me, s + 1));
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 100 1";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(start_time(0), None);
    }

    #[test]
    fn signal_checked_refuses_a_wrong_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let s = start_time(pid).unwrap();
        assert!(!signal_checked(pid, s + 7, libc::SIGKILL));
        assert!(child.try_wait().unwrap().is_none(), "must still run");
        assert!(signal_checked(pid, s, libc::SIGKILL));
        assert!(child.wait().unwrap().code().is_none());
    }
}
