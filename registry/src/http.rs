//! The pull side's HTTP: manifests and blobs are fetched with reqwest directly, not through
//! oci-client, so that a pull from a registry that asks for nothing costs nothing but its
//! requests.
//!
//! - **No client until one is needed.** oci-client builds two reqwest clients, each reading and
//!   parsing the host's TLS root certificates (~10-20 ms apiece), and probes `/v2/` before its
//!   first request. Here a plain-HTTP registry (loopback or `--insecure-registry`) is reached by
//!   a client without TLS roots, and an anonymous pull sends its `GET` at once.
//! - **Credentials on demand.** Anonymous requests go without an `Authorization` header; a `401`
//!   answer runs oci-client's token dance ([`oci_client::Client::auth`], which reads the
//!   challenge) and the request is sent again with the bearer token, or with the basic
//!   credentials when the registry has no token service. Stored credentials (`rbuild login`)
//!   are sent from the first request. The header is kept per repository and renewed on the
//!   next `401` (an expired token).
//! - **Redirects are followed here** (blob storage often lives elsewhere): the `Authorization`
//!   header never leaves the registry's origin, and an `https` redirect from a plain-HTTP
//!   registry gets the client with TLS roots.
//! - **One digest pass.** oci-client's blob stream hashes what it reads; rbuild's callers hash
//!   it anyway (the store's blob writer checks the digest on commit), so the bytes are hashed
//!   once instead of twice.

use std::time::Duration;

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use reqwest::{header, Method, StatusCode, Url};

use crate::{locked, Client, Session};

/// The most redirects one request follows (as reqwest's default policy).
const MAX_REDIRECTS: usize = 10;

type HttpResult<T> = std::result::Result<T, OciDistributionError>;

impl Client {
    /// The shared reqwest client: with TLS roots (`tls`) or without (plain-HTTP registries).
    /// Neither follows redirects by itself (see [`Client::send`]).
    pub(crate) fn http_client(&self, tls: bool) -> HttpResult<reqwest::Client> {
        let mut shared = locked(&self.http);
        let slot = &mut shared[usize::from(tls)];
        if let Some(h) = slot {
            return Ok(h.clone());
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none());
        if !tls {
            // No roots: the host's certificates are not read and parsed for a registry that
            // speaks plain HTTP.
            b = b.tls_certs_only(Vec::<reqwest::Certificate>::new());
        }
        let h = b.build()?;
        *slot = Some(h.clone());
        Ok(h)
    }

    /// `scheme://registry` of the session's registry.
    pub(crate) fn base_url(&self, s: &Session) -> String {
        let host = s.reference.resolve_registry();
        let scheme = if self.is_plain_http(&s.registry) || self.is_plain_http(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// GETs `path` (`manifests/<ref>`, `blobs/<digest>`) of the session's repository with the
    /// repository's `Authorization` (none yet for an anonymous pull); on a `401`, gets one
    /// (oci-client's token dance) and sends the request once more. `accept` is the `Accept`
    /// header. The answer's status is the caller's to check.
    pub(crate) async fn get(
        &self,
        s: &Session,
        path: &str,
        accept: Option<&str>,
    ) -> HttpResult<reqwest::Response> {
        self.request(s, Method::GET, path, accept).await
    }

    /// [`Client::get`] with another method (`HEAD`).
    async fn request(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> HttpResult<reqwest::Response> {
        let url = format!(
            "{}/v2/{}/{path}",
            self.base_url(s),
            s.reference.repository()
        );
        let url =
            Url::parse(&url).map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        let key = (s.registry.clone(), s.reference.repository().to_string());
        let mut authorization = locked(&self.authorization).get(&key).cloned();
        if authorization.is_none() && matches!(s.auth, RegistryAuth::Basic(..)) {
            authorization = self.authorize_pull(s, &key).await?;
        }
        let res = self
            .send(&method, url.clone(), authorization.as_deref(), accept)
            .await?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        let Some(authorization) = self.authorize_pull(s, &key).await? else {
            return Ok(res);
        };
        self.send(&method, url, Some(&authorization), accept).await
    }

    /// Runs oci-client's `auth` for pulling the session's repository and keeps the header to
    /// send: `Bearer <token>`, else `Basic` with the stored credentials, else none.
    async fn authorize_pull(
        &self,
        s: &Session,
        key: &(String, String),
    ) -> HttpResult<Option<String>> {
        let oci = self.oci(&s.registry);
        let token = oci
            .auth(&s.reference, &s.auth, RegistryOperation::Pull)
            .await?;
        let authorization = match (token, &s.auth) {
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
        if let Some(a) = &authorization {
            locked(&self.authorization).insert(key.clone(), a.clone());
        }
        Ok(authorization)
    }

    /// Sends a request, following redirects: `authorization` goes only to the URL's own origin
    /// (scheme, host and port), as reqwest's own policy does.
    async fn send(
        &self,
        method: &Method,
        mut url: Url,
        authorization: Option<&str>,
        accept: Option<&str>,
    ) -> HttpResult<reqwest::Response> {
        let origin = url.origin();
        for _ in 0..=MAX_REDIRECTS {
            let http = self.http_client(url.scheme() == "https")?;
            let mut req = http.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(a) = authorization.filter(|_| url.origin() == origin) {
                req = req.header(header::AUTHORIZATION, a);
            }
            let res = req.send().await?;
            if !res.status().is_redirection() {
                return Ok(res);
            }
            let Some(next) = res
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Ok(res);
            };
            url = next;
        }
        Err(OciDistributionError::GenericError(Some(format!(
            "more than {MAX_REDIRECTS} redirects from {url}"
        ))))
    }
}

/// The error for a non-success answer to a `GET` of `url` (`body`: the start of the answer).
pub(crate) fn status_error(status: StatusCode, url: &str, body: &[u8]) -> OciDistributionError {
    match status {
        StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url: url.into() },
        s => OciDistributionError::ServerError {
            code: s.as_u16(),
            url: url.into(),
            message: String::from_utf8_lossy(body).trim().to_string(),
        },
    }
}

impl Client {
    /// Whether the session's repository has blob `d` (a `HEAD` request), with retries.
    pub(crate) fn blob_exists(&self, s: &Session, d: &rbuild_types::Digest) -> HttpResult<bool> {
        let path = format!("blobs/{d}");
        self.retry(|| async {
            let res = self.request(s, Method::HEAD, &path, None).await?;
            match res.status() {
                st if st.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                st => Err(status_error(st, res.url().as_str(), b"")),
            }
        })
    }
}

/// A manifest body and the registry's `Docker-Content-Digest`, or why it was refused.
pub(crate) type Fetched = std::result::Result<(Vec<u8>, Option<String>), crate::Error>;

impl Client {
    /// GETs manifest `target` (a tag or digest) of the session's repository, with retries,
    /// reading at most [`crate::MAX_MANIFEST_SIZE`] bytes of it (oci-client's
    /// `pull_manifest_raw` reads a whole body, however long, into memory). `accept` lists the
    /// media types asked for.
    pub(crate) fn fetch_manifest(
        &self,
        s: &Session,
        target: &str,
        accept: &[&str],
    ) -> HttpResult<Fetched> {
        let path = format!("manifests/{target}");
        let accept = accept.join(", ");
        self.retry(|| async {
            let res = self.get(s, &path, Some(&accept)).await?;
            read_manifest(res, &s.name).await
        })
    }

    /// GETs blob `d` of the session's repository whole (a config: the caller checks digest and
    /// size), with retries, reading at most one byte more than `size`.
    pub(crate) fn fetch_small_blob(
        &self,
        s: &Session,
        d: &rbuild_types::Digest,
        size: u64,
    ) -> HttpResult<Vec<u8>> {
        let path = format!("blobs/{d}");
        self.retry(|| async {
            let mut res = self.get(s, &path, None).await?;
            let status = res.status();
            let cap = if status.is_success() { size } else { 64 << 10 };
            let mut body = Vec::new();
            while let Some(chunk) = res.chunk().await? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > cap {
                    break;
                }
            }
            if !status.is_success() {
                return Err(status_error(status, res.url().as_str(), &body));
            }
            Ok(body)
        })
    }
}

async fn read_manifest(mut res: reqwest::Response, image: &str) -> HttpResult<Fetched> {
    use crate::MAX_MANIFEST_SIZE;
    let status = res.status();
    let url = res.url().to_string();
    let too_large = |what: String| {
        Ok(Err(crate::Error::BadManifest {
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
        StatusCode::OK => Ok(Ok((body, digest))),
        StatusCode::NOT_FOUND => Err(OciDistributionError::ImageManifestNotFoundError(format!(
            "{url}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
        s => Err(status_error(s, &url, &body)),
    }
}
