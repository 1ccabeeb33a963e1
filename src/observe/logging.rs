//! Log set-up: journald (structured fields) when stderr is the journal or when asked, plain
//! text or JSON lines otherwise. The level comes from `RULEKEEPER_LOG`, else `RUST_LOG`,
//! else `info`. Nothing logged anywhere carries a token or webhook secret: those only ever
//! live in `source::Secret`, whose Debug/Display are redacted.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where log lines go (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when stderr is the journal (JOURNAL_STREAM), else text.
    Auto,
    Text,
    Json,
    Journald,
}

fn filter() -> EnvFilter {
    let spec = std::env::var("RULEKEEPER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("rulekeeper: ignoring invalid log filter `{spec}`: {e}");
        EnvFilter::new("info")
    })
}

/// Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

pub fn init(format: LogFormat) {
    let want_journal = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        _ => false,
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    // Plain field names (TARGET_NAME=, OUTCOME=, ...), so operators can filter
                    // with `journalctl -u rulekeeper OUTCOME=rolled_back`.
                    .with(
                        layer
                            .with_field_prefix(None)
                            .with_syslog_identifier("rulekeeper".into()),
                    )
                    .try_init();
                return;
            }
            Err(e) => eprintln!("rulekeeper: journald unavailable ({e}); logging to stderr"),
        }
    }
    // Colour only for a person at a terminal: a file, a pipe or a container log gets plain
    // text, never escape codes.
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let reg = tracing_subscriber::registry().with(filter());
    let _ = if format == LogFormat::Json {
        reg.with(fmt.json()).try_init()
    } else {
        reg.with(fmt).try_init()
    };
}
