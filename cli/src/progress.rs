//! Rendering of build progress: BuildKit-style plain lines (`#4 [build 2/3] RUN make`,
//! `#4 CACHED`, `#4 DONE 0.3s`) for logs and CI, indicatif spinners in a terminal.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rbuild_solver::Event;

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty when stderr is a terminal, plain otherwise.
    Auto,
    /// Spinners per running step.
    Tty,
    /// One line per event, BuildKit's plain format.
    Plain,
}

/// A progress sink shared by the solver's threads.
pub struct Progress {
    inner: Mutex<Inner>,
    tty: bool,
    /// Show cache-miss explanations in a terminal too (`--explain-cache`); plain always shows them.
    explain: bool,
    /// Show trace lines (`RBUILD_DEBUG=1`).
    debug: bool,
}

struct Inner {
    multi: Option<MultiProgress>,
    bars: HashMap<usize, (ProgressBar, String)>,
    names: HashMap<usize, String>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Progress {
    /// A renderer for `mode`.
    pub fn new(mode: Mode) -> Progress {
        let tty = match mode {
            Mode::Auto => std::io::stderr().is_terminal(),
            Mode::Tty => true,
            Mode::Plain => false,
        };
        Progress {
            inner: Mutex::new(Inner {
                multi: tty.then(MultiProgress::new),
                bars: HashMap::new(),
                names: HashMap::new(),
            }),
            tty,
            explain: false,
            debug: std::env::var_os("RBUILD_DEBUG").is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }

    /// Also explains cache misses in a terminal.
    pub fn with_explain(mut self, explain: bool) -> Progress {
        self.explain = explain;
        self
    }

    fn line(&self, inner: &Inner, s: &str) {
        match &inner.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None => {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{s}");
            }
        }
    }

    /// Handles one event.
    pub fn event(&self, ev: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !self.tty {
            let s = match ev {
                Event::Vertex { id, name } => format!("#{id} {name}"),
                Event::Cached { id } => format!("#{id} CACHED"),
                Event::Log { id, elapsed, line } => {
                    format!("#{id} {:.3} {line}", elapsed.as_secs_f64())
                }
                Event::Done { id, elapsed } => format!("#{id} DONE {}", secs(elapsed)),
                Event::Failed { id, elapsed, error } => {
                    let first = error.lines().next().unwrap_or_default().to_string();
                    format!("#{id} ERROR {}: {first}", secs(elapsed))
                }
                Event::Canceled { id, .. } => format!("#{id} CANCELED"),
                Event::Warning(w) => format!("WARNING: {w}"),
                Event::CacheMiss { id, reason } => format!("#{id} cache miss: {reason}"),
                Event::Debug(d) if self.debug => format!("DEBUG: {d}"),
                Event::Debug(_) => return,
            };
            self.line(&inner, &s);
            return;
        }
        match ev {
            Event::Vertex { id, name } => {
                inner.names.insert(id, name.clone());
                if let Some(m) = &inner.multi {
                    let bar = m.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template(" {spinner} {msg} {elapsed:>}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(name.clone());
                    bar.enable_steady_tick(Duration::from_millis(100));
                    inner.bars.insert(id, (bar, name));
                }
            }
            Event::Cached { id } => {
                if let Some((bar, name)) = inner.bars.remove(&id) {
                    bar.finish_and_clear();
                    self.line(&inner, &format!(" => CACHED {name}"));
                }
            }
            Event::Done { id, elapsed } => {
                if let Some((bar, name)) = inner.bars.remove(&id) {
                    bar.finish_and_clear();
                    self.line(&inner, &format!(" => {name:<60} {}", secs(elapsed)));
                }
            }
            Event::Failed { id, elapsed, .. } => {
                if let Some((bar, name)) = inner.bars.remove(&id) {
                    bar.finish_and_clear();
                    self.line(&inner, &format!(" => ERROR {name:<54} {}", secs(elapsed)));
                }
            }
            Event::Canceled { id, elapsed } => {
                if let Some((bar, name)) = inner.bars.remove(&id) {
                    bar.finish_and_clear();
                    self.line(
                        &inner,
                        &format!(" => CANCELED {name:<51} {}", secs(elapsed)),
                    );
                }
            }
            Event::Log { id, line, .. } => {
                if let Some((bar, name)) = inner.bars.get(&id) {
                    let short: String = line.chars().take(60).collect();
                    bar.set_message(format!("{name}  | {short}"));
                }
            }
            Event::Warning(w) => self.line(&inner, &format!("WARNING: {w}")),
            Event::CacheMiss { reason, .. } if self.explain => {
                self.line(&inner, &format!(" => cache miss: {reason}"))
            }
            Event::CacheMiss { .. } => {}
            Event::Debug(d) if self.debug => self.line(&inner, &format!("DEBUG: {d}")),
            Event::Debug(_) => {}
        }
    }

    /// Emits an internal vertex that has already finished (e.g. loading the Dockerfile).
    pub fn internal(&self, id: usize, name: &str, detail: Option<&str>, elapsed: Duration) {
        self.event(Event::Vertex {
            id,
            name: name.to_string(),
        });
        if let (Some(d), false) = (detail, self.tty) {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            self.line(&inner, &format!("#{id} {d}"));
        }
        self.event(Event::Done { id, elapsed });
    }
}
