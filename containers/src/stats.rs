//! `rbuild stats --no-stream`: CPU, memory, block I/O and process count of running containers,
//! summed over the processes of each container's pid namespace (containers have cgroups of their
//! own only when they have limits; the memory limit shown is the container's `--memory`, else the
//! machine's memory).

use std::time::{Duration, Instant};

use crate::freezer::processes_of;

/// One sample of a container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// CPU use over the sampling interval, in percent of one CPU (as Docker).
    pub cpu_percent: f64,
    /// Resident memory of the processes, bytes.
    pub memory: u64,
    /// Bytes read from and written to storage.
    pub block_io: (u64, u64),
    /// Number of processes.
    pub pids: usize,
}

fn ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0 };
    let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
    // utime, stime are fields 14 and 15 (the 12th and 13th after the state).
    let n = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn io(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"))
}

/// Samples the containers whose PID 1 are `pids` over `interval` (CPU needs two readings).
pub fn sample(pids: &[i32], interval: Duration) -> Vec<Sample> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Per process: a process that exits between the readings must not make the total go down.
    let before: Vec<std::collections::HashMap<i32, u64>> = pids
        .iter()
        .map(|p| {
            processes_of(*p)
                .into_iter()
                .map(|q| (q, ticks(q)))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(interval);
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    pids.iter()
        .zip(before)
        .map(|(p, b)| {
            let procs = processes_of(*p);
            let used: u64 = procs
                .iter()
                .map(|q| ticks(*q).saturating_sub(b.get(q).copied().unwrap_or(0)))
                .sum();
            let (r, w) = procs.iter().fold((0, 0), |(r, w), p| {
                let (a, b) = io(*p);
                (r + a, w + b)
            });
            Sample {
                cpu_percent: used as f64 / hz / secs * 100.0,
                memory: procs.iter().copied().map(rss).sum(),
                block_io: (r, w),
                pids: procs.len(),
            }
        })
        .collect()
}

/// The machine's memory (the limit of a container without `--memory`).
pub fn host_memory() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_uses_cpu() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Our own pid namespace: the sample covers every process of it, the busy one included.
        let s = &sample(&[pid], Duration::from_millis(300))[0];
        child.kill().unwrap();
        let _ = child.wait();
        assert!(s.cpu_percent > 5.0, "{s:?}");
        assert!(s.pids > 1 && s.memory > 0);
        assert!(host_memory() > 0);
    }
}
