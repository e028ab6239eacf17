//! The `flaghook` command: parse the CLI, load the config, run. Errors are printed with
//! their context and give a non-zero exit.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use flaghook::config::{self, parse_size};
use flaghook::receiver::{self, Check, Report};
use flaghook::sign::Scheme;
use flaghook::sink::webhook::Secret;
use flaghook::sink::SinkSpec;
use flaghook::telemetry::progress;
use flaghook::topology::Plan;
use flaghook::{reload, sign, topology};

#[derive(Parser)]
#[command(
    name = "flaghook",
    version,
    about = "Delivers GO Feature Flag evaluation events from log pipelines to signed webhooks"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG is used when this is not given.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Time, level, target, message and fields.
    Text,
    /// One JSON object per line.
    Json,
    /// For systemd's journal: each line starts with its syslog priority (`<3>` error,
    /// `<4>` warn, `<6>` info, `<7>` debug), without a time (the journal adds it).
    Journald,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines of a config until SIGINT/SIGTERM (or, with --once, until the input ends).
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Read files to their end and stdin to EOF, deliver everything, print a summary
        /// and exit: 0 all delivered, 2 some input rejected, 3 some events not delivered.
        #[arg(long)]
        once: bool,
        /// Reload the config when the file changes, as on SIGHUP.
        #[arg(long, conflicts_with = "once")]
        watch_config: bool,
    },
    /// Check a config (every check `run` does before it starts) and print its topology.
    Validate {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The quick start: run pipelines/quickstart.toml against a built-in receiver.
    Demo,
    /// A webhook receiver for trying a setup: prints one JSON line per request, starting
    /// with the status it answered ({"status":200,"events":..} or {"status":413,"error":..}).
    Receive {
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: SocketAddr,
        /// Name of the environment variable holding the secret to verify signatures with;
        /// a request whose signature does not verify is answered 401.
        #[arg(long)]
        secret_env: Option<String>,
        #[command(flatten)]
        scheme: SchemeArgs,
        #[command(flatten)]
        limits: ReceiveLimits,
    },
    /// Work with dead letters (`data_dir/dead-letter/<sink>.jsonl`).
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Print the X-Hub-Signature-256 value of FILE (or stdin).
    Sign {
        /// Name of the environment variable holding the secret.
        #[arg(long)]
        secret_env: String,
        /// The body to sign; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Exit 0 when SIG is the signature of FILE (or stdin), 1 when not (or, for Standard
    /// Webhooks, when its timestamp is outside the tolerance).
    Verify {
        /// Name of the environment variable holding the secret (for standard-webhooks:
        /// whsec_ and the key in base64).
        #[arg(long)]
        secret_env: String,
        /// The signature, as sent in X-Hub-Signature-256 (sha256=...) or, for
        /// standard-webhooks, in webhook-signature (v1,...).
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        scheme: SchemeArgs,
        /// standard-webhooks: the request's webhook-id.
        #[arg(long, required_if_eq("scheme", "standard-webhooks"))]
        id: Option<String>,
        /// standard-webhooks: the request's webhook-timestamp (Unix seconds).
        #[arg(long, required_if_eq("scheme", "standard-webhooks"))]
        timestamp: Option<String>,
        /// The body to check, exactly as received (still compressed, if it was); stdin
        /// when absent.
        file: Option<PathBuf>,
    },
}

/// Which signature `receive` and `verify` check.
#[derive(Args)]
struct SchemeArgs {
    /// hub (X-Hub-Signature-256, GO Feature Flag's) or standard-webhooks (webhook-id,
    /// webhook-timestamp, webhook-signature; the secret is whsec_ and the key in base64).
    #[arg(long, value_name = "SCHEME", default_value = "hub", value_parser = parse_scheme)]
    scheme: Scheme,
    /// standard-webhooks: how far webhook-timestamp may be from now, either way (a replayed
    /// or delayed request is refused); at most 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    tolerance: Duration,
}

fn parse_scheme(text: &str) -> std::result::Result<Scheme, String> {
    text.parse()
}

/// What one client of `receive` may hold, so that it is safe to leave running.
#[derive(Args)]
struct ReceiveLimits {
    /// Largest request body, in bytes or with a unit (512KiB, 10MiB, 1GiB). A larger one
    /// gets 413: refused by its Content-Length before it is read, or as soon as the bytes
    /// read pass the limit, so no more than SIZE of a body is ever held in memory.
    #[arg(long, value_name = "SIZE", default_value = "10MiB", value_parser = parse_size)]
    max_body: u64,
    /// Time a client has to send a request's headers, from connecting or from the previous
    /// response (500ms, 10s, 1m; at most 1h); then the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in (at most 1h); then 408.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    body_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog until one
    /// closes.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
}

impl From<ReceiveLimits> for receiver::Limits {
    fn from(args: ReceiveLimits) -> Self {
        receiver::Limits {
            max_body: args.max_body,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            max_connections: args.max_connections as usize,
        }
    }
}

/// A duration above zero, written like 500ms, 10s or 1m.
fn parse_timeout(text: &str) -> std::result::Result<Duration, String> {
    // hyper adds the header timeout to an `Instant`: a huge one panicked every connection.
    const MAX: Duration = Duration::from_secs(3600);
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) if d > MAX => Err("must be at most 1h, e.g. 10s or 1m".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "invalid duration {text:?} ({e}); write it like 500ms, 10s or 1m"
        )),
    }
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Send a sink's dead letters again; delivered ones leave the file, the others stay
    /// with their reason. Exit 0 when all were delivered, 2 when some were rejected or
    /// skipped, 3 when some were not delivered (the endpoint kept failing, or SIGINT).
    /// Refused (exit 1) while a pipeline uses the same data_dir.
    Replay {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// The sink whose dead letters to send.
        #[arg(long)]
        sink: String,
    },
}

fn main() -> ExitCode {
    bound_allocator_growth();
    raise_open_files_limit();
    let cli = Cli::parse();
    if let Err(e) = init_logs(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("error: {e:#}");
        return ExitCode::from(1);
    }
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = format!("error: {e:#}\n");
            let mut stderr = std::io::stderr().lock();
            let _ = match cli.log_format {
                LogFormat::Journald => {
                    Prioritized::new(&mut stderr, b"<3>").write_all(message.as_bytes())
                }
                LogFormat::Text | LogFormat::Json => stderr.write_all(message.as_bytes()),
            };
            ExitCode::from(1)
        }
    }
}

/// A file source holds every file it tails open, and the sinks' connections, checkpoints
/// and journals need descriptors of their own. The soft limit is often 1024 (systemd's
/// default, a shell's) while the hard limit is far higher: a source with a thousand files
/// took every descriptor, and no request or checkpoint could be made again. As Go's runtime
/// does, the soft limit is raised to the hard limit; where that fails, the limit stays.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Request bodies and batches of large `max_event_in_memory` are megabytes each. glibc
/// would serve them from its heaps once the first was freed (its mmap threshold adapts
/// upwards) and keep the freed space, so memory grew with each batch size seen. A fixed
/// threshold returns such buffers to the system as soon as they are freed.
fn bound_allocator_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

fn init_logs(level: Option<&str>, format: LogFormat) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    // The NATS client's own lines repeat what flaghook logs of its connections.
    let default = || EnvFilter::new("info,async_nats=warn");
    let from_env = std::env::var_os("RUST_LOG").filter(|v| !v.is_empty());
    let mut env_ignored = false;
    let filter = match (level, from_env) {
        (Some(l), _) => log_filter(l).map_err(|why| {
            anyhow::anyhow!("--log-level {l:?} is not a level or filter ({why}); example: --log-level debug, or --log-level flaghook=trace")
        })?,
        // Often inherited from a shell or a unit set up for another program: one that is
        // not a filter flaghook reads is ignored, with a warning, not a reason to stop.
        (None, Some(v)) => match v.to_str().map(log_filter) {
            Some(Ok(filter)) => filter,
            _ => {
                env_ignored = true;
                default()
            }
        },
        (None, None) => default(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| {
            // `run --once`'s live line, if shown, goes before a log line does.
            let mut stderr = std::io::stderr();
            progress::clear_line(&mut stderr);
            stderr
        });
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
        LogFormat::Journald => builder
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_writer(Journald)
            .init(),
    }
    if env_ignored {
        // Neither its value nor the parser's words on it are shown: it comes from the
        // environment.
        tracing::warn!("RUST_LOG is not a level or filter (a bare word must be one of off, error, warn, info, debug and trace): ignored, logging at info; example: RUST_LOG=debug, or RUST_LOG=flaghook=trace, or --log-level");
    }
    Ok(())
}

/// The filter `--log-level` (or `RUST_LOG`) gives: a level, or `RUST_LOG`'s directives. A
/// bare word is a level: to `EnvFilter` a word that is not one (`warnn`) is a target name,
/// which would turn every other line off, errors included, without a word. The error is
/// why, for the caller to name where the filter came from.
fn log_filter(level: &str) -> std::result::Result<tracing_subscriber::EnvFilter, String> {
    // Each directive is checked: `warnn,flaghook=debug` would filter on a target `warnn`.
    let bare_word = |part: &str| !part.contains(['=', '[', ':']);
    let is_level = |part: &str| {
        part.trim()
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
    };
    let parts = level.split(',').filter(|p| !p.trim().is_empty());
    if level.trim().is_empty() || parts.clone().any(|p| bare_word(p) && !is_level(p)) {
        return Err("levels are off, error, warn, info, debug and trace".to_owned());
    }
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())
}

/// Writes each log line to stderr behind its syslog priority, which journald reads
/// (`SyslogLevelPrefix=`, on by default) as the entry's level.
struct Journald;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Journald {
    type Writer = Prioritized<std::io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        Prioritized::new(std::io::stderr().lock(), b"<6>")
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        use tracing::Level;
        let priority: &'static [u8] = match *meta.level() {
            Level::ERROR => b"<3>",
            Level::WARN => b"<4>",
            Level::INFO => b"<6>",
            Level::DEBUG | Level::TRACE => b"<7>",
        };
        // The lock is held until the message is written: no other line comes between.
        Prioritized::new(std::io::stderr().lock(), priority)
    }
}

/// Puts `priority` before every line written through it. journald makes each line of a
/// stream an entry of its own, so a message of several lines (a config error with its
/// example, a quoted response body) needs the priority on each, or its other lines become
/// entries of the default priority.
struct Prioritized<W> {
    inner: W,
    priority: &'static [u8],
    at_line_start: bool,
}

impl<W: std::io::Write> Prioritized<W> {
    fn new(inner: W, priority: &'static [u8]) -> Self {
        Prioritized {
            inner,
            priority,
            at_line_start: true,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Prioritized<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(self.priority)?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A SIGHUP asks `run` to reload its config; its default action would end the process.
/// Ignored from the start, so that one that comes while the config loads and the pipelines
/// start, or during `run --once` (which does not reload), ends nothing. The reload handler,
/// installed once the pipelines run, takes it over.
fn ignore_hangup() {
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread of ours exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

fn dispatch(command: Command) -> Result<u8> {
    match command {
        // The plan is built before the runtime starts: it resolves addresses, which blocks.
        Command::Run {
            config,
            once,
            watch_config,
        } => {
            ignore_hangup();
            let plan = Plan::load(&config)?;
            block_on(run(plan, reload::Options { once, watch_config }))
        }
        Command::Validate { config } => {
            print!("{}", Plan::load(&config)?.summary());
            Ok(0)
        }
        Command::Demo => demo(),
        Command::DeadLetter(DeadLetterCommand::Replay { config, sink }) => {
            let plan = Plan::load(&config)?;
            block_on(replay(plan, &config, &sink))
        }
        Command::Receive {
            listen,
            secret_env,
            scheme,
            limits,
        } => {
            let check = secret_env
                .as_deref()
                .map(|name| check_from_env(name, &scheme))
                .transpose()?;
            block_on(receive(listen, check, limits.into()))
        }
        Command::Sign { secret_env, file } => {
            let secret = secret_from_env(&secret_env)?;
            println!(
                "{}",
                sign::signature(secret.expose(), &read_input(file.as_deref())?)
            );
            Ok(0)
        }
        Command::Verify {
            secret_env,
            signature,
            scheme,
            id,
            timestamp,
            file,
        } => {
            let check = check_from_env(&secret_env, &scheme)?;
            let body = read_input(file.as_deref())?;
            let verdict = match check.scheme {
                Scheme::Hub if sign::verify(check.key.expose(), &body, &signature) => Ok(()),
                Scheme::Hub => Err("the signature does not match this body and secret".into()),
                Scheme::StandardWebhooks => {
                    let headers = sign::StandardHeaders {
                        id: id.as_deref().unwrap_or_default(),
                        timestamp: timestamp.as_deref().unwrap_or_default(),
                        signature: &signature,
                    };
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs();
                    sign::verify_standard(check.key.expose(), headers, &body, now, check.tolerance)
                        .map_err(|rejected| rejected.to_string())
                }
            };
            match verdict {
                Ok(()) => {
                    println!("ok");
                    Ok(0)
                }
                Err(why) => {
                    eprintln!("mismatch: {why}");
                    Ok(1)
                }
            }
        }
    }
}

/// How to check signatures, with the secret in the environment variable `name`: for
/// Standard Webhooks, its `whsec_` form decoded (the error says what is wrong with it,
/// never what it holds).
fn check_from_env(name: &str, args: &SchemeArgs) -> Result<Check> {
    let secret = secret_from_env(name)?;
    let key = match args.scheme {
        Scheme::Hub => secret,
        Scheme::StandardWebhooks => match sign::standard_key(secret.expose()) {
            Ok(key) => Secret::new(key),
            Err(why) => bail!("environment variable `{name}` (--secret-env) {why}: with --scheme standard-webhooks it holds whsec_ and the key in base64"),
        },
    };
    Ok(Check {
        scheme: args.scheme,
        key,
        tolerance: args.tolerance,
    })
}

/// Runs `job` on a multi-threaded runtime. A blocked read of stdin (tokio reads it on a
/// blocking thread) must not keep the process alive once the job is done.
fn block_on(job: impl std::future::Future<Output = Result<u8>>) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(job);
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// The secret in the environment variable `name`: its bytes as they are, so that a secret
/// that is not UTF-8 works too.
fn secret_from_env(name: &str) -> Result<Secret> {
    use std::os::unix::ffi::OsStringExt;
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => Ok(Secret::new(v.into_vec())),
        Some(_) => bail!("environment variable `{name}` (--secret-env) is empty"),
        None => bail!("environment variable `{name}` (--secret-env) is not set"),
    }
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>> {
    match file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Ok(buf)
        }
    }
}

/// Cancels `token` at the first SIGINT or SIGTERM, and logs `what_now`.
fn cancel_on_signal(token: CancellationToken, what_now: &'static str) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: {what_now}");
        token.cancel();
    });
    Ok(())
}

const PIPELINE_STOPS: &str = "sources stop, pending events are flushed";

async fn run(config: Plan, options: reload::Options) -> Result<u8> {
    let env = config.env.clone();
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone(), PIPELINE_STOPS)?;
    // A start-up error may name a value of the config (an address, data_dir).
    let summary = reload::run(config, options, shutdown)
        .await
        .map_err(|e| env.hide_error(&e))?;
    tracing::info!("{}", summary.line());
    println!("{}", summary.line());
    Ok(if options.once {
        summary.exit_code() as u8
    } else {
        0
    })
}

async fn replay(config: Plan, path: &Path, sink: &str) -> Result<u8> {
    if let Some(SinkSpec::Nats(_)) = config.sinks.get(sink) {
        bail!("`sinks.{sink}` is a nats sink: dead-letter replay sends to webhook sinks (its records can be replayed through a webhook sink's data_dir, or published again)");
    }
    let Some(SinkSpec::Webhook(webhook)) = config.sinks.get(sink) else {
        bail!(
            "no sink `{sink}` in {} (sinks: {})",
            path.display(),
            config.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let stop = CancellationToken::new();
    cancel_on_signal(
        stop.clone(),
        "no new request; records not delivered stay in the file",
    )?;
    let done = flaghook::sink::replay::replay(sink, webhook, &config.data_dir, stop)
        .await
        .map_err(|e| config.env.hide_error(&e))?;
    tracing::info!("{}", done.line());
    println!("{}", done.line());
    Ok(done.exit_code())
}

async fn receive(listen: SocketAddr, check: Option<Check>, limits: receiver::Limits) -> Result<u8> {
    let listener = receiver::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone(), PIPELINE_STOPS)?;
    let print =
        Arc::new(|r: Report| println!("{}", serde_json::to_string(&r).expect("serializable")));
    receiver::serve(listener, check, limits, print, shutdown).await;
    Ok(0)
}

const QUICKSTART: &str = include_str!("../pipelines/quickstart.toml");
const SAMPLE_NAME: &str = "flag-variation-quickstart.json";
const SAMPLE: &str = include_str!("../pipelines/samples/flag-variation-quickstart.json");

/// Runs the quick start pipeline, as shipped, against a receiver on a free loopback port.
fn demo() -> Result<u8> {
    let dir = std::env::temp_dir().join(format!("flaghook-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("samples"))?;
    std::fs::write(dir.join("samples").join(SAMPLE_NAME), SAMPLE)?;
    let config_path = dir.join("quickstart.toml");
    std::fs::write(&config_path, QUICKSTART)?;

    // The receiver's port is known before the config is read, so the config is pointed
    // at it as written input, and checked once like any other.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let mut loaded = config::load(&config_path)?;
    for table in loaded.sinks.values_mut() {
        table.insert("endpoint_url".into(), toml::Value::String(url.clone()));
        // The receiver is this process's: a proxy in the environment must not carry it.
        table.insert("proxy".into(), toml::Value::String("none".into()));
    }
    let plan = Plan::build(loaded)?;
    let check = plan.sinks.values().find_map(|sink| {
        let SinkSpec::Webhook(w) = sink else {
            return None;
        };
        let (scheme, key) = w.signing()?;
        Some(Check {
            scheme,
            key: key.clone(),
            tolerance: sign::DEFAULT_TOLERANCE,
        })
    });
    block_on(demo_run(plan, listener, url, check, dir))
}

async fn demo_run(
    config: Plan,
    listener: std::net::TcpListener,
    url: String,
    check: Option<Check>,
    dir: PathBuf,
) -> Result<u8> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    println!("flaghook demo: pipelines/quickstart.toml -> receiver at {url}");
    let got = Arc::new(Mutex::new(Vec::new()));
    let stop_receiver = CancellationToken::new();
    let record = got.clone();
    let on_request = Arc::new(move |r: Report| record.lock().expect("lock").push(r));
    let server = tokio::spawn(receiver::serve(
        listener,
        check,
        receiver::Limits::default(),
        on_request,
        stop_receiver.clone(),
    ));

    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone(), PIPELINE_STOPS)?;
    let summary = topology::run(config, true, shutdown).await?;
    stop_receiver.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);

    let got = got.lock().expect("lock");
    let mut received = Vec::new();
    for (i, report) in got.iter().enumerate() {
        match report {
            Report::Received(r) => {
                println!(
                    "request {}: {} events, {} bytes, signature {}, meta {}",
                    i + 1,
                    r.events,
                    r.bytes,
                    r.signature,
                    r.meta
                );
                received.push(r);
            }
            Report::Refused(refusal) => {
                println!(
                    "request {}: refused, {}: {refusal}",
                    i + 1,
                    refusal.status()
                )
            }
        }
    }
    if let Some(event) = received.first().and_then(|r| r.first_event.as_ref()) {
        println!("first event: {event}");
    }
    println!("{}", summary.line());
    let all_verified = !got.is_empty()
        && received.len() == got.len()
        && received.iter().all(|r| r.signature == "verified");
    let events: usize = received.iter().map(|r| r.events).sum();
    if !all_verified || summary.exit_code() != 0 || events as u64 != summary.events_delivered {
        return Err(anyhow!(
            "the demo did not deliver every event with a verified signature"
        ));
    }
    println!("every event delivered, every signature verified");
    Ok(0)
}
