//! The state of a container, read from its record and checked against the live processes, and
//! the event journal (`events.jsonl` in the store).
//!
//! A recorded pid counts only if the process with that pid has the recorded start time, so a
//! record left behind by a reboot or a SIGKILLed monitor reads as exited, never as running.

use std::io::Write;

use rbuild_cache::{ContainerRecord, Store};
use serde_json::json;

use crate::proc::alive;
use crate::Error;

/// Docker's `State.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Made by `create`, never started.
    Created,
    /// PID 1 is alive.
    Running,
    /// PID 1 is alive and frozen.
    Paused,
    /// Its monitor waits to start it again (restart policy).
    Restarting,
    /// PID 1 has ended.
    Exited,
}

impl Status {
    /// Docker's name (`created`, `running`, `paused`, `restarting`, `exited`).
    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
        }
    }

    /// Running or paused: PID 1 is alive.
    pub fn is_running(&self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

/// A record with its checked status.
#[derive(Clone, Debug)]
pub struct ContainerState {
    /// The stored record.
    pub record: ContainerRecord,
    /// What it is doing now.
    pub status: Status,
    /// Whether its monitor (or the foreground `rbuild run`) is alive.
    pub supervised: bool,
}

impl ContainerState {
    /// The live pid of PID 1, when running.
    pub fn pid(&self) -> Option<i32> {
        self.status
            .is_running()
            .then_some(self.record.pid)
            .flatten()
    }
}

/// Checks the record against the live processes.
pub fn inspect_state(_store: &Store, r: &ContainerRecord) -> ContainerState {
    let pid_alive = matches!((r.pid, r.pid_start), (Some(p), Some(s)) if alive(p, s));
    let supervised = matches!((r.monitor_pid, r.monitor_start), (Some(p), Some(s)) if alive(p, s));
    let status = if pid_alive && r.finished_at.is_none() {
        if r.paused {
            Status::Paused
        } else {
            Status::Running
        }
    } else if supervised && r.restarting {
        Status::Restarting
    } else if r.started_at.is_none() {
        Status::Created
    } else {
        Status::Exited
    };
    ContainerState {
        record: r.clone(),
        status,
        supervised,
    }
}

/// Every container, oldest first, with its status.
pub fn list(store: &Store) -> Result<Vec<ContainerState>, Error> {
    Ok(store
        .list_containers()?
        .iter()
        .map(|r| inspect_state(store, r))
        .collect())
}

/// The container named `name` (or whose id starts with it), with its status.
pub fn get(store: &Store, name: &str) -> Result<ContainerState, Error> {
    let r = crate::run::find(store, name)?;
    Ok(inspect_state(store, &r))
}

/// Appends a Docker-shaped event (`Type`, `Action`, `Actor`, `time`, `timeNano`) to the store's
/// journal `events.jsonl`; one `write` with `O_APPEND` per line, so concurrent writers never
/// interleave. Failures are ignored: the journal must never stop a container.
pub fn event(store: &Store, kind: &str, action: &str, rec: &ContainerRecord) {
    let now = chrono::Utc::now();
    let line = json!({
        "status": action, "id": rec.id, "from": rec.image,
        "Type": kind, "Action": action,
        "Actor": {"ID": rec.id, "Attributes": {"name": rec.name, "image": rec.image}},
        "scope": "local",
        "time": now.timestamp(),
        "timeNano": now.timestamp_nanos_opt().unwrap_or_default(),
    });
    append_event(store, &line);
}

/// Appends an image event (`pull`, `push`, `tag`, `untag`, `delete`, `import`, `load`) for
/// `reference` (the image's name, or its id) to the journal.
pub fn image_event(store: &Store, action: &str, reference: &str) {
    let now = chrono::Utc::now();
    append_event(
        store,
        &json!({
            "status": action, "id": reference,
            "Type": "image", "Action": action,
            "Actor": {"ID": reference, "Attributes": {"name": reference}},
            "scope": "local",
            "time": now.timestamp(),
            "timeNano": now.timestamp_nanos_opt().unwrap_or_default(),
        }),
    );
}

/// Appends any event object to the journal (volumes, images).
pub fn append_event(store: &Store, line: &serde_json::Value) {
    let mut text = line.to_string();
    text.push('\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(events_path(store))
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// The journal's path.
pub fn events_path(store: &Store) -> std::path::PathBuf {
    store.root().join("events.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_records_read_as_exited() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let me = std::process::id() as i32;
        let start = crate::proc::start_time(me).unwrap();
        let mut r = ContainerRecord {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(inspect_state(&s, &r).status, Status::Created);
        r.started_at = Some("2026-01-01T00:00:00Z".into());
        r.pid = Some(me);
        r.pid_start = Some(start);
        assert_eq!(inspect_state(&s, &r).status, Status::Running);
        // Same pid, another start time: a reused pid after a reboot is not the container.
        r.pid_start = Some(start + 1);
        assert_eq!(inspect_state(&s, &r).status, Status::Exited);
        r.monitor_pid = Some(me);
        r.monitor_start = Some(start);
        assert_eq!(inspect_state(&s, &r).status, Status::Exited);
        r.restarting = true;
        assert_eq!(inspect_state(&s, &r).status, Status::Restarting);
    }
}
