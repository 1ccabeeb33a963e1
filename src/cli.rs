//! The command line (docs/contract.md "CLI"): parsing, logging set-up, and one function per
//! command that turns its result into an [`Exit`]. Everything here is thin glue over
//! `cycle`, `state`, `status` and `supervisor`.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config, Target};
use crate::cycle::{self, Ctx, Request};
use crate::daemon::poster::Poster;
use crate::exit::Exit;
use crate::observe::logging::LogFormat;
use crate::source::Source;
use crate::store::state::Store;

#[derive(Debug, Parser)]
#[command(
    name = "rulekeeper",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RULEKEEPER_COMMIT"), ")"),
    about = "Keeps a service's rules file in step with git: fetch, validate, atomic swap, restart, verify, roll back."
)]
pub struct Cli {
    /// Log format: `auto` uses journald when stderr is the journal (JOURNAL_STREAM).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (YAML; JSON is valid YAML).
    #[arg(short = 'c', long = "config", env = "RULEKEEPER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll every target, serve /metrics, /healthz, /status and webhooks.
    Run {
        #[command(flatten)]
        c: ConfigArg,
    },
    /// Run one cycle for each target (or one), then exit (for timer-driven use).
    Once {
        #[command(flatten)]
        c: ConfigArg,
        /// Only this target.
        #[arg(short, long)]
        target: Option<String>,
    },
    /// Check the configuration file (exit 0 ok, 2 invalid).
    Check {
        #[command(flatten)]
        c: ConfigArg,
    },
    /// Run a target's validators on a file (exit 0 valid, 1 invalid).
    Validate {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
        /// The file to check.
        path: PathBuf,
    },
    /// Apply a given file (or `-` for stdin) through the full pipeline.
    Push {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
        /// The file to apply; `-` or nothing reads standard input.
        path: Option<PathBuf>,
    },
    /// Restore `.prev` (or, with `--to`, a version from the history) through restart +
    /// verify, quarantining what it rolled back from.
    Rollback {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
        /// A version from `rulekeeper history`: a unique prefix of its sha256 or revision.
        /// Goes through validate, install, restart and verify (no fetch), and holds the target
        /// there until `release`.
        #[arg(long, value_name = "REV|SHA256")]
        to: Option<String>,
    },
    /// List a target's last applied versions and rollbacks.
    History {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what the next apply would change: a unified diff of the live file against
    /// upstream (or a revision, or a file), and the validators' verdict on the new side.
    /// Exit 0 no change, 1 a change, 2 usage or config, 5 upstream or a file unreadable.
    Diff {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
        /// Compare with upstream at this revision (a commit, branch or tag).
        #[arg(long, conflicts_with = "file")]
        rev: Option<String>,
        /// Compare with this file instead of upstream.
        file: Option<PathBuf>,
    },
    /// Stop applying new content for a target (cycles still fetch, report and alert).
    Hold {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
    },
    /// Resume applying for a held target.
    Release {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
    },
    /// Show each target's state.
    Status {
        #[command(flatten)]
        c: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Why a command could not do its work. Each kind has one exit status ([`CliError::exit`]), so
/// the same failure gives the same code from every command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the config is wrong (already explained where it is found).
    #[error("{0}")]
    Usage(String),
    /// A target's state (its directory, lock or file) failed.
    #[error("target `{0}`: {1}")]
    State(String, crate::store::state::StateError),
    /// rulekeeper's own I/O (the runtime, standard output).
    #[error("{0}")]
    Io(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::State(_, e) => Exit::of_state(e),
            CliError::Io(_) => Exit::Io,
        }
    }
}

/// Entry point used by `main`: the exit status of the command.
pub fn main() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code;
        }
    };
    crate::observe::logging::init(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rulekeeper: {e}");
            e.exit()
        }
    }
}

fn load(c: &ConfigArg) -> Result<Config, Exit> {
    config::load(&c.config).map_err(|e| {
        eprintln!("rulekeeper: {e}");
        Exit::Usage
    })
}

fn target<'a>(cfg: &'a Config, name: &str) -> Result<&'a Target, Exit> {
    cfg.targets.get(name).ok_or_else(|| {
        eprintln!(
            "rulekeeper: {}: no target `{name}` (targets: {})",
            cfg.file.display(),
            cfg.targets.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        Exit::Usage
    })
}

/// Runs `f` on the loaded config; a config error (already printed) is `Exit::Usage`.
fn with_config(
    c: &ConfigArg,
    f: impl FnOnce(&Config) -> Result<Exit, CliError>,
) -> Result<Exit, CliError> {
    match load(c) {
        Ok(cfg) => f(&cfg),
        Err(code) => Ok(code),
    }
}

/// As [`with_config`], for a command about one target.
fn with_target(
    c: &ConfigArg,
    name: &str,
    f: impl FnOnce(&Config, &Target) -> Result<Exit, CliError>,
) -> Result<Exit, CliError> {
    with_config(c, |cfg| match target(cfg, name) {
        Ok(t) => f(cfg, t),
        Err(code) => Ok(code),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))
}

fn run(command: Command) -> Result<Exit, CliError> {
    match command {
        // The daemon fails to start on what its config names (a port taken, a state directory
        // it cannot create): a configuration error.
        Command::Run { c } => with_config(&c, |cfg| {
            match crate::daemon::supervisor::run(cfg.clone()) {
                Ok(crate::daemon::supervisor::Ended::Stopped) => Ok(Exit::Ok),
                Ok(crate::daemon::supervisor::Ended::StartupFailed) => Ok(Exit::Rejected),
                Err(e) => Err(CliError::Usage(format!("{e:#}"))),
            }
        }),
        Command::Check { c } => with_config(&c, check),
        Command::Once { c, target } => with_config(&c, |cfg| once(cfg, target.as_deref())),
        Command::Validate { c, target, path } => {
            with_target(&c, &target, |_, t| validate(t, &path))
        }
        Command::Push { c, target, path } => {
            with_target(&c, &target, |cfg, t| push(cfg, t, path.as_deref()))
        }
        Command::Rollback { c, target, to } => with_target(&c, &target, |cfg, t| {
            let trigger = match to {
                Some(key) => Request::RollbackTo(key),
                None => Request::Rollback,
            };
            Ok(runtime()?.block_on(one(cfg, t, trigger)))
        }),
        Command::History { c, target, json } => {
            with_target(&c, &target, |cfg, t| history(cfg, t, json))
        }
        Command::Diff {
            c,
            target,
            rev,
            file,
        } => with_target(&c, &target, |cfg, t| {
            let against = match (&rev, &file) {
                (Some(r), _) => crate::diff::Against::Revision(r),
                (None, Some(f)) => crate::diff::Against::File(f),
                (None, None) => crate::diff::Against::Upstream,
            };
            Ok(runtime()?.block_on(crate::diff::run(&cfg.state_dir, t, against)))
        }),
        Command::Hold { c, target } => with_target(&c, &target, |cfg, t| set_hold(cfg, t, true)),
        Command::Release { c, target } => {
            with_target(&c, &target, |cfg, t| set_hold(cfg, t, false))
        }
        Command::Status { c, json } => with_config(&c, |cfg| status(cfg, json)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rulekeeper",
                &mut std::io::stdout(),
            );
            Ok(Exit::Ok)
        }
        Command::Man => {
            // The release, not the commit: the packaged page (pkg/deb/rulekeeper.1) is this
            // output, kept in step by a test, and must not change with every commit.
            clap_mangen::Man::new(Cli::command().version(env!("CARGO_PKG_VERSION")))
                .render(&mut std::io::stdout())
                .map_err(|e| CliError::Io(format!("cannot write the man page: {e}")))?;
            Ok(Exit::Ok)
        }
    }
}

/// Prints every target's status; the exit status is the worst a target's state read gave (a
/// state the command cannot read is the same failure it is for any other command).
fn status(cfg: &Config, json: bool) -> Result<Exit, CliError> {
    let mut worst = Exit::Ok;
    let all: Vec<crate::observe::status::TargetStatus> =
        crate::observe::status::read_all(cfg, crate::observe::status::on_disk(cfg))
            .into_iter()
            .map(|(status, error)| {
                if let Some(t) = error {
                    worst = worst.worse(Exit::of_trouble(t));
                }
                status
            })
            .collect();
    let daemon = crate::observe::status::daemon(cfg);
    if json {
        let mut all = all;
        for s in &mut all {
            s.daemon_running = Some(daemon.running());
        }
        let text = serde_json::to_string_pretty(&all)
            .map_err(|e| CliError::Io(format!("cannot print the status: {e}")))?;
        println!("{text}");
    } else {
        println!("{}", daemon.line(cfg));
        print!("{}", crate::observe::status::table(&all));
    }
    Ok(worst)
}

fn check(cfg: &Config) -> Result<Exit, CliError> {
    for w in crate::daemon::preflight::warnings(cfg) {
        eprintln!("rulekeeper: warning: {w}");
    }
    let problems = crate::daemon::preflight::file_problems(cfg);
    for p in &problems {
        eprintln!("rulekeeper: {p}");
    }
    if !problems.is_empty() {
        return Ok(Exit::Usage);
    }
    println!("{}: ok ({} targets)", cfg.file.display(), cfg.targets.len());
    Ok(Exit::Ok)
}

fn once(cfg: &Config, only: Option<&str>) -> Result<Exit, CliError> {
    let targets: Vec<&Target> = match only {
        Some(name) => match target(cfg, name) {
            Ok(t) => vec![t],
            Err(code) => return Ok(code),
        },
        None => cfg.targets.values().collect(),
    };
    let rt = runtime()?;
    let mut worst = Exit::Ok;
    for t in targets {
        worst = worst.worse(rt.block_on(one(cfg, t, Request::Poll)));
    }
    Ok(worst)
}

fn validate(t: &Target, path: &Path) -> Result<Exit, CliError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rulekeeper: cannot read {}: {e}", path.display());
            return Ok(Exit::Usage);
        }
    };
    let name = &t.name;
    match runtime()?.block_on(crate::service::validate::full(
        &t.validate,
        path,
        path,
        &bytes,
    )) {
        Ok(()) => {
            println!("{}: valid for target `{name}`", path.display());
            Ok(Exit::Ok)
        }
        Err(e) => {
            println!("{}: invalid for target `{name}`: {e}", path.display());
            Ok(Exit::Rejected)
        }
    }
}

fn push(cfg: &Config, t: &Target, path: Option<&Path>) -> Result<Exit, CliError> {
    let input = if t.tree {
        tree_input(t, path)
    } else {
        read_input(path, t.max_bytes)
    };
    let body = match input {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rulekeeper: {e}");
            return Ok(Exit::Usage);
        }
    };
    let name = &t.name;
    let held = Store::new(&cfg.state_dir, name)
        .load()
        .map(|s| s.hold)
        .unwrap_or(false);
    if !held {
        eprintln!(
            "rulekeeper: note: target `{name}` is not held, so the next poll converges it back to upstream; run `rulekeeper hold -t {name}` first to keep a pushed file"
        );
    }
    Ok(runtime()?.block_on(one(cfg, t, Request::Push(body))))
}

/// What `push` applies to a tree target: a directory, or a tar archive (a file, or `-`).
fn tree_input(t: &Target, path: Option<&Path>) -> Result<Vec<u8>, String> {
    let limits = crate::store::tree::Limits {
        max_files: t.max_files,
        max_bytes: t.max_bytes,
    };
    let tree = match path {
        Some(p) if p.is_dir() => crate::store::tree::Tree::from_dir(p, limits)
            .map_err(|e| format!("{}: {e}", p.display()))?,
        _ => {
            // A tar's headers take room beside the contents: read up to twice max_bytes.
            let tar = read_input(path, t.max_bytes.saturating_mul(2).max(1 << 20))?;
            crate::store::tree::Tree::from_tar(&tar, limits).map_err(|e| e.to_string())?
        }
    };
    Ok(tree.encode())
}

fn read_input(path: Option<&Path>, max: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    match path {
        None => std::io::stdin()
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?,
        Some(p) if p == Path::new("-") => std::io::stdin()
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?,
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(max + 1).read_to_end(&mut buf))
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
    };
    if buf.len() as u64 > max {
        return Err(format!("input is over max_bytes ({max})"));
    }
    Ok(buf)
}

/// A command's cycle as the operator at the terminal follows it: its posts go to the
/// command's poster, and a wait for the target's lock is said on stderr.
struct Operator<'a> {
    poster: &'a Poster,
}

impl cycle::Observer for Operator<'_> {
    fn post(&self, target: &Target, post: crate::cycle::commit_status::Post) {
        self.poster.send(target, post);
    }

    fn waiting(&self, target: &Target, what: &str) {
        eprintln!("rulekeeper: target `{}`: {what}", target.name);
    }
}

/// Runs one cycle for one target, prints a one-line result and logs it; returns its exit
/// status.
pub async fn one(cfg: &Config, t: &Target, trigger: Request) -> Exit {
    let store = Store::new(&cfg.state_dir, &t.name);
    let source = match Source::new(t, store.git_cache()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "rulekeeper: {}: target `{}`: {e}",
                cfg.file.display(),
                t.name
            );
            return Exit::Usage;
        }
    };
    let poster = Poster::new(crate::observe::metrics::commit_status_counter());
    let operator = Operator { poster: &poster };
    let ctx = Ctx::new(t, &source, &cfg.state_dir, &operator);
    let exit = match cycle::run(&ctx, trigger).await {
        Ok(rep) => {
            rep.log();
            println!("{}", rep.summary());
            Exit::of(&rep)
        }
        Err(e) => {
            eprintln!("rulekeeper: target `{}`: {e}", t.name);
            Exit::of_cycle_error(&e, crate::service::validate::live_file_usable(t))
        }
    };
    // Commit statuses post beside the cycle; a one-shot command lets them finish (bounded)
    // before it exits, once its result is out.
    poster.flush(std::time::Duration::from_secs(20)).await;
    exit
}

fn history(cfg: &Config, t: &Target, json: bool) -> Result<Exit, CliError> {
    let store = Store::new(&cfg.state_dir, &t.name);
    let list = match crate::store::history::History::new(store.dir()).load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rulekeeper: target `{}`: {e}", t.name);
            return Ok(Exit::of_history(&e));
        }
    };
    if json {
        let text = serde_json::to_string_pretty(&list)
            .map_err(|e| CliError::Io(format!("cannot print the history: {e}")))?;
        println!("{text}");
        return Ok(Exit::Ok);
    }
    println!(
        "{:<20} {:<12} {:<12} {:<16} {:>8} {:>10}  KEPT",
        "WHEN", "SHA256", "REVISION", "OUTCOME", "RESTARTS", "DURATION"
    );
    for e in list.iter().rev() {
        println!(
            "{:<20} {:<12} {:<12} {:<16} {:>8} {:>8}ms  {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            crate::util::digest::short(&e.sha256),
            e.revision
                .as_deref()
                .map(crate::util::digest::short)
                .unwrap_or("-"),
            e.outcome.as_str(),
            e.restarts,
            e.duration_ms,
            if e.kept { "yes" } else { "no" }
        );
    }
    Ok(Exit::Ok)
}

fn set_hold(cfg: &Config, t: &Target, hold: bool) -> Result<Exit, CliError> {
    let store = Store::new(&cfg.state_dir, &t.name);
    let in_target = |e| CliError::State(t.name.clone(), e);
    let name = t.name.clone();
    let _lock = store
        .lock_noting(std::time::Duration::from_secs(1), move |what| {
            eprintln!("rulekeeper: target `{name}`: {what}")
        })
        .map_err(in_target)?;
    let mut st = store.load().map_err(in_target)?;
    st.hold = hold;
    store.save(&st).map_err(in_target)?;
    println!(
        "{}: {}",
        t.name,
        if hold {
            "held (cycles fetch and report, but apply nothing until `release`)"
        } else {
            "released"
        }
    );
    Ok(Exit::Ok)
}
