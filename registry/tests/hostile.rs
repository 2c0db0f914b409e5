//! A hostile registry (a tiny HTTP server on a loopback port) serving endless or oversized
//! manifests, configs and blobs: every pull must fail cleanly, quickly, and store nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbuild_cache::Store;
use rbuild_registry::{Client, Options, MAX_MANIFEST_SIZE};
use rbuild_types::{Digest, ImageRef};

/// What the server answers for one path.
#[derive(Clone)]
enum Body {
    /// These bytes, with their Content-Length.
    Bytes(Vec<u8>),
    /// Bytes without end as far as the client can tell (no Content-Length; stops after
    /// [`ENDLESS`] bytes so a client without caps fails the test instead of the machine).
    Endless,
}

/// How much an "endless" body sends at most: 64 times the manifest cap.
const ENDLESS: u64 = 256 << 20;

/// A hostile registry: its address and how many bytes of endless bodies it got to send.
struct Server {
    addr: String,
    sent: Arc<AtomicU64>,
}

/// Serves `routes` (path -> body) on a loopback port until the test process ends; every other
/// path is a 404. `/v2/` answers 200 (no authentication).
fn serve(routes: Vec<(String, Body)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let routes = Arc::new(routes);
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let routes = routes.clone();
            let counter = counter.clone();
            std::thread::spawn(move || answer(conn, &routes, &counter));
        }
    });
    Server { addr, sent }
}

fn answer(mut conn: TcpStream, routes: &[(String, Body)], sent: &AtomicU64) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = request.split(' ').nth(1).unwrap_or("/").to_string();
    let body = if path == "/v2/" {
        Some(Body::Bytes(b"{}".to_vec()))
    } else {
        routes
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, b)| b.clone())
    };
    match body {
        None => {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Some(Body::Bytes(b)) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            );
            let _ = conn.write_all(&b);
        }
        Some(Body::Endless) => {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
            );
            let chunk = vec![b' '; 64 << 10];
            // Ends when the client hangs up (EPIPE / ECONNRESET).
            let mut n = 0;
            while n < ENDLESS && conn.write_all(&chunk).is_ok() {
                n += chunk.len() as u64;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

fn manifest(config: &[u8], config_size: u64, layer: &Digest, layer_size: u64) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(config).to_string(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.to_string(), "size": layer_size}],
    })
    .to_string()
    .into_bytes()
}

fn config_for(layer: &Digest) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
    })
    .to_string()
    .into_bytes()
}

/// Pulls `addr/hostile:v1` into a fresh store; returns the error text and asserts that nothing
/// was stored, the pull did not hang and the client hung up on an endless body early.
fn pull_fails(server: &Server) -> String {
    let addr = &server.addr;
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let image: ImageRef = format!("{addr}/hostile:v1").parse().unwrap();
    let started = Instant::now();
    let err = Client::new(Options::default())
        .unwrap()
        .pull(&store, &image)
        .expect_err("a hostile registry's image must not be pulled");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the pull gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(store.get_tag(&image).unwrap(), None);
    assert_eq!(count(&t.path().join("store/blobs/sha256")), 0, "{err}");
    assert_eq!(count(&t.path().join("store/ingest")), 0, "{err}");
    // The client stops reading at its cap; the server may still fill the socket buffers.
    let sent = server.sent.load(Ordering::Relaxed);
    assert!(
        sent < 32 << 20,
        "the client read {sent} bytes of an endless body: {err}"
    );
    err.to_string()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn an_endless_manifest_is_cut_at_4_mib() {
    let server = serve(vec![("/v2/hostile/manifests/v1".into(), Body::Endless)]);
    let err = pull_fails(&server);
    assert!(err.contains("4 MiB"), "{err}");
}

#[test]
fn a_manifest_over_4_mib_is_refused() {
    let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
    let server = serve(vec![("/v2/hostile/manifests/v1".into(), Body::Bytes(big))]);
    let err = pull_fails(&server);
    assert!(err.contains("4 MiB"), "{err}");
}

#[test]
fn a_config_declared_over_4_mib_is_not_downloaded() {
    let layer = Digest::of(b"layer");
    let config = config_for(&layer);
    let server = serve(vec![
        (
            "/v2/hostile/manifests/v1".into(),
            Body::Bytes(manifest(&config, 64 << 20, &layer, 5)),
        ),
        (
            format!("/v2/hostile/blobs/{}", Digest::of(&config)),
            Body::Endless,
        ),
    ]);
    let err = pull_fails(&server);
    assert!(err.contains("4 MiB") && err.contains("config"), "{err}");
}

#[test]
fn an_endless_config_stops_at_its_declared_size() {
    let layer = Digest::of(b"layer");
    let config = config_for(&layer);
    let server = serve(vec![
        (
            "/v2/hostile/manifests/v1".into(),
            Body::Bytes(manifest(&config, config.len() as u64, &layer, 5)),
        ),
        (
            format!("/v2/hostile/blobs/{}", Digest::of(&config)),
            Body::Endless,
        ),
    ]);
    let err = pull_fails(&server);
    assert!(err.contains("tampered") && err.contains("config"), "{err}");
}

#[test]
fn a_blob_longer_than_declared_stops_at_its_size() {
    // A real tar layer (so only the length is wrong), declared one byte short, then endless.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
    let layer_bytes = b.into_inner().unwrap();
    let layer = Digest::of(&layer_bytes);
    let config = config_for(&layer);
    for body in [Body::Bytes(layer_bytes.clone()), Body::Endless] {
        let server = serve(vec![
            (
                "/v2/hostile/manifests/v1".into(),
                Body::Bytes(manifest(
                    &config,
                    config.len() as u64,
                    &layer,
                    layer_bytes.len() as u64 - 1,
                )),
            ),
            (
                format!("/v2/hostile/blobs/{}", Digest::of(&config)),
                Body::Bytes(config.clone()),
            ),
            (format!("/v2/hostile/blobs/{layer}"), body),
        ]);
        let err = pull_fails(&server);
        assert!(err.contains("tampered") && err.contains("layer"), "{err}");
    }
}

#[test]
fn the_server_serves_an_honest_image() {
    // The same server with honest content pulls fine: the failures above are the caps at work.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
    let layer_bytes = b.into_inner().unwrap();
    let layer = Digest::of(&layer_bytes);
    let config = config_for(&layer);
    let server = serve(vec![
        (
            "/v2/hostile/manifests/v1".into(),
            Body::Bytes(manifest(
                &config,
                config.len() as u64,
                &layer,
                layer_bytes.len() as u64,
            )),
        ),
        (
            format!("/v2/hostile/blobs/{}", Digest::of(&config)),
            Body::Bytes(config.clone()),
        ),
        (
            format!("/v2/hostile/blobs/{layer}"),
            Body::Bytes(layer_bytes),
        ),
    ]);
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let image: ImageRef = format!("{}/hostile:v1", server.addr).parse().unwrap();
    let pulled = Client::new(Options::default())
        .unwrap()
        .pull(&store, &image)
        .unwrap();
    assert_eq!(store.get_tag(&image).unwrap(), Some(pulled.manifest));
}
