//! The benches' forge stand-in: Forgejo's raw-file and commits APIs, conditional on ETag, over
//! plain HTTP or over TLS with a test CA made at start (rcgen). It is a stand-in because no
//! Forgejo runs here; what rulekeeper checks of it (the blob id as ETag, 304 on a match) is
//! what the integration tests hold the real forges' documented behaviour to.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

struct ForgeState {
    /// (version, content); the ETag is the content's git blob id, as Forgejo's raw API sends
    /// it (rulekeeper checks the bytes against it), the commit sha the version in hex.
    content: Mutex<(u64, Vec<u8>)>,
    raw_200: AtomicU64,
    raw_304: AtomicU64,
    commits: AtomicU64,
    connections: AtomicU64,
}

pub struct Forge {
    pub port: u16,
    /// The test CA's certificate (PEM) when the forge speaks TLS: the targets' `ca_file`.
    pub ca_file: Option<PathBuf>,
    state: Arc<ForgeState>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// A CA made for this run and a server certificate for 127.0.0.1 signed by it.
fn tls_config(dir: &std::path::Path) -> (Arc<tokio_rustls::rustls::ServerConfig>, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rulekeeper bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (Arc::new(cfg), ca_file)
}

impl Forge {
    /// A forge serving `initial`, over TLS when `tls`.
    pub fn start(initial: &[u8], tls: bool) -> Forge {
        let state = Arc::new(ForgeState {
            content: Mutex::new((1, initial.to_vec())),
            raw_200: AtomicU64::new(0),
            raw_304: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca_file) = if tls {
            let (cfg, ca) = tls_config(dir.path());
            (Some(tokio_rustls::TlsAcceptor::from(cfg)), Some(ca))
        } else {
            (None, None)
        };
        // Its own runtime, on one thread, so it does not compete much with the daemon.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(route(&st, req)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                .await;
                        }
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Forge {
            port,
            ca_file,
            state,
            _dir: dir,
            _rt: rt,
        }
    }

    /// The base URL targets give as `base_url`.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, content: &[u8]) {
        let mut c = self.state.content.lock().unwrap();
        c.0 += 1;
        c.1 = content.to_vec();
    }

    /// (200s, 304s, commits calls, connections accepted) so far.
    pub fn requests(&self) -> (u64, u64, u64, u64) {
        (
            self.state.raw_200.load(Ordering::Relaxed),
            self.state.raw_304.load(Ordering::Relaxed),
            self.state.commits.load(Ordering::Relaxed),
            self.state.connections.load(Ordering::Relaxed),
        )
    }
}

/// The git blob id of `body` (`git hash-object`).
pub fn blob_id(body: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()).as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn route(st: &ForgeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // api/v1/repos/{o}/{r}/raw/{path...}  |  api/v1/repos/{o}/{r}/commits
    let is_repo = parts.len() >= 6 && parts[..3] == ["api", "v1", "repos"];
    let (ver, body) = {
        let c = st.content.lock().unwrap();
        (c.0, c.1.clone())
    };
    if is_repo && parts[5] == "raw" && parts.len() >= 7 {
        let etag = format!("\"{}\"", blob_id(&body));
        let inm = req
            .headers()
            .get(hyper::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        if inm == Some(etag.as_str()) {
            st.raw_304.fetch_add(1, Ordering::Relaxed);
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("ETag", etag)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        st.raw_200.fetch_add(1, Ordering::Relaxed);
        return Response::builder()
            .status(StatusCode::OK)
            .header("ETag", etag)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    if is_repo && parts[5] == "commits" && parts.len() == 6 {
        st.commits.fetch_add(1, Ordering::Relaxed);
        let json = format!("[{{\"sha\":\"{ver:040x}\"}}]");
        return Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap();
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::from_static(b"not found\n")))
        .unwrap()
}
