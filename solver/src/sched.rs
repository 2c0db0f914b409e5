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
