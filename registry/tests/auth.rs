//! Pulls from a registry that asks for a bearer token, and from one that asks for nothing:
//! the pull side's own HTTP (`http.rs`) must answer the `401` challenge with oci-client's token
//! dance, keep the token off another origin a blob redirects to, and send no `/v2/` probe when
//! nothing asks for credentials.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use rbuild_cache::Store;
use rbuild_registry::{Client, Options};
use rbuild_types::{Digest, ImageRef};

const TOKEN: &str = "t0k3n";

/// One request a server saw: its path and its `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// How a server answers a request (path, `Authorization`): status line, extra headers, body.
type Handler = dyn Fn(&str, Option<&str>) -> (String, Vec<String>, Vec<u8>) + Send + Sync;

/// Serves `handler` on a loopback port until the test process ends; returns the address and
/// the requests seen.
fn serve(handler: Arc<Handler>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (handler, log) = (handler.clone(), log.clone());
            std::thread::spawn(move || answer(conn, &*handler, &log));
        }
    });
    (addr, seen)
}

fn answer(mut conn: TcpStream, handler: &Handler, seen: &Seen) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let path = request.split(' ').nth(1).unwrap_or("/").to_string();
    seen.lock()
        .unwrap()
        .push((path.clone(), authorization.clone()));
    let (status, headers, body) = handler(&path, authorization.as_deref());
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}

/// An image of one uncompressed layer: (manifest, config, layer).
fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = vec![b'x'; 3000];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::of(&layer).to_string(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    (manifest, config, layer)
}

fn ok(body: Vec<u8>) -> (String, Vec<String>, Vec<u8>) {
    ("200 OK".into(), vec![], body)
}

fn pull(addr: &str) -> Result<Store, String> {
    let t = tempfile::tempdir().unwrap().keep();
    let store = Store::open(&t.join("store")).unwrap();
    let image: ImageRef = format!("{addr}/app:v1").parse().unwrap();
    let opts = Options {
        // No credentials file of the machine's.
        auth_file: Some(t.join("config.json")),
        ..Options::default()
    };
    Client::new(opts)
        .unwrap()
        .pull(&store, &image)
        .map(|_| store)
        .map_err(|e| e.to_string())
}

#[test]
fn a_bearer_challenge_is_answered_and_the_token_stays_home() {
    let (manifest, config, layer) = image();
    // Blob storage elsewhere (another origin): serves the layer to anyone.
    let stored = layer.clone();
    let (storage, storage_seen) = serve(Arc::new(move |_, _| ok(stored.clone())));
    let addr = Arc::new(Mutex::new(String::new()));
    let me = addr.clone();
    let (cfg_path, layer_path) = (
        format!("/v2/app/blobs/{}", Digest::of(&config)),
        format!("/v2/app/blobs/{}", Digest::of(&layer)),
    );
    let registry = move |path: &str, auth: Option<&str>| {
        let me = me.lock().unwrap().clone();
        if path.starts_with("/token") {
            return ok(format!("{{\"token\":\"{TOKEN}\"}}").into_bytes());
        }
        if auth != Some(&format!("Bearer {TOKEN}")) {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\",scope=\"repository:app:pull\""
            );
            return ("401 Unauthorized".into(), vec![challenge], b"{}".to_vec());
        }
        if path == "/v2/app/manifests/v1" {
            let mut r = ok(manifest.clone());
            r.1.push("Content-Type: application/vnd.oci.image.manifest.v1+json".into());
            return r;
        }
        if path == cfg_path {
            return ok(config.clone());
        }
        if path == layer_path {
            let to = format!("Location: http://{storage}/storage/layer");
            return ("307 Temporary Redirect".into(), vec![to], vec![]);
        }
        ("404 Not Found".into(), vec![], vec![])
    };
    let (reg, seen) = serve(Arc::new(registry));
    *addr.lock().unwrap() = reg.clone();

    let store = pull(&reg).expect("the pull answers the bearer challenge");
    assert!(store.has_blob(&Digest::of(&layer)));
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(p, _)| p.starts_with("/token")),
        "no token was asked for: {seen:?}"
    );
    let first = &seen[0];
    assert_eq!(
        (first.0.as_str(), first.1.as_deref()),
        ("/v2/app/manifests/v1", None),
        "an anonymous pull starts with its request, no /v2/ probe: {seen:?}"
    );
    for (p, a) in &seen {
        if p.starts_with("/v2/app/") && !p.starts_with("/v2/app/manifests/v1") {
            assert_eq!(
                a.as_deref(),
                Some(&*format!("Bearer {TOKEN}")),
                "{p}: {seen:?}"
            );
        }
    }
    let storage_seen = storage_seen.lock().unwrap().clone();
    assert_eq!(storage_seen.len(), 1, "{storage_seen:?}");
    assert_eq!(
        storage_seen[0].1, None,
        "the registry's token went to another origin"
    );
}

#[test]
fn an_anonymous_registry_gets_no_probe_and_no_token_request() {
    let (manifest, config, layer) = image();
    let blobs = [config.clone(), layer.clone()];
    let (reg, seen) = serve(Arc::new(move |path: &str, _| {
        if path == "/v2/app/manifests/v1" {
            return ok(manifest.clone());
        }
        for b in &blobs {
            if path == format!("/v2/app/blobs/{}", Digest::of(b)) {
                return ok(b.clone());
            }
        }
        ("404 Not Found".into(), vec![], vec![])
    }));
    let store = pull(&reg).expect("anonymous pull");
    assert!(store.has_blob(&Digest::of(&layer)));
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        paths.len(),
        3,
        "manifest, config, layer and nothing else: {paths:?}"
    );
    assert!(!paths.iter().any(|p| p == "/v2/"), "{paths:?}");
}

#[test]
fn a_registry_that_refuses_anonymous_pulls_says_log_in() {
    let (reg, _) = serve(Arc::new(|_: &str, _: Option<&str>| {
        let challenge = "WWW-Authenticate: Basic realm=\"test\"".to_string();
        ("401 Unauthorized".into(), vec![challenge], b"{}".to_vec())
    }));
    let Err(err) = pull(&reg) else {
        panic!("a 401 must fail the pull")
    };
    assert!(err.contains("rbuild login"), "{err}");
}
