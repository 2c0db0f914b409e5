//! The per-container monitor (conmon's role): `rbuild` re-executed in its own session, started by
//! `run -d`/`start`. It is the parent of the sandbox helper, which is the parent of the
//! container's PID 1, and lives as long as the container (restarts included):
//!
//! - holds the container's `lock` (an flock inherited from the starting command), which is how
//!   two concurrent `start`s start it once;
//! - owns the container's stdio: stdout and stderr (or the pty) go to the json-file log;
//! - records pid and process start time, start/exit times and exit code in the record (written
//!   atomically by rename; the monitor is the only writer while the container lives);
//! - applies the restart policy (100 ms backoff doubling up to 1 min, reset after 10 s of run);
//! - runs the HEALTHCHECK probes (with `exec`) and records `State.Health`;
//! - on the end: network teardown through the [`NetworkHook`], `--rm`, the `die` event.
//!
//! The sandbox helper has `PR_SET_PDEATHSIG(SIGKILL)` and PID 1 has it toward the helper, so a
//! SIGKILLed monitor takes its container with it; the record then shows a dead monitor and a dead
//! pid, which reads as exited.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbuild_cache::{ContainerRecord, Health, HealthProbe, NetworkAttachment, Store};

use crate::logs::LogWriter;
use crate::run::{record_exit, record_start, spawn_container, ContainerConfig, Healthcheck};
use crate::Error;

/// argv[1] of a re-executed monitor.
pub(crate) const MONITOR_MARKER: &str = "__rbuild-container-monitor__";

/// The file whose presence tells the monitor that `stop`/`kill` ended the container on purpose
/// (no restart).
pub(crate) const STOP_MARKER: &str = "stopping";

/// Where the network setup plugs in: called by the monitor around each run of PID 1. The
/// attachment it returns is stored in the record (`NetworkSettings` of `inspect`).
pub trait NetworkHook: Sync {
    /// Before PID 1 starts: set up the container's network (e.g. create a namespace, run
    /// netavark) and say what was made.
    fn attach(
        &self,
        store: &Store,
        record: &ContainerRecord,
        config: &ContainerConfig,
    ) -> Result<NetworkAttachment, Error>;

    /// After PID 1 ended (also before a restart): undo what `attach` made.
    fn detach(&self, store: &Store, record: &ContainerRecord, attachment: &NetworkAttachment);
}

/// Host and `none` networking: nothing to set up (the sandbox makes the empty namespace of
/// `none` itself).
pub struct NoNetworkSetup;

impl NetworkHook for NoNetworkSetup {
    fn attach(
        &self,
        _store: &Store,
        _record: &ContainerRecord,
        config: &ContainerConfig,
    ) -> Result<NetworkAttachment, Error> {
        Ok(NetworkAttachment {
            mode: config.network_mode.clone(),
            ..Default::default()
        })
    }

    fn detach(&self, _store: &Store, _record: &ContainerRecord, _attachment: &NetworkAttachment) {}
}

/// Must be called early in `main()` (after `rbuild_sandbox::init_if_requested`): when this
/// process was started as a container monitor it runs the monitor and never returns.
pub fn monitor_if_requested(network: &dyn NetworkHook) {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().map(|a| a.as_os_str()) != Some(std::ffi::OsStr::new(MONITOR_MARKER)) {
        return;
    }
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str()).unwrap_or_default();
    let (root, name) = (PathBuf::from(arg(1)), arg(2).to_string());
    let (Ok(lock_fd), Ok(ready_fd)) = (arg(3).parse::<i32>(), arg(4).parse::<i32>()) else {
        eprintln!("rbuild monitor: bad arguments");
        std::process::exit(125);
    };
    // SAFETY: the starting command passed these descriptors to us alone.
    let (lock, ready) = unsafe { (OwnedFd::from_raw_fd(lock_fd), File::from_raw_fd(ready_fd)) };
    for fd in [lock_fd, ready_fd] {
        // SAFETY: plain fcntl on our own descriptors (the helper must not inherit them).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let code = match Store::open(&root) {
        Ok(store) => run_monitor(&store, &name, ready, network),
        Err(e) => {
            let mut r = ready;
            let _ = writeln!(r, "error: opening the store: {e}");
            1
        }
    };
    drop(lock);
    std::process::exit(code);
}

/// The record, shared by the monitor's threads; every change is saved at once.
#[derive(Clone)]
struct Shared {
    store: Store,
    rec: Arc<Mutex<ContainerRecord>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ContainerRecord)) -> ContainerRecord {
        let mut g = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
        let _ = self.store.save_container(&g);
        g.clone()
    }

    fn get(&self) -> ContainerRecord {
        self.rec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn stop_requested(dir: &Path) -> bool {
    dir.join(STOP_MARKER).exists()
}

fn run_monitor(store: &Store, name: &str, ready: File, network: &dyn NetworkHook) -> i32 {
    let mut ready = Some(ready);
    let fail = |ready: &mut Option<File>, msg: String| {
        if let Some(mut r) = ready.take() {
            let _ = writeln!(r, "error: {}", msg.replace('\n', " "));
        }
        1
    };
    let rec = match crate::run::find(store, name) {
        Ok(r) => r,
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    let conf = match ContainerConfig::load(store, &rec.name) {
        Ok(c) => c,
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    let dir = store.container_dir(&rec.name);
    let logs = match LogWriter::open(&dir, conf.log) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &mut ready,
                format!("opening the log in {}: {e}", dir.display()),
            )
        }
    };
    let hub = crate::attach::Hub::default();
    if let Err(e) = hub.serve(&dir) {
        return fail(
            &mut ready,
            format!("creating the attach socket in {}: {e}", dir.display()),
        );
    }
    let me = std::process::id() as i32;
    let shared = Shared {
        store: store.clone(),
        rec: Arc::new(Mutex::new(rec)),
    };
    shared.update(|r| {
        r.monitor_pid = Some(me);
        r.monitor_start = crate::proc::start_time(me);
        r.restart_count = 0;
        r.health = None;
    });
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match run_once(&shared, &conf, &logs, &hub, network, &mut ready) {
            Err(e) => {
                let rec = shared.update(|r| {
                    record_exit(r, None);
                    r.restarting = false;
                });
                crate::state::event(store, "container", "die", &rec);
                let _ = logs.write("stderr", format!("rbuild: {e}\n").as_bytes());
                fail(&mut ready, e.to_string());
                break;
            }
            Ok(code) => {
                if stop_requested(&dir)
                    || !conf
                        .restart
                        .should_restart(code, shared.get().restart_count)
                {
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        shared.update(|r| r.restarting = true);
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop_requested(&dir) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stop_requested(&dir) {
            shared.update(|r| r.restarting = false);
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
        shared.update(|r| r.restart_count += 1);
    }
    let _ = std::fs::remove_file(dir.join(STOP_MARKER));
    let _ = std::fs::remove_file(dir.join(crate::attach::SOCKET));
    let rec = shared.get();
    if conf.remove {
        let _ = crate::run::remove_dir(&dir);
        crate::state::event(store, "container", "destroy", &rec);
    }
    0
}

/// One run of PID 1: network, sandbox, logs, health, exit. Returns the exit code.
fn run_once(
    shared: &Shared,
    conf: &ContainerConfig,
    logs: &LogWriter,
    hub: &crate::attach::Hub,
    network: &dyn NetworkHook,
    ready: &mut Option<File>,
) -> Result<i32, Error> {
    let store = &shared.store;
    let rec = shared.get();
    let net = crate::run::attach_network(store, &rec, conf)?;
    let attachment = match &net {
        Some(a) => crate::run::attachment_record(conf, Some(a)),
        None => network.attach(store, &rec, conf)?,
    };
    shared.update(|r| r.network = attachment.clone());
    let teardown = |rec: &rbuild_cache::ContainerRecord,
                    net: Option<rbuild_network::Attachment>| match net {
        Some(a) => {
            if let Err(e) = a.detach() {
                eprintln!("rbuild monitor: {}: network teardown: {e}", rec.name);
            }
        }
        None => network.detach(store, rec, &attachment),
    };
    let stdin = if conf.interactive && !conf.tty {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let stdio = (stdin, Stdio::piped(), Stdio::piped());
    // `_in_use` keeps `prune` off the image's snapshots while PID 1 runs.
    let (mut c, _in_use) = match spawn_container(store, &rec, conf, net.as_ref(), stdio) {
        Ok(c) => c,
        Err(e) => {
            teardown(&rec, net);
            return Err(e);
        }
    };
    let rec = shared.update(|r| record_start(r, c.pid()));
    crate::state::event(store, "container", "start", &rec);
    if let Some(mut r) = ready.take() {
        let _ = writeln!(r, "ok {}", c.pid());
    }
    let mut copiers = Vec::new();
    let mut add = |from: Option<Box<dyn Read + Send>>, stream: &'static str| {
        if let Some(from) = from {
            let (l, h) = (logs.clone(), hub.clone());
            let id = if stream == "stderr" { 2 } else { 1 };
            copiers.push(std::thread::spawn(move || {
                l.copy_from_tee(from, stream, |b| h.broadcast(id, b))
            }));
        }
    };
    if let Some(m) = c.pty_master() {
        hub.set_input(crate::attach::pty_input(&m).ok());
        add(Some(Box::new(File::from(m))), "stdout");
    } else if let Some(i) = c.stdin() {
        hub.set_input(Some(crate::attach::Input::Pipe(Box::new(i))));
    }
    add(
        c.stdout().map(|s| Box::new(s) as Box<dyn Read + Send>),
        "stdout",
    );
    add(
        c.stderr().map(|s| Box::new(s) as Box<dyn Read + Send>),
        "stderr",
    );
    let stop_health = Arc::new(AtomicBool::new(false));
    let health = conf.healthcheck.clone().map(|hc| {
        let (shared, conf, stop) = (shared.clone(), conf.clone(), stop_health.clone());
        let pid = c.pid();
        std::thread::spawn(move || health_loop(&shared, &conf, &hc, pid, &stop))
    });
    let outcome = c.wait_outcome();
    stop_health.store(true, Ordering::SeqCst);
    if let Some(h) = health {
        let _ = h.join();
    }
    for t in copiers {
        let _ = t.join();
    }
    hub.set_input(None);
    hub.close_clients();
    crate::freezer::cleanup(&shared.get().id);
    let rec = shared.update(|r| record_exit(r, outcome.as_ref().ok()));
    crate::state::event(store, "container", "die", &rec);
    teardown(&rec, net);
    let o = outcome?;
    Ok(o.code())
}

/// Sleeps up to `d`, waking early when `stop` is set; returns whether it was.
fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
    stop.load(Ordering::SeqCst)
}

fn health_loop(
    shared: &Shared,
    conf: &ContainerConfig,
    hc: &Healthcheck,
    pid: u32,
    stop: &AtomicBool,
) {
    shared.update(|r| {
        r.health = Some(Health {
            status: "starting".into(),
            ..Default::default()
        })
    });
    let started = Instant::now();
    let interval = Duration::from_nanos(hc.interval_ns.max(1_000_000));
    loop {
        if sleep_unless(interval, stop) {
            return;
        }
        let probe = run_probe(conf, hc, pid);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let in_start_period = started.elapsed() < Duration::from_nanos(hc.start_period_ns);
        shared.update(|r| {
            let h = r.health.get_or_insert_with(Health::default);
            if probe.exit_code == 0 {
                h.status = "healthy".into();
                h.failing_streak = 0;
            } else if !in_start_period {
                h.failing_streak += 1;
                if h.failing_streak >= hc.retries.max(1) {
                    h.status = "unhealthy".into();
                }
            }
            h.log.push(probe);
            let n = h.log.len();
            if n > 5 {
                h.log.drain(..n - 5);
            }
        });
    }
}

/// Runs one probe in the container with the probe's timeout (exit code -1 when it timed out or
/// could not start, as Docker).
fn run_probe(conf: &ContainerConfig, hc: &Healthcheck, pid: u32) -> HealthProbe {
    let start = crate::run::now_rfc3339();
    let finish = |code: i32, output: String| HealthProbe {
        start: start.clone(),
        end: crate::run::now_rfc3339(),
        exit_code: code,
        output,
    };
    let mut spec = conf.spec.clone();
    if let Some(p) = spec.process().clone() {
        let mut p = p;
        p.set_args(Some(hc.argv()));
        p.set_terminal(Some(false));
        spec.set_process(Some(p));
    }
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return finish(-1, format!("pipe: {e}")),
    };
    let w2 = match w.try_clone() {
        Ok(w2) => w2,
        Err(e) => return finish(-1, format!("pipe: {e}")),
    };
    let c = match rbuild_sandbox::exec(pid, &spec, (Stdio::null(), Stdio::from(w), Stdio::from(w2)))
    {
        Ok(c) => c,
        Err(e) => return finish(-1, e.to_string()),
    };
    let probe_pid = c.pid() as i32;
    let probe_start = crate::proc::start_time(probe_pid);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = File::from(r).take(1 << 20).read_to_end(&mut out);
        out.truncate(4096);
        String::from_utf8_lossy(&out).into_owned()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait());
    });
    let timeout = Duration::from_nanos(hc.timeout_ns.max(1_000_000));
    let code = match rx.recv_timeout(timeout) {
        Ok(Ok(st)) => st.code(),
        Ok(Err(_)) => -1,
        Err(_) => {
            if let Some(s) = probe_start {
                crate::proc::signal_checked(probe_pid, s, libc::SIGKILL);
            }
            let _ = rx.recv();
            let _ = reader.join();
            return finish(
                -1,
                format!("Health check exceeded timeout ({}s)", timeout.as_secs_f64()),
            );
        }
    };
    let output = reader.join().unwrap_or_default();
    finish(code, output)
}
