//! Command line: parse → config → run. Exit 0 ok, 64 bad usage or config, 70 runtime failure.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard::config::{self, Config, ConfigError};
use switchyard::demo_backend::{self, DemoOptions, DemoProtocol};
use switchyard::quick::{self, QuickArgs};
use switchyard::stats::StatsConfig;
use switchyard::{control, logging, server};

const EXIT_USAGE: u8 = 64;
const EXIT_INTERNAL: u8 = 70;
const QUICKSTART: &str = include_str!("../examples/quickstart.toml");
const QUICKSTART_BACKENDS: [&str; 2] = ["127.0.0.1:9001", "127.0.0.1:9002"];

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "High-performance L4/L7 proxy and load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Run with this config file (same as `switchyard run -c FILE`).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Quick mode: listen address (Foo proxy compatible; default :8002).
    #[arg(long)]
    listen: Option<String>,
    /// Quick mode: backend address (default :8001).
    #[arg(long)]
    forward: Option<String>,
    /// Quick mode: stats/health HTTP address (default 0.0.0.0:8088).
    #[arg(long)]
    http: Option<String>,
    /// Quick mode: stats recovery file (default .data/recovery.json).
    #[arg(long = "recovery-path")]
    recovery_path: Option<String>,
    /// Quick mode: tcp | foo.
    #[arg(long)]
    protocol: Option<String>,
    /// DSU quick mode: the dynamic-software-update proxy's config.json (its REST API runs on
    /// configService.port).
    #[arg(long = "configFile", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// DSU quick mode: CRITICAL, ERROR, WARNING, NOTICE, INFO or DEBUG (default INFO).
    #[arg(long = "logLevel", value_name = "LEVEL", requires = "config_file")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy with a config file.
    Run {
        #[arg(
            short = 'c',
            long = "config",
            value_name = "FILE",
            required_unless_present = "demo"
        )]
        config: Option<PathBuf>,
        /// Run the embedded quick-start config with its two demo backends.
        #[arg(long, conflicts_with = "config")]
        demo: bool,
    },
    /// Validate a config file: print every error with its field path; exit 0 or 64.
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// The admin API from the command line (tables by default, --json for the API's JSON).
    Ctl(switchyard::ctl::CtlArgs),
    /// A small, fast built-in backend (HTTP or Foo) for demos, tests and benchmarks.
    DemoBackend {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = DemoProto::Http)]
        protocol: DemoProto,
        /// Identity returned by `GET /` (default: the listen address).
        #[arg(long)]
        id: Option<String>,
        /// Worker threads; 0 = one per core.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DemoProto {
    Http,
    Foo,
}

fn report(errs: &[ConfigError]) -> ExitCode {
    for e in errs {
        eprintln!("error: {e}");
    }
    ExitCode::from(EXIT_USAGE)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load_file(path).map_err(|errs| report(&errs))
}

/// Validates a raw document, merges it with the persisted runtime state and runs it.
fn serve(doc: toml::Table, path: Option<PathBuf>, stats: StatsConfig) -> ExitCode {
    let boot = match control::boot(doc) {
        Ok(b) => b,
        Err(errs) => return report(&errs),
    };
    match server::run(boot, path, stats) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// `run -c FILE`: the file's document (every error reported at once, exit 64).
fn serve_file(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return report(&[ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }])
        }
    };
    match config::parse_toml(&text) {
        Ok(doc) => serve(doc, Some(path.to_path_buf()), StatsConfig::default()),
        Err(mut errs) => {
            for e in &mut errs {
                if e.path.is_empty() {
                    e.path = path.display().to_string();
                }
            }
            report(&errs)
        }
    }
}

fn main() -> ExitCode {
    let args = quick::normalize_args(std::env::args());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init();
    let quick = QuickArgs {
        listen: cli.listen,
        forward: cli.forward,
        http: cli.http,
        recovery_path: cli.recovery_path,
        protocol: cli.protocol,
    };
    if let Some(path) = cli.config_file {
        if cli.cmd.is_some() || quick.any() || cli.config.is_some() {
            eprintln!("error: -configFile runs the DSU quick mode; it takes only -logLevel");
            return ExitCode::from(EXIT_USAGE);
        }
        return serve_dsu(&path, cli.log_level.as_deref());
    }
    match cli.cmd {
        Some(_) if quick.any() || cli.config.is_some() => {
            eprintln!("error: quick-mode flags and -c go before no subcommand; use either");
            ExitCode::from(EXIT_USAGE)
        }
        Some(Cmd::Check { config }) => match load(&config) {
            Ok(_) => {
                println!("ok: {}", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Cmd::Run {
            config: Some(path), ..
        }) => serve_file(&path),
        Some(Cmd::Run { config: None, .. }) => run_demo(),
        Some(Cmd::Ctl(args)) => ExitCode::from(switchyard::ctl::run(args)),
        Some(Cmd::DemoBackend {
            listen,
            protocol,
            id,
            workers,
        }) => {
            let opts = DemoOptions {
                listen,
                protocol: match protocol {
                    DemoProto::Http => DemoProtocol::Http,
                    DemoProto::Foo => DemoProtocol::Foo,
                },
                id: id.unwrap_or_else(|| listen.to_string()),
                workers,
            };
            match demo_backend::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("demo-backend: {e}");
                    ExitCode::from(EXIT_INTERNAL)
                }
            }
        }
        None => {
            if let Some(path) = cli.config {
                if quick.any() {
                    eprintln!("error: -c and quick-mode flags cannot be combined");
                    return ExitCode::from(EXIT_USAGE);
                }
                return serve_file(&path);
            }
            match quick.to_doc() {
                Ok(doc) => serve(doc, None, quick.stats_config()),
                Err(errs) => report(&errs),
            }
        }
    }
}

/// `switchyard -configFile config.json [-logLevel L]`: the dynamic-software-update proxy's
/// config file, its REST API on `configService.port`.
fn serve_dsu(path: &Path, level: Option<&str>) -> ExitCode {
    use switchyard::release::dsu;
    let shown = path.display().to_string();
    if let Some(l) = level {
        match dsu::log_level(l) {
            Some(f) => log::set_max_level(f),
            None => {
                eprintln!(
                    "error: -logLevel: unknown level {l:?} (CRITICAL, ERROR, WARNING, NOTICE, INFO or DEBUG)"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return report(&[ConfigError {
                path: shown,
                message: format!("cannot read: {e}"),
            }])
        }
    };
    let q = match dsu::quick(&text, &shown) {
        Ok(q) => q,
        Err(errs) => return report(&errs),
    };
    for w in &q.warnings {
        log::warn!("{w}");
    }
    let boot = match control::boot(q.doc) {
        Ok(b) => b,
        Err(errs) => return report(&errs),
    };
    let api: std::sync::Arc<dyn switchyard::admin::Extension> = std::sync::Arc::new(q.api);
    match server::run_with(boot, None, StatsConfig::default(), vec![api]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// `switchyard run --demo`: the embedded quick-start config plus its two demo backends.
fn run_demo() -> ExitCode {
    let doc = match config::parse_toml(QUICKSTART) {
        Ok(d) => d,
        Err(errs) => return report(&errs),
    };
    for (i, addr) in QUICKSTART_BACKENDS.iter().enumerate() {
        let Ok(listen) = addr.parse() else {
            return ExitCode::from(EXIT_INTERNAL);
        };
        let opts = DemoOptions {
            listen,
            protocol: DemoProtocol::Http,
            id: format!("demo-backend-{}", i + 1),
            workers: 1,
        };
        std::thread::spawn(move || {
            if let Err(e) = demo_backend::run(opts) {
                log::error!("demo backend {listen}: {e}");
            }
        });
    }
    serve(doc, None, StatsConfig::default())
}
