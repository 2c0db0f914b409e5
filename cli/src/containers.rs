//! The container commands (Docker's flags and output shapes): `ps`, `rm`, `diff`, `commit`, and
//! the [`ContainerCommand`]s flattened into the top level: `create`, `start`, `stop`, `restart`,
//! `kill`, `wait`, `rename`, `logs`, `exec`, `inspect`, `top`, `cp`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rbuild_cache::Store;
use rbuild_containers::lifecycle::{self, Started};
use rbuild_containers::logs::{Entry, LogReader};
use rbuild_containers::state::{self, ContainerState, Status};
use rbuild_containers::{exec, run as container};
use serde_json::{json, Value};

use crate::parse_ref;

fn e(err: rbuild_containers::Error) -> anyhow::Error {
    anyhow!("{err}")
}

#[derive(Args, Debug)]
pub(crate) struct PsArgs {
    /// Show every container (by default only running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only print container ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Show the N most recently created containers (every state).
    #[arg(short = 'n', long = "last")]
    last: Option<usize>,
    /// Show the latest created container (every state).
    #[arg(short = 'l', long)]
    latest: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    no_trunc: bool,
    /// Show the size of each container's writable layer (and with its image: virtual).
    #[arg(short = 's', long)]
    size: bool,
    /// Filter: status=, name=, label=KEY[=VALUE], ancestor=, id= (repeatable; all must match).
    #[arg(short = 'f', long = "filter")]
    filter: Vec<String>,
    /// Go-template-like format: `{{.ID}}\t{{.Names}}`, `table ...`, or `json`.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Also remove the anonymous volumes of the container.
    #[arg(short = 'v', long)]
    volumes: bool,
    /// Containers (names or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct DiffArgs {
    /// Container (name or id prefix).
    container: String,
}

#[derive(Args, Debug)]
pub(crate) struct CommitArgs {
    /// Container (name or id prefix).
    container: String,
    /// Name of the new image, e.g. web:patched.
    image: String,
}

/// Container lifecycle commands (flattened into the top level).
#[derive(Subcommand, Debug)]
pub(crate) enum ContainerCommand {
    /// Create a container without starting it (prints its id).
    Create(Box<crate::run::RunArgs>),
    /// Start created or stopped containers.
    Start {
        /// Attach: print the container's output until it exits, return its exit code.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Attach stdin too (with -a; detach with Ctrl-P Ctrl-Q).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers (stop signal, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before SIGKILL (default: the container's --stop-timeout, else 10).
        #[arg(short = 't', long = "time")]
        time: Option<u32>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop then start containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time")]
        time: Option<u32>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal (default SIGKILL) to running containers.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long = "signal", default_value = "SIGKILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Block until containers stop, then print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Rename a container.
    Rename {
        /// Container.
        container: String,
        /// New name.
        new_name: String,
    },
    /// Print a container's logs.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Show containers' low-level information (Docker's JSON shape).
    Inspect {
        /// Go-template-like format, e.g. `{{.State.Status}}` or `{{json .State}}`.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show the processes of a running container.
    Top {
        /// Container.
        container: String,
    },
    /// Freeze every process of running containers.
    Pause {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Thaw paused containers.
    Unpause {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show CPU, memory, block I/O and process counts of running containers.
    Stats {
        /// Print one sample and exit.
        #[arg(long)]
        no_stream: bool,
        /// Also list stopped containers.
        #[arg(short = 'a', long)]
        all: bool,
        /// Containers (default: every running one).
        containers: Vec<String>,
    },
    /// Attach to a running container's stdio (detach with Ctrl-P Ctrl-Q).
    Attach {
        /// Do not send stdin.
        #[arg(long)]
        no_stdin: bool,
        /// Key sequence that detaches (e.g. ctrl-p,ctrl-q or ctrl-a,d).
        #[arg(long, default_value = "ctrl-p,ctrl-q")]
        detach_keys: String,
        /// Container.
        container: String,
    },
    /// Copy files between a container and the host: `cp NAME:SRC DST`, `cp SRC NAME:DST`
    /// (`-` for a tar stream on stdin/stdout). Works on stopped containers.
    Cp {
        /// Keep owners (uid:gid) from the source.
        #[arg(short = 'a', long)]
        archive: bool,
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// Follow until the container exits.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Number of lines from the end (or `all`).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Only lines since this time (RFC 3339, Unix seconds, or a duration like 10m ago).
    #[arg(long)]
    since: Option<String>,
    /// Only lines before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Container.
    container: String,
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub(crate) struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Set an environment variable K=V (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Container.
    container: String,
    /// Command and arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

pub(crate) fn dispatch(store: &Store, cmd: ContainerCommand) -> Result<ExitCode> {
    match cmd {
        ContainerCommand::Create(a) => crate::run::create(store, *a),
        ContainerCommand::Start {
            attach: a,
            interactive,
            containers,
        } => {
            if interactive {
                if containers.len() != 1 {
                    bail!("start -i: give exactly one container");
                }
                lifecycle::start(store, &containers[0]).map_err(e)?;
                return attach(store, &containers[0], true, "ctrl-p,ctrl-q");
            }
            start(store, a, &containers)
        }
        ContainerCommand::Stop { time, containers } => each(&containers, |n| {
            Ok(lifecycle::stop(store, n, time).map_err(e)?.name)
        }),
        ContainerCommand::Restart { time, containers } => each(&containers, |n| {
            lifecycle::restart(store, n, time).map_err(e)?;
            Ok(n.to_string())
        }),
        ContainerCommand::Kill { signal, containers } => {
            let sig = lifecycle::parse_signal(&signal).map_err(e)?;
            let stopping = matches!(sig, 9 | 15 | 2 | 3);
            each(&containers, |n| {
                lifecycle::kill(store, n, sig, stopping).map_err(e)?;
                Ok(n.to_string())
            })
        }
        ContainerCommand::Wait { containers } => each(&containers, |n| {
            Ok(lifecycle::wait(store, n).map_err(e)?.to_string())
        }),
        ContainerCommand::Rename {
            container,
            new_name,
        } => {
            lifecycle::rename(store, &container, &new_name).map_err(e)?;
            Ok(ExitCode::SUCCESS)
        }
        ContainerCommand::Logs(a) => logs(store, a),
        ContainerCommand::Exec(a) => exec_cmd(store, a),
        ContainerCommand::Inspect { format, containers } => inspect(store, format, &containers),
        ContainerCommand::Top { container } => top(store, &container),
        ContainerCommand::Cp { archive, src, dst } => cp(store, archive, &src, &dst),
        ContainerCommand::Attach {
            no_stdin,
            detach_keys,
            container,
        } => attach(store, &container, !no_stdin, &detach_keys),
        ContainerCommand::Pause { containers } => each(&containers, |n| {
            lifecycle::set_paused(store, n, true).map_err(e)?;
            Ok(n.to_string())
        }),
        ContainerCommand::Unpause { containers } => each(&containers, |n| {
            lifecycle::set_paused(store, n, false).map_err(e)?;
            Ok(n.to_string())
        }),
        ContainerCommand::Stats {
            no_stream,
            all,
            containers,
        } => stats(store, no_stream, all, &containers),
    }
}

/// Runs `f` for each container, printing its result; errors are printed and make the exit code 1.
fn each(names: &[String], mut f: impl FnMut(&str) -> Result<String>) -> Result<ExitCode> {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(out) => println!("{out}"),
            Err(err) => {
                eprintln!("Error response from daemon: {err:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn start(store: &Store, attach: bool, names: &[String]) -> Result<ExitCode> {
    if attach {
        if names.len() != 1 {
            bail!("start -a: give exactly one container");
        }
        let st = state::get(store, &names[0]).map_err(e)?;
        // Logs written from now on are this run's.
        let mut reader = LogReader::new(&store.container_dir(&st.record.name));
        reader.read_existing()?;
        lifecycle::start(store, &st.record.id).map_err(e)?;
        follow(store, &st.record.id, &mut reader, &LogFilter::default())?;
        let code = lifecycle::wait(store, &st.record.id).map_err(e)?;
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    each(names, |n| match lifecycle::start(store, n).map_err(e)? {
        Started::Now(_) | Started::AlreadyRunning => Ok(n.to_string()),
    })
}

/// Parses `--detach-keys`: comma-separated `ctrl-X` or single characters.
pub(crate) fn parse_detach_keys(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for k in s.split(',') {
        let k = k.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let b = match c.as_bytes() {
                [b] if b.is_ascii_alphabetic() => b.to_ascii_lowercase() - b'a' + 1,
                b"@" => 0,
                b"[" => 27,
                b"\\" => 28,
                b"]" => 29,
                b"^" => 30,
                b"_" => 31,
                _ => bail!("--detach-keys {s}: unknown key {k:?}"),
            };
            out.push(b);
        } else if k.len() == 1 {
            out.push(k.as_bytes()[0]);
        } else {
            bail!("--detach-keys {s}: unknown key {k:?} (use ctrl-<letter> or one character)");
        }
    }
    if out.is_empty() {
        bail!("--detach-keys: empty sequence");
    }
    Ok(out)
}

/// Finds the detach sequence in typed input: bytes to send on, and whether it completed.
pub(crate) struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    pub(crate) fn new(keys: Vec<u8>) -> Self {
        DetachScanner { keys, matched: 0 }
    }

    /// Returns the bytes to forward (a partial match is held back) and whether to detach.
    pub(crate) fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

fn attach(store: &Store, name: &str, with_stdin: bool, detach_keys: &str) -> Result<ExitCode> {
    use rbuild_containers::attach::Attached;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let keys = parse_detach_keys(detach_keys)?;
    let st = state::get(store, name).map_err(e)?;
    let conf = container::ContainerConfig::load(store, &st.record.name).map_err(e)?;
    let mut conn = Attached::connect(store, &st.record.name).map_err(e)?;
    // SAFETY: isatty on fd 0.
    let stdin_tty = unsafe { nix::libc::isatty(0) } == 1;
    let _raw = if conf.tty && with_stdin && stdin_tty {
        crate::run::RawMode::enable()
    } else {
        None
    };
    let detached = Arc::new(AtomicBool::new(false));
    if conf.tty {
        if let Some((rows, cols)) = crate::run::terminal_size() {
            let _ = conn.sender().map_err(e)?.resize(rows, cols);
        }
    }
    if with_stdin && (conf.interactive || conf.tty) {
        let mut tx = conn.sender().map_err(e)?;
        let done = detached.clone();
        let shut = conn.sender().map_err(e)?;
        std::thread::spawn(move || {
            let mut scan = DetachScanner::new(keys);
            let mut buf = [0u8; 4096];
            let mut inp = std::io::stdin().lock();
            loop {
                match std::io::Read::read(&mut inp, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.eof();
                        return;
                    }
                    Ok(n) => {
                        let (fwd, detach) = scan.feed(&buf[..n]);
                        if !fwd.is_empty() && tx.stdin(&fwd).is_err() {
                            return;
                        }
                        if detach {
                            done.store(true, Ordering::SeqCst);
                            shut.close();
                            return;
                        }
                    }
                }
            }
        });
    }
    while let Ok(Some((stream, data))) = conn.next_output() {
        if stream == 2 {
            let mut err = std::io::stderr().lock();
            err.write_all(&data)?;
            err.flush()?;
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    if detached.load(Ordering::SeqCst) {
        return Ok(ExitCode::SUCCESS);
    }
    let code = lifecycle::wait(store, &st.record.id).map_err(e)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Splits `NAME:PATH` (a container side) from a host path (which has no `:` before a `/`).
fn container_side(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') || arg == "-" {
        return None;
    }
    arg.split_once(':')
}

fn cp(store: &Store, archive: bool, src: &str, dst: &str) -> Result<ExitCode> {
    use rbuild_containers::cp;
    match (container_side(src), container_side(dst)) {
        (Some((name, path)), None) => {
            cp::copy_out(store, name, path, dst, archive, std::io::stdout().lock()).map_err(e)?
        }
        (None, Some((name, path))) => {
            cp::copy_in(store, name, src, path, archive, std::io::stdin().lock()).map_err(e)?
        }
        (Some(_), Some(_)) => {
            bail!("cp: copying between containers is not supported; copy through the host")
        }
        (None, None) => bail!("cp: one of SRC and DST must be CONTAINER:PATH"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `v` with 4 significant digits, trailing zeros dropped (Go's `%.4g` for these ranges).
fn four_digits(v: f64) -> String {
    let int_digits = if v < 1.0 {
        1
    } else {
        (v.log10().floor() as usize) + 1
    };
    let s = format!("{v:.*}", 4usize.saturating_sub(int_digits));
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Docker's `units.BytesSize` (binary units: `1.5MiB`).
fn bytes_binary(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{}{}", four_digits(v), units[i])
}

/// Docker's `units.HumanSize` (decimal units: `12.3kB`).
fn bytes_decimal(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", four_digits(v), units[i])
}

fn stats(store: &Store, no_stream: bool, all: bool, names: &[String]) -> Result<ExitCode> {
    loop {
        let list: Vec<ContainerState> = if names.is_empty() {
            state::list(store)
                .map_err(e)?
                .into_iter()
                .filter(|s| all || s.status.is_running())
                .collect()
        } else {
            names
                .iter()
                .map(|n| state::get(store, n).map_err(e))
                .collect::<Result<_>>()?
        };
        let pids: Vec<i32> = list.iter().map(|s| s.pid().unwrap_or(0)).collect();
        let samples = rbuild_containers::stats::sample(&pids, Duration::from_millis(500));
        let host = rbuild_containers::stats::host_memory();
        let mut lines = vec![[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS",
        ]
        .map(String::from)
        .to_vec()];
        for (st, s) in list.iter().zip(samples) {
            let limit = container::ContainerConfig::load(store, &st.record.name)
                .ok()
                .and_then(|c| c.memory)
                .map_or(host, |m| m as u64);
            let running = st.pid().is_some();
            let dash = |v: String| if running { v } else { "--".to_string() };
            lines.push(vec![
                st.record.id[..12].to_string(),
                st.record.name.clone(),
                dash(format!("{:.2}%", s.cpu_percent)),
                dash(format!(
                    "{} / {}",
                    bytes_binary(s.memory),
                    bytes_binary(limit)
                )),
                dash(format!(
                    "{:.2}%",
                    if limit > 0 {
                        s.memory as f64 * 100.0 / limit as f64
                    } else {
                        0.0
                    }
                )),
                // Host or no network: nothing of its own to count.
                "--".to_string(),
                dash(format!(
                    "{} / {}",
                    bytes_decimal(s.block_io.0),
                    bytes_decimal(s.block_io.1)
                )),
                dash(s.pids.to_string()),
            ]);
        }
        let mut out = std::io::stdout().lock();
        if !no_stream {
            // Clear the screen and go home, as `docker stats` redraws.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write_table(&mut out, &lines)?;
        if no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Docker's `units.HumanDuration`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h) = (s / 60, s / 3600);
    match () {
        _ if s < 1 => "Less than a second".into(),
        _ if s == 1 => "1 second".into(),
        _ if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{} days", h / 24),
        _ if h < 24 * 30 * 2 => format!("{} weeks", h / 24 / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", h / 24 / 30),
        _ => format!("{} years", h / 24 / 365),
    }
}

fn since(rfc: Option<&str>) -> Duration {
    rfc.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// `Up 3 minutes (healthy)`, `Exited (0) 2 seconds ago`, `Created`, ... as `docker ps`.
pub(crate) fn status_text(st: &ContainerState) -> String {
    let r = &st.record;
    match st.status {
        Status::Created => "Created".into(),
        Status::Running | Status::Paused => {
            let mut s = format!("Up {}", human_duration(since(r.started_at.as_deref())));
            if st.status == Status::Paused {
                s.push_str(" (Paused)");
            } else if let Some(h) = &r.health {
                let h = if h.status == "starting" {
                    "health: starting"
                } else {
                    &h.status
                };
                s.push_str(&format!(" ({h})"));
            }
            s
        }
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            r.exit_code.unwrap_or(0),
            human_duration(since(r.finished_at.as_deref()))
        ),
        Status::Exited => match r.exit_code {
            Some(code) => format!(
                "Exited ({code}) {} ago",
                human_duration(since(r.finished_at.as_deref()))
            ),
            // A record whose process vanished without an exit (reboot, killed monitor).
            None => format!(
                "Exited (unknown) {} ago",
                human_duration(since(r.started_at.as_deref()))
            ),
        },
    }
}

fn matches_filter(store: &Store, st: &ContainerState, f: &str) -> Result<bool> {
    let (k, v) = f
        .split_once('=')
        .ok_or_else(|| anyhow!("--filter {f}: expected KEY=VALUE"))?;
    let r = &st.record;
    Ok(match k {
        "status" => {
            if !matches!(
                v,
                "created" | "running" | "paused" | "restarting" | "exited" | "removing" | "dead"
            ) {
                bail!("--filter {f}: invalid status (created, restarting, running, removing, paused, exited, dead)");
            }
            st.status.name() == v
        }
        "name" => r.name.contains(v),
        "id" => r.id.starts_with(v),
        "label" => {
            let conf = container::ContainerConfig::load(store, &r.name).ok();
            let labels = conf.map(|c| c.labels).unwrap_or_default();
            match v.split_once('=') {
                Some((lk, lv)) => labels.get(lk).is_some_and(|x| x == lv),
                None => labels.contains_key(v),
            }
        }
        "ancestor" => {
            r.image == v
                || parse_ref(v).is_ok_and(|x| x.to_string() == r.image)
                || r.image_id
                    .trim_start_matches("sha256:")
                    .starts_with(v.trim_start_matches("sha256:"))
        }
        other => bail!("--filter {other}: unsupported filter (status, name, id, label, ancestor)"),
    })
}

/// Replaces `{{.Field}}`, `{{json .}}` and `\t` in a format (the subset of Go templates that
/// `--format` commonly uses).
fn render(tpl: &str, fields: &BTreeMap<&str, String>, whole: &Value) -> String {
    // `\t` and `\n` are escapes of the template's own text, never of the values put in it.
    let literal = |t: &str| t.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tpl;
    while let Some(i) = rest.find("{{") {
        out.push_str(&literal(&rest[..i]));
        let Some(j) = rest[i..].find("}}") else {
            out.push_str(&literal(&rest[i..]));
            rest = "";
            break;
        };
        let expr = rest[i + 2..i + j].trim();
        rest = &rest[i + j + 2..];
        if expr == "json ." {
            out.push_str(&whole.to_string());
        } else if let Some(path) = expr.strip_prefix("json .") {
            out.push_str(&lookup(whole, path).to_string());
        } else if let Some(f) = expr.strip_prefix('.') {
            match fields.get(f) {
                Some(v) => out.push_str(v),
                None => match lookup(whole, f) {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => out.push_str("<no value>"),
                    v => out.push_str(&v.to_string()),
                },
            }
        }
    }
    out.push_str(&literal(rest));
    out
}

/// [`render`] with the document's own fields only (`inspect -f`).
pub(crate) fn render_doc(tpl: &str, doc: &Value) -> String {
    render(tpl, &BTreeMap::new(), doc)
}

fn lookup(v: &Value, path: &str) -> Value {
    let mut cur = v;
    for p in path.split('.').filter(|p| !p.is_empty()) {
        cur = match cur.get(p) {
            Some(x) => x,
            None => return Value::Null,
        };
    }
    cur.clone()
}

/// The fields of one `ps` row (Docker's names: `ID`, `Image`, `Command`, `Status`...).
fn ps_fields(store: &Store, st: &ContainerState, args: &PsArgs) -> BTreeMap<&'static str, String> {
    let trunc = |s: &str, n: usize| -> String {
        if args.no_trunc || s.chars().count() <= n {
            s.to_string()
        } else {
            format!("{}…", s.chars().take(n - 1).collect::<String>())
        }
    };
    let r = &st.record;
    let mut m = BTreeMap::new();
    let id = if args.no_trunc {
        r.id.clone()
    } else {
        r.id.chars().take(12).collect()
    };
    m.insert("ID", id);
    m.insert("Image", r.image.clone());
    m.insert(
        "Command",
        format!("\"{}\"", trunc(&r.command.join(" "), 20)),
    );
    let created = chrono::DateTime::from_timestamp(r.created, 0).unwrap_or_default();
    m.insert(
        "CreatedAt",
        created.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
    );
    m.insert(
        "RunningFor",
        format!(
            "{} ago",
            human_duration((chrono::Utc::now() - created).to_std().unwrap_or_default())
        ),
    );
    m.insert("Status", status_text(st));
    m.insert("State", st.status.name().to_string());
    m.insert("Ports", r.network.ports.join(", "));
    m.insert("Names", r.name.clone());
    let labels = container::ContainerConfig::load(store, &r.name)
        .map(|c| c.labels)
        .unwrap_or_default();
    m.insert(
        "Labels",
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    m.insert("Mounts", r.volumes.join(","));
    m.insert("Networks", r.network.mode.clone());
    if args.size || args.format.as_deref().is_some_and(|f| f.contains(".Size")) {
        let own = crate::system_cmds::tree_size(&store.container_dir(&r.name).join("upper"));
        let image = r
            .manifest
            .parse()
            .ok()
            .and_then(|d| rbuild_exporter::load_image(store, &d).ok())
            .map_or(0, |i| i.size);
        m.insert(
            "Size",
            format!(
                "{} (virtual {})",
                bytes_decimal(own),
                bytes_decimal(own + image)
            ),
        );
    }
    m
}

pub(crate) fn ps(store: &Store, args: PsArgs) -> Result<ExitCode> {
    let mut list = state::list(store).map_err(e)?;
    list.reverse(); // newest first
    let limit = if args.latest { Some(1) } else { args.last };
    let all = args.all || limit.is_some();
    let mut rows = Vec::new();
    for st in list {
        if !all && !st.status.is_running() && st.status != Status::Restarting {
            continue;
        }
        let mut ok = true;
        for f in &args.filter {
            ok &= matches_filter(store, &st, f)?;
        }
        if ok {
            rows.push(st);
        }
    }
    if let Some(n) = limit {
        rows.truncate(n);
    }
    let mut table: Vec<BTreeMap<&str, String>> = Vec::new();
    let mut wholes = Vec::new();
    for st in &rows {
        let m = ps_fields(store, st, &args);
        wholes.push(json!(m));
        table.push(m);
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for m in &table {
            writeln!(out, "{}", m["ID"])?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format.as_deref() {
        Some("json") => {
            for w in &wholes {
                writeln!(out, "{w}")?;
            }
        }
        Some(f) if !f.starts_with("table") => {
            for (m, w) in table.iter().zip(&wholes) {
                writeln!(out, "{}", render(f, m, w))?;
            }
        }
        other => {
            let cols: Vec<(&str, &str)> = match other.and_then(|t| t.strip_prefix("table")) {
                Some(t) if !t.trim().is_empty() => t
                    .split("\\t")
                    .map(|c| {
                        let f = c
                            .trim()
                            .trim_start_matches("{{")
                            .trim_end_matches("}}")
                            .trim();
                        let key = f.trim_start_matches('.');
                        let static_key: &str = [
                            "ID",
                            "Image",
                            "Command",
                            "CreatedAt",
                            "RunningFor",
                            "Status",
                            "State",
                            "Ports",
                            "Names",
                            "Labels",
                            "Mounts",
                            "Networks",
                            "Size",
                        ]
                        .into_iter()
                        .find(|k| *k == key)
                        .unwrap_or("ID");
                        (static_key, header_of(static_key))
                    })
                    .collect(),
                _ => {
                    let mut c = vec![
                        ("ID", "CONTAINER ID"),
                        ("Image", "IMAGE"),
                        ("Command", "COMMAND"),
                        ("RunningFor", "CREATED"),
                        ("Status", "STATUS"),
                        ("Ports", "PORTS"),
                        ("Names", "NAMES"),
                    ];
                    if args.size {
                        c.push(("Size", "SIZE"));
                    }
                    c
                }
            };
            let mut lines: Vec<Vec<String>> =
                vec![cols.iter().map(|(_, h)| h.to_string()).collect()];
            for m in &table {
                lines.push(
                    cols.iter()
                        .map(|(k, _)| m.get(k).cloned().unwrap_or_default())
                        .collect(),
                );
            }
            write_table(&mut out, &lines)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn header_of(key: &str) -> &'static str {
    match key {
        "ID" => "CONTAINER ID",
        "Image" => "IMAGE",
        "Command" => "COMMAND",
        "CreatedAt" => "CREATED AT",
        "RunningFor" => "CREATED",
        "Status" => "STATUS",
        "State" => "STATE",
        "Ports" => "PORTS",
        "Names" => "NAMES",
        "Labels" => "LABELS",
        "Mounts" => "MOUNTS",
        "Size" => "SIZE",
        _ => "NETWORKS",
    }
}

/// Columns padded to their widest cell plus three spaces (Docker's tabwriter settings).
fn write_table(out: &mut impl Write, lines: &[Vec<String>]) -> Result<()> {
    let n = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in lines {
        let mut s = String::new();
        for (i, c) in l.iter().enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        writeln!(out, "{}", s.trim_end())?;
    }
    Ok(())
}

pub(crate) fn rm(store: &Store, args: RmArgs) -> Result<ExitCode> {
    each(&args.containers, |n| {
        let r = lifecycle::remove(store, n, args.force).map_err(e)?;
        if args.volumes {
            for v in r.volumes.iter().filter(|v| v.starts_with("anon-")) {
                if store.volume_users(v)?.is_empty() {
                    store.remove_volume(v)?;
                }
            }
        }
        Ok(n.to_string())
    })
}

pub(crate) fn diff(store: &Store, args: DiffArgs) -> Result<ExitCode> {
    for c in container::diff(store, &args.container).map_err(e)? {
        println!("{} {}", c.kind, c.path);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn commit(store: &Store, args: CommitArgs) -> Result<ExitCode> {
    let target = parse_ref(&args.image)?;
    let id = container::commit(store, &args.container, &target).map_err(e)?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// A time bound of `--since`/`--until`: RFC 3339, Unix seconds (with fraction), or a duration
/// before now (`10m`).
pub(crate) fn parse_time_bound(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_nanos_opt().unwrap_or(0));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i64);
    }
    let d = crate::run::parse_duration(s).map_err(|_| {
        anyhow!("invalid time {s:?}: use RFC 3339 (2026-01-02T15:04:05Z), Unix seconds, or a duration such as 10m")
    })?;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    Ok(now - d.as_nanos() as i64)
}

#[derive(Default)]
struct LogFilter {
    since: Option<i64>,
    until: Option<i64>,
    timestamps: bool,
}

impl LogFilter {
    fn keep(&self, en: &Entry) -> bool {
        let t = en.time_ns();
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Prints a batch: stdout and stderr entries to their streams, buffered, flushed at the end.
    fn print_all<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        let mut err = std::io::BufWriter::new(std::io::stderr().lock());
        for en in entries {
            if !self.keep(en) {
                continue;
            }
            let w: &mut dyn Write = if en.stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            if self.timestamps {
                w.write_all(en.time.as_bytes())?;
                w.write_all(b" ")?;
            }
            w.write_all(en.log.as_bytes())?;
        }
        out.flush()?;
        err.flush()
    }
}

fn logs(store: &Store, a: LogsArgs) -> Result<ExitCode> {
    let st = state::get(store, &a.container).map_err(e)?;
    let filter = LogFilter {
        since: a.since.as_deref().map(parse_time_bound).transpose()?,
        until: a.until.as_deref().map(parse_time_bound).transpose()?,
        timestamps: a.timestamps,
    };
    let mut reader = LogReader::new(&store.container_dir(&st.record.name));
    let mut entries: Vec<Entry> = reader.read_existing()?;
    entries.retain(|x| filter.keep(x));
    if a.tail != "all" {
        let n: usize = a
            .tail
            .parse()
            .map_err(|_| anyhow!("--tail {}: expected a number or all", a.tail))?;
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    filter.print_all(&entries)?;
    if a.follow {
        follow(store, &st.record.id, &mut reader, &filter)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what is appended to the log until the container is no longer supervised (its
/// monitor has written everything), then what is left.
fn follow(store: &Store, id: &str, reader: &mut LogReader, filter: &LogFilter) -> Result<()> {
    loop {
        let Ok(r) = rbuild_containers::run::find_pub(store, id) else {
            return Ok(()); // removed (--rm)
        };
        let live = store.container_running(&r.name);
        filter.print_all(&reader.poll()?)?;
        if !live {
            filter.print_all(&reader.poll()?)?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exec_cmd(store: &Store, a: ExecArgs) -> Result<ExitCode> {
    if a.detach {
        // Detached: the same command in its own session, without stdio; it outlives us.
        let mut cmd = std::process::Command::new("/proc/self/exe");
        // `--root` after the subcommand: a first argument that is no subcommand means `build`.
        cmd.arg("exec").arg("--root").arg(store.root());
        for en in &a.env {
            cmd.args(["-e", en]);
        }
        if let Some(u) = &a.user {
            cmd.args(["-u", u]);
        }
        if let Some(w) = &a.workdir {
            cmd.args(["-w", w]);
        }
        cmd.arg(&a.container).args(&a.cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Fail early (not running) in this process, where the error can be seen.
        let st = state::get(store, &a.container).map_err(e)?;
        if st.pid().is_none() {
            bail!("container {} is not running", st.record.name);
        }
        // SAFETY: setsid between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().context("starting the detached exec")?;
        return Ok(ExitCode::SUCCESS);
    }
    let req = exec::ExecRequest {
        cmd: a.cmd.clone(),
        env: a.env.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        tty: a.tty,
    };
    let set = crate::run::forwarded_set();
    set.thread_block().context("blocking signals")?;
    let stdin = if a.interactive && !a.tty {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut c = exec::exec(
        store,
        &a.container,
        &req,
        (stdin, Stdio::inherit(), Stdio::inherit()),
    )
    .map_err(e)?;
    let master = c.pty_master();
    let (raw, output) = crate::run::pump_pty(master.as_ref(), a.interactive)?;
    crate::run::forward_signals(
        set,
        c.pid() as i32,
        master.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
    );
    let st = c.wait();
    if let Some(o) = output {
        let _ = o.join();
    }
    drop(raw);
    let st = st.map_err(|x| anyhow!("{x}"))?;
    Ok(ExitCode::from(st.code().clamp(0, 255) as u8))
}

/// Docker's `inspect` document of a container.
fn inspect_doc(store: &Store, st: &ContainerState) -> Value {
    let r = &st.record;
    let conf = container::ContainerConfig::load(store, &r.name).ok();
    let zero_time = "0001-01-01T00:00:00Z";
    let health = r.health.as_ref().map(|h| {
        json!({"Status": h.status, "FailingStreak": h.failing_streak,
               "Log": h.log.iter().map(|p| json!({"Start": p.start, "End": p.end,
                   "ExitCode": p.exit_code, "Output": p.output})).collect::<Vec<_>>()})
    });
    let mut state = json!({
        "Status": st.status.name(),
        "Running": st.status.is_running(),
        "Paused": st.status == Status::Paused,
        "Restarting": st.status == Status::Restarting,
        "OOMKilled": r.oom_killed,
        "Dead": false,
        "Pid": st.pid().unwrap_or(0),
        "ExitCode": r.exit_code.unwrap_or(0),
        "Error": "",
        "StartedAt": r.started_at.clone().unwrap_or(zero_time.into()),
        "FinishedAt": r.finished_at.clone().unwrap_or(zero_time.into()),
    });
    if let Some(h) = health {
        state["Health"] = h;
    }
    let created = chrono::DateTime::from_timestamp(r.created, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let dir = store.container_dir(&r.name);
    let mut mounts = Vec::new();
    let (mut config, mut host) = (json!({}), json!({}));
    if let Some(c) = &conf {
        for b in &c.binds {
            mounts.push(json!({"Type": "bind", "Source": b.source, "Destination": b.target,
                "Mode": if b.read_only {"ro"} else {""}, "RW": !b.read_only, "Propagation": "rprivate"}));
        }
        for v in &c.volumes {
            mounts.push(json!({"Type": "volume", "Name": v.name, "Source": store.volume_dir(&v.name),
                "Destination": v.target, "Driver": "local", "Mode": if v.read_only {"ro"} else {"z"},
                "RW": !v.read_only, "Propagation": ""}));
        }
        let p = c.spec.process().clone().unwrap_or_default();
        config = json!({
            "Hostname": c.spec.hostname().clone().unwrap_or_else(|| r.id[..12].to_string()),
            "User": c.user,
            "Tty": c.tty,
            "OpenStdin": c.interactive,
            "Env": p.env().clone().unwrap_or_default(),
            "Cmd": c.cmd,
            "Entrypoint": if c.entrypoint.is_empty() { Value::Null } else { json!(c.entrypoint) },
            "Image": r.image,
            "WorkingDir": p.cwd(),
            "Labels": c.labels,
            "StopSignal": c.stop_signal,
            "StopTimeout": c.stop_timeout,
            "Healthcheck": c.healthcheck.as_ref().map(|h| h.to_docker()),
        });
        let (limit, count) = match c.restart {
            container::RestartPolicy::OnFailure(n) => ("on-failure", n.unwrap_or(0)),
            other => (other.name(), 0),
        };
        host = json!({
            "Binds": c.binds.iter().map(|b| format!("{}:{}{}", b.source.display(), b.target,
                if b.read_only {":ro"} else {""})).collect::<Vec<_>>(),
            "NetworkMode": c.network_mode,
            "RestartPolicy": {"Name": limit, "MaximumRetryCount": count},
            "AutoRemove": c.remove,
            "ReadonlyRootfs": c.read_only,
            "Memory": c.memory.unwrap_or(0),
            "NanoCpus": c.cpus.map_or(0, |x| (x * 1e9) as i64),
            "PidsLimit": c.pids_limit,
            "Tmpfs": c.tmpfs.iter().map(|t| (t.target.clone(), t.options.join(","))).collect::<BTreeMap<_,_>>(),
            "LogConfig": {"Type": "json-file", "Config": {}},
        });
    }
    let net = &r.network;
    json!({
        "Id": r.id,
        "Created": created,
        "Path": r.command.first(),
        "Args": r.command.get(1..).unwrap_or_default(),
        "State": state,
        "Image": r.image_id,
        "LogPath": dir.join(rbuild_containers::logs::LOG_FILE),
        "Name": format!("/{}", r.name),
        "RestartCount": r.restart_count,
        "Driver": "overlay",
        "Mounts": mounts,
        "Config": config,
        "HostConfig": host,
        "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": dir.join("upper"), "WorkDir": dir.join("work")}},
        "NetworkSettings": {
            "Networks": {net.mode.clone(): net.settings.clone()},
            "Ports": net.ports,
            "SandboxKey": net.namespace,
        },
    })
}

fn inspect(store: &Store, format: Option<String>, names: &[String]) -> Result<ExitCode> {
    let mut docs = Vec::new();
    let mut failed = false;
    for n in names {
        match state::get(store, n) {
            Ok(st) => docs.push(inspect_doc(store, &st)),
            Err(err) => {
                eprintln!("Error: {err}");
                failed = true;
            }
        }
    }
    match format {
        Some(f) => {
            for d in &docs {
                println!("{}", render(&f, &BTreeMap::new(), d));
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&Value::Array(docs))?),
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `rbuild top`: the processes in the container's pid namespace (`UID PID PPID C STIME TTY TIME
/// CMD` as `ps -ef`, with host pids as Docker shows them).
fn top(store: &Store, name: &str) -> Result<ExitCode> {
    let st = state::get(store, name).map_err(e)?;
    let Some(pid) = st.pid() else {
        bail!("container {} is not running", st.record.name);
    };
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .with_context(|| format!("reading the pid namespace of {pid}"))?;
    let mut lines = vec![["UID", "PID", "PPID", "STAT", "CMD"]
        .map(String::from)
        .to_vec()];
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    for p in pids {
        if std::fs::read_link(format!("/proc/{p}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        lines.push(vec![
            field("Uid:"),
            p.to_string(),
            field("PPid:"),
            field("State:"),
            cmd,
        ]);
    }
    write_table(&mut std::io::stdout().lock(), &lines)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_like_docker() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(59)), "59 seconds");
        assert_eq!(human_duration(s(61)), "About a minute");
        assert_eq!(human_duration(s(180)), "3 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(3 * 3600)), "3 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
    }

    #[test]
    fn sizes_like_docker() {
        assert_eq!(bytes_binary(512), "512B");
        assert_eq!(bytes_binary(1536 * 1024), "1.5MiB");
        assert_eq!(bytes_decimal(12_300), "12.3kB");
        assert_eq!(bytes_decimal(0), "0B");
        assert_eq!(bytes_binary(8_200_000_000), "7.637GiB");
    }

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("ctrl-a,d").unwrap(), vec![1, b'd']);
        assert!(parse_detach_keys("ctrl-1").is_err());
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(s.feed(b"c"), (b"\x10c".to_vec(), false));
        assert_eq!(s.feed(b"x\x10\x10\x11rest"), (b"x\x10".to_vec(), true));
    }

    #[test]
    fn templates() {
        let mut m = BTreeMap::new();
        m.insert("ID", "abc".to_string());
        m.insert("Names", "web".to_string());
        let whole = json!({"State": {"Status": "running", "Pid": 7}});
        assert_eq!(render("{{.ID}}\\t{{.Names}}", &m, &whole), "abc\tweb");
        assert_eq!(
            render("{{.State.Status}} {{.State.Pid}}", &m, &whole),
            "running 7"
        );
        assert_eq!(
            render("{{json .State}}", &m, &whole),
            r#"{"Pid":7,"Status":"running"}"#
        );
    }

    #[test]
    fn time_bounds() {
        assert_eq!(parse_time_bound("10").unwrap(), 10_000_000_000);
        assert_eq!(
            parse_time_bound("2026-01-02T00:00:00Z").unwrap(),
            1_767_312_000_000_000_000
        );
        let ten_min_ago = parse_time_bound("10m").unwrap();
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        assert!((now - ten_min_ago - 600_000_000_000).abs() < 5_000_000_000);
        assert!(parse_time_bound("yesterday").is_err());
    }
}
