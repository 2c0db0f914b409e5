//! OCI distribution client for rbuild: pull into the store, push from it, credentials.
//!
//! Pushes are built on `oci-client` (chunked uploads, the bearer-token dance); pulls send their
//! requests with reqwest directly (`http` module: no TLS roots for a plain-HTTP registry, no
//! `/v2/` probe, credentials on a `401`). This crate adds what rbuild needs around them:
//! - a blocking API (an internal single-threaded tokio runtime), since the solver uses threads;
//! - platform selection in image indexes and Docker manifest lists;
//! - verification of every pulled blob against its digest and size, and of every layer's
//!   uncompressed content against the config's diff_id, before anything enters the store;
//!   a pull is all or nothing (its layers are fetched at once into the store's `ingest/`,
//!   checked and fsynced there, and committed only when every one checked out);
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
mod http;
mod layers;

use layers::Listed;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use rbuild_cache::artifact::LayerDesc;
use rbuild_cache::Store;
use rbuild_exporter::Compression;
use rbuild_types::{Digest, ImageRef, Platform};
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
    /// The pull side's HTTP clients (`http` module): without TLS roots (plain-HTTP
    /// registries) and with them, made on first use and shared by every pull.
    http: std::sync::Mutex<[Option<reqwest::Client>; 2]>,
    /// (registry, repository) -> the `Authorization` header pulls send there.
    authorization: std::sync::Mutex<HashMap<(String, String), String>>,
}

/// How many layers of an image a pull fetches at once.
const PULL_JOBS: usize = 4;

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
/// for messages, the credentials and oci-client's reference. Pushes take the registry's
/// shared oci-client (`Client::oci`); pulls need none unless the registry asks for
/// credentials (`http` module).
struct Session {
    registry: String,
    name: String,
    auth: RegistryAuth,
    reference: Reference,
}

impl Client {
    fn session(&self, image: &ImageRef) -> Result<Session> {
        let registry = registry_of(image);
        Ok(Session {
            name: image.to_string(),
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
            http: Default::default(),
            authorization: Default::default(),
        })
    }

    fn auth_file(&self) -> PathBuf {
        self.opts
            .auth_file
            .clone()
            .unwrap_or_else(docker_config_path)
    }

    /// The registries oci-client reaches over plain HTTP for `registry`'s client.
    fn plain_http(&self, registry: &str) -> Vec<String> {
        let mut plain: Vec<String> = self.opts.insecure.clone();
        if is_loopback(registry) {
            plain.push(registry.to_string());
        }
        plain
    }

    /// Whether `registry` is reached over plain HTTP: a loopback one, or one named with
    /// `--insecure-registry`.
    fn is_plain_http(&self, registry: &str) -> bool {
        is_loopback(registry) || self.opts.insecure.iter().any(|p| p == registry)
    }

    /// Makes the HTTP clients a pull from `registry` needs now, unless they exist: for a
    /// plain-HTTP registry the client without TLS roots (cheap); for another, the client with
    /// TLS roots and the registry's oci-client (its token dance), each of which reads and
    /// parses the host's root certificates (~10-20 ms apiece here). A caller with other work
    /// to do first (opening the store) runs this on a thread of its own; a request that needs
    /// a client meanwhile waits for it rather than making another.
    pub fn prepare(&self, registry: &str) {
        let plain = self.is_plain_http(registry);
        let _ = self.http_client(!plain);
        if !plain {
            let _ = self.oci(registry);
        }
    }

    /// The shared oci-client of `registry` (its connections and tokens are reused).
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
        let s = self.session(image)?;
        let (name, registry) = (&s.name, &s.registry);
        let rerr = registry_err("pull", name, registry);
        let target = image
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or(s.reference.tag().map(str::to_string))
            .unwrap_or_else(|| "latest".into());
        let (bytes, digest) = self
            .fetch_manifest(&s, &target, MANIFEST_TYPES)
            .map_err(rerr)??;
        let digest = digest.unwrap_or_default();
        let actual = Digest::of(&bytes);
        let want = match &image.digest {
            Some(d) => d.to_string(),
            None => digest.clone(),
        };
        if !want.is_empty() && actual.to_string() != want {
            return Err(Error::Verification {
                image: name.clone(),
                what: "manifest",
                expected: want,
                problem: format!("content has digest {actual}"),
            });
        }
        let mut manifest_bytes = bytes;
        let mut remote_digest = actual;
        let mut doc: Value = parse_json(&manifest_bytes, name)?;
        if is_index(&doc) {
            let (d, size) = pick_platform(&doc, platform).ok_or_else(|| Error::BadManifest {
                image: name.clone(),
                reason: format!(
                    "the image has no manifest for platform {platform}; choose one with --platform"
                ),
            })?;
            let (b, _) = self
                .fetch_manifest(&s, &d.to_string(), MANIFEST_TYPES)
                .map_err(rerr)??;
            check(name, "manifest", &d, size, &b)?;
            manifest_bytes = b;
            remote_digest = d;
            doc = parse_json(&manifest_bytes, name)?;
        }
        let (config_desc, layer_descs) = descriptors(&doc, name)?;
        // 1. Config.
        if config_desc.1 > MAX_MANIFEST_SIZE {
            return Err(Error::BadManifest {
                image: name.clone(),
                reason: format!(
                    "the config {} is {} bytes, more than the {MAX_MANIFEST_SIZE} bytes \
                     (4 MiB) a config may have; refusing to download it",
                    config_desc.0, config_desc.1
                ),
            });
        }
        let config = self
            .fetch_small_blob(&s, &config_desc.0, config_desc.1)
            .map_err(|e| blob_error(e, name, registry, "config", &config_desc.0))?;
        check(name, "config", &config_desc.0, Some(config_desc.1), &config)?;
        let cdoc: Value = parse_json(&config, name)?;
        let diff_ids: Vec<Digest> = cdoc["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if diff_ids.len() != layer_descs.len() {
            return Err(Error::BadManifest {
                image: name.clone(),
                reason: format!(
                    "the config lists {} diff_ids for {} layers",
                    diff_ids.len(),
                    layer_descs.len()
                ),
            });
        }
        // 2. Layers, all at once: each goes straight into the store's ingest area, hashed as
        // it arrives and decompressed into a second hash on its own thread, then fsynced.
        // 3. Only when every layer checked out are the blobs committed and the layers recorded
        // (kept compressed: their tars and snapshots are made when something needs them); a
        // failed pull leaves nothing.
        let layers: Vec<LayerDesc> = layer_descs
            .into_iter()
            .zip(diff_ids)
            .map(|((digest, size, media_type), diff_id)| LayerDesc {
                digest,
                size,
                media_type,
                diff_id,
            })
            .collect();
        for c in self.fetch_layers(store, &s, &layers)? {
            c.commit(store)?;
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

    /// Fetches and checks `layers` [`PULL_JOBS`] at a time; the first failure stops the
    /// others taking new layers and is the answer (what was fetched is then dropped).
    fn fetch_layers(
        &self,
        store: &Store,
        s: &Session,
        layers: &[LayerDesc],
    ) -> Result<Vec<layers::Checked>> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        let work = || -> Result<Vec<layers::Checked>> {
            let mut done = Vec::new();
            while !failed.load(Ordering::SeqCst) {
                let Some(l) = layers.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    break;
                };
                match self.fetch_layer_checked(store, s, l, Listed::InImage) {
                    Ok(c) => done.extend(c),
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
            Ok(done)
        };
        std::thread::scope(|sc| {
            let others: Vec<_> = (1..PULL_JOBS.min(layers.len()))
                .map(|_| sc.spawn(work))
                .collect();
            let mut all = work();
            for h in others {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Error::Registry {
                        op: "pull",
                        image: s.name.clone(),
                        message: "internal error while fetching a layer".into(),
                    })
                });
                all = match (all, r) {
                    (Ok(mut a), Ok(b)) => {
                        a.extend(b);
                        Ok(a)
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
            }
            all
        })
    }

    /// Starts a push to `target` (`op` names it in errors: "push", "push cache"): the
    /// registry's oci-client, authorized for pushing (which runs the token dance), and `blobs`
    /// uploaded from the store, except those the registry has. Returns the session and the
    /// client for the rest of the push.
    fn push_blobs(
        &self,
        store: &Store,
        target: &ImageRef,
        blobs: &[Digest],
        op: &'static str,
    ) -> Result<(Session, oci_client::Client)> {
        let s = self.session(target)?;
        let client = self.oci(&s.registry);
        let perr = registry_err(op, &s.name, &s.registry);
        self.authorize(&client, &s.reference, &s.auth, RegistryOperation::Push)
            .map_err(perr)?;
        for d in blobs {
            let ds = d.to_string();
            if self
                .retry(|| client.blob_exists(&s.reference, &ds))
                .map_err(perr)?
            {
                continue;
            }
            let path = store.blob_path(d);
            let data = bytes::Bytes::from(std::fs::read(&path).map_err(io_err("read", &path))?);
            self.retry(|| client.push_blob(&s.reference, data.clone(), &ds))
                .map_err(perr)?;
        }
        Ok((s, client))
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
        let dist = rbuild_exporter::distribution_manifest(store, manifest, compression)?;
        let mut blobs = vec![dist.config.clone()];
        blobs.extend(dist.layers.iter().cloned());
        let (s, client) = self.push_blobs(store, target, &blobs, "push")?;
        let ct = ::http::HeaderValue::from_str(&dist.media_type).map_err(|e| Error::Registry {
            op: "push",
            image: s.name.clone(),
            message: e.to_string(),
        })?;
        let body = bytes::Bytes::from(dist.bytes.clone());
        self.retry(|| client.push_manifest_raw(&s.reference, body.clone(), ct.clone()))
            .map_err(registry_err("push", &s.name, &s.registry))?;
        Ok(dist.digest)
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

    /// A stored (uncompressed) gzip member, written by hand to avoid a flate2 dependency here.
    pub(crate) fn flate2_free_gzip(data: &[u8]) -> Vec<u8> {
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
