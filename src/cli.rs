//! The command line (DESIGN.md "CLI"): parsing, logging set-up, and turning each command's
//! result into the documented exit code. Everything here is thin glue over `cycle`,
//! `state` and `supervisor`.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config, Target};
use crate::cycle::{self, Ctx, Report, Stop, Trigger};
use crate::logging::LogFormat;
use crate::source::Source;
use crate::state::Store;

/// Exit codes (DESIGN.md "CLI").
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NO_USABLE_FILE: i32 = 3;
    pub const ROLLBACK_FAILED: i32 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "rulekeeper",
    version,
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
    /// Restore `.prev` through restart + verify, quarantining what it rolled back from.
    Rollback {
        #[command(flatten)]
        c: ConfigArg,
        #[arg(short, long)]
        target: String,
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

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    crate::logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rulekeeper: {e:#}");
            exit::USAGE
        }
    }
}

fn load(c: &ConfigArg) -> Result<Config, i32> {
    config::load(&c.config).map_err(|e| {
        eprintln!("rulekeeper: {e}");
        exit::USAGE
    })
}

/// Loads the config and checks that `name` is one of its targets (so indexing by it is safe).
fn load_with_target(c: &ConfigArg, name: &str) -> Result<Config, i32> {
    let cfg = load(c)?;
    target(&cfg, name)?;
    Ok(cfg)
}

fn target<'a>(cfg: &'a Config, name: &str) -> Result<&'a Target, i32> {
    cfg.targets.get(name).ok_or_else(|| {
        eprintln!(
            "rulekeeper: {}: no target `{name}` (targets: {})",
            cfg.file.display(),
            cfg.targets.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        exit::USAGE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let code = match cli.command {
        Command::Run { c } => {
            let cfg = match load(&c) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            crate::supervisor::run(cfg)?
        }
        Command::Check { c } => match load(&c) {
            Ok(cfg) => {
                for w in crate::preflight::warnings(&cfg) {
                    eprintln!("rulekeeper: warning: {w}");
                }
                let problems = crate::preflight::file_problems(&cfg);
                for p in &problems {
                    eprintln!("rulekeeper: {p}");
                }
                if problems.is_empty() {
                    println!("{}: ok ({} targets)", cfg.file.display(), cfg.targets.len());
                    exit::OK
                } else {
                    exit::USAGE
                }
            }
            Err(code) => code,
        },
        Command::Once { c, target: only } => {
            let cfg = match load(&c) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let names: Vec<String> = match &only {
                Some(t) => match target(&cfg, t) {
                    Ok(_) => vec![t.clone()],
                    Err(code) => return Ok(code),
                },
                None => cfg.targets.keys().cloned().collect(),
            };
            let rt = runtime()?;
            let mut worst = exit::OK;
            for name in names {
                let t = &cfg.targets[&name];
                let code = rt.block_on(one(&cfg, t, Trigger::Poll));
                worst = worse(worst, code);
            }
            worst
        }
        Command::Validate {
            c,
            target: name,
            path,
        } => {
            let cfg = match load_with_target(&c, &name) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let t = &cfg.targets[&name];
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("rulekeeper: cannot read {}: {e}", path.display());
                    return Ok(exit::USAGE);
                }
            };
            let rt = runtime()?;
            match rt.block_on(crate::validate::full(&t.validate, &path, &bytes)) {
                Ok(()) => {
                    println!("{}: valid for target `{name}`", path.display());
                    exit::OK
                }
                Err(e) => {
                    println!("{}: invalid for target `{name}`: {e}", path.display());
                    exit::FAILED
                }
            }
        }
        Command::Push {
            c,
            target: name,
            path,
        } => {
            let cfg = match load_with_target(&c, &name) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let t = &cfg.targets[&name];
            let body = match read_input(path.as_deref(), t.max_bytes) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("rulekeeper: {e}");
                    return Ok(exit::USAGE);
                }
            };
            let held = Store::new(&cfg.state_dir, &name)
                .load()
                .map(|s| s.hold)
                .unwrap_or(false);
            if !held {
                eprintln!(
                    "rulekeeper: note: target `{name}` is not held, so the next poll converges it back to upstream; run `rulekeeper hold -t {name}` first to keep a pushed file"
                );
            }
            runtime()?.block_on(one(&cfg, t, Trigger::Push(body)))
        }
        Command::Rollback { c, target: name } => {
            let cfg = match load_with_target(&c, &name) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let t = &cfg.targets[&name];
            // A manual rollback that left the service healthy did what was asked: exit 0.
            match runtime()?.block_on(run_target(&cfg, t, Trigger::Rollback)) {
                (exit::FAILED, Some(cycle::Outcome::RolledBack)) => exit::OK,
                (code, _) => code,
            }
        }
        Command::Hold { c, target: name } => set_hold(&c, &name, true)?,
        Command::Release { c, target: name } => set_hold(&c, &name, false)?,
        Command::Status { c, json } => {
            let cfg = match load(&c) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if crate::status::print(&cfg, json)? {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rulekeeper",
                &mut std::io::stdout(),
            );
            exit::OK
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            exit::OK
        }
    };
    Ok(code)
}

/// Combines exit codes: the most serious wins (4 > 3 > 1 > 0; 2 is usage).
fn worse(a: i32, b: i32) -> i32 {
    let rank = |c: i32| match c {
        exit::ROLLBACK_FAILED => 5,
        exit::NO_USABLE_FILE => 4,
        exit::USAGE => 3,
        exit::FAILED => 2,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
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

/// Runs one cycle for one target and prints a one-line result; returns the exit code.
pub async fn one(cfg: &Config, t: &Target, trigger: Trigger) -> i32 {
    run_target(cfg, t, trigger).await.0
}

/// As [`one`], also returning the outcome when the cycle ran.
async fn run_target(cfg: &Config, t: &Target, trigger: Trigger) -> (i32, Option<cycle::Outcome>) {
    let store = Store::new(&cfg.state_dir, &t.name);
    let source = match Source::new(t, store.git_cache()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "rulekeeper: {}: target `{}`: {e}",
                cfg.file.display(),
                t.name
            );
            return (exit::USAGE, None);
        }
    };
    let ctx = Ctx {
        target: t,
        source: &source,
        store,
        state_dir: cfg.state_dir.clone(),
        stop: Stop::default(),
        boot: false,
        tidy: true,
    };
    match cycle::run(&ctx, trigger).await {
        Ok(rep) => {
            print_report(&rep);
            (rep.exit_code(), Some(rep.outcome))
        }
        Err(e) => {
            eprintln!("rulekeeper: target `{}`: {e}", t.name);
            let code = match e {
                cycle::CycleError::Refused(_) => exit::FAILED,
                _ if !crate::validate::live_usable(t) => exit::NO_USABLE_FILE,
                _ => exit::FAILED,
            };
            (code, None)
        }
    }
}

fn print_report(rep: &Report) {
    let sha = rep
        .live_sha256
        .as_deref()
        .map(|s| &s[..12.min(s.len())])
        .unwrap_or("-");
    let mut line = format!("{}: {} (live {sha}", rep.target, rep.outcome.as_str());
    if let Some(r) = &rep.revision {
        line.push_str(&format!(", revision {r}"));
    }
    line.push(')');
    if let Some(r) = &rep.reason {
        line.push_str(&format!(": {r}"));
    }
    if !rep.usable {
        line.push_str(" [no usable live file]");
    }
    rep.log();
    println!("{line}");
}

fn set_hold(c: &ConfigArg, name: &str, hold: bool) -> anyhow::Result<i32> {
    let cfg = match load_with_target(c, name) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = Store::new(&cfg.state_dir, name);
    let _lock = store.lock()?;
    let mut st = store.load()?;
    st.hold = hold;
    store.save(&st)?;
    println!(
        "{name}: {}",
        if hold {
            "held (cycles fetch and report, but apply nothing until `release`)"
        } else {
            "released"
        }
    );
    Ok(exit::OK)
}
