//! The scheduler: runs the nodes of a DAG on worker threads, each once all its inputs are done.
//!
//! Split in two so the policy is testable without I/O:
//! - [`Plan`] is the pure state machine: which nodes are ready, the bound on how many run at once
//!   (`jobs`), and that nothing new starts after the first failure. Ready nodes start in the
//!   order they were given (the topological order, which is also the vertex numbering).
//! - [`run`] drives a plan with scoped threads. Every worker reports exactly once over a channel:
//!   its result, its error, or its panic (caught with `catch_unwind`; a guard reports even if the
//!   worker ends some other way), so the loop never waits for a message no live worker can send.
//!   The first failure (an error or a panic) calls `on_failure` once (the solver kills the
//!   running siblings' containers there), stops scheduling, waits for the running workers and
//!   returns that first failure; later errors of cancelled siblings are dropped.

use std::any::Any;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};

/// Scheduling state of one run (no threads, no I/O).
#[derive(Debug)]
pub(crate) struct Plan<N> {
    /// Position of every node in the given order (ready nodes start lowest first).
    pos: HashMap<N, usize>,
    /// The nodes in the given order.
    order: Vec<N>,
    /// Inputs not yet done, per node.
    waiting: HashMap<N, usize>,
    /// Consumers of each node.
    succs: HashMap<N, Vec<N>>,
    /// Ready nodes, by position (min-heap through `Reverse`).
    ready: BinaryHeap<std::cmp::Reverse<usize>>,
    running: usize,
    jobs: usize,
    failed: bool,
}

impl<N: Copy + Eq + Hash> Plan<N> {
    /// A plan over `order` (every node once, inputs before consumers) where `deps(n)` lists the
    /// inputs of `n`, running at most `jobs` (at least 1) nodes at once.
    pub(crate) fn new(order: &[N], deps: impl Fn(N) -> Vec<N>, jobs: usize) -> Self {
        let pos: HashMap<N, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut waiting = HashMap::new();
        let mut succs: HashMap<N, Vec<N>> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for (i, n) in order.iter().enumerate() {
            let d = deps(*n);
            waiting.insert(*n, d.len());
            if d.is_empty() {
                ready.push(std::cmp::Reverse(i));
            }
            for p in d {
                succs.entry(p).or_default().push(*n);
            }
        }
        Plan {
            pos,
            order: order.to_vec(),
            waiting,
            succs,
            ready,
            running: 0,
            jobs: jobs.max(1),
            failed: false,
        }
    }

    /// The next node to start, if one is ready, the bound allows it and nothing has failed; it
    /// counts as running from now on.
    pub(crate) fn next(&mut self) -> Option<N> {
        if self.failed || self.running >= self.jobs {
            return None;
        }
        let std::cmp::Reverse(i) = self.ready.pop()?;
        self.running += 1;
        Some(self.order[i])
    }

    /// Records that `n` (returned by [`Plan::next`]) finished; on success its consumers whose
    /// inputs are all done become ready, on failure nothing else will start.
    pub(crate) fn finish(&mut self, n: N, ok: bool) {
        self.running -= 1;
        if !ok {
            self.failed = true;
            return;
        }
        for s in self.succs.get(&n).map(Vec::as_slice).unwrap_or_default() {
            if let Some(w) = self.waiting.get_mut(s) {
                *w -= 1;
                if *w == 0 {
                    self.ready.push(std::cmp::Reverse(self.pos[s]));
                }
            }
        }
    }

    /// How many nodes are running.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Whether a node failed.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }
}

/// What a worker reports.
enum Report<T, E> {
    Done(T),
    Failed(E),
    Panicked(String),
}

/// Sends the worker's report; if the worker ends without one, reports a panic on drop.
struct Reporter<N: Copy, T, E> {
    n: N,
    tx: Option<mpsc::Sender<(N, Report<T, E>)>>,
}

impl<N: Copy, T, E> Reporter<N, T, E> {
    fn send(mut self, r: Report<T, E>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.n, r));
        }
    }
}

impl<N: Copy, T, E> Drop for Reporter<N, T, E> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let msg = "the worker thread ended without a result".to_string();
            let _ = tx.send((self.n, Report::Panicked(msg)));
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".into()
    }
}

/// Runs `plan` to the end. `work(n, inputs)` gets the results of `deps(n)` (as given to
/// [`Plan::new`], in that order); `panicked(n, message)` turns a worker's panic into the error
/// returned; `on_failure` is called once, at the first failure, before waiting for the running
/// workers.
pub(crate) fn run<N, T, E>(
    mut plan: Plan<N>,
    deps: impl Fn(N) -> Vec<N>,
    work: &(dyn Fn(N, Vec<Arc<T>>) -> Result<T, E> + Sync),
    panicked: impl Fn(N, String) -> E,
    on_failure: impl Fn(),
) -> Result<HashMap<N, Arc<T>>, E>
where
    N: Copy + Eq + Hash + Send,
    T: Send + Sync,
    E: Send,
{
    let mut results: HashMap<N, Arc<T>> = HashMap::new();
    let mut first: Option<E> = None;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(N, Report<T, E>)>();
        loop {
            while let Some(n) = plan.next() {
                let inputs: Vec<Arc<T>> = deps(n).iter().map(|d| results[d].clone()).collect();
                let reporter = Reporter {
                    n,
                    tx: Some(tx.clone()),
                };
                s.spawn(move || {
                    let r = match catch_unwind(AssertUnwindSafe(|| work(n, inputs))) {
                        Ok(Ok(t)) => Report::Done(t),
                        Ok(Err(e)) => Report::Failed(e),
                        Err(p) => Report::Panicked(panic_message(p.as_ref())),
                    };
                    reporter.send(r);
                });
            }
            if plan.running() == 0 {
                break;
            }
            // Every running worker holds a Reporter, which sends exactly once.
            let Ok((n, r)) = rx.recv() else { break };
            let err = match r {
                Report::Done(t) => {
                    results.insert(n, Arc::new(t));
                    plan.finish(n, true);
                    continue;
                }
                Report::Failed(e) => e,
                Report::Panicked(m) => panicked(n, m),
            };
            let was_failed = plan.failed();
            plan.finish(n, false);
            if !was_failed {
                on_failure();
                first = Some(err);
            }
        }
    });
    match first {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// A diamond: 0 -> {1, 2} -> 3, plus an independent 4.
    fn diamond(n: u32) -> Vec<u32> {
        match n {
            1 | 2 => vec![0],
            3 => vec![1, 2],
            _ => vec![],
        }
    }
    const ORDER: [u32; 5] = [0, 4, 1, 2, 3];

    #[test]
    fn plan_starts_ready_nodes_in_order_within_the_bound() {
        let mut p = Plan::new(&ORDER, diamond, 1);
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), None, "bound of 1 reached");
        p.finish(0, true);
        // 4 was ready first and comes before 1 and 2 in the order.
        assert_eq!(p.next(), Some(4));
        p.finish(4, true);
        assert_eq!(p.next(), Some(1));
        p.finish(1, true);
        assert_eq!(p.next(), Some(2));
        assert_eq!(p.next(), None);
        p.finish(2, true);
        assert_eq!(p.next(), Some(3));
        p.finish(3, true);
        assert_eq!((p.next(), p.running(), p.failed()), (None, 0, false));
    }

    #[test]
    fn plan_waits_for_every_input() {
        let mut p = Plan::new(&ORDER, diamond, 8);
        let first: Vec<u32> = std::iter::from_fn(|| p.next()).collect();
        assert_eq!(first, vec![0, 4]);
        p.finish(0, true);
        let second: Vec<u32> = std::iter::from_fn(|| p.next()).collect();
        assert_eq!(second, vec![1, 2]);
        p.finish(1, true);
        assert_eq!(p.next(), None, "3 still waits for 2");
        p.finish(2, true);
        assert_eq!(p.next(), Some(3));
    }

    #[test]
    fn plan_starts_nothing_after_a_failure() {
        let mut p = Plan::new(&ORDER, diamond, 8);
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(4));
        p.finish(4, false);
        assert!(p.failed());
        p.finish(0, true);
        assert_eq!(p.next(), None);
        assert_eq!(p.running(), 0);
    }

    #[test]
    fn plan_bound_zero_means_one() {
        let mut p = Plan::new(&[1u32, 2], |_| vec![], 0);
        assert_eq!(p.next(), Some(1));
        assert_eq!(p.next(), None);
    }

    fn panicked(n: u32, m: String) -> String {
        format!("panic in {n}: {m}")
    }

    #[test]
    fn run_passes_input_results_in_order() {
        let work = |n: u32, ins: Vec<Arc<String>>| -> Result<String, String> {
            let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
            Ok(format!("{n}({})", ins.join(",")))
        };
        let r = run(
            Plan::new(&ORDER, diamond, 2),
            diamond,
            &work,
            panicked,
            || {},
        )
        .unwrap();
        assert_eq!(r[&3].as_str(), "3(1(0()),2(0()))");
        assert_eq!(r[&4].as_str(), "4()");
        assert_eq!(r.len(), 5);
    }

    /// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang).
    fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("the scheduler hung")
    }

    #[test]
    fn a_panicking_worker_fails_the_run_instead_of_hanging_it() {
        let r = within(Duration::from_secs(10), || {
            let work = |n: u32, _: Vec<Arc<()>>| -> Result<(), String> {
                if n == 2 {
                    let v: Vec<u8> = Vec::new();
                    let i = n as usize;
                    let _ = v[i]; // index out of bounds, as the bug of issue 12
                }
                Ok(())
            };
            run(
                Plan::new(&ORDER, diamond, 4),
                diamond,
                &work,
                panicked,
                || {},
            )
        });
        let e = r.unwrap_err();
        assert!(e.starts_with("panic in 2: index out of bounds"), "{e}");
    }

    #[test]
    fn a_panic_with_a_formatted_message_is_reported_whole() {
        let work = |n: u32, _: Vec<Arc<()>>| -> Result<(), String> {
            if n == 4 {
                panic!("step {n} broke");
            }
            Ok(())
        };
        let e = run(
            Plan::new(&ORDER, diamond, 1),
            diamond,
            &work,
            panicked,
            || {},
        )
        .unwrap_err();
        assert_eq!(e, "panic in 4: step 4 broke");
    }

    #[test]
    fn run_never_exceeds_the_bound() {
        for jobs in [1, 2, 3] {
            let now = AtomicUsize::new(0);
            let max = AtomicUsize::new(0);
            let work = |_: u32, _: Vec<Arc<()>>| -> Result<(), String> {
                let c = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(c, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            };
            let order: Vec<u32> = (0..8).collect();
            run(
                Plan::new(&order, |_| vec![], jobs),
                |_| vec![],
                &work,
                panicked,
                || {},
            )
            .unwrap();
            assert_eq!(max.load(Ordering::SeqCst), jobs, "jobs = {jobs}");
        }
    }

    #[test]
    fn the_first_failure_cancels_running_siblings_and_wins() {
        let cancelled = AtomicBool::new(false);
        let calls = AtomicUsize::new(0);
        let started = Mutex::new(Vec::new());
        // 0 fails after a moment; 1 runs "forever" until cancelled, then fails with its own
        // error, which must not replace the first one; 2 depends on 0 and must never start.
        let order = [0u32, 1, 2];
        let deps = |n: u32| if n == 2 { vec![0] } else { vec![] };
        let work = |n: u32, _: Vec<Arc<()>>| -> Result<(), String> {
            started.lock().unwrap().push(n);
            match n {
                0 => {
                    std::thread::sleep(Duration::from_millis(50));
                    Err("step 0 failed".into())
                }
                _ => {
                    let t = Instant::now();
                    while !cancelled.load(Ordering::SeqCst) {
                        assert!(t.elapsed() < Duration::from_secs(10), "never cancelled");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err("step 1 killed".into())
                }
            }
        };
        let t = Instant::now();
        let e = run(Plan::new(&order, deps, 4), deps, &work, panicked, || {
            calls.fetch_add(1, Ordering::SeqCst);
            cancelled.store(true, Ordering::SeqCst);
        })
        .unwrap_err();
        assert_eq!(e, "step 0 failed");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut s = started.into_inner().unwrap();
        s.sort();
        assert_eq!(s, vec![0, 1]);
    }

    #[test]
    fn panic_payloads_become_text() {
        let p = catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "plain");
        let p = catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "a panic with a non-text payload");
    }
}
