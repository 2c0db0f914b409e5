//! `rbuild run`: flags, stdio (pipes or a pty in raw mode), signal forwarding, exit codes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use rbuild_cache::Store;
use rbuild_containers::run::{
    self as container, Bind, HealthOverride, LogOptions, RunRequest, Tmpfs, Volume,
};

use crate::parse_ref;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub(crate) struct RunArgs {
    /// Remove the container and its writable layer when it exits.
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY (raw mode on the host terminal, resizes and Ctrl-C pass through).
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable K=V, or K to pass the host's value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file (K=V lines; # comments) (repeatable).
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Bind mount /HOST:/DST[:ro], or named volume NAME:/DST[:ro], or anonymous volume /DST.
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Mount a tmpfs at DST[:OPTIONS] (e.g. /run:size=64m).
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Overwrite the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Network: bridge (the default network), a network's name, host, none or container:NAME.
    #[arg(long, alias = "net")]
    network: Option<String>,
    /// Publish a port: [[IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp] (no host port: a free one).
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Another name the container answers to on its user-defined network (repeatable).
    #[arg(long = "network-alias", alias = "net-alias")]
    network_alias: Vec<String>,
    /// Add a line to /etc/hosts: NAME:IP (IP may be host-gateway) (repeatable).
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// A DNS server for the container (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// Legacy link to a running container: NAME[:ALIAS] becomes an /etc/hosts entry.
    #[arg(long)]
    link: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Memory limit (e.g. 64m, 1g); the container is OOM-killed above it.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of processes (0 or -1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Name of the container (default: a generated one).
    #[arg(long)]
    name: Option<String>,
    /// Run an init as PID 1 that forwards signals and reaps zombies (the command runs as its child).
    #[arg(long)]
    init: bool,
    /// Run in the background under a monitor and print the container id.
    #[arg(short = 'd', long)]
    pub(crate) detach: bool,
    /// Set a label K=V on the container (repeatable).
    #[arg(short = 'l', long = "label")]
    label: Vec<String>,
    /// Write the container id to this file (which must not exist).
    #[arg(long)]
    cidfile: Option<PathBuf>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped (detached containers).
    #[arg(long, default_value = "no")]
    restart: String,
    /// Signal `stop` sends first (default: the image's STOPSIGNAL, else SIGTERM).
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long)]
    stop_timeout: Option<u32>,
    /// Command the HEALTHCHECK runs (with /bin/sh -c).
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between health probes (e.g. 30s, 1m30s).
    #[arg(long)]
    health_interval: Option<String>,
    /// Time a health probe may take.
    #[arg(long)]
    health_timeout: Option<String>,
    /// Consecutive failures that make the container unhealthy.
    #[arg(long)]
    health_retries: Option<u32>,
    /// Time after start during which failed probes do not count.
    #[arg(long)]
    health_start_period: Option<String>,
    /// Disable the image's HEALTHCHECK.
    #[arg(long)]
    no_healthcheck: bool,
    /// Log driver option: max-size=SIZE, max-file=N (json-file driver).
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    /// Image to run.
    image: String,
    /// Command and arguments.
    #[arg(allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// Parses `--env-file` content as Docker: `K=V` lines, `K` alone takes the host's value, blank
/// lines and `#` comments skipped.
pub(crate) fn parse_env_file(path: &Path, text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let key = l.split('=').next().unwrap_or_default();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "{}:{}: invalid variable name {key:?}; lines must be KEY=VALUE or KEY",
                path.display(),
                n + 1
            );
        }
        if l.contains('=') {
            out.push(l.to_string());
        } else if let Ok(v) = std::env::var(l) {
            out.push(format!("{l}={v}"));
        }
    }
    Ok(out)
}

/// The three kinds of `-v`.
#[derive(Debug, PartialEq)]
pub(crate) enum VolumeArg {
    Bind(Bind),
    Named(Volume),
}

pub(crate) fn parse_volume(spec: &str, cwd: &Path) -> Result<VolumeArg> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => bail!("-v {spec}: expected /HOST:/DST[:ro], NAME:/DST[:ro] or /DST"),
    };
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        other => bail!("-v {spec}: unknown mode {other:?}; use ro or rw"),
    };
    if !dst.starts_with('/') {
        bail!("-v {spec}: the container path {dst:?} must be absolute");
    }
    if src.is_empty() {
        // An anonymous volume, as `docker run -v /data`.
        let name = format!("anon-{:016x}", rand_u64());
        return Ok(VolumeArg::Named(Volume {
            name,
            target: dst.into(),
            read_only,
        }));
    }
    if src.starts_with('/') || src.starts_with('.') {
        let p = cwd.join(src);
        let source = std::fs::canonicalize(&p).with_context(|| {
            format!(
                "-v {spec}: host path {} does not exist; create it first",
                p.display()
            )
        })?;
        return Ok(VolumeArg::Bind(Bind {
            source,
            target: dst.into(),
            read_only,
        }));
    }
    if !rbuild_cache::valid_name(src) {
        bail!("-v {spec}: {src:?} is neither an absolute host path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)");
    }
    Ok(VolumeArg::Named(Volume {
        name: src.into(),
        target: dst.into(),
        read_only,
    }))
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) ^ std::process::id() as u64
}

/// Parses a Go-style duration as Docker's flags take it: `1h2m3.5s`, `500ms`, `10s`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let bad = || anyhow!("invalid duration {s:?}: use e.g. 30s, 1m30s or 500ms");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let v: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mul = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += v * mul;
        rest = &rest[u..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

fn log_options(opts: &[String]) -> Result<LogOptions> {
    let mut l = LogOptions::default();
    for o in opts {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| anyhow!("--log-opt {o}: expected KEY=VALUE"))?;
        match k {
            "max-size" => {
                l.max_size = Some(
                    container::parse_size(v)
                        .ok_or_else(|| anyhow!("--log-opt {o}: expected a size such as 10m"))?
                        as u64,
                )
            }
            "max-file" => {
                l.max_file = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| anyhow!("--log-opt {o}: expected a number of files >= 1"))?
            }
            _ => {
                bail!("--log-opt {o}: unknown option for the json-file driver (max-size, max-file)")
            }
        }
    }
    Ok(l)
}

fn request(args: &RunArgs) -> Result<RunRequest> {
    let network = crate::network_cmds::network_config(
        args.network.as_deref(),
        &args.network_alias,
        &args.publish,
        args.publish_all,
        &args.add_host,
        &args.dns,
        &args.link,
    )?;
    let mut env = Vec::new();
    for f in &args.env_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--env-file {}: cannot read it", f.display()))?;
        env.extend(parse_env_file(f, &text)?);
    }
    env.extend(args.env.iter().cloned());
    let cwd = std::env::current_dir().context("current directory")?;
    let (mut binds, mut volumes) = (Vec::new(), Vec::new());
    for v in &args.volume {
        match parse_volume(v, &cwd)? {
            VolumeArg::Bind(b) => binds.push(b),
            VolumeArg::Named(n) => volumes.push(n),
        }
    }
    let mut tmpfs = Vec::new();
    for t in &args.tmpfs {
        let (target, opts) = t.split_once(':').unwrap_or((t, ""));
        if !target.starts_with('/') {
            bail!("--tmpfs {t}: the container path must be absolute");
        }
        tmpfs.push(Tmpfs {
            target: target.into(),
            options: opts
                .split(',')
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect(),
        });
    }
    let memory = match &args.memory {
        None => None,
        Some(m) => {
            let n = container::parse_size(m)
                .ok_or_else(|| anyhow!("--memory {m}: expected a size such as 64m or 1g"))?;
            if n < 6 << 20 {
                bail!("--memory {m}: the minimum memory limit is 6m");
            }
            Some(n)
        }
    };
    if let Some(c) = args.cpus {
        let max = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if !(c > 0.0 && c <= max) {
            bail!("--cpus {c}: must be more than 0 and at most the {max} CPUs of this machine");
        }
    }
    Ok(RunRequest {
        cmd: args.cmd.clone(),
        entrypoint: args.entrypoint.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        network,
        tty: args.tty,
        read_only: args.read_only,
        name: args.name.clone(),
        remove: args.rm,
        binds,
        volumes,
        tmpfs,
        memory,
        cpus: args.cpus,
        pids_limit: args.pids_limit.filter(|p| *p > 0),
        init: args.init,
        interactive: args.interactive,
        labels: args
            .label
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        restart: args.restart.parse().map_err(|e: String| anyhow!(e))?,
        stop_signal: args.stop_signal.clone(),
        stop_timeout: args.stop_timeout,
        health: HealthOverride {
            disable: args.no_healthcheck,
            cmd: args.health_cmd.clone(),
            test: None,
            interval: args
                .health_interval
                .as_deref()
                .map(parse_duration)
                .transpose()?,
            timeout: args
                .health_timeout
                .as_deref()
                .map(parse_duration)
                .transpose()?,
            retries: args.health_retries,
            start_period: args
                .health_start_period
                .as_deref()
                .map(parse_duration)
                .transpose()?,
        },
        log: log_options(&args.log_opt)?,
    })
}

/// Restores the host terminal's settings on drop.
pub(crate) struct RawMode {
    fd: std::io::Stdin,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub(crate) fn enable() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let fd = std::io::stdin();
        let saved = tcgetattr(fd.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            self.fd.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The host terminal's size (rows, cols) from stdout or stdin.
pub(crate) fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: zeroed winsize is valid; TIOCGWINSZ only writes it.
    unsafe {
        let mut ws: nix::libc::winsize = std::mem::zeroed();
        if nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) != 0
            && nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) != 0
        {
            return None;
        }
        Some((ws.ws_row, ws.ws_col))
    }
}

/// Copies the host terminal's window size (from stdout or stdin) to the pty.
fn copy_winsize(master: i32) {
    // SAFETY: zeroed winsize is valid; ioctls on fds we hold (failure leaves it zeroed).
    unsafe {
        let mut ws: nix::libc::winsize = std::mem::zeroed();
        if nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) != 0
            && nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) != 0
        {
            return;
        }
        nix::libc::ioctl(master, nix::libc::TIOCSWINSZ, &ws);
    }
}

const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Forwards signals sent to rbuild to the container's PID 1, as `docker run` does. Signals the
/// terminal sends to the whole foreground process group (Ctrl-C without -t) already reach the
/// sandbox helper, which forwards them itself, so those are not sent twice. With a pty, SIGWINCH
/// resizes it (the kernel then signals the container's foreground process group).
pub(crate) fn forward_signals(set: SigSet, pid: i32, master: Option<i32>) {
    std::thread::spawn(move || loop {
        // SAFETY: zeroed siginfo is valid; sigwaitinfo on a set blocked in every thread.
        let (sig, code) = unsafe {
            let mut info: nix::libc::siginfo_t = std::mem::zeroed();
            let s = nix::libc::sigwaitinfo(set.as_ref(), &mut info);
            (s, info.si_code)
        };
        if sig < 0 {
            continue;
        }
        if sig == nix::libc::SIGWINCH {
            if let Some(m) = master {
                copy_winsize(m);
                continue;
            }
        }
        if code == nix::libc::SI_KERNEL {
            continue;
        }
        // SAFETY: plain kill.
        unsafe { nix::libc::kill(pid, sig) };
    });
}

/// `rbuild create`: the container, not started; prints its id.
pub(crate) fn create(store: &Store, args: RunArgs) -> Result<ExitCode> {
    let image = parse_ref(&args.image)?;
    let req = request(&args)?;
    check_cidfile(&args)?;
    let rec = container::create(store, &image, &req).map_err(|e| anyhow!("{e}"))?;
    write_cidfile(&args, &rec.id)?;
    println!("{}", rec.id);
    Ok(ExitCode::SUCCESS)
}

fn check_cidfile(args: &RunArgs) -> Result<()> {
    if let Some(p) = &args.cidfile {
        if p.exists() {
            bail!(
                "--cidfile {}: the file exists; remove it or choose another",
                p.display()
            );
        }
    }
    Ok(())
}

fn write_cidfile(args: &RunArgs, id: &str) -> Result<()> {
    if let Some(p) = &args.cidfile {
        std::fs::write(p, id).with_context(|| format!("--cidfile {}: writing it", p.display()))?;
    }
    Ok(())
}

/// `rbuild run -d`: create, start under a monitor, print the full id once PID 1 runs.
fn run_detached(store: &Store, args: RunArgs) -> Result<ExitCode> {
    if args.rm && args.restart != "no" {
        bail!("--rm and --restart cannot be combined (Docker refuses it too)");
    }
    let image = parse_ref(&args.image)?;
    let req = request(&args)?;
    check_cidfile(&args)?;
    let rec = container::create(store, &image, &req).map_err(|e| anyhow!("{e}"))?;
    write_cidfile(&args, &rec.id)?;
    if let Err(e) = rbuild_containers::lifecycle::start(store, &rec.id) {
        if args.rm {
            let _ = rbuild_containers::lifecycle::remove(store, &rec.id, true);
        }
        return Err(anyhow!("{e}"));
    }
    println!("{}", rec.id);
    Ok(ExitCode::SUCCESS)
}

/// Signals forwarded to a container's process (blocked in every thread, taken by a waiter).
pub(crate) fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// With a pty: copies its output to stdout and (with `interactive`) stdin to it, the host
/// terminal in raw mode; returns the terminal guard and the output thread to join.
#[allow(clippy::type_complexity)]
pub(crate) fn pump_pty(
    master: Option<&OwnedFd>,
    interactive: bool,
) -> Result<(Option<RawMode>, Option<std::thread::JoinHandle<()>>)> {
    let mut raw = None;
    let mut output = None;
    if let Some(m) = master {
        copy_winsize(m.as_raw_fd());
        // SAFETY: isatty on fd 0.
        if interactive && unsafe { nix::libc::isatty(0) } == 1 {
            raw = RawMode::enable();
        }
        let mut from = File::from(m.try_clone().context("dup pty master")?);
        output = Some(std::thread::spawn(move || {
            let mut out = std::io::stdout().lock();
            let mut buf = [0u8; 8192];
            // EIO once the container's side of the pty is closed.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }));
        if interactive {
            let mut to = File::from(m.try_clone().context("dup pty master")?);
            std::thread::spawn(move || {
                let mut inp = std::io::stdin().lock();
                let mut buf = [0u8; 4096];
                while let Ok(n) = inp.read(&mut buf) {
                    if n == 0 {
                        // End of input: send EOF (^D) as a terminal would.
                        let _ = to.write_all(&[4]);
                        break;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    }
    Ok((raw, output))
}

pub(crate) fn run(store: &Store, args: RunArgs) -> Result<ExitCode> {
    if args.detach {
        return run_detached(store, args);
    }
    let image = parse_ref(&args.image)?;
    check_cidfile(&args)?;
    let req = request(&args)?;
    if args.restart != "no" {
        bail!(
            "--restart {}: restart policies apply to detached containers; add -d",
            args.restart
        );
    }
    // Block the forwarded signals before any thread starts, so the forwarding thread gets them.
    let set = forwarded_set();
    set.thread_block().context("blocking signals")?;

    let stdin = if args.interactive && !args.tty {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut handle = container::start(
        store,
        &image,
        &req,
        (stdin, Stdio::inherit(), Stdio::inherit()),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let pid = handle.container().pid() as i32;
    let master: Option<OwnedFd> = handle.container().pty_master();
    let (raw, output) = pump_pty(master.as_ref(), args.interactive)?;
    forward_signals(set, pid, master.as_ref().map(|m| m.as_raw_fd()));
    let name = handle.name().to_string();
    if let Err(e) = write_cidfile(&args, handle.id()) {
        eprintln!("ERROR: {e:#}");
    }
    let outcome = handle.wait();
    if let Some(o) = output {
        let _ = o.join();
    }
    drop(raw);
    let outcome = outcome.map_err(|e| anyhow!("{e}"))?;
    if outcome.oom_killed {
        eprintln!(
            "rbuild: container {name} was killed by the kernel's OOM killer: it exceeded its memory limit{}; raise --memory",
            args.memory.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::from(outcome.code().clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file() {
        let p = Path::new("f.env");
        let e = parse_env_file(p, "# c\n\nA=1\n  B=two words\nC=\n").unwrap();
        assert_eq!(e, vec!["A=1", "B=two words", "C="]);
        let err = parse_env_file(p, "A=1\nbad key=2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.env:2"), "{err}");
    }

    #[test]
    fn volumes() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_str().unwrap();
        match parse_volume(&format!("{host}:/data:ro"), Path::new("/")).unwrap() {
            VolumeArg::Bind(b) => assert!(b.read_only && b.target == "/data"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_volume("cache:/c", Path::new("/")).unwrap(),
            VolumeArg::Named(Volume {
                name: "cache".into(),
                target: "/c".into(),
                read_only: false
            })
        );
        assert!(
            matches!(parse_volume("/d", Path::new("/")).unwrap(), VolumeArg::Named(v) if v.name.starts_with("anon-"))
        );
        assert!(parse_volume("x:rel", Path::new("/")).is_err());
        assert!(parse_volume("x:/d:rx", Path::new("/")).is_err());
        assert!(parse_volume("/does/not/exist:/d", Path::new("/")).is_err());
        assert!(parse_volume("a:b:c:d", Path::new("/")).is_err());
    }

    #[test]
    fn durations_and_log_options() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x").is_err());
        let l = log_options(&["max-size=1k".into(), "max-file=3".into()]).unwrap();
        assert_eq!((l.max_size, l.max_file), (Some(1024), 3));
        assert!(log_options(&["mode=non-blocking".into()]).is_err());
        assert!(log_options(&["max-file=0".into()]).is_err());
    }
}
