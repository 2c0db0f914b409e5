//! Cache-miss explanations: what changed in a step's key document against the nearest previous
//! record of the same step (same Dockerfile, stage and position).

use std::collections::BTreeMap;

use serde_json::Value;

/// How many changed files an explanation names before summarising.
const MAX_NAMED: usize = 3;

/// Explains why `cur` (`{"display", "doc"}` of this build) differs from `prev` (the same step's
/// latest earlier entry). `stage_env` tells ENV variables from build args. None when the documents
/// are equal (nothing to explain).
pub(crate) fn explain(
    instruction: &str,
    prev: &Value,
    cur: &Value,
    stage_env: &[String],
) -> Option<String> {
    let (p, c) = (&prev["doc"], &cur["doc"]);
    if p == c {
        return None;
    }
    let what = diff(prev, cur, stage_env);
    // A step found in a `--cache-from` cache under another key says so.
    let from = prev["remote"]
        .as_str()
        .map(|r| format!(" (against remote cache {r})"))
        .unwrap_or_default();
    Some(format!("{instruction}: {what}{from}"))
}

fn diff(prev: &Value, cur: &Value, stage_env: &[String]) -> String {
    let (p, c) = (&prev["doc"], &cur["doc"]);
    let prev_display = prev["display"].as_str().unwrap_or_default();
    if p["op"] != c["op"] || p["v"] != c["v"] {
        return if p["v"] != c["v"] {
            "the cache key format changed (new rbuild version)".into()
        } else {
            format!("instruction changed (was: {prev_display})")
        };
    }
    let mut reasons = Vec::new();
    match c["op"].as_str() {
        Some("exec") => {
            let (pe, ce) = (&p["exec"], &c["exec"]);
            if pe["args"] != ce["args"] {
                return format!("instruction changed (was: {prev_display})");
            }
            reasons.extend(env_changes(&pe["env"], &ce["env"], stage_env));
            for (field, name) in [
                ("cwd", "WORKDIR"),
                ("user", "USER"),
                ("network", "--network"),
                ("insecure", "--security"),
                ("mounts", "--mount options"),
            ] {
                if pe[field] != ce[field] {
                    reasons.push(format!(
                        "{name} changed ({} -> {})",
                        short(&pe[field]),
                        short(&ce[field])
                    ));
                }
            }
            if let (Some(pb), Some(cb)) =
                (p["bind_content"].as_object(), c["bind_content"].as_object())
            {
                for (target, cv) in cb {
                    let pv = pb.get(target).cloned().unwrap_or(Value::Null);
                    if pv != *cv {
                        reasons.push(format!(
                            "bind mount {target}: {}",
                            file_changes(&pv["files"], &cv["files"])
                        ));
                    }
                }
            }
            if p["sources"] != c["sources"] {
                reasons.push("a mounted stage (from=) changed".into());
            }
        }
        Some("copy") => {
            let (pc, cc) = (&p["copy"], &c["copy"]);
            if pc["srcs"] != cc["srcs"] || pc["dest"] != cc["dest"] || pc["add"] != cc["add"] {
                return format!("instruction changed (was: {prev_display})");
            }
            if let (Some(po), Some(co)) = (pc.as_object(), cc.as_object()) {
                for (k, cv) in co {
                    let pv = po.get(k).unwrap_or(&Value::Null);
                    if pv != cv {
                        reasons.push(format!("--{k} changed ({} -> {})", short(pv), short(cv)));
                    }
                }
            }
            let (pt, ct) = (&p["content"], &c["content"]);
            if pt != ct {
                if ct.get("files").is_some() {
                    reasons.push(file_changes(&pt["files"], &ct["files"]));
                    if pt["remote"] != ct["remote"] {
                        reasons.push("remote source content changed".into());
                    }
                } else {
                    reasons.push("the source stage changed".into());
                }
            }
        }
        _ => {}
    }
    if reasons.is_empty() && p["parent"] != c["parent"] {
        reasons.push("the previous step's result changed".into());
    }
    if reasons.is_empty() {
        // Fields of ops this module does not know in detail.
        let mut fields = Vec::new();
        if let (Some(po), Some(co)) = (p.as_object(), c.as_object()) {
            for (k, v) in co {
                if po.get(k) != Some(v) {
                    fields.push(k.clone());
                }
            }
        }
        reasons.push(format!("{} changed", fields.join(", ")));
    }
    reasons.join("; ")
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        v => v.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.to_string(), String::new()),
        })
        .collect()
}

fn env_changes(prev: &Value, cur: &Value, stage_env: &[String]) -> Vec<String> {
    let (p, c) = (env_map(prev), env_map(cur));
    let kind = |k: &str| {
        if stage_env.iter().any(|e| e.split('=').next() == Some(k)) {
            "ENV"
        } else {
            "build arg"
        }
    };
    let mut out = Vec::new();
    for (k, v) in &c {
        match p.get(k) {
            Some(old) if old != v => out.push(format!("{} {k} changed ({old} -> {v})", kind(k))),
            None => out.push(format!("{} {k} added ({v})", kind(k))),
            _ => {}
        }
    }
    for k in p.keys().filter(|k| !c.contains_key(*k)) {
        out.push(format!("{} {k} removed", kind(k)));
    }
    out
}

/// `app/main.go changed; app/new.go added` from two `files` maps (`src:path` -> description).
fn file_changes(prev: &Value, cur: &Value) -> String {
    // Borrowed from the documents: a 20,000-file COPY compares 40,000 entries.
    fn strip(m: &Value) -> BTreeMap<&str, &str> {
        m.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let path = k.split_once(':').map(|(_, p)| p).unwrap_or(k);
                let path = if path.is_empty() { "." } else { path };
                (path, v.as_str().unwrap_or_default())
            })
            .collect()
    }
    let (p, c) = (strip(prev), strip(cur));
    let mut changes = Vec::new();
    for (k, v) in &c {
        match p.get(k) {
            Some(old) if old != v => {
                let what = if old.split(' ').nth(1) != v.split(' ').nth(1)
                    && old.split(' ').nth(2) == v.split(' ').nth(2)
                {
                    "mode changed"
                } else {
                    "changed"
                };
                changes.push(format!("{k} {what}"));
            }
            None => changes.push(format!("{k} added")),
            _ => {}
        }
    }
    for k in p.keys().filter(|k| !c.contains_key(*k)) {
        changes.push(format!("{k} removed"));
    }
    // Directories change with their entries; name files first.
    changes.sort_by_key(|c| c.ends_with(" mode changed"));
    if changes.is_empty() {
        return "the selected files changed".into();
    }
    let n = changes.len();
    let mut s = changes
        .into_iter()
        .take(MAX_NAMED)
        .collect::<Vec<_>>()
        .join(", ");
    if n > MAX_NAMED {
        s.push_str(&format!(" and {} more", n - MAX_NAMED));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec_doc(env: &[&str], args: &[&str]) -> Value {
        json!({"display": "RUN make", "doc": {"v": 2, "op": "exec", "parent": "p",
            "exec": {"args": args, "env": env, "cwd": "/", "user": "", "network": "Default", "insecure": false, "mounts": []},
            "sources": [], "bind_content": {}}})
    }

    #[test]
    fn build_arg_change_is_named_with_values() {
        let a = exec_doc(&["PATH=/bin", "VERSION=1.2"], &["make"]);
        let b = exec_doc(&["PATH=/bin", "VERSION=1.3"], &["make"]);
        assert_eq!(
            explain("RUN make", &a, &b, &[]).unwrap(),
            "RUN make: build arg VERSION changed (1.2 -> 1.3)"
        );
        let r = explain("RUN make", &a, &b, &["VERSION=1.3".into()]).unwrap();
        assert!(r.contains("ENV VERSION changed"), "{r}");
        let c = exec_doc(&["PATH=/bin", "VERSION=1.2"], &["make", "all"]);
        assert!(explain("RUN make all", &a, &c, &[])
            .unwrap()
            .contains("instruction changed (was: RUN make)"));
        assert!(explain("RUN make", &a, &a, &[]).is_none());
    }

    #[test]
    fn copy_names_changed_added_and_removed_files() {
        let doc = |files: Value| {
            json!({"display": "COPY app/ /src", "doc": {"v": 2, "op": "copy", "parent": "p",
                "copy": {"srcs": ["app/"], "dest": "/src/", "add": false},
                "content": {"context": "x", "files": files, "remote": []}}})
        };
        let a = doc(
            json!({"app/:app": "d 755", "app/:app/main.go": "f 644 sha256:1", "app/:app/old.go": "f 644 sha256:2"}),
        );
        let b = doc(
            json!({"app/:app": "d 755", "app/:app/main.go": "f 644 sha256:3", "app/:app/new.go": "f 644 sha256:4"}),
        );
        assert_eq!(
            explain("COPY app/ /src", &a, &b, &[]).unwrap(),
            "COPY app/ /src: app/main.go changed, app/new.go added, app/old.go removed"
        );
    }
}
