//! Image commands: pull, push, login, logout, image inspect, history, tag, rmi, save, load.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rbuild_cache::Store;
use rbuild_types::{Digest, ImageRef, Platform};
use serde_json::{json, Value};

use crate::parse_ref;

/// Registry options shared by pull, push, login and build.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// Reach this registry (host[:port]) over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
}

impl RegistryArgs {
    pub(crate) fn client(&self, platform: Option<Platform>) -> Result<rbuild_registry::Client> {
        Ok(rbuild_registry::Client::new(rbuild_registry::Options {
            insecure: self.insecure_registry.clone(),
            auth_file: None,
            platform,
        })?)
    }
}

#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// Image to pull, e.g. 127.0.0.1:5000/web:v1.
    image: String,
    /// Platform to pick from a multi-platform image (default: this host).
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// Image in the store, e.g. 127.0.0.1:5000/web:v1.
    image: String,
    /// Push under this name instead (default: the image's name).
    destination: Option<String>,
    /// Layer compression.
    #[arg(long, default_value = "gzip")]
    compression: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(crate) struct LoginArgs {
    /// Registry host[:port].
    server: String,
    /// User name.
    #[arg(short, long)]
    username: String,
    /// Password (prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ImageCommand {
    /// Show the details of images as JSON.
    Inspect {
        /// Images (name or id).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images (as `rbuild images`).
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListFormat {
    /// Aligned columns.
    Table,
    /// One JSON object per line, as `docker images --format json`.
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArchiveFormat {
    /// `docker save` format (also an OCI layout), loads with `docker load`.
    Docker,
    /// OCI image layout tar.
    Oci,
}

#[derive(Args, Debug)]
pub(crate) struct SaveArgs {
    /// Images to save (all must be one image under several names).
    #[arg(required = true)]
    images: Vec<String>,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Archive format.
    #[arg(long, value_enum, default_value = "docker")]
    format: ArchiveFormat,
}

/// Finds an image by name, full id (`sha256:...`) or id prefix; returns its manifest digest.
pub(crate) fn find_image(store: &Store, s: &str) -> Result<Digest> {
    if let Ok(r) = s.parse::<ImageRef>() {
        if let Some(m) = store.get_tag(&r)? {
            return Ok(m);
        }
    }
    let id = s.strip_prefix("sha256:").unwrap_or(s);
    if id.len() >= 4 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut found: Vec<Digest> = Vec::new();
        for t in store.list_tags()? {
            let img = rbuild_exporter::load_image(store, &t.manifest)?;
            if (img.config_digest.hex().starts_with(id) || t.manifest.hex().starts_with(id))
                && !found.contains(&t.manifest)
            {
                found.push(t.manifest.clone());
            }
        }
        match found.len() {
            1 => return Ok(found.remove(0)),
            0 => {}
            _ => bail!("image id {s} is ambiguous; give more digits or a name"),
        }
    }
    bail!("no such image: {s} (see `rbuild images`; `rbuild pull {s}` fetches it from a registry)")
}

fn tags_of(store: &Store, manifest: &Digest) -> Result<Vec<String>> {
    Ok(store
        .list_tags()?
        .into_iter()
        .filter(|t| &t.manifest == manifest)
        .map(|t| t.name)
        .collect())
}

pub(crate) fn pull(store: &Store, a: PullArgs) -> Result<ExitCode> {
    let image = parse_ref(&a.image)?;
    let platform = match &a.platform {
        Some(p) => Some(
            p.parse::<Platform>()
                .map_err(|e| anyhow!("--platform: {e}"))?,
        ),
        None => None,
    };
    let client = a.registry.client(platform)?;
    let p = client.pull(store, &image)?;
    println!("Digest: {}", p.remote_digest);
    println!("Image ID: {}", p.config);
    println!("Pulled {image}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn push(store: &Store, a: PushArgs) -> Result<ExitCode> {
    let manifest = find_image(store, &a.image)?;
    let dest = parse_ref(a.destination.as_deref().unwrap_or(&a.image)).with_context(|| {
        format!(
            "{} is not a name to push to; give one: rbuild push {} REGISTRY/NAME:TAG",
            a.image, a.image
        )
    })?;
    let compression: rbuild_exporter::Compression = a
        .compression
        .parse()
        .map_err(|e| anyhow!("--compression: {e}"))?;
    let client = a.registry.client(None)?;
    let d = client.push(store, &manifest, &dest, compression)?;
    println!("{}: digest: {d}", dest.tag.as_deref().unwrap_or("latest"));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn login(a: LoginArgs) -> Result<ExitCode> {
    let password = match (&a.password, a.password_stdin) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or -p PASSWORD)"),
    };
    let client = a.registry.client(None)?;
    let path = client.login(&a.server, &a.username, &password)?;
    eprintln!("credentials saved in {}", path.display());
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn logout(server: &str) -> Result<ExitCode> {
    let client = RegistryArgs::default().client(None)?;
    if client.logout(server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_doc(store: &Store, manifest: &Digest) -> Result<Value> {
    let img = rbuild_exporter::load_image(store, manifest)?;
    let raw: Value = serde_json::from_slice(&store.read_blob(&img.config_digest)?)
        .context("reading the image config")?;
    Ok(json!({
        "Id": img.config_digest.to_string(),
        "RepoTags": tags_of(store, manifest)?,
        "ManifestDigest": manifest.to_string(),
        "Created": raw.get("created").cloned().unwrap_or(Value::Null),
        "Architecture": raw.get("architecture").cloned().unwrap_or(Value::Null),
        "Os": raw.get("os").cloned().unwrap_or(Value::Null),
        "Variant": raw.get("variant").cloned().unwrap_or(Value::Null),
        "Config": raw.get("config").cloned().unwrap_or(json!({})),
        "RootFS": {
            "Type": "layers",
            "Layers": raw["rootfs"]["diff_ids"].clone(),
        },
        "History": raw.get("history").cloned().unwrap_or(json!([])),
        "Size": img.size,
    }))
}

pub(crate) fn image(store: &Store, c: ImageCommand) -> Result<ExitCode> {
    match c {
        ImageCommand::Inspect { images } => {
            let mut out = Vec::new();
            for i in &images {
                let m = find_image(store, i)?;
                out.push(inspect_doc(store, &m)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Ls { format } => crate::images::images(store, format),
    }
}

fn human_size(n: u64) -> String {
    crate::images::human_size(n)
}

pub(crate) fn history(store: &Store, image: &str, no_trunc: bool) -> Result<ExitCode> {
    let m = find_image(store, image)?;
    let img = rbuild_exporter::load_image(store, &m)?;
    let raw: Value = serde_json::from_slice(&store.read_blob(&img.config_digest)?)?;
    let history = raw["history"].as_array().cloned().unwrap_or_default();
    let mut sizes = img.manifest.layers().iter().map(|l| l.size());
    let mut rows = Vec::new();
    for h in &history {
        let empty = h["empty_layer"] == json!(true);
        let size = if empty { 0 } else { sizes.next().unwrap_or(0) };
        rows.push((h.clone(), size));
    }
    rows.reverse();
    println!(
        "{:<14} {:<24} {:<46} {:<10} COMMENT",
        "IMAGE", "CREATED", "CREATED BY", "SIZE"
    );
    for (i, (h, size)) in rows.iter().enumerate() {
        let id = if i == 0 {
            img.config_digest.short().to_string()
        } else {
            "<missing>".into()
        };
        let mut by = h["created_by"].as_str().unwrap_or_default().to_string();
        if !no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        println!(
            "{:<14} {:<24} {:<46} {:<10} {}",
            id,
            crate::images::human_ago(h["created"].as_str()),
            by,
            human_size(*size),
            h["comment"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn tag(store: &Store, src: &str, dst: &str) -> Result<ExitCode> {
    let m = find_image(store, src)?;
    store.set_tag(&parse_ref(dst)?, &m)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rmi(store: &Store, images: &[String], force: bool) -> Result<ExitCode> {
    let mut failed = false;
    for i in images {
        let r = (|| -> Result<()> {
            // A name removes that tag; an id removes every tag of the image (only with -f when
            // there are several).
            if let Ok(r) = i.parse::<ImageRef>() {
                if store.remove_tag(&r)? {
                    println!("Untagged: {r}");
                    return Ok(());
                }
            }
            let m = find_image(store, i)?;
            let tags = tags_of(store, &m)?;
            if tags.len() > 1 && !force {
                bail!(
                    "image {i} is tagged {}; remove the tags one by one or use -f",
                    tags.join(", ")
                );
            }
            for t in tags {
                if let Ok(r) = t.parse::<ImageRef>() {
                    store.remove_tag(&r)?;
                }
                println!("Untagged: {t}");
            }
            println!("Deleted: {m}");
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("ERROR: {e:#}");
            failed = true;
        }
    }
    eprintln!("(layers stay in the store until `rbuild prune`)");
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn save(store: &Store, a: SaveArgs) -> Result<ExitCode> {
    let mut manifest: Option<Digest> = None;
    let mut names = Vec::new();
    for i in &a.images {
        let m = find_image(store, i)?;
        if manifest.as_ref().is_some_and(|x| x != &m) {
            bail!(
                "rbuild save writes one image per archive; {i} is another image than {}",
                a.images[0]
            );
        }
        manifest = Some(m);
        if let Ok(r) = i.parse::<ImageRef>() {
            if store.get_tag(&r)?.is_some() {
                names.push(r);
            }
        }
    }
    let m = manifest.ok_or_else(|| anyhow!("name an image to save"))?;
    match a.format {
        ArchiveFormat::Docker => {
            rbuild_exporter::export_docker_archive(store, &m, &names, &a.output)
        }
        ArchiveFormat::Oci => rbuild_exporter::export_oci_archive(
            store,
            &m,
            &names,
            &a.output,
            rbuild_exporter::Compression::Gzip,
        ),
    }
    .with_context(|| format!("writing {}", a.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load(store: &Store, input: &std::path::Path) -> Result<ExitCode> {
    let loaded = rbuild_exporter::load_archive(store, input)
        .with_context(|| format!("loading {}", input.display()))?;
    if loaded.is_empty() {
        bail!(
            "{}: the archive holds no image for this platform",
            input.display()
        );
    }
    for (name, m) in loaded {
        let img = rbuild_exporter::load_image(store, &m)?;
        match name {
            Some(n) => println!("Loaded image: {n}"),
            None => println!("Loaded image ID: {}", img.config_digest),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Base image resolution for builds: the store first, the registry when the store lacks the
/// image (or for every image with `--pull`), then the store's [`rbuild_solver::StoreResolver`].
/// Pulling happens here, before the solve, because the frontend resolves every `FROM` (and
/// `COPY --from=image`) through this trait before any step runs.
pub(crate) struct PullingResolver<'a> {
    store: &'a Store,
    inner: rbuild_solver::StoreResolver<'a>,
    client: &'a rbuild_registry::Client,
    always: bool,
    pulled: std::sync::Mutex<std::collections::HashSet<ImageRef>>,
}

impl<'a> PullingResolver<'a> {
    pub(crate) fn new(store: &'a Store, client: &'a rbuild_registry::Client, always: bool) -> Self {
        PullingResolver {
            store,
            inner: rbuild_solver::StoreResolver::new(store),
            client,
            always,
            pulled: Default::default(),
        }
    }
}

impl rbuild_frontend::ImageResolver for PullingResolver<'_> {
    fn resolve_config(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> std::result::Result<rbuild_frontend::ImageConfig, String> {
        let mut pulled = self
            .pulled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_store = self
            .store
            .get_tag(image)
            .map_err(|e| e.to_string())?
            .is_some();
        // An image of another platform under the name is replaced, as `docker pull --platform`.
        let other_platform = in_store
            && rbuild_solver::load_config(self.store, image).is_ok_and(|(_, doc)| {
                rbuild_solver::check_platform(image, &doc, platform).is_err()
            });
        if !pulled.contains(image) && (self.always || !in_store || other_platform) {
            match self.client.pull_platform(self.store, image, platform) {
                Ok(_) => {
                    pulled.insert(image.clone());
                }
                Err(e) if other_platform => {
                    return Err(format!(
                        "the store has it for another platform than {platform}, and pulling {platform} failed: {e}"
                    ));
                }
                Err(e) if in_store => {
                    return Err(format!("--pull: {e}"));
                }
                Err(e) => {
                    return Err(format!(
                        "not in the store, and pulling it failed: {e} (or add it with `rbuild load` / `rbuild import`)"
                    ))
                }
            }
        }
        drop(pulled);
        self.inner.resolve_config(image, platform)
    }
}
