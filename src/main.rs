//! Command line: parse → config → run. Exit 0 ok, 64 bad usage or config, 70 runtime failure.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard::config::{self, Config, ConfigError};
use switchyard::demo::{self, DemoOptions, DemoProtocol};
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
    about = "High-performance L4/L7 proxy and load balancer",
    long_about = "High-performance L4/L7 proxy and load balancer.\n\n\
        Run with a config file (`switchyard run -c FILE`), check one (`switchyard check -c FILE`), \
        drive a running proxy (`switchyard ctl ...`), or start the Foo-compatible quick mode by \
        giving any quick-mode flag (`switchyard -listen :8002 -forward :8001`).",
    after_help = "Quick-mode flags take one dash or two (-listen or --listen), as the Foo proxy did.\n\
        Exit codes: 0 ok, 64 bad usage or config, 70 internal error.",
    arg_required_else_help = false
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Run with this config file (same as `switchyard run -c FILE`).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Quick mode: address to listen on [default: :8002].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Quick mode: backend address to forward to [default: :8001].
    #[arg(long, value_name = "ADDR")]
    forward: Option<String>,
    /// Quick mode: stats/health HTTP (admin API) address [default: 0.0.0.0:8088].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Quick mode: stats recovery file [default: .data/recovery.json].
    #[arg(long = "recovery-path", value_name = "FILE")]
    recovery_path: Option<String>,
    /// Quick mode: protocol of the listener: foo | tcp | http [default: foo].
    #[arg(long, value_name = "PROTOCOL")]
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
    /// Run the proxy with a config file (or the embedded quick-start config with --demo).
    Run {
        /// The TOML config file.
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
    /// Check a config file as `run` would: syntax, every field, the files and directories it
    /// opens, the addresses it binds. Prints every problem with its field path; exit 0 or 64.
    Check {
        /// The TOML config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Do not try the listener and admin addresses (for a config checked while the proxy
        /// it belongs to is running, e.g. before a reload).
        #[arg(long)]
        skip_bind: bool,
        /// Validate the config alone: no file, directory or address is looked at.
        #[arg(long)]
        config_only: bool,
    },
    /// The admin API from the command line (tables by default, --json for the API's JSON).
    Ctl(switchyard::ctl::CtlArgs),
    /// The FaaS gateway's quick mode: a FaaS listener on :PORT and Docker discovery.
    Faas {
        /// Listen on all interfaces at this port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin API address (default: off).
        #[arg(long)]
        http: Option<String>,
        /// Docker Engine socket (default /var/run/docker.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// A small, fast built-in backend (HTTP or Foo) for demos, tests and benchmarks.
    DemoBackend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001", value_name = "ADDR")]
        listen: SocketAddr,
        /// What to speak: http (/, /echo, /health, /api/v1/...) or foo (REQ n -> ACK n).
        #[arg(long, value_enum, default_value_t = DemoProto::Http)]
        protocol: DemoProto,
        /// Identity returned by `GET /` (default: the listen address).
        #[arg(long)]
        id: Option<String>,
        /// Worker threads; 0 = one per core.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Print the version, git commit, compiler and target of this build.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (switchyard.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
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
        Err(errs) => report(&config::with_file(errs, &path.display().to_string())),
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
        Some(Cmd::Check {
            config,
            skip_bind,
            config_only,
        }) => match load(&config) {
            Ok(_) if config_only => {
                println!("ok: {}", config.display());
                ExitCode::SUCCESS
            }
            Ok(cfg) => {
                let mut cfg = cfg;
                let mut problems = switchyard::check::tls(&cfg);
                if skip_bind {
                    cfg.listeners.clear();
                    cfg.server.admin = None;
                }
                problems.extend(switchyard::check::environment(&cfg));
                if !problems.is_empty() {
                    return report(&problems);
                }
                for n in switchyard::check::notes(&cfg) {
                    eprintln!("note: {n}");
                }
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
        Some(Cmd::Version) => {
            print!("{}", switchyard::build_info::long());
            ExitCode::SUCCESS
        }
        Some(Cmd::Completions { shell }) => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "switchyard", &mut script);
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            ExitCode::SUCCESS
        }
        Some(Cmd::Manpages { dir }) => match write_manpages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                ExitCode::from(EXIT_INTERNAL)
            }
        },
        Some(Cmd::Faas { port, http, socket }) => {
            match quick::faas_doc(port, http.as_deref(), socket.as_deref()) {
                Ok(doc) => serve(doc, None, StatsConfig::default()),
                Err(errs) => report(&errs),
            }
        }
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
            match demo::run(opts) {
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
            if !quick.any() {
                // Bare `switchyard`: nothing says what to run. Quick mode needs one of its flags.
                let _ = Cli::command().write_long_help(&mut std::io::stderr());
                return ExitCode::from(EXIT_USAGE);
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
    let q = match dsu::quick(&text, &shown, level.and_then(dsu::log_level)) {
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
            if let Err(e) = demo::run(opts) {
                log::error!("demo backend {listen}: {e}");
            }
        });
    }
    serve(doc, None, StatsConfig::default())
}

/// `switchyard manpages DIR`: switchyard.1 plus switchyard-<verb>.1 for every visible
/// subcommand, generated from the same definition that parses the arguments.
fn write_manpages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}
