//! Docker archives (`docker save` format), the merged filesystem output, and loading archives.

use std::collections::HashMap;
use std::fs::{self, File};

use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use rbuild_cache::Store;
use rbuild_types::{Digest, ImageRef, Platform};

use crate::image::{load_image, our_digest, write_image_raw};
use crate::oci::{write_layout, Compression, TarOut};
use crate::source::ensure_snapshot;
use crate::unpack::{apply_layer, decompressed};
use crate::{Error, Result};

/// Writes a `docker save` style archive (`--output type=docker,dest=F`, `rbuild save`):
/// `manifest.json` (Config, RepoTags, Layers) next to an OCI layout (`oci-layout`,
/// `index.json`, `blobs/sha256/*`) as Docker 25+ writes it. Layers are uncompressed, so their
/// digests equal the config's diff_ids. Returns the manifest digest.
pub fn export_docker_archive(
    store: &Store,
    manifest: &Digest,
    names: &[ImageRef],
    dest: &Path,
) -> Result<Digest> {
    let mut out = TarOut::create(dest)?;
    let (d, m) = write_layout(store, manifest, names, Compression::None, &mut out)?;
    let img = load_image(store, manifest)?;
    let mut layers = Vec::new();
    for l in m.layers() {
        layers.push(format!(
            "blobs/sha256/{}",
            our_digest(l.digest(), "layer")?.hex()
        ));
    }
    let docker = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", img.config_digest.hex()),
        "RepoTags": names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "Layers": layers,
    }]);
    out.bytes("manifest.json", docker.to_string().as_bytes())?;
    out.finish()?;
    Ok(d)
}

/// Writes the image's final filesystem into `dest` (`--output type=local,dest=DIR`): layers
/// applied in order, whiteouts and opaque directories honoured. Unless `preserve_special`
/// (`preserve-special=true`), the result is what an unprivileged user's tar extraction would
/// give: device nodes are skipped and files lose their set-user-id and set-group-id bits and
/// file capabilities, so an exported image cannot leave a root-owned setuid binary or a raw disk
/// device on the host. Ownership, other modes, fifos and other xattrs are kept.
pub fn export_local_dir(
    store: &Store,
    manifest: &Digest,
    dest: &Path,
    preserve_special: bool,
) -> Result<()> {
    let img = load_image(store, manifest)?;
    fs::create_dir_all(dest).map_err(Error::io("create", dest))?;
    for l in img.config.rootfs().diff_ids() {
        let d: Digest = l.parse().map_err(|_| Error::InvalidImage {
            what: "config",
            digest: img.config_digest.to_string(),
            reason: format!("invalid diff_id {l:?}"),
        })?;
        // The tar: its blob, or a compressed blob decompressed while read (checked against
        // the diff_id at its end), or a blob made (verified) from the snapshot.
        let mut tar = crate::source::layer_tar(store, &d)
            .map_err(|e| e.for_layer_of(format!("image {manifest}")))?;
        apply_layer(&mut tar, dest, preserve_special)?;
        std::io::copy(&mut tar, &mut std::io::sink())
            .map_err(Error::io("read layer", d.to_string()))?;
    }
    Ok(())
}

/// Writes the image's final filesystem as one tar file (`--output type=tar,dest=F`): the layers
/// are applied into a temporary directory beside `dest`, which is then written as a sorted tar
/// (mtimes clamped to `epoch` when given) and renamed into place.
pub fn export_rootfs_tar(
    store: &Store,
    manifest: &Digest,
    dest: &Path,
    epoch: Option<i64>,
) -> Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".rbuild-rootfs-")
        .tempdir_in(&parent)
        .map_err(Error::io("create temporary directory in", &parent))?;
    let root = tmp.path().join("fs");
    // Everything is kept: the tree only feeds the tar, inside a private (0700) temporary directory.
    export_local_dir(store, manifest, &root, true)?;
    let out_tmp = tmp.path().join("out.tar");
    let mut f =
        std::io::BufWriter::new(File::create(&out_tmp).map_err(Error::io("create", &out_tmp))?);
    crate::layer::write_tar_clamped(&root, &mut f, epoch)?;
    std::io::Write::flush(&mut f).map_err(Error::io("write", &out_tmp))?;
    drop(f);
    fs::rename(&out_tmp, dest).map_err(Error::io("rename to", dest))?;
    Ok(())
}

/// Reads one file of an extracted archive, refusing names that leave it.
fn archive_file(root: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::UnsafePath {
            path: rel.to_path_buf(),
            reason: "archive reference leaves the archive",
        });
    }
    Ok(root.join(rel))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let data = fs::read(path).map_err(Error::io("read", path))?;
    serde_json::from_slice(&data).map_err(|e| Error::InvalidImage {
        what,
        digest: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Stores the layers (decompressing, verifying each against its diff_id) and the config of an
/// image; returns the new manifest digest in the store.
fn import_image(store: &Store, config_path: &Path, layer_paths: &[PathBuf]) -> Result<Digest> {
    let config_bytes = fs::read(config_path).map_err(Error::io("read", config_path))?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::InvalidImage {
            what: "config",
            digest: config_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layer_paths.len() {
        return Err(Error::InvalidImage {
            what: "config",
            digest: config_path.display().to_string(),
            reason: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                layer_paths.len()
            ),
        });
    }
    for (d, p) in diff_ids.iter().zip(layer_paths) {
        let expected: Digest = d.parse().map_err(|_| Error::InvalidImage {
            what: "config",
            digest: config_path.display().to_string(),
            reason: format!("invalid diff_id {d:?}"),
        })?;
        if store.has_blob(&expected) {
            continue;
        }
        let f = File::open(p).map_err(Error::io("open", p))?;
        let mut r = decompressed(f)?;
        let mut w = store.blob_writer()?;
        std::io::copy(&mut r, &mut w).map_err(Error::io("read layer", p))?;
        match w.commit(Some(&expected)) {
            Ok(_) => {}
            Err(rbuild_cache::Error::DigestMismatch { actual, .. }) => {
                return Err(Error::DigestMismatch {
                    path: p.display().to_string(),
                    expected,
                    actual,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The config is kept byte for byte, so the image id stays the one the archive had.
    let (m, _) = write_image_raw(store, &config_bytes)?;
    for d in diff_ids {
        if let Ok(d) = d.parse::<Digest>() {
            ensure_snapshot(store, &d)?;
        }
    }
    Ok(m)
}

/// Loads an OCI archive or a docker archive (`rbuild load -i F`) into the store: layers are
/// stored uncompressed (verified against the config's diff_ids), snapshots made, and names
/// found in the archive (`RepoTags`, `io.containerd.image.name`, `org.opencontainers.image.ref.name`)
/// tagged. Returns `(name, manifest digest)` per image; the name is None when the archive has none.
pub fn load_archive(store: &Store, archive: &Path) -> Result<Vec<(Option<ImageRef>, Digest)>> {
    let tmp = tempfile::Builder::new()
        .prefix("rbuild-load-")
        .tempdir()
        .map_err(Error::io("create temporary directory for", archive))?;
    let f = File::open(archive).map_err(Error::io("open", archive))?;
    let mut ar = tar::Archive::new(decompressed(f)?);
    for e in ar.entries().map_err(Error::io("read", archive))? {
        let mut e = e.map_err(Error::io("read", archive))?;
        let kind = e.header().entry_type();
        let name = e.path().map_err(Error::io("read", archive))?.into_owned();
        let Some(p) = safe_name(&name)? else { continue };
        let dest = tmp.path().join(&p);
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(Error::io("create", &dest))?;
        } else if kind.is_file() {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
            }
            let mut out = File::create(&dest).map_err(Error::io("create", &dest))?;
            std::io::copy(&mut e, &mut out).map_err(Error::io("write", &dest))?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            // Old docker archives link identical layers; resolve inside the archive only.
            if let Some(target) = e.link_name().map_err(Error::io("read", archive))? {
                let base = if kind.is_symlink() {
                    p.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                if let Some(t) = safe_name(&base.join(target))? {
                    let src = tmp.path().join(t);
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
                    }
                    fs::copy(&src, &dest).map_err(Error::io("copy", &src))?;
                }
            }
        }
    }
    let root = tmp.path();
    let mut out = Vec::new();
    if root.join("manifest.json").is_file() {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = read_json(&root.join("manifest.json"), "docker manifest.json")?;
        for e in entries {
            let layers = e
                .layers
                .iter()
                .map(|l| archive_file(root, l))
                .collect::<Result<Vec<_>>>()?;
            let m = import_image(store, &archive_file(root, &e.config)?, &layers)?;
            let tags = e.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                out.push((None, m.clone()));
            }
            for t in tags {
                let r: ImageRef =
                    t.parse()
                        .map(strip_docker_io)
                        .map_err(|_| Error::InvalidImage {
                            what: "docker manifest.json",
                            digest: archive.display().to_string(),
                            reason: format!("invalid RepoTag {t:?}"),
                        })?;
                store.set_tag(&r, &m)?;
                out.push((Some(r), m.clone()));
            }
        }
        return Ok(out);
    }
    if !root.join("index.json").is_file() {
        return Err(Error::Unsupported(format!(
            "{}: neither an OCI archive (index.json) nor a docker archive (manifest.json)",
            archive.display()
        )));
    }
    let index: ImageIndex = read_json(&root.join("index.json"), "index")?;
    let blob = |d: &oci_spec::image::Digest| -> Result<PathBuf> {
        archive_file(root, &format!("blobs/{}/{}", d.algorithm(), d.digest()))
    };
    let host = Platform::host();
    for desc in index.manifests() {
        let mut mdesc = desc.clone();
        // A nested index (multi-platform): pick this host's platform.
        if mdesc.media_type().to_string() == "application/vnd.oci.image.index.v1+json" {
            let nested: ImageIndex = read_json(&blob(mdesc.digest())?, "index")?;
            let pick = nested.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == host.os
                        && p.architecture().to_string() == host.architecture
                })
            });
            match pick {
                Some(p) => mdesc = p.clone(),
                None => continue,
            }
        }
        let m: ImageManifest = read_json(&blob(mdesc.digest())?, "manifest")?;
        let layers = m
            .layers()
            .iter()
            .map(|l| blob(l.digest()))
            .collect::<Result<Vec<_>>>()?;
        let config_path = blob(m.config().digest())?;
        let cbytes = fs::read(&config_path).map_err(Error::io("read", &config_path))?;
        let expected = our_digest(m.config().digest(), "config")?;
        if Digest::of(&cbytes) != expected {
            return Err(Error::DigestMismatch {
                path: config_path.display().to_string(),
                expected,
                actual: Digest::of(&cbytes),
            });
        }
        let md = import_image(store, &config_path, &layers)?;
        let ann: HashMap<String, String> = desc.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .and_then(|n| n.parse::<ImageRef>().ok().map(strip_docker_io))
            .or_else(|| {
                ann.get("org.opencontainers.image.ref.name")
                    .and_then(|n| n.parse::<ImageRef>().ok())
            });
        if let Some(n) = &name {
            store.set_tag(n, &md)?;
        }
        out.push((name, md));
    }
    Ok(out)
}

/// `docker.io/library/x` -> `x`, `docker.io/me/x` -> `me/x` (local names are kept short).
fn strip_docker_io(mut r: ImageRef) -> ImageRef {
    if r.registry.as_deref() == Some("docker.io") {
        r.registry = None;
        if let Some(rest) = r.repository.strip_prefix("library/") {
            r.repository = rest.to_string();
        }
    }
    r
}

fn safe_name(p: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            // `dir/../x` (skopeo links layers this way) is fine while it stays inside.
            std::path::Component::ParentDir if out.pop() => {}
            _ => {
                return Err(Error::UnsafePath {
                    path: p.to_path_buf(),
                    reason: "archive entry leaves the archive",
                })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_stay_inside() {
        let ok = |s: &str| safe_name(Path::new(s)).unwrap();
        assert_eq!(ok("a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(ok("a/../b.tar"), Some(PathBuf::from("b.tar")));
        assert_eq!(ok("./"), None);
        assert!(safe_name(Path::new("../x")).is_err());
        assert!(safe_name(Path::new("a/../../x")).is_err());
        assert!(safe_name(Path::new("/etc/passwd")).is_err());
    }
}
