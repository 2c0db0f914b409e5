//! Credentials in Docker's `config.json` format (`{"auths": {"host": {"auth": base64(user:pass)}}}`),
//! the file `docker login` writes, so credentials are shared with docker, skopeo and buildah.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use crate::{Error, Result};

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(d).join("config.json");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".docker/config.json")
}

/// A credentials file; other keys of the document are kept as they are.
#[derive(Clone, Debug, Default)]
pub struct AuthFile {
    doc: Value,
}

/// The keys a registry may be stored under (`docker.io` also as Docker Hub's index URL).
fn keys(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        k.push("https://index.docker.io/v1/".into());
    }
    k
}

impl AuthFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<AuthFile> {
        match std::fs::read(path) {
            Ok(b) => {
                let doc: Value = serde_json::from_slice(&b).map_err(|e| Error::AuthFile {
                    path: path.to_path_buf(),
                    message: format!("not valid JSON ({e}); fix or remove the file"),
                })?;
                Ok(AuthFile { doc })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile { doc: json!({}) }),
            Err(e) => Err(Error::AuthFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// User and password stored for `registry`.
    pub fn get(&self, registry: &str) -> Option<(String, String)> {
        let auths = self.doc.get("auths")?;
        for k in keys(registry) {
            let Some(entry) = auths.get(&k) else { continue };
            if let Some(a) = entry.get("auth").and_then(Value::as_str) {
                let raw = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
                let s = String::from_utf8(raw).ok()?;
                let (u, p) = s.split_once(':')?;
                return Some((u.to_string(), p.to_string()));
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                return Some((u.to_string(), p.to_string()));
            }
        }
        None
    }

    /// Stores credentials for `registry`.
    pub fn set(&mut self, registry: &str, user: &str, password: &str) {
        if !self.doc.is_object() {
            self.doc = json!({});
        }
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let auths = self
            .doc
            .as_object_mut()
            .map(|o| o.entry("auths").or_insert_with(|| json!({})));
        if let Some(a) = auths {
            if !a.is_object() {
                *a = json!({});
            }
            a[registry] = json!({ "auth": auth });
        }
    }

    /// Removes the credentials of `registry`; true when there were some.
    pub fn remove(&mut self, registry: &str) -> bool {
        let Some(auths) = self.doc.get_mut("auths").and_then(Value::as_object_mut) else {
            return false;
        };
        let mut removed = false;
        for k in keys(registry) {
            removed |= auths.remove(&k).is_some();
        }
        removed
    }

    /// Writes the file (mode 0600, through a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| Error::AuthFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let text = serde_json::to_string_pretty(&self.doc).unwrap_or_else(|_| "{}".into());
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"credsStore":"x","auths":{"https://index.docker.io/v1/":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let mut f = AuthFile::load(&p).unwrap();
        assert_eq!(f.get("docker.io"), Some(("u".into(), "p".into())));
        f.set("127.0.0.1:5000", "me", "se:cret");
        f.save(&p).unwrap();
        let f = AuthFile::load(&p).unwrap();
        assert_eq!(
            f.get("127.0.0.1:5000"),
            Some(("me".into(), "se:cret".into()))
        );
        assert_eq!(f.doc["credsStore"], "x");
        let mut f = f;
        assert!(f.remove("127.0.0.1:5000"));
        assert!(!f.remove("127.0.0.1:5000"));
        assert_eq!(f.get("127.0.0.1:5000"), None);
        assert!(AuthFile::load(&dir.path().join("missing.json"))
            .unwrap()
            .get("x")
            .is_none());
    }
}
