//! Names and labels as docker compose sets them, the config hash, and dependency order.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::{Project, Service};

/// `com.docker.compose.project`.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// `com.docker.compose.service`.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// `com.docker.compose.container-number`.
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
/// `com.docker.compose.oneoff` (`True` for `compose run` containers).
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
/// `com.docker.compose.config-hash`: recreate when it changes.
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
/// `com.docker.compose.image`: the image id the container was created from.
pub const LABEL_IMAGE: &str = "com.docker.compose.image";
/// `com.docker.compose.network` on networks.
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
/// `com.docker.compose.volume` on volumes.
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
/// `com.docker.compose.project.working_dir`.
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
/// `com.docker.compose.project.config_files`.
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";

impl Project {
    /// The container of a service: `container_name:` or `PROJECT-SERVICE-1`.
    pub fn container_name(&self, svc: &Service) -> String {
        svc.container_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}-1", self.name, svc.name))
    }

    /// The image a service runs: `image:`, or `PROJECT-SERVICE` for a built one.
    pub fn image_name(&self, svc: &Service) -> String {
        svc.image
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.name, svc.name))
    }

    /// The hash of what a container of `svc` is made from (not `build`, `depends_on`, `profiles`,
    /// as docker compose): a container whose label differs is recreated.
    pub fn config_hash(&self, svc: &Service) -> String {
        let mut s = svc.clone();
        s.build = None;
        s.depends_on.clear();
        s.profiles.clear();
        let json = serde_json::to_vec(&s).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }

    /// Labels of a service's container (the user's `labels:` under compose's own).
    pub fn service_labels(&self, svc: &Service, oneoff: bool) -> BTreeMap<String, String> {
        let mut l = svc.labels.clone();
        l.insert(LABEL_PROJECT.into(), self.name.clone());
        l.insert(LABEL_SERVICE.into(), svc.name.clone());
        l.insert(LABEL_NUMBER.into(), "1".into());
        l.insert(
            LABEL_ONEOFF.into(),
            if oneoff { "True" } else { "False" }.into(),
        );
        l.insert(LABEL_CONFIG_HASH.into(), self.config_hash(svc));
        l.insert(
            LABEL_WORKING_DIR.into(),
            self.working_dir.display().to_string(),
        );
        let files: Vec<String> = self
            .config_files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        l.insert(LABEL_CONFIG_FILES.into(), files.join(","));
        l
    }

    /// Labels of a project network.
    pub fn network_labels(&self, key: &str) -> BTreeMap<String, String> {
        let mut l = self
            .networks
            .get(key)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        l.insert(LABEL_PROJECT.into(), self.name.clone());
        l.insert(LABEL_NETWORK.into(), key.into());
        l
    }

    /// Labels of a project volume.
    pub fn volume_labels(&self, key: &str) -> BTreeMap<String, String> {
        let mut l = self
            .volumes
            .get(key)
            .map(|v| v.labels.clone())
            .unwrap_or_default();
        l.insert(LABEL_PROJECT.into(), self.name.clone());
        l.insert(LABEL_VOLUME.into(), key.into());
        l
    }

    /// `selected` services (all when empty) and what they depend on, dependencies first.
    /// Unknown names are returned as `Err`.
    pub fn start_order(&self, selected: &[String]) -> Result<Vec<String>, String> {
        for s in selected {
            if !self.services.contains_key(s) {
                return Err(s.clone());
            }
        }
        let roots: Vec<String> = if selected.is_empty() {
            self.services.keys().cloned().collect()
        } else {
            selected.to_vec()
        };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(p: &Project, s: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(s.to_string()) {
                return;
            }
            if let Some(svc) = p.services.get(s) {
                for d in svc.depends_on.keys() {
                    visit(p, d, seen, out);
                }
                out.push(s.to_string());
            }
        }
        for r in &roots {
            visit(self, r, &mut seen, &mut out);
        }
        Ok(out)
    }
}
