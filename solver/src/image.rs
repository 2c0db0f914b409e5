//! Image configs as JSON documents: reading a base image's runtime config for the frontend, and
//! writing the final config with Docker's extension fields (Healthcheck, OnBuild, Shell) and a
//! stable key order, which `oci_spec`'s typed config would drop or reorder.

use std::collections::BTreeMap;

use rbuild_frontend::{HistoryEntry, ImageConfig};
use serde_json::{json, Map, Value};

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    })
}

fn keys(v: Option<&Value>) -> Vec<String> {
    let mut k: Vec<String> = v
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The runtime config (`config` object) of an image config document, as the frontend sees it.
pub fn runtime_config(doc: &Value) -> ImageConfig {
    let c = doc.get("config").cloned().unwrap_or(Value::Null);
    let s = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ImageConfig {
        user: s("User"),
        exposed_ports: keys(c.get("ExposedPorts")),
        env: strings(c.get("Env")).unwrap_or_default(),
        entrypoint: strings(c.get("Entrypoint")),
        cmd: strings(c.get("Cmd")),
        volumes: keys(c.get("Volumes")),
        working_dir: s("WorkingDir"),
        labels: c
            .get("Labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        stop_signal: c
            .get("StopSignal")
            .and_then(Value::as_str)
            .map(str::to_string),
        on_build: strings(c.get("OnBuild")).unwrap_or_default(),
        shell: strings(c.get("Shell")),
        healthcheck: c.get("Healthcheck").cloned().filter(|v| !v.is_null()),
    }
}

/// The `config` object for an image config document.
pub fn runtime_json(c: &ImageConfig) -> Value {
    let mut m = Map::new();
    let set_map = |m: &mut Map<String, Value>, k: &str, list: &[String]| {
        if !list.is_empty() {
            let o: Map<String, Value> = list.iter().map(|p| (p.clone(), json!({}))).collect();
            m.insert(k.into(), Value::Object(o));
        }
    };
    if !c.user.is_empty() {
        m.insert("User".into(), json!(c.user));
    }
    set_map(&mut m, "ExposedPorts", &c.exposed_ports);
    if !c.env.is_empty() {
        m.insert("Env".into(), json!(c.env));
    }
    if let Some(e) = &c.entrypoint {
        m.insert("Entrypoint".into(), json!(e));
    }
    if let Some(e) = &c.cmd {
        m.insert("Cmd".into(), json!(e));
    }
    set_map(&mut m, "Volumes", &c.volumes);
    if !c.working_dir.is_empty() {
        m.insert("WorkingDir".into(), json!(c.working_dir));
    }
    if !c.labels.is_empty() {
        m.insert("Labels".into(), json!(c.labels));
    }
    if let Some(s) = &c.stop_signal {
        m.insert("StopSignal".into(), json!(s));
    }
    if !c.on_build.is_empty() {
        m.insert("OnBuild".into(), json!(c.on_build));
    }
    if let Some(s) = &c.shell {
        m.insert("Shell".into(), json!(s));
    }
    if let Some(h) = &c.healthcheck {
        m.insert("Healthcheck".into(), h.clone());
    }
    Value::Object(m)
}

/// A history entry as written into the config.
pub fn history_json(h: &HistoryEntry, created: &str) -> Value {
    let mut m = Map::new();
    m.insert("created".into(), json!(created));
    m.insert("created_by".into(), json!(h.created_by));
    if let Some(c) = &h.comment {
        m.insert("comment".into(), json!(c));
    }
    if h.empty_layer {
        m.insert("empty_layer".into(), json!(true));
    }
    Value::Object(m)
}

/// Assembles a full image config document.
pub fn config_document(
    platform: &rbuild_types::Platform,
    runtime: &ImageConfig,
    diff_ids: &[rbuild_types::Digest],
    history: Vec<Value>,
    created: &str,
) -> Value {
    let mut m: BTreeMap<&str, Value> = BTreeMap::new();
    m.insert("architecture", json!(platform.architecture));
    m.insert("os", json!(platform.os));
    if let Some(v) = &platform.variant {
        m.insert("variant", json!(v));
    }
    m.insert("created", json!(created));
    m.insert("config", runtime_json(runtime));
    m.insert(
        "rootfs",
        json!({"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}),
    );
    m.insert("history", Value::Array(history));
    json!(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_round_trips() {
        let mut c = ImageConfig {
            user: "app".into(),
            exposed_ports: vec!["80/tcp".into()],
            env: vec!["PATH=/bin".into(), "A=b".into()],
            cmd: Some(vec!["sh".into()]),
            working_dir: "/app".into(),
            on_build: vec!["RUN x".into()],
            healthcheck: Some(json!({"Test": ["NONE"]})),
            ..Default::default()
        };
        c.labels.insert("k".into(), "v".into());
        let doc = json!({"config": runtime_json(&c)});
        assert_eq!(runtime_config(&doc), c);
        assert_eq!(doc["config"]["ExposedPorts"], json!({"80/tcp": {}}));
    }
}
