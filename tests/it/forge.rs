//! A small fake forge speaking the documented file APIs of Forgejo/Gitea
//! (`/api/v1/repos/O/R/raw/PATH?ref=` with the git blob id as ETag, `/contents/PATH` with the
//! blob `sha`, `Authorization: token T`, commits API), GitHub (`/repos/O/R/contents/PATH`,
//! `Accept: application/vnd.github+json`: the file object with base64 `content`, `sha`,
//! `size`; Bearer), GitLab (`/api/v4/projects/ID/repository/files/PATH/raw?ref=`,
//! `PRIVATE-TOKEN`, `X-Gitlab-Content-Sha256`/`-Blob-Id`/`-Size`) and plain HTTP
//! (`/plain/...`), with ETag/304; and PowerSync's admin API (`/api/admin/v1/validate`,
//! `/api/admin/v1/diagnostics`, Bearer token). Every request is logged for assertions.
//! `tamper` makes it serve bytes other than the ones its digests describe, as a broken
//! proxy or a cut connection would.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct State {
    pub content: Option<Vec<u8>>,
    pub commit: String,
    pub token: String,
    /// When set, every request gets this status (e.g. 503: forge down).
    pub fail_with: Option<u16>,
    /// Headers sent with `fail_with` (a rate limit's `Retry-After`, GitHub's `X-RateLimit-*`).
    pub fail_headers: Vec<(String, String)>,
    pub log: Vec<Req>,
    /// PowerSync: what `validate` reports, as (level, message).
    pub ps_validate: Vec<(String, String)>,
    /// PowerSync: the file whose content `diagnostics` shows as active.
    pub ps_live: Option<std::path::PathBuf>,
    /// PowerSync: (marker, message): active rules containing `marker` report a fatal error.
    pub ps_diag_bad: Option<(String, String)>,
    /// Serve other bytes than the digests describe.
    pub tamper: Option<Tamper>,
    /// The write token the statuses API takes (another token than the read one).
    pub status_token: String,
    /// When set, status posts get this status (a forge that fails them).
    pub status_fail_with: Option<u16>,
    /// When set, status posts are answered only after this long (a slow forge).
    pub status_delay: Option<std::time::Duration>,
    /// Every commit published, with its content: `ref=<commit>` serves that content.
    pub commits: std::collections::HashMap<String, Vec<u8>>,
    /// Tree repositories (`FakeForge::set_tree`): each commit's files, by path from the root.
    pub trees: std::collections::HashMap<String, std::collections::BTreeMap<String, Vec<u8>>>,
    /// Commits read from a real repository (`serve_git`): sha -> (root tree, signature,
    /// signed payload), what `git/commits/{sha}` answers.
    pub git_commits: std::collections::HashMap<String, (String, Option<String>, String)>,
    /// Trees read from a real repository: sha -> (mode, type, sha, name) entries, what
    /// `git/trees/{sha}` answers.
    pub git_trees: std::collections::HashMap<String, Vec<(String, String, String, String)>>,
    /// Published as a new commit right after the next answer with the file at a branch:
    /// the branch moves between two requests of one fetch.
    pub move_after_next: Option<Vec<u8>>,
}

/// How the fake forge damages the body while describing the real content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Same length, one byte changed (still valid YAML).
    Alter,
    /// Cut at the last line boundary before the end (still valid YAML), with a matching
    /// Content-Length.
    Truncate,
    /// Forgejo: a weak ETag (a proxy's), so the blob id must come from the contents API.
    WeakEtag,
}

impl Tamper {
    fn apply(self, b: &[u8]) -> Vec<u8> {
        match self {
            Tamper::Alter => {
                let mut v = b.to_vec();
                if let Some(i) = v.iter().rposition(|c| c.is_ascii_lowercase()) {
                    v[i] = if v[i] == b'x' { b'y' } else { b'x' };
                }
                v
            }
            Tamper::Truncate => {
                let end = b[..b.len().saturating_sub(1)]
                    .iter()
                    .rposition(|c| *c == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                b[..end].to_vec()
            }
            Tamper::WeakEtag => b.to_vec(),
        }
    }
}

/// A test world on a fresh fake forge: `kind_yaml` is the target's `source:` with `BASE`
/// (the forge's URL) and `TOKENFILE` (a file holding `token`) filled in. `managed`: restart
/// the fake service by command and probe it, else `restart`/`verify` are `none`.
pub fn forge_env(kind_yaml: &str, token: &str, managed: bool) -> (crate::util::Env, FakeForge) {
    let env = crate::util::Env::new();
    let forge = FakeForge::start(token);
    let tf = env.write_token(token);
    let source = kind_yaml
        .replace("BASE", &forge.base_url())
        .replace("TOKENFILE", tf.to_str().expect("utf-8 path"));
    if managed {
        env.write_config(&source, &env.restart_command(), &env.verify_http(), "");
    } else {
        env.write_config(&source, "{ none: true }", "{ none: true }", "");
    }
    (env, forge)
}

pub struct FakeForge {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

/// The git blob id (`git hash-object`) of some bytes.
pub fn blob_id(b: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

fn etag_of(b: &[u8]) -> String {
    format!("\"{}\"", blob_id(b))
}

/// The write token the fake's statuses API takes.
pub const STATUS_TOKEN: &str = "status-write-token";

impl FakeForge {
    pub fn start(token: &str) -> FakeForge {
        let state = Arc::new(Mutex::new(State {
            content: None,
            commit: "0".repeat(40),
            token: token.to_string(),
            fail_with: None,
            log: Vec::new(),
            ps_validate: Vec::new(),
            ps_live: None,
            ps_diag_bad: None,
            tamper: None,
            status_token: STATUS_TOKEN.to_string(),
            status_fail_with: None,
            status_delay: None,
            trees: Default::default(),
            git_commits: Default::default(),
            git_trees: Default::default(),
            fail_headers: Vec::new(),
            commits: std::collections::HashMap::new(),
            move_after_next: None,
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake forge");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = l.accept().await else {
                        continue;
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(handle(&st, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            });
        });
        FakeForge { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes new content under a new commit.
    pub fn set(&self, content: &str) {
        publish(&mut self.state.lock().unwrap(), content.as_bytes());
    }

    /// `content` becomes the branch's new commit right after the next answer with the file.
    pub fn move_after_next_fetch(&self, content: &str) {
        self.state.lock().unwrap().move_after_next = Some(content.as_bytes().to_vec());
    }

    /// Publishes a commit whose repository holds `files` (paths from the root): what the tree
    /// APIs (trees, blobs, commits by path) serve.
    pub fn set_tree(&self, files: &[(&str, &str)]) {
        let mut s = self.state.lock().unwrap();
        let tree: std::collections::BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect();
        let mut all = Vec::new();
        for (p, c) in &tree {
            all.extend_from_slice(p.as_bytes());
            all.extend_from_slice(c);
        }
        publish(&mut s, &all);
        let commit = s.commit.clone();
        s.trees.insert(commit, tree);
    }

    pub fn commit(&self) -> String {
        self.state.lock().unwrap().commit.clone()
    }

    /// Serves a real repository as Forgejo's and GitHub's APIs would: `commit` (a real
    /// commit id) as the last commit touching `path`, the file's bytes at it, and every
    /// commit object (signature and signed payload, as `git cat-file` shows them) and tree of
    /// the repository. Called again after new commits.
    pub fn serve_git(&self, repo: &std::path::Path, commit: &str, path: &str) {
        let git = |args: &[&str]| -> Vec<u8> {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(repo)
                .args(args)
                .output()
                .expect("git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let text = |args: &[&str]| String::from_utf8(git(args)).expect("utf-8");
        let body = git(&["show", &format!("{commit}:{path}")]);
        let mut s = self.state.lock().unwrap();
        s.content = Some(body.clone());
        s.commit = commit.to_string();
        s.commits.insert(commit.to_string(), body);
        for c in text(&["rev-list", "--all"]).lines() {
            let raw = text(&["cat-file", "commit", c]);
            s.git_commits.insert(c.to_string(), split_signature(&raw));
            let mut todo = vec![text(&["rev-parse", &format!("{c}^{{tree}}")])
                .trim()
                .to_string()];
            while let Some(t) = todo.pop() {
                let mut entries = Vec::new();
                for line in text(&["ls-tree", &t]).lines() {
                    let (meta, name) = line.split_once('\t').expect("ls-tree line");
                    let f: Vec<&str> = meta.split(' ').collect();
                    // The APIs spell a directory's mode 040000.
                    let mode = if f[1] == "tree" {
                        "040000".to_string()
                    } else {
                        f[0].to_string()
                    };
                    if f[1] == "tree" {
                        todo.push(f[2].to_string());
                    }
                    entries.push((mode, f[1].to_string(), f[2].to_string(), name.to_string()));
                }
                s.git_trees.insert(t, entries);
            }
        }
    }

    /// A lying forge: names `commit` as the file's last commit, and serves `bytes` for it.
    pub fn serve_bytes_as(&self, commit: &str, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap();
        s.content = Some(bytes.to_vec());
        s.commit = commit.to_string();
        s.commits.insert(commit.to_string(), bytes.to_vec());
    }

    /// A lying forge: answers `git/commits/{sha}` with `other`'s signature and payload.
    pub fn swap_signed_payload(&self, sha: &str, other: &str) {
        let mut s = self.state.lock().unwrap();
        let theirs = s.git_commits.get(other).cloned().expect("known commit");
        s.git_commits.insert(sha.to_string(), theirs);
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_with = status;
    }

    /// Every request gets `status` with these headers (None: answers again as usual).
    pub fn fail_with_headers(&self, status: Option<u16>, headers: &[(&str, String)]) {
        let mut s = self.state.lock().unwrap();
        s.fail_with = status;
        s.fail_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
    }

    pub fn tamper(&self, t: Option<Tamper>) {
        self.state.lock().unwrap().tamper = t;
    }

    pub fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }

    /// The commit statuses posted: (path, JSON body), in order.
    pub fn statuses(&self) -> Vec<(String, serde_json::Value)> {
        self.log()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains("/statuses/") && r.status == 201)
            .map(|r| {
                let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
                (r.path, v)
            })
            .collect()
    }

    pub fn fail_statuses(&self, status: Option<u16>) {
        self.state.lock().unwrap().status_fail_with = status;
    }

    pub fn delay_statuses(&self, delay: Option<std::time::Duration>) {
        self.state.lock().unwrap().status_delay = delay;
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Requests for file content (not the commits API), with their statuses.
    pub fn content_requests(&self) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| !r.path.contains("/commits"))
            .collect()
    }
}

/// A raw commit object -> (root tree, signature, the object without its signature header).
fn split_signature(raw: &str) -> (String, Option<String>, String) {
    let mut payload = String::new();
    let mut sig: Option<String> = None;
    let mut in_sig = false;
    let mut in_head = true;
    for line in raw.split_inclusive('\n') {
        if in_head && in_sig {
            if let Some(rest) = line.strip_prefix(' ') {
                sig.get_or_insert_with(String::new).push_str(rest);
                continue;
            }
            in_sig = false;
        }
        if in_head {
            if let Some(rest) = line.strip_prefix("gpgsig ") {
                sig = Some(rest.to_string());
                in_sig = true;
                continue;
            }
            if line == "\n" {
                in_head = false;
            }
        }
        payload.push_str(line);
    }
    let tree = raw
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("tree "))
        .unwrap_or_default()
        .to_string();
    (tree, sig, payload)
}

/// `git/commits/{sha}` and `git/trees/{sha}` of a repository read by `serve_git`, shaped as
/// Forgejo (verification under `commit`) or GitHub (at the top) answers them.
fn git_objects(s: &State, p: &str, kind: &str) -> Option<Response<Full<Bytes>>> {
    let json = |v: serde_json::Value| {
        resp(
            200,
            v.to_string().into_bytes(),
            &[("content-type", "application/json".into())],
        )
    };
    if let Some((_, sha)) = p.split_once("/git/commits/") {
        let (tree, sig, payload) = s.git_commits.get(sha)?;
        let verification = serde_json::json!({
            "verified": sig.is_some(), "reason": if sig.is_some() { "valid" } else { "unsigned" },
            "signature": sig.clone().unwrap_or_default(),
            "payload": if sig.is_some() { payload.clone() } else { String::new() },
        });
        return Some(json(if kind == "github" {
            serde_json::json!({"sha": sha, "tree": {"sha": tree}, "verification": verification})
        } else {
            serde_json::json!({"sha": sha, "commit": {"tree": {"sha": tree}, "verification": verification}})
        }));
    }
    if let Some((_, sha)) = p.split_once("/git/trees/") {
        let entries = s.git_trees.get(sha)?;
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(mode, ty, id, name)| serde_json::json!({"path": name, "mode": mode, "type": ty, "sha": id}))
            .collect();
        return Some(json(
            serde_json::json!({"sha": sha, "tree": list, "truncated": false}),
        ));
    }
    None
}

fn publish(s: &mut State, content: &[u8]) {
    s.content = Some(content.to_vec());
    s.commit = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(content))[..40].to_string()
    };
    s.commits.insert(s.commit.clone(), content.to_vec());
}

/// The tree APIs over a tree repository (`set_tree`): Forgejo's and GitHub's
/// `git/trees/{commit}` and `git/blobs/{sha}`, GitLab's `repository/tree` and
/// `repository/blobs/{sha}/raw`. None for any other request.
fn trees(s: &State, r: &Req, p: &str, kind: &str) -> Option<Response<Full<Bytes>>> {
    let json = |v: serde_json::Value| {
        resp(
            200,
            v.to_string().into_bytes(),
            &[("content-type", "application/json".into())],
        )
    };
    let blob = |sha: &str| {
        s.trees
            .values()
            .flat_map(|t| t.values())
            .find(|c| blob_id(c) == sha)
            .cloned()
    };
    let entries = |commit: &str| -> Option<Vec<serde_json::Value>> {
        let t = s.trees.get(commit)?;
        Some(
            t.iter()
                .map(|(path, c)| {
                    serde_json::json!({"path": path, "type": "blob", "mode": "100644", "sha": blob_id(c), "id": blob_id(c), "size": c.len()})
                })
                .collect(),
        )
    };
    match kind {
        "forgejo" | "github" => {
            if let Some((_, commit)) = p.split_once("/git/trees/") {
                return Some(match entries(commit) {
                    Some(e) => {
                        json(serde_json::json!({"sha": commit, "tree": e, "truncated": false}))
                    }
                    None => resp(404, b"{}".to_vec(), &[]),
                });
            }
            if let Some((_, sha)) = p.split_once("/git/blobs/") {
                use base64::Engine;
                return Some(match blob(sha) {
                    Some(c) => json(
                        serde_json::json!({"sha": sha, "encoding": "base64", "content": base64::engine::general_purpose::STANDARD.encode(&c), "size": c.len()}),
                    ),
                    None => resp(404, b"{}".to_vec(), &[]),
                });
            }
            None
        }
        "gitlab" => {
            if p.ends_with("/repository/tree") {
                let q = |k: &str| {
                    r.query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        .map(|v| v.replace("%2F", "/"))
                        .unwrap_or_default()
                };
                let (dir, commit) = (q("path"), q("ref"));
                return Some(match entries(&commit) {
                    Some(e) => json(serde_json::Value::Array(
                        e.into_iter()
                            .filter(|e| {
                                e["path"]
                                    .as_str()
                                    .is_some_and(|p| p.starts_with(&format!("{dir}/")))
                            })
                            .collect(),
                    )),
                    None => resp(404, b"[]".to_vec(), &[]),
                });
            }
            if let Some(rest) = p.split_once("/repository/blobs/").map(|(_, r)| r) {
                let sha = rest.trim_end_matches("/raw");
                return Some(match blob(sha) {
                    Some(c) => resp(200, c, &[]),
                    None => resp(404, b"{}".to_vec(), &[]),
                });
            }
            None
        }
        _ => None,
    }
}

fn resp(status: u16, body: Vec<u8>, headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body))).expect("response")
}

async fn handle(
    st: &Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let delay = st.lock().unwrap().status_delay;
    if let Some(d) = delay.filter(|_| method == "POST" && path.contains("/statuses/")) {
        // The post is logged only once answered: one whose client went away is not there.
        tokio::time::sleep(d).await;
    }
    let mut s = st.lock().unwrap();
    let r = Req {
        method,
        path: path.clone(),
        query,
        headers,
        body,
        status: 0,
    };
    let out = route(&s, &r);
    let at_branch = !r.path.contains("/commits")
        && !r.path.contains("/statuses/")
        && !s
            .commits
            .keys()
            .any(|c| r.query.contains(&format!("ref={c}")));
    if at_branch && out.status().as_u16() == 200 {
        if let Some(next) = s.move_after_next.take() {
            publish(&mut s, &next);
        }
    }
    let mut r = r;
    r.status = out.status().as_u16();
    s.log.push(r);
    out
}

fn route(s: &State, r: &Req) -> Response<Full<Bytes>> {
    if let Some(code) = s.fail_with {
        let headers: Vec<(&str, String)> = s
            .fail_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        return resp(code, b"down".to_vec(), &headers);
    }
    let p = &r.path;
    if p.starts_with("/api/admin/v1/") {
        return powersync(s, r);
    }
    let (auth_ok, kind) = if p.starts_with("/api/v1/repos/") {
        (
            r.header("authorization") == Some(&format!("token {}", s.token)),
            "forgejo",
        )
    } else if p.starts_with("/repos/") {
        (
            r.header("authorization") == Some(&format!("Bearer {}", s.token)),
            "github",
        )
    } else if p.starts_with("/api/v4/projects/") {
        (
            r.header("private-token") == Some(s.token.as_str()),
            "gitlab",
        )
    } else if p.starts_with("/plain/") {
        (
            s.token.is_empty() || r.header("authorization") == Some(&format!("Bearer {}", s.token)),
            "plain",
        )
    } else {
        return resp(404, b"no route".to_vec(), &[]);
    };
    // The statuses API (Forgejo/Gitea `POST /api/v1/repos/O/R/statuses/SHA`, GitHub
    // `POST /repos/O/R/statuses/SHA`, GitLab `POST /api/v4/projects/ID/statuses/SHA`), with the
    // write token in each forge's header.
    if r.method == "POST" && p.contains("/statuses/") {
        let want = match kind {
            "forgejo" => r.header("authorization") == Some(&format!("token {}", s.status_token)),
            "github" => r.header("authorization") == Some(&format!("Bearer {}", s.status_token)),
            _ => r.header("private-token") == Some(s.status_token.as_str()),
        };
        if !want {
            return resp(401, b"{\"message\":\"bad token\"}".to_vec(), &[]);
        }
        if let Some(code) = s.status_fail_with {
            return resp(code, b"{\"message\":\"failing\"}".to_vec(), &[]);
        }
        return resp(
            201,
            b"{}".to_vec(),
            &[("content-type", "application/json".into())],
        );
    }
    if !auth_ok {
        return resp(401, b"{\"message\":\"token is required\"}".to_vec(), &[]);
    }
    if let Some(answer) = git_objects(s, p, kind) {
        return answer;
    }
    if let Some(answer) = trees(s, r, p, kind) {
        return answer;
    }
    if p.ends_with("/commits") {
        // GitLab names a commit `id`, the others `sha`.
        let body = format!("[{{\"sha\":\"{0}\",\"id\":\"{0}\"}}]", s.commit);
        return resp(
            200,
            body.into_bytes(),
            &[("content-type", "application/json".into())],
        );
    }
    let well_formed = match kind {
        "forgejo" => p.contains("/raw/") || p.contains("/contents/"),
        "github" => {
            p.contains("/contents/") && r.header("accept") == Some("application/vnd.github+json")
        }
        "gitlab" => {
            p.contains("/repository/files/") && p.ends_with("/raw") && r.query.contains("ref=")
        }
        _ => true,
    };
    if !well_formed {
        return resp(400, b"bad request".to_vec(), &[]);
    }
    // `ref=<commit>`: the file as it was at that commit.
    let pinned = s
        .commits
        .iter()
        .find(|(c, _)| r.query.split('&').any(|kv| kv == format!("ref={c}")))
        .map(|(_, b)| b);
    let Some(content) = pinned.or(s.content.as_ref()) else {
        return resp(404, b"not found".to_vec(), &[]);
    };
    let etag = etag_of(content);
    let served = match s.tamper {
        Some(t) => t.apply(content),
        None => content.clone(),
    };
    if kind == "forgejo" && p.contains("/contents/") {
        let meta =
            serde_json::json!({"type": "file", "sha": blob_id(content), "size": content.len()});
        return resp(200, meta.to_string().into_bytes(), &[]);
    }
    let etag = if s.tamper == Some(Tamper::WeakEtag) {
        format!("W/{etag}")
    } else {
        etag
    };
    if r.header("if-none-match") == Some(etag.as_str()) {
        return resp(304, Vec::new(), &[("etag", etag)]);
    }
    let mut h = vec![("etag", etag)];
    if kind == "gitlab" {
        use sha2::Digest;
        h.push(("x-gitlab-last-commit-id", s.commit.clone()));
        h.push(("x-gitlab-blob-id", blob_id(content)));
        h.push((
            "x-gitlab-content-sha256",
            hex::encode(sha2::Sha256::digest(content)),
        ));
        h.push(("x-gitlab-size", content.len().to_string()));
    }
    if kind == "github" {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&served);
        // GitHub wraps the base64 at 60 characters.
        let wrapped: Vec<String> = b64
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8_lossy(c).into_owned() + "\n")
            .collect();
        let obj = serde_json::json!({
            "type": "file", "encoding": "base64", "size": content.len(),
            "name": "sync-rules.yaml", "sha": blob_id(content), "content": wrapped.concat(),
        });
        h.push(("content-type", "application/json".into()));
        return resp(200, obj.to_string().into_bytes(), &h);
    }
    resp(200, served, &h)
}

/// A server that answers every connection with `raw` (status line, headers and body as
/// given, framing and all) and closes: for bodies no well-behaved server would send.
pub fn raw_http_server(raw: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind raw server");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(&raw);
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    });
    port
}

fn errors_json(e: &[(String, String)]) -> serde_json::Value {
    e.iter()
        .map(|(l, m)| serde_json::json!({"level": l, "message": m}))
        .collect::<Vec<_>>()
        .into()
}

/// PowerSync's admin API, as documented: Bearer token from `api.tokens`.
fn powersync(s: &State, r: &Req) -> Response<Full<Bytes>> {
    if r.header("authorization") != Some(&format!("Bearer {}", s.token)) {
        return resp(401, b"{\"error\":\"unauthorized\"}".to_vec(), &[]);
    }
    let req: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let body = match r.path.as_str() {
        "/api/admin/v1/validate" => {
            if req.get("sync_rules").and_then(|v| v.as_str()).is_none() {
                return resp(400, b"sync_rules missing".to_vec(), &[]);
            }
            serde_json::json!({"data": {"errors": errors_json(&s.ps_validate), "connections": []}})
        }
        "/api/admin/v1/diagnostics" => {
            let with_content =
                req.get("sync_rules_content") == Some(&serde_json::Value::Bool(true));
            let live = s
                .ps_live
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let errors: Vec<(String, String)> = match (&s.ps_diag_bad, &live) {
                (Some((marker, msg)), Some(l)) if l.contains(marker.as_str()) => {
                    vec![("fatal".to_string(), msg.clone())]
                }
                _ => Vec::new(),
            };
            let content = live.filter(|_| with_content);
            serde_json::json!({"data": {
                "connections": [],
                "active_sync_rules": {"content": content, "errors": errors_json(&errors)},
                "deploying_sync_rules": null
            }})
        }
        _ => return resp(404, b"no route".to_vec(), &[]),
    };
    resp(
        200,
        body.to_string().into_bytes(),
        &[("content-type", "application/json".into())],
    )
}
