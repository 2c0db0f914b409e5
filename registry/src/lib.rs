//! OCI distribution client for rbuild: pull into the store, push from it, credentials.
//!
//! Built on `oci-client` (HTTP, the bearer-token dance, chunked uploads). This crate adds what
//! rbuild needs around it:
//! - a blocking API (an internal single-threaded tokio runtime), since the solver uses threads;
//! - platform selection in image indexes and Docker manifest lists;
//! - verification of every pulled blob against its digest and size, and of every layer's
//!   uncompressed content against the config's diff_id, before anything enters the store;
//!   a pull is all or nothing (blobs are staged in a temporary directory first);
//! - plain HTTP for loopback registries and those named with `--insecure-registry`;
//! - credentials from `rbuild login` and `~/.docker/config.json` (the same file);
//! - retries with backoff on 5xx answers and dropped connections;
//! - caps on what is read before it is verified: manifests and configs at 4 MiB
//!   ([`MAX_MANIFEST_SIZE`], containerd's limit), blobs at the size their descriptor declares, so
//!   an endless or oversized answer fails the pull cleanly instead of filling memory or disk.
//!
//! [`Client::push_artifact`], [`Client::pull_artifact_manifest`], [`Client::fetch_cache_layer`]
//! and [`Layout`] carry remote build caches (`rbuild_cache::artifact`) through a registry or an OCI
//! layout directory.

mod auth;
mod cache;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use rbuild_cache::Store;
use rbuild_exporter::Compression;
use rbuild_types::{Digest, ImageRef, Platform, Sha256Writer};
use serde_json::Value;

pub use auth::{docker_config_path, AuthFile};
pub use cache::Layout;

/// Media types a pull accepts for a manifest.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The largest manifest, index or image config a pull reads: 4 MiB, as containerd
/// (`MaxManifestSize`). Real ones are a few KiB.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Errors of registry operations. Each names the image, registry or blob involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// Reading or writing an image in the store failed.
    #[error(transparent)]
    Export(#[from] rbuild_exporter::Error),
    /// The registry answered with an error or could not be reached.
    #[error("{op} {image}: {message}")]
    Registry {
        /// What was being done (`pull`, `push`, `login`).
        op: &'static str,
        /// The image reference or registry.
        image: String,
        /// The registry's or transport's message, with a hint.
        message: String,
    },
    /// Content from the registry does not match the digest or size it was asked for.
    #[error("pull {image}: {what} {expected}: {problem}; the registry served corrupted or tampered content, nothing was stored")]
    Verification {
        /// The image reference.
        image: String,
        /// "manifest", "config", "layer".
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// What was found.
        problem: String,
    },
    /// The manifest or index is not usable.
    #[error("pull {image}: {reason}")]
    BadManifest {
        /// The image reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The credentials file could not be read or written.
    #[error("{path}: {message}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Local I/O failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of a client.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Registries (host[:port]) reached over plain HTTP besides the loopback ones.
    pub insecure: Vec<String>,
    /// Credentials file (default: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub auth_file: Option<PathBuf>,
    /// Platform to pick from image indexes (default: this host's).
    pub platform: Option<Platform>,
}

/// What a pull stored.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The manifest digest in the store (layers uncompressed).
    pub manifest: Digest,
    /// The config digest (the image id; the same as in the registry).
    pub config: Digest,
    /// The manifest digest in the registry (what `push` printed).
    pub remote_digest: Digest,
}

/// A blocking registry client. One HTTP connection pool and one token cache per registry serve
/// every request of the client's life (a build's base image pulls and remote cache fetches).
pub struct Client {
    opts: Options,
    rt: tokio::runtime::Runtime,
    /// Registry host -> its oci-client (cheap clones sharing the pool and the token cache).
    pool: std::sync::Mutex<HashMap<String, oci_client::Client>>,
    /// (registry, repository, push) -> when `auth` last succeeded for it.
    authorized: std::sync::Mutex<HashMap<(String, String, bool), Instant>>,
    /// The HTTP clients of [`ManifestFetcher`] (for https registries, and without TLS roots
    /// for plain-HTTP ones), made on first use and shared by every pull.
    manifest_http: std::sync::Mutex<[Option<reqwest::Client>; 2]>,
}

/// How long a successful `auth` is reused before it is asked again (oci-client renews expired
/// bearer tokens by itself with the credentials it stored; this only skips the `/v2/` probe).
const AUTH_REUSE: Duration = Duration::from_secs(30);

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registry host a reference names (`docker.io` when none).
pub fn registry_of(r: &ImageRef) -> String {
    r.registry.clone().unwrap_or_else(|| "docker.io".into())
}

/// Whether `registry` (host[:port]) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// oci-client's reference for `r`, built from its parts (`r` was validated by its own parser):
/// parsing the text instead compiles oci-spec's reference regex on first use, ~20 ms of CPU
/// before the first request of a build. Docker Hub names are normalised as oci-spec's parser
/// does (`docker.io`, `library/` for one-component names).
/// What every operation on one image's repository starts from: its registry host, its name
/// for messages, the registry's shared oci-client, the credentials and oci-client's reference.
struct Session {
    registry: String,
    name: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    reference: Reference,
}

impl Client {
    fn session(&self, image: &ImageRef) -> Result<Session> {
        let registry = registry_of(image);
        Ok(Session {
            name: image.to_string(),
            client: self.oci(&registry),
            auth: self.credentials(&registry)?,
            reference: to_reference(image)?,
            registry,
        })
    }
}

/// The crate's error for an oci-client failure of `op` ("pull", "push cache"...) on `image`.
fn registry_err<'a>(
    op: &'static str,
    image: &'a str,
    registry: &'a str,
) -> impl Fn(OciDistributionError) -> Error + Copy + 'a {
    move |e| Error::Registry {
        op,
        image: image.to_string(),
        message: describe(&e, registry),
    }
}

fn to_reference(r: &ImageRef) -> Result<Reference> {
    let mut registry = r.registry.clone().unwrap_or_else(|| "docker.io".into());
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    let repository = if registry == "docker.io" && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    let digest = r.digest.as_ref().map(|d| d.to_string());
    Ok(match (r.tag.clone(), digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (Some(t), None) => Reference::with_tag(registry, repository, t),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (None, None) => Reference::with_tag(registry, repository, "latest".into()),
    })
}

/// Whether an error is worth another try (5xx, dropped connection, timeout).
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.is_request()
                || r.is_body()
                || r.status().is_some_and(|s| s.is_server_error())
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

fn describe(e: &OciDistributionError, registry: &str) -> String {
    let hint = match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            format!("; log in with `rbuild login {registry}`")
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            "; check the name and tag".to_string()
        }
        OciDistributionError::RequestError(r) if r.is_connect() => format!(
            "; is the registry {registry} running and reachable? (plain HTTP is used only for \
             loopback registries and those given with --insecure-registry)"
        ),
        _ => String::new(),
    };
    // Include the source chain: reqwest's top-level message hides the cause.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    format!("{msg}{hint}")
}

impl Client {
    /// A client with these options.
    pub fn new(opts: Options) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("start the registry client runtime", "(tokio)"))?;
        Ok(Client {
            opts,
            rt,
            pool: Default::default(),
            authorized: Default::default(),
            manifest_http: Default::default(),
        })
    }

    fn auth_file(&self) -> PathBuf {
        self.opts
            .auth_file
            .clone()
            .unwrap_or_else(docker_config_path)
    }

    fn plain_http(&self, registry: &str) -> Vec<String> {
        let mut plain: Vec<String> = self.opts.insecure.clone();
        if is_loopback(registry) {
            plain.push(registry.to_string());
        }
        plain
    }

    /// The shared oci-client of `registry` (its connections and tokens are reused).
    /// Makes `registry`'s HTTP client now, unless it exists: building one reads and parses the
    /// host's TLS root certificates (oci-client builds two reqwest clients, ~10-20 ms here).
    /// A caller with other work to do first (opening the store) runs this on a thread of its
    /// own; a request that needs the client meanwhile waits for it rather than making another.
    pub fn prepare(&self, registry: &str) {
        let _ = self.oci(registry);
    }

    fn oci(&self, registry: &str) -> oci_client::Client {
        locked(&self.pool)
            .entry(registry.to_string())
            .or_insert_with(|| self.fresh_oci(registry))
            .clone()
    }

    /// Runs oci-client's `auth` for `reference` and `op` unless it succeeded recently with this
    /// client: that stores the credentials in the client and fetches a bearer token, which
    /// oci-client then keeps (and renews) for every request of that repository.
    fn authorize(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
        op: RegistryOperation,
    ) -> std::result::Result<(), OciDistributionError> {
        let key = (
            reference.resolve_registry().to_string(),
            reference.repository().to_string(),
            op == RegistryOperation::Push,
        );
        if locked(&self.authorized)
            .get(&key)
            .is_some_and(|t| t.elapsed() < AUTH_REUSE)
        {
            return Ok(());
        }
        self.retry(|| client.auth(reference, auth, op))?;
        locked(&self.authorized).insert(key, Instant::now());
        Ok(())
    }

    fn fresh_oci(&self, registry: &str) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.plain_http(registry)),
            read_timeout: Some(Duration::from_secs(120)),
            connect_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        })
    }

    fn credentials(&self, registry: &str) -> Result<RegistryAuth> {
        let file = AuthFile::load(&self.auth_file())?;
        Ok(match file.get(registry) {
            Some((user, pass)) => RegistryAuth::Basic(user, pass),
            None => RegistryAuth::Anonymous,
        })
    }

    /// Runs `f` up to 4 times with backoff (0.2 s, 0.4 s, 0.8 s) while it fails transiently.
    fn retry<T, F, Fut>(&self, mut f: F) -> std::result::Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.rt.block_on(f()) {
                Err(e) if attempt < 4 && transient(&e) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                r => return r,
            }
        }
    }

    /// Checks credentials against `registry` and saves them in the credentials file.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> Result<PathBuf> {
        // A client of its own: the shared one may hold other credentials.
        let client = self.fresh_oci(registry);
        let auth = RegistryAuth::Basic(user.to_string(), password.to_string());
        // Any repository name serves to reach the token endpoint / the /v2/ check.
        let reference: Reference = format!("{registry}/rbuild-login-check:latest")
            .parse()
            .map_err(|e: oci_client::ParseError| Error::Registry {
                op: "login",
                image: registry.into(),
                message: e.to_string(),
            })?;
        self.retry(|| client.auth(&reference, &auth, RegistryOperation::Pull))
            .map_err(registry_err("login", registry, registry))?;
        // The bearer flow above checks the password; a registry with plain basic auth is
        // checked by listing tags (401 when the password is wrong, 404/200 otherwise).
        match self.retry(|| client.list_tags(&reference, &auth, Some(1), None)) {
            Err(
                e @ (OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)),
            ) => {
                return Err(Error::Registry {
                    op: "login",
                    image: registry.into(),
                    message: format!("{e}: wrong user name or password"),
                })
            }
            Err(OciDistributionError::RequestError(r)) if r.is_connect() => {
                return Err(Error::Registry {
                    op: "login",
                    image: registry.into(),
                    message: describe(&OciDistributionError::RequestError(r), registry),
                })
            }
            _ => {}
        }
        let path = self.auth_file();
        let mut file = AuthFile::load(&path)?;
        file.set(registry, user, password);
        file.save(&path)?;
        Ok(path)
    }

    /// Removes the credentials of `registry`; false when there were none.
    pub fn logout(&self, registry: &str) -> Result<bool> {
        let path = self.auth_file();
        let mut file = AuthFile::load(&path)?;
        let had = file.remove(registry);
        if had {
            file.save(&path)?;
        }
        Ok(had)
    }

    /// Pulls `image` into the store and tags it with `image`. Every blob is verified (digest
    /// and size; layers also against the config's diff_ids) before anything is stored.
    pub fn pull(&self, store: &Store, image: &ImageRef) -> Result<Pulled> {
        let platform = self.opts.platform.clone().unwrap_or_else(Platform::host);
        self.pull_platform(store, image, &platform)
    }

    /// Like [`Client::pull`], picking `platform` from an image index (a `FROM --platform=`
    /// stage) instead of the client's platform.
    pub fn pull_platform(
        &self,
        store: &Store,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<Pulled> {
        let Session {
            registry,
            name,
            client,
            auth,
            reference,
        } = self.session(image)?;
        let rerr = registry_err("pull", &name, &registry);
        let fetcher =
            ManifestFetcher::new(self, &registry, &client, &reference, &auth).map_err(rerr)?;
        let (bytes, digest) = fetcher.fetch(self, &reference, &name).map_err(rerr)??;
        let digest = digest.unwrap_or_default();
        let actual = Digest::of(&bytes);
        let want = match &image.digest {
            Some(d) => d.to_string(),
            None => digest.clone(),
        };
        if !want.is_empty() && actual.to_string() != want {
            return Err(Error::Verification {
                image: name,
                what: "manifest",
                expected: want,
                problem: format!("content has digest {actual}"),
            });
        }
        let mut manifest_bytes = bytes.to_vec();
        let mut remote_digest = actual;
        let mut doc: Value = parse_json(&manifest_bytes, &name)?;
        if is_index(&doc) {
            let (d, size) = pick_platform(&doc, platform).ok_or_else(|| Error::BadManifest {
                image: name.clone(),
                reason: format!(
                    "the image has no manifest for platform {platform}; choose one with --platform"
                ),
            })?;
            let child = reference.clone_with_digest(d.to_string());
            let (b, _) = fetcher.fetch(self, &child, &name).map_err(rerr)??;
            check(&name, "manifest", &d, size, &b)?;
            manifest_bytes = b.to_vec();
            remote_digest = d;
            doc = parse_json(&manifest_bytes, &name)?;
        }
        let (config_desc, layer_descs) = descriptors(&doc, &name)?;
        let stage = tempfile::Builder::new()
            .prefix("rbuild-pull-")
            .tempdir()
            .map_err(io_err("create a temporary directory for", &name))?;
        // 1. Config.
        let cds = config_desc.0.to_string();
        if config_desc.1 > MAX_MANIFEST_SIZE {
            return Err(Error::BadManifest {
                image: name,
                reason: format!(
                    "the config {cds} is {} bytes, more than the {MAX_MANIFEST_SIZE} bytes \
                     (4 MiB) a config may have; refusing to download it",
                    config_desc.1
                ),
            });
        }
        let config = self
            .retry(|| async {
                let mut v: Vec<u8> = Vec::new();
                let mut stream = client.pull_blob_stream(&reference, cds.as_str()).await?;
                // Stop one byte past the declared size: check() then reports the mismatch.
                while let Some(chunk) = stream.next().await {
                    v.extend_from_slice(&chunk?);
                    if v.len() as u64 > config_desc.1 {
                        break;
                    }
                }
                Ok(v)
            })
            .map_err(|e| blob_error(e, &name, &registry, "config", &config_desc.0))?;
        check(
            &name,
            "config",
            &config_desc.0,
            Some(config_desc.1),
            &config,
        )?;
        let cdoc: Value = parse_json(&config, &name)?;
        let diff_ids: Vec<Digest> = cdoc["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if diff_ids.len() != layer_descs.len() {
            return Err(Error::BadManifest {
                image: name,
                reason: format!(
                    "the config lists {} diff_ids for {} layers",
                    diff_ids.len(),
                    layer_descs.len()
                ),
            });
        }
        // 2. Layers: download (verified) and decompress (verified against the diff_id) into
        // the staging directory; skip those the store already has.
        let mut staged = Vec::new();
        for (i, ((d, size, _), diff_id)) in layer_descs.iter().zip(&diff_ids).enumerate() {
            let have_layer = rbuild_exporter::has_layer(store, diff_id)?;
            let have_blob = store.has_blob(d);
            if have_layer && have_blob {
                staged.push(None);
                continue;
            }
            let zpath = stage.path().join(format!("{i}.blob"));
            self.download(&client, &reference, d, *size, &zpath, &name, &registry)?;
            // Decompressed into a hash only: the layer is kept compressed (its tar and its
            // snapshot are made when something needs them, see `rbuild_exporter::access`).
            let (alg, tar_size) = decompress_checked(&zpath, diff_id, &name)?;
            staged.push(Some((zpath, alg, tar_size)));
        }
        // 3. Everything verified: store it.
        for (((d, size, _), diff_id), s) in layer_descs.iter().zip(&diff_ids).zip(&staged) {
            let Some((zpath, alg, tar_size)) = s else {
                continue;
            };
            if !store.has_blob(d) {
                put_file(store, zpath, d)?;
            }
            if *alg != Compression::None {
                store.put_lazy_layer(diff_id, *tar_size, alg.name(), d, *size)?;
            }
        }
        let (manifest, config_digest) = rbuild_exporter::write_image_raw(store, &config)?;
        store.put_blob(&manifest_bytes)?;
        store.set_tag(image, &manifest)?;
        Ok(Pulled {
            manifest,
            config: config_digest,
            remote_digest,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        d: &Digest,
        size: u64,
        path: &Path,
        name: &str,
        registry: &str,
    ) -> Result<()> {
        let ds = d.to_string();
        let r = self.retry(|| async {
            let f = File::create(path)?;
            let mut w = Sha256Writer::new(io::BufWriter::new(f));
            let mut stream = client.pull_blob_stream(reference, ds.as_str()).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                w.write_all(&chunk)?;
                if w.written() > size {
                    break;
                }
            }
            let (mut inner, digest, written) = w.finish();
            inner.flush()?;
            Ok::<_, OciDistributionError>((digest, written))
        });
        let (got, written) = match r {
            Ok(x) => x,
            Err(e) => return Err(blob_error(e, name, registry, "layer", d)),
        };
        if written != size {
            return Err(Error::Verification {
                image: name.into(),
                what: "layer",
                expected: ds,
                problem: format!("size {written} bytes (or more), the manifest says {size}"),
            });
        }
        if &got != d {
            return Err(Error::Verification {
                image: name.into(),
                what: "layer",
                expected: ds,
                problem: format!("content has digest {got}"),
            });
        }
        Ok(())
    }

    /// Pushes the store's image `manifest` as `target`, layers compressed with `compression`.
    /// Blobs the registry has are not uploaded again. Returns the manifest digest in the
    /// registry.
    pub fn push(
        &self,
        store: &Store,
        manifest: &Digest,
        target: &ImageRef,
        compression: Compression,
    ) -> Result<Digest> {
        let Session {
            registry,
            name,
            client,
            auth,
            reference,
        } = self.session(target)?;
        let dist = rbuild_exporter::distribution_manifest(store, manifest, compression)?;
        let perr = registry_err("push", &name, &registry);
        // The first request stores the credentials in the client and runs the token dance.
        self.authorize(&client, &reference, &auth, RegistryOperation::Push)
            .map_err(perr)?;
        let mut blobs = vec![dist.config.clone()];
        blobs.extend(dist.layers.iter().cloned());
        for d in &blobs {
            let ds = d.to_string();
            if self
                .retry(|| client.blob_exists(&reference, &ds))
                .map_err(perr)?
            {
                continue;
            }
            let path = store.blob_path(d);
            let data = std::fs::read(&path).map_err(io_err("read", &path))?;
            let data = bytes::Bytes::from(data);
            self.retry(|| client.push_blob(&reference, data.clone(), &ds))
                .map_err(perr)?;
        }
        let ct = http::HeaderValue::from_str(&dist.media_type).map_err(|e| Error::Registry {
            op: "push",
            image: name.clone(),
            message: e.to_string(),
        })?;
        let body = bytes::Bytes::from(dist.bytes.clone());
        self.retry(|| client.push_manifest_raw(&reference, body.clone(), ct.clone()))
            .map_err(perr)?;
        Ok(dist.digest)
    }
}

/// Fetches manifests with reqwest directly, reading at most [`MAX_MANIFEST_SIZE`] bytes of a
/// body (oci-client's `pull_manifest_raw` reads a whole body, however long, into memory).
/// Authentication comes from oci-client: its bearer token for the repository, else the basic
/// credentials; reqwest drops the `Authorization` header on a redirect to another host.
struct ManifestFetcher {
    http: reqwest::Client,
    scheme: &'static str,
    authorization: Option<String>,
}

/// A manifest body and the registry's `Docker-Content-Digest`, or why it was refused.
type Fetched = std::result::Result<(Vec<u8>, Option<String>), Error>;

impl ManifestFetcher {
    fn new(
        c: &Client,
        registry: &str,
        oci: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> std::result::Result<ManifestFetcher, OciDistributionError> {
        let plain = c.plain_http(registry);
        let scheme = if plain.iter().any(|p| p == reference.resolve_registry()) {
            "http"
        } else {
            "https"
        };
        let http = {
            let mut shared = locked(&c.manifest_http);
            let slot = &mut shared[usize::from(scheme == "http")];
            match slot {
                Some(h) => h.clone(),
                None => {
                    let mut b = reqwest::Client::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(120));
                    if scheme == "http" {
                        // A plain-HTTP registry's manifests come from the registry itself (no
                        // redirect to TLS storage, which blobs may take): no TLS roots, so the
                        // host's certificates are not read and parsed (~20 ms) for nothing.
                        b = b.tls_certs_only(Vec::<reqwest::Certificate>::new());
                    }
                    let h = b.build()?;
                    *slot = Some(h.clone());
                    h
                }
            }
        };
        let token = c.retry(|| oci.auth(reference, auth, RegistryOperation::Pull))?;
        let authorization = match (token, auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                let raw = format!("{u}:{p}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            _ => None,
        };
        Ok(ManifestFetcher {
            http,
            scheme,
            authorization,
        })
    }

    /// GETs the manifest `reference` names (by digest when it has one), with retries.
    fn fetch(
        &self,
        c: &Client,
        reference: &Reference,
        image: &str,
    ) -> std::result::Result<Fetched, OciDistributionError> {
        let target = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let url = format!(
            "{}://{}/v2/{}/manifests/{target}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository()
        );
        c.retry(|| self.get(&url, image))
    }

    async fn get(
        &self,
        url: &str,
        image: &str,
    ) -> std::result::Result<Fetched, OciDistributionError> {
        let mut req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
        if let Some(a) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let mut res = req.send().await?;
        let status = res.status();
        let too_large = |what: String| {
            Ok(Err(Error::BadManifest {
                image: image.into(),
                reason: format!(
                    "the manifest at {url} is {what}, more than the {MAX_MANIFEST_SIZE} bytes \
                     (4 MiB) a manifest may have; refusing it (nothing was stored)"
                ),
            }))
        };
        if res.content_length().is_some_and(|n| n > MAX_MANIFEST_SIZE) && status.is_success() {
            return too_large(format!("{} bytes", res.content_length().unwrap_or(0)));
        }
        let digest = res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        // An error page is read only as far as its first 64 KiB.
        let cap = if status.is_success() {
            MAX_MANIFEST_SIZE
        } else {
            64 << 10
        };
        while let Some(chunk) = res.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > cap {
                if status.is_success() {
                    return too_large("longer".into());
                }
                body.truncate(cap as usize);
                break;
            }
        }
        match status {
            reqwest::StatusCode::OK => Ok(Ok((body, digest))),
            reqwest::StatusCode::UNAUTHORIZED => {
                Err(OciDistributionError::UnauthorizedError { url: url.into() })
            }
            reqwest::StatusCode::NOT_FOUND => {
                Err(OciDistributionError::ImageManifestNotFoundError(format!(
                    "{url}: {}",
                    String::from_utf8_lossy(&body).trim()
                )))
            }
            s => Err(OciDistributionError::ServerError {
                code: s.as_u16(),
                url: url.into(),
                message: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }
}

fn blob_error(
    e: OciDistributionError,
    image: &str,
    registry: &str,
    what: &'static str,
    d: &Digest,
) -> Error {
    match e {
        OciDistributionError::DigestError(de) => Error::Verification {
            image: image.into(),
            what,
            expected: d.to_string(),
            problem: de.to_string(),
        },
        e => Error::Registry {
            op: "pull",
            image: image.into(),
            message: format!("{what} {d}: {}", describe(&e, registry)),
        },
    }
}

fn parse_json(bytes: &[u8], image: &str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadManifest {
        image: image.into(),
        reason: format!("not valid JSON: {e}"),
    })
}

fn is_index(doc: &Value) -> bool {
    matches!(
        doc["mediaType"].as_str(),
        Some("application/vnd.oci.image.index.v1+json")
            | Some("application/vnd.docker.distribution.manifest.list.v2+json")
    ) || (doc.get("manifests").is_some() && doc.get("layers").is_none())
}

/// The manifest of `platform` in an index: its digest and size.
fn pick_platform(doc: &Value, platform: &Platform) -> Option<(Digest, Option<u64>)> {
    let entries = doc["manifests"].as_array()?;
    let matches = |m: &&Value, with_variant: bool| {
        let p = &m["platform"];
        p["os"].as_str() == Some(platform.os.as_str())
            && p["architecture"].as_str() == Some(platform.architecture.as_str())
            && (!with_variant
                || platform.variant.is_none()
                || p["variant"].as_str() == platform.variant.as_deref())
    };
    let m = entries
        .iter()
        .find(|m| matches(m, true))
        .or_else(|| entries.iter().find(|m| matches(m, false)))?;
    Some((m["digest"].as_str()?.parse().ok()?, m["size"].as_u64()))
}

type Desc = (Digest, u64, String);

/// Config (digest, size) and layers (digest, size, media type) of an image manifest.
fn descriptors(doc: &Value, image: &str) -> Result<((Digest, u64), Vec<Desc>)> {
    let bad = |reason: String| Error::BadManifest {
        image: image.into(),
        reason,
    };
    let desc = |v: &Value| -> Result<Desc> {
        let d = v["digest"]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok())
            .ok_or_else(|| bad(format!("descriptor without a sha256 digest: {v}")))?;
        let size = v["size"]
            .as_u64()
            .ok_or_else(|| bad(format!("descriptor without a size: {v}")))?;
        Ok((
            d,
            size,
            v["mediaType"].as_str().unwrap_or_default().to_string(),
        ))
    };
    if doc["schemaVersion"].as_u64() != Some(2) {
        return Err(bad(
            "only schema version 2 manifests (OCI or Docker v2 schema 2) are supported".into(),
        ));
    }
    let (cd, cs, _) = desc(&doc["config"])?;
    let layers = doc["layers"]
        .as_array()
        .ok_or_else(|| bad("manifest has no layers".into()))?
        .iter()
        .map(desc)
        .collect::<Result<Vec<_>>>()?;
    for (d, _, m) in &layers {
        if compression_of(m).is_none() {
            return Err(bad(format!(
                "layer {d} has media type {m:?}, which is not a layer tar"
            )));
        }
    }
    Ok(((cd, cs), layers))
}

fn compression_of(media: &str) -> Option<Compression> {
    match media {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Compression::Zstd),
        "" => Some(Compression::Gzip),
        _ => None,
    }
}

/// Checks `bytes` against a digest and (when known) a size.
fn check(image: &str, what: &'static str, d: &Digest, size: Option<u64>, b: &[u8]) -> Result<()> {
    if let Some(s) = size {
        if b.len() as u64 != s {
            return Err(Error::Verification {
                image: image.into(),
                what,
                expected: d.to_string(),
                problem: format!("size {} bytes, the manifest says {s}", b.len()),
            });
        }
    }
    let got = Digest::of(b);
    if &got != d {
        return Err(Error::Verification {
            image: image.into(),
            what,
            expected: d.to_string(),
            problem: format!("content has digest {got}"),
        });
    }
    Ok(())
}

/// Decompresses `src` (gzip, zstd or plain, by its magic) into a hash, checking the diff_id;
/// returns the compression found and the size of the tar.
fn decompress_checked(src: &Path, diff_id: &Digest, image: &str) -> Result<(Compression, u64)> {
    let mut f = File::open(src).map_err(io_err("open", src))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_err("read", src))?;
    let alg = if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let f = File::open(src).map_err(io_err("open", src))?;
    let mut r = rbuild_exporter::decompressed(f)?;
    let mut w = Sha256Writer::new(io::sink());
    io::copy(&mut r, &mut w).map_err(|e| Error::Verification {
        image: image.into(),
        what: "layer",
        expected: diff_id.to_string(),
        problem: format!("cannot be decompressed: {e}"),
    })?;
    let (_, got, tar_size) = w.finish();
    if &got != diff_id {
        return Err(Error::Verification {
            image: image.into(),
            what: "layer",
            expected: diff_id.to_string(),
            problem: format!("uncompressed content has digest {got}, not the config's diff_id"),
        });
    }
    Ok((alg, tar_size))
}

/// Copies a verified staged file into the store as blob `d` (verified once more on commit).
fn put_file(store: &Store, path: &Path, d: &Digest) -> Result<()> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut w = store.blob_writer()?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .map_err(io_err("write blob from", path))?;
    }
    w.commit(Some(d))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_built_as_oci_spec_parses_them() {
        for s in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "me/web:v1",
            "index.docker.io/me/web:v1",
            "127.0.0.1:5000/a/b/c:t",
            "localhost/web",
            "reg.example.com/web@sha256:0123456789012345678901234567890123456789012345678901234567890123",
            "reg.example.com/web:v2@sha256:0123456789012345678901234567890123456789012345678901234567890123",
        ] {
            let ours = to_reference(&s.parse::<ImageRef>().unwrap()).unwrap();
            let theirs: Reference = s.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{s}");
            assert_eq!(ours.registry(), theirs.registry(), "{s}");
            assert_eq!(ours.repository(), theirs.repository(), "{s}");
        }
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("127.3.4.5"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn picks_the_platform_from_an_index() {
        let d1 = Digest::of(b"a");
        let d2 = Digest::of(b"b");
        let doc = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"digest": d1.to_string(), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": d2.to_string(), "size": 2, "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert!(is_index(&doc));
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(pick_platform(&doc, &amd), Some((d2, Some(2))));
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(pick_platform(&doc, &arm), Some((d1, Some(1))));
        let s390: Platform = "linux/s390x".parse().unwrap();
        assert_eq!(pick_platform(&doc, &s390), None);
    }

    #[test]
    fn manifests_of_both_schemas_parse() {
        let c = Digest::of(b"c");
        let l = Digest::of(b"l");
        for (mt, lt) in [
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ),
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        ] {
            let doc = serde_json::json!({"schemaVersion": 2, "mediaType": mt,
                "config": {"digest": c.to_string(), "size": 1, "mediaType": "x"},
                "layers": [{"digest": l.to_string(), "size": 7, "mediaType": lt}]});
            assert!(!is_index(&doc));
            let (cfg, layers) = descriptors(&doc, "x").unwrap();
            assert_eq!(cfg, (c.clone(), 1));
            assert_eq!(layers[0].0, l);
        }
        let bad = serde_json::json!({"schemaVersion": 1, "fsLayers": []});
        assert!(descriptors(&bad, "x").is_err());
    }

    #[test]
    fn check_refuses_wrong_content() {
        let d = Digest::of(b"hello");
        assert!(check("x", "config", &d, Some(5), b"hello").is_ok());
        let e = check("x", "config", &d, Some(5), b"hellp").unwrap_err();
        assert!(e.to_string().contains("tampered"), "{e}");
        assert!(check("x", "config", &d, Some(6), b"hello").is_err());
    }

    #[test]
    fn decompression_is_checked_against_the_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("l.gz");
        let mut enc = flate2_free_gzip(b"layer bytes");
        File::create(&src).unwrap().write_all(&enc).unwrap();
        assert_eq!(
            decompress_checked(&src, &Digest::of(b"layer bytes"), "x").unwrap(),
            (Compression::Gzip, 11)
        );
        enc.clear();
        let e = decompress_checked(&src, &Digest::of(b"other"), "x").unwrap_err();
        assert!(e.to_string().contains("diff_id"), "{e}");
    }

    /// A stored (uncompressed) gzip member, written by hand to avoid a flate2 dependency here.
    fn flate2_free_gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.push(1); // BFINAL=1, BTYPE=00 (stored)
        let len = data.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for b in data {
            c ^= *b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
