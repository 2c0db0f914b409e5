//! `rbuild build --cache-from/--cache-to`: the build cache shared through a registry, an OCI
//! layout directory or the pushed image itself (inline), as `docker buildx build` takes them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rbuild_cache::artifact::{self, CacheConfig, Form, Found, LayerDesc};
use rbuild_cache::Store;
use rbuild_exporter::Compression;
use rbuild_registry::{Client, Layout};
use rbuild_solver::{BuildResult, LayerSource, RemoteCache};
use rbuild_types::ImageRef;

use crate::parse_ref;

/// Remote cache flags of `rbuild build`.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct RemoteCacheArgs {
    /// Import a build cache: type=registry,ref=REG/REPO:TAG (or just the ref; an image pushed
    /// with an inline cache works too), type=local,src=DIR[,tag=T] (repeatable).
    #[arg(
        long = "cache-from",
        value_name = "type=registry,ref=REF|type=local,src=DIR"
    )]
    pub cache_from: Vec<String>,
    /// Export the build cache: type=registry,ref=REF[,mode=min|max][,compression=gzip|zstd],
    /// type=local,dest=DIR[,tag=T][,mode=..], type=inline (repeatable).
    #[arg(long = "cache-to", value_name = "type=registry,ref=REF[,mode=max]")]
    pub cache_to: Vec<String>,
}

/// Where a cache is.
#[derive(Clone, Debug, PartialEq)]
enum Location {
    Registry(ImageRef),
    Local { dir: PathBuf, tag: String },
    Inline,
}

/// One `--cache-from` or `--cache-to`.
#[derive(Clone, Debug, PartialEq)]
struct Spec {
    location: Location,
    /// `mode=max`: every step of every stage, not only the target image's.
    max: bool,
    compression: Compression,
    /// `oci-artifact=true`: only the `artifactType` + empty config form.
    artifact_only: bool,
    /// `ignore-error=true`: an export failure is a warning.
    ignore_error: bool,
}

fn parse_spec(flag: &str, s: &str, export: bool) -> Result<Spec> {
    if !s.contains('=') {
        let r = parse_ref(s).with_context(|| format!("{flag} {s}"))?;
        return Ok(Spec {
            location: Location::Registry(r),
            max: false,
            compression: Compression::Gzip,
            artifact_only: false,
            ignore_error: false,
        });
    }
    let (mut kind, mut reference, mut dir, mut tag) = (None, None, None, None);
    let mut spec = Spec {
        location: Location::Inline,
        max: false,
        compression: Compression::Gzip,
        artifact_only: false,
        ignore_error: false,
    };
    let boolean = |k: &str, v: &str| -> Result<bool> {
        match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => bail!("{flag} {s}: {k} must be true or false"),
        }
    };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("{flag} {s}: expected key=value pairs like type=registry,ref=REG/REPO:TAG")
        })?;
        match (k, export) {
            ("type", _) => kind = Some(v.to_string()),
            ("ref", _) => reference = Some(v.to_string()),
            ("dest", true) | ("src", false) => dir = Some(PathBuf::from(v)),
            ("tag", _) => tag = Some(v.to_string()),
            ("mode", true) => {
                spec.max = match v {
                    "max" => true,
                    "min" => false,
                    _ => bail!("{flag} {s}: mode must be min or max"),
                }
            }
            ("compression", true) => {
                spec.compression = match v {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    _ => bail!("{flag} {s}: compression must be gzip or zstd"),
                }
            }
            ("oci-artifact", true) => spec.artifact_only = boolean(k, v)?,
            ("ignore-error", true) => spec.ignore_error = boolean(k, v)?,
            // BuildKit options whose behaviour is rbuild's only one (an OCI image manifest).
            (
                "oci-mediatypes" | "image-manifest" | "compression-level" | "force-compression",
                true,
            ) => {}
            _ => bail!("{flag} {s}: unknown option {k:?}"),
        }
    }
    let kind = kind.unwrap_or_else(|| "registry".into());
    spec.location = match kind.as_str() {
        "registry" => {
            let r = reference
                .ok_or_else(|| anyhow!("{flag} {s}: type=registry needs ref=REG/REPO:TAG"))?;
            Location::Registry(parse_ref(&r).with_context(|| format!("{flag} {s}"))?)
        }
        "local" => Location::Local {
            dir: dir.ok_or_else(|| {
                anyhow!(
                    "{flag} {s}: type=local needs {}=DIR",
                    if export { "dest" } else { "src" }
                )
            })?,
            tag: tag.unwrap_or_else(|| "latest".into()),
        },
        "inline" if export => Location::Inline,
        "inline" => bail!("{flag} {s}: to use an inline cache, name the image: --cache-from type=registry,ref=IMAGE"),
        other => bail!("{flag} {s}: unknown type={other} (supported: registry, local{})", if export { ", inline" } else { "" }),
    };
    Ok(spec)
}

struct RegistrySource {
    client: Arc<Client>,
    reference: ImageRef,
}

impl LayerSource for RegistrySource {
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<(), String> {
        self.client
            .fetch_cache_layer(store, &self.reference, layer)
            .map_err(|e| e.to_string())
    }
    fn check(&self, layer: &LayerDesc) -> Result<(), String> {
        match self
            .client
            .cache_blob_exists(&self.reference, &layer.digest)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("layer {} is not in the registry", layer.digest)),
            Err(e) => Err(e.to_string()),
        }
    }
    fn name(&self) -> String {
        self.reference.to_string()
    }
}

struct LayoutSource {
    layout: Layout,
    name: String,
}

impl LayerSource for LayoutSource {
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<(), String> {
        self.layout
            .fetch_cache_layer(store, layer)
            .map_err(|e| e.to_string())
    }
    fn check(&self, layer: &LayerDesc) -> Result<(), String> {
        if self.layout.has_blob(&layer.digest, layer.size) {
            Ok(())
        } else {
            Err(format!(
                "layer {} ({} bytes) is not in the directory",
                layer.digest, layer.size
            ))
        }
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

impl RemoteCacheArgs {
    /// The registry hosts of the `--cache-from` caches (valid specs of type registry).
    pub fn registries(&self) -> Vec<String> {
        self.cache_from
            .iter()
            .filter_map(
                |s| match parse_spec("--cache-from", s, false).ok()?.location {
                    Location::Registry(r) => Some(rbuild_registry::registry_of(&r)),
                    _ => None,
                },
            )
            .collect()
    }

    /// Checks every flag before the build starts (a typo must not cost a whole build).
    pub fn check(&self) -> Result<()> {
        for s in &self.cache_from {
            parse_spec("--cache-from", s, false)?;
        }
        for s in &self.cache_to {
            parse_spec("--cache-to", s, true)?;
        }
        Ok(())
    }

    /// Reads every `--cache-from`; what cannot be read is a warning (the build runs without it).
    pub fn import(
        &self,
        client: Arc<Client>,
        warn: &dyn Fn(String),
    ) -> Result<Option<Arc<RemoteCache>>> {
        if self.cache_from.is_empty() {
            return Ok(None);
        }
        let mut remote = RemoteCache::new();
        for s in &self.cache_from {
            let spec = parse_spec("--cache-from", s, false)?;
            let got: Result<Option<(CacheConfig, Box<dyn LayerSource>)>> = match &spec.location {
                Location::Registry(r) => read_registry(&client, r).map(|c| {
                    c.map(|c| {
                        let src: Box<dyn LayerSource> = Box::new(RegistrySource {
                            client: client.clone(),
                            reference: r.clone(),
                        });
                        (c, src)
                    })
                }),
                Location::Local { dir, tag } => read_layout(dir, tag).map(|c| {
                    c.map(|c| {
                        let src: Box<dyn LayerSource> = Box::new(LayoutSource {
                            layout: Layout::new(dir),
                            name: format!("{}:{tag}", dir.display()),
                        });
                        (c, src)
                    })
                }),
                Location::Inline => unreachable!("refused by parse_spec"),
            };
            match got {
                Ok(Some((config, source))) => {
                    for w in remote.add(config, source) {
                        warn(w);
                    }
                }
                Ok(None) => warn(format!(
                    "--cache-from {s}: no cache found there; building without it"
                )),
                Err(e) => warn(format!(
                    "--cache-from {s}: {e:#}; building without this cache"
                )),
            }
        }
        Ok(Some(Arc::new(remote)))
    }

    /// `type=inline`: rewrites the built image with the cache records of its own layers in its
    /// config, so that pushing it exports the cache too.
    pub fn apply_inline(&self, store: &Store, result: BuildResult) -> Result<BuildResult> {
        let mut inline = false;
        for s in &self.cache_to {
            inline |= parse_spec("--cache-to", s, true)?.location == Location::Inline;
        }
        if !inline {
            return Ok(result);
        }
        let (config, _) =
            rbuild_solver::remote::export_config(store, &result.steps, false, None, None)
                .map_err(|e| anyhow!("--cache-to type=inline: {e}"))?;
        let img = rbuild_exporter::load_image(store, &result.manifest)?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&img.config_digest)?)?;
        doc[artifact::INLINE_FIELD] = serde_json::from_slice(&config.to_bytes())?;
        let (manifest, config) = rbuild_exporter::write_image_json(store, &doc)?;
        Ok(result.with_image(manifest, config))
    }

    /// Writes every `--cache-to` of a registry or a directory; returns what to print.
    pub fn export(
        &self,
        store: &Store,
        client: &Client,
        result: &BuildResult,
        remote: Option<&RemoteCache>,
        warn: &dyn Fn(String),
    ) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for s in &self.cache_to {
            let spec = parse_spec("--cache-to", s, true)?;
            if spec.location == Location::Inline {
                continue;
            }
            match export_one(store, client, result, remote, &spec) {
                Ok(msg) => done.push(msg),
                Err(e) if spec.ignore_error => warn(format!("--cache-to {s}: {e:#}")),
                Err(e) => return Err(e.context(format!("--cache-to {s}"))),
            }
        }
        Ok(done)
    }
}

fn export_one(
    store: &Store,
    client: &Client,
    result: &BuildResult,
    remote: Option<&RemoteCache>,
    spec: &Spec,
) -> Result<String> {
    let (config, mut blobs) = rbuild_solver::remote::export_config(
        store,
        &result.steps,
        spec.max,
        Some(spec.compression),
        remote,
    )?;
    let bytes = config.to_bytes();
    let cd = store.put_blob(&bytes)?;
    blobs.push(cd.clone());
    let empty = store.put_blob(&artifact::empty_config())?;
    let form = |f| artifact::manifest(f, (&cd, bytes.len() as u64), &config.layers);
    let summary = format!(
        "{} records, {} layers",
        config.records.len(),
        config.layers.len()
    );
    match &spec.location {
        Location::Registry(r) => {
            let forms = if spec.artifact_only {
                vec![form(Form::Artifact)]
            } else {
                vec![form(Form::Config), form(Form::Artifact)]
            };
            blobs.push(empty);
            let d = client.push_artifact(store, r, &blobs, &forms)?;
            Ok(format!("exporting cache to {r} done: {d} ({summary})"))
        }
        Location::Local { dir, tag } => {
            let f = if spec.artifact_only {
                Form::Artifact
            } else {
                Form::Config
            };
            if f == Form::Artifact {
                blobs.push(empty);
            }
            let d = Layout::new(dir).write(store, tag, &blobs, &form(f))?;
            Ok(format!(
                "exporting cache to {}:{tag} done: {d} ({summary})",
                dir.display()
            ))
        }
        Location::Inline => unreachable!("handled by apply_inline"),
    }
}

fn parse_config(bytes: &[u8]) -> Result<CacheConfig> {
    Ok(CacheConfig::parse(bytes)?)
}

fn read_registry(client: &Client, r: &ImageRef) -> Result<Option<CacheConfig>> {
    let Some(m) = client.pull_artifact_manifest(r)? else {
        return Ok(None);
    };
    match artifact::parse_manifest(&m)? {
        Found::CacheConfig(d, size) => {
            parse_config(&client.pull_artifact_blob(r, &d, size)?).map(Some)
        }
        Found::Image(d, size, layers) => {
            let cfg = client.pull_artifact_blob(r, &d, size)?;
            let c = artifact::parse_inline(&cfg, &layers)?;
            if c.is_none() {
                bail!("the image carries no rbuild cache (build it with --cache-to type=inline)");
            }
            Ok(c)
        }
    }
}

fn read_layout(dir: &std::path::Path, tag: &str) -> Result<Option<CacheConfig>> {
    let layout = Layout::new(dir);
    let Some(m) = layout.read_manifest(tag)? else {
        return Ok(None);
    };
    match artifact::parse_manifest(&m)? {
        Found::CacheConfig(d, size) => parse_config(&layout.read_blob(&d, size)?).map(Some),
        Found::Image(d, size, layers) => {
            let c = artifact::parse_inline(&layout.read_blob(&d, size)?, &layers)?;
            Ok(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_buildx() {
        let s = parse_spec(
            "--cache-to",
            "type=registry,ref=127.0.0.1:5000/app:cache,mode=max,compression=zstd",
            true,
        )
        .unwrap();
        assert!(s.max);
        assert_eq!(s.compression, Compression::Zstd);
        assert!(matches!(s.location, Location::Registry(_)));
        let s = parse_spec("--cache-from", "127.0.0.1:5000/app:cache", false).unwrap();
        assert!(!s.max);
        let s = parse_spec("--cache-to", "type=local,dest=/tmp/c", true).unwrap();
        assert_eq!(
            s.location,
            Location::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into()
            }
        );
        assert!(parse_spec("--cache-from", "type=local,dest=/tmp/c", false).is_err());
        assert!(parse_spec("--cache-to", "type=registry", true).is_err());
        assert!(parse_spec("--cache-to", "type=registry,ref=a:b,mode=all", true).is_err());
        assert!(parse_spec("--cache-from", "type=inline", false).is_err());
        assert!(parse_spec("--cache-to", "type=gha", true).is_err());
        assert_eq!(
            parse_spec("--cache-to", "type=inline", true)
                .unwrap()
                .location,
            Location::Inline
        );
    }
}
