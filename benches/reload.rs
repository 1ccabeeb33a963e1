//! What a change costs nginx's clients: reload or restart (`cargo bench --bench reload`;
//! results in docs/benchmarks.md, "Reload or restart: nginx").
//!
//! nginx (Debian's package) serves a small page on 127.0.0.1 while a client asks for it as fast
//! as it can, one fresh connection per request. rulekeeper applies `RK_BENCH_CHANGES` (20)
//! changes of its server block through `rulekeeper once`, first with `restart.signal` (HUP,
//! verified from nginx's error log by contrib/nginx/reloaded), then with a `restart.command`
//! that stops and starts nginx. Per phase: requests, failed requests (refused, reset, non-200),
//! and the longest run of failures.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::util::{self, file_source, require_tool, wait_until, Env};
use common::{env_u64, free_port};

fn site(port: u16, tag: &str) -> String {
    format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{tag}\\n\"; }} }}\n")
}

/// Starts nginx (daemonized: its master's pid in `dir/nginx.pid`) on `main`.
fn nginx_argv(nginx: &Path, dir: &Path) -> Vec<String> {
    vec![
        nginx.display().to_string(),
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        dir.join("nginx.conf").display().to_string(),
        "-g".into(),
        format!(
            "pid {}; error_log {} notice;",
            dir.join("nginx.pid").display(),
            dir.join("error.log").display()
        ),
    ]
}

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    longest_gap_ms: AtomicU64,
}

fn phase(name: &str, env: &Env, up: &Path, port: u16, changes: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        longest_gap_ms: AtomicU64::new(0),
    });
    let client = {
        let (stop, tally) = (stop.clone(), tally.clone());
        std::thread::spawn(move || {
            let mut failing_since: Option<Instant> = None;
            while !stop.load(Ordering::SeqCst) {
                let good = matches!(util::try_http(port, "GET", "/", &[], b""), Ok((200, _)));
                if good {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                    if let Some(s) = failing_since.take() {
                        let ms = s.elapsed().as_millis() as u64;
                        tally.longest_gap_ms.fetch_max(ms, Ordering::SeqCst);
                    }
                } else {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    failing_since.get_or_insert_with(Instant::now);
                }
            }
        })
    };
    let t = Instant::now();
    for i in 0..changes {
        std::fs::write(up, site(port, &format!("{name}-{i}"))).expect("upstream");
        let o = env.once();
        assert_eq!(o.code, 0, "{name} change {i}: {}", o.all());
    }
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = client.join();
    println!(
        "{name:<8} {changes} changes in {:>5.1} s: {:>7} requests, {:>4} failed, longest outage {} ms",
        took.as_secs_f64(),
        tally.ok.load(Ordering::SeqCst) + tally.failed.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.longest_gap_ms.load(Ordering::SeqCst)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let changes = env_u64("RK_BENCH_CHANGES", 20);
    let env = Env::new();
    let dir = env.dir.path().to_path_buf();
    let port = free_port();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "events {{}}\nhttp {{ access_log off; include {}; }}\n",
            env.live.display()
        ),
    )
    .expect("nginx.conf");
    let up = dir.join("upstream.conf");
    std::fs::write(&env.live, site(port, "start")).expect("live");
    std::fs::write(&up, site(port, "start")).expect("upstream");
    let argv = nginx_argv(&nginx, &dir);
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .expect("nginx");
    assert!(st.success(), "nginx did not start");
    wait_until(10, "nginx serving", || {
        util::http(port, "GET", "/", &[], b"").0 == 200
    });
    let pid_file = dir.join("nginx.pid");
    let reload = format!(
        "{{ signal: {{ name: HUP, pid_file: \"{}\" }} }}",
        pid_file.display()
    );
    let reloaded = format!(
        "{{ command: [\"{}\", \"{}\", \"{{since}}\"], successes: 1, interval: 50ms, timeout: 10s }}",
        util::repo_root().join("contrib/nginx/reloaded").display(),
        dir.join("error.log").display()
    );
    env.write_config(&file_source(&up), &reload, &reloaded, "");
    env.set_validate("{ yaml: false }");
    assert_eq!(env.once().code, 0);
    phase("reload", &env, &up, port, changes);

    // The same changes through a restart: stop nginx (gracefully), then start it again.
    let start = argv
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let restart = format!(
        "{{ command: [sh, -c, \"kill -QUIT $(cat '{p}'); while [ -e '{p}' ]; do sleep 0.01; done; {start}\"], timeout: 30s }}",
        p = pid_file.display()
    );
    env.edit(|t| {
        t.set("restart", util::yaml(&restart)).set(
            "verify",
            util::yaml(&format!(
                "{{ http: \"http://127.0.0.1:{port}/\", successes: 1, interval: 50ms, timeout: 10s }}"
            )),
        )
    });
    phase("restart", &env, &up, port, changes);
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    // Let the client's last connections close before the temp dir goes.
    std::thread::sleep(Duration::from_millis(100));
}
