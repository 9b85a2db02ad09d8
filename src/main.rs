//! The `cuvisor` command line: `run` (the supervisor), `check`, `status`, `exec` (one
//! program under the shim) and `ledger` (the per-model ledgers). The work is done by the
//! library; this file parses arguments and prints.

use clap::{Args, Parser, Subcommand};
use cuvisor::cli::control;
use cuvisor::ledger::{self, CreateOptions, LedgerFile, Snapshot};
use cuvisor::size::{QuotaSpec, format_bytes as human, parse_quota, quota_text};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cuvisor", version, about = "Run many AI models on one GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the models of a configuration file, in the foreground, until SIGTERM or SIGINT.
    Run {
        /// The configuration file (TOML).
        config: PathBuf,
        /// The shim [default: the config's `shim`, else $CUVISOR_SHIM, else
        /// libcuvisor_preload.so next to this binary].
        #[arg(long, value_name = "PATH")]
        shim: Option<PathBuf>,
    },
    /// Show the models of a running supervisor.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start every instance of a model that is not running (at once, whatever its
    /// backoff).
    Start(ModelArgs),
    /// Stop every instance of a model (SIGTERM, SIGKILL after the grace period); it is
    /// not restarted until started.
    Stop(ModelArgs),
    /// Stop every instance of a model and start it again.
    Restart(ModelArgs),
    /// Hibernate a model of a running supervisor: its processes move their GPU memory to
    /// the host. Returns when every process has acknowledged.
    Hibernate(PowerArgs),
    /// Wake a hibernated model: its processes move their memory back to their GPUs.
    Wake(PowerArgs),
    /// Print a model's recent output (its workers' lines, kept by the supervisor).
    Logs {
        /// The model (its name or one of its aliases).
        model: String,
        /// Then print each new line as it comes, until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// One instance's lines only.
        #[arg(long, value_name = "N")]
        instance: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Change a running model's settings, live: its GPU memory quota, on every GPU it
    /// uses, from its processes' next allocation. Until the supervisor restarts.
    Set(SetArgs),
    /// Read the running supervisor's configuration file again and apply what changed:
    /// models unchanged keep running, added ones start, removed ones drain and stop,
    /// changed ones are replaced by rolling instances, a quota alone changes live. If the
    /// file fails its check, nothing changes. (SIGHUP to the supervisor does the same.)
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Check a configuration file without starting anything.
    Check {
        /// The configuration file (TOML).
        config: PathBuf,
    },
    /// Run one program under the shim with a model's quota (and optional host limits).
    Exec(ExecArgs),
    /// List the models of a ledger directory, or manage their ledgers.
    Ledger(LedgerArgs),
    /// The models' Python environments.
    #[command(subcommand)]
    Env(EnvAction),
    /// Print the path of the shim, for LD_PRELOAD=$(cuvisor shim-path): $CUVISOR_SHIM, else
    /// libcuvisor_preload.so beside this binary (as `pip install cuvisor` places it).
    ShimPath,
}

#[derive(Subcommand)]
enum EnvAction {
    /// Build every model's Python environment now (`cuvisor run` builds them before a
    /// model's first start otherwise).
    Build {
        /// The configuration file (TOML).
        config: PathBuf,
    },
}

/// Which running supervisor to ask.
#[derive(Args)]
struct Target {
    /// Its control socket [default: $CUVISOR_SOCKET, else the socket of --config's
    /// file, else /run/cuvisor/control.sock].
    #[arg(long, value_name = "PATH", env = "CUVISOR_SOCKET")]
    socket: Option<PathBuf>,
    /// Its configuration file, for its socket.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Target {
    fn socket(self) -> Result<PathBuf, ExitCode> {
        cuvisor::cli::control::socket(self.socket, self.config.as_deref()).map_err(|e| {
            eprintln!("{e}");
            ExitCode::FAILURE
        })
    }
}

#[derive(Args)]
struct ModelArgs {
    /// The model (its name or one of its aliases).
    model: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct PowerArgs {
    /// The model (its name or one of its aliases).
    model: String,
    #[command(flatten)]
    target: Target,
    /// Print the supervisor's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SetArgs {
    /// The model (its name or one of its aliases).
    model: String,
    /// The new quota on each GPU: a size (`12GiB`) or a percentage of each GPU (`50%`).
    /// Lowered below what the model uses, its allocations are refused until usage falls
    /// under it.
    #[arg(long, value_name = "QUOTA")]
    quota: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct ExecArgs {
    /// The model the program belongs to (the key of its shared quota).
    #[arg(long, default_value = "default")]
    model: String,
    /// The model's GPU memory quota (must agree with its ledger, if it has one).
    #[arg(long, value_parser = parse_quota_arg)]
    quota: Option<QuotaSpec>,
    /// managed, device or off.
    #[arg(long, default_value = "managed", value_parser = parse_mode_arg)]
    mode: cuvisor::contract::Mode,
    /// Host memory limit (cgroup), e.g. 32GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    mem_limit: Option<u64>,
    /// CPU limit in cores (cgroup), e.g. 2.5.
    #[arg(long, value_name = "CORES")]
    cpu_limit: Option<f64>,
    /// Process limit (cgroup).
    #[arg(long, value_name = "N")]
    pids_limit: Option<u64>,
    /// The shim [default: $CUVISOR_SHIM, else libcuvisor_preload.so next to this binary].
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// The program's processes carry out `cuvisor ledger hibernate` and `wake` (each has
    /// a thread for them).
    #[arg(long)]
    hibernate: bool,
    #[command(flatten)]
    common: Common,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_mode_arg(s: &str) -> Result<cuvisor::contract::Mode, String> {
    cuvisor::contract::Mode::parse(s).ok_or_else(|| cuvisor::contract::Mode::FORMS.to_owned())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    match cuvisor::size::parse_size(s) {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(b) => Ok(b),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Args)]
struct LedgerArgs {
    #[command(subcommand)]
    action: Option<LedgerAction>,
    #[command(flatten)]
    common: Common,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct Common {
    /// The ledger directory [default: $CUVISOR_LEDGER_DIR, else /dev/shm/cuvisor for root, /dev/shm/cuvisor-UID for others]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Create a model's ledger with its quota (before its first process starts).
    Create {
        /// The model's name (letters, digits, '.', '_', '-').
        #[arg(long)]
        model: String,
        /// The model's GPU memory quota: bytes, K/M/G/T, KiB..TiB, KB..TB, or NN% of the device.
        #[arg(long, value_parser = parse_quota_arg)]
        quota: Option<QuotaSpec>,
        /// Share the ledger with this numeric group id (mode 0660), for workers running as another user.
        #[arg(long, value_name = "GID")]
        group: Option<u32>,
    },
    /// Change an existing ledger's quota, live (a model run without `cuvisor run`; under
    /// it, use `cuvisor set MODEL --quota`): on every GPU the model uses, from its
    /// processes' next allocation.
    Quota {
        #[arg(long)]
        model: String,
        /// The new quota: bytes, K/M/G/T, KiB..TiB, KB..TB, or NN% of each GPU.
        #[arg(long, value_parser = parse_quota_arg)]
        quota: QuotaSpec,
    },
    /// Give back what dead processes held.
    Reclaim {
        /// Only this model [default: every model of the directory].
        #[arg(long)]
        model: Option<String>,
    },
    /// Ask a model's processes (started with CUVISOR_HIBERNATE=on, as `cuvisor run` and
    /// `cuvisor exec --hibernate` do) to move their GPU memory to the host; returns when
    /// each has acknowledged. Under `cuvisor run`, use `cuvisor hibernate` instead.
    Hibernate(LedgerPowerArgs),
    /// Ask a hibernated model's processes to move their memory back to their GPUs.
    Wake(LedgerPowerArgs),
}

#[derive(Args)]
struct LedgerPowerArgs {
    #[arg(long)]
    model: String,
    /// How long to wait for every process's acknowledgement.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    timeout: std::time::Duration,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    cuvisor::config::parse_duration(s).ok_or_else(|| cuvisor::config::DURATION_FORMS.to_owned())
}

fn parse_quota_arg(s: &str) -> Result<QuotaSpec, String> {
    parse_quota(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `run` logs as its configuration says, once it has read it.
        cuvisor::log::init(Default::default(), false);
    }
    match cli.command {
        Command::Run { config, shim } => run_command(&config, shim),
        Command::Status { target, json } => match target.socket() {
            Ok(socket) => control::status(&socket, json),
            Err(code) => code,
        },
        Command::Logs {
            model,
            follow,
            instance,
            target,
        } => match target.socket() {
            Ok(socket) => control::logs(&socket, &model, instance, follow),
            Err(code) => code,
        },
        Command::Start(a) => lifecycle(a, "start"),
        Command::Stop(a) => lifecycle(a, "stop"),
        Command::Restart(a) => lifecycle(a, "restart"),
        Command::Hibernate(a) => power(a, "hibernate"),
        Command::Wake(a) => power(a, "wake"),
        Command::Set(a) => match a.target.socket() {
            Ok(socket) => control::set_quota(&socket, &a.model, &a.quota),
            Err(code) => code,
        },
        Command::Reload { target } => match target.socket() {
            Ok(socket) => control::reload(&socket),
            Err(code) => code,
        },
        Command::Check { config } => cuvisor::cli::check::check(&config),
        Command::Exec(args) => exec_command(args),
        Command::Ledger(args) => ledger_command(args),
        Command::Env(EnvAction::Build { config }) => env_build(&config),
        Command::ShimPath => shim_path(),
    }
}

fn lifecycle(a: ModelArgs, action: &str) -> ExitCode {
    match a.target.socket() {
        Ok(socket) => control::lifecycle(&socket, &a.model, action),
        Err(code) => code,
    }
}

fn power(a: PowerArgs, action: &str) -> ExitCode {
    match a.target.socket() {
        Ok(socket) => control::power(&socket, &a.model, action, a.json),
        Err(code) => code,
    }
}

fn run_command(path: &std::path::Path, shim: Option<PathBuf>) -> ExitCode {
    let config = match cuvisor::config::Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let s = &config.supervisor;
    cuvisor::log::init(s.log_level, s.log_json);
    let shim = shim
        .or_else(|| config.supervisor.shim.clone())
        .or_else(|| std::env::var_os("CUVISOR_SHIM").map(PathBuf::from))
        .or_else(cuvisor::exec::default_shim);
    let Some(shim) = shim.filter(|p| p.is_file()) else {
        eprintln!(
            "cuvisor: libcuvisor_preload.so not found: set shim in [supervisor], pass --shim PATH or set CUVISOR_SHIM"
        );
        return ExitCode::FAILURE;
    };
    match cuvisor::run::run(config, shim) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("cuvisor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cuvisor shim-path`: where `cuvisor exec` finds the shim.
fn shim_path() -> ExitCode {
    let found = std::env::var_os("CUVISOR_SHIM")
        .map(PathBuf::from)
        .or_else(cuvisor::exec::default_shim)
        .filter(|p| p.is_file());
    match found {
        Some(p) => {
            println!("{}", std::fs::canonicalize(&p).unwrap_or(p).display());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "cuvisor: libcuvisor_preload.so not found beside this binary (nor in ../lib): \
                 set CUVISOR_SHIM"
            );
            ExitCode::FAILURE
        }
    }
}

/// `cuvisor env build`: each model's environment, or why it cannot be built.
fn env_build(path: &std::path::Path) -> ExitCode {
    let config = match cuvisor::config::Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let (hierarchy, cancel) = (
        cuvisor::cgroups::Hierarchy::None {
            why: "cuvisor env build sets no host limits".into(),
        },
        std::sync::atomic::AtomicBool::new(false),
    );
    for m in &config.models {
        let Some(spec) = &m.python else { continue };
        let progress = |line: &str| eprintln!("model {}: {line}", m.name);
        let sandbox = cuvisor::pyenv::Sandbox {
            hierarchy: &hierarchy,
            limits: Default::default(),
            hidden: cuvisor::pyenv::Sandbox::hidden(&config.supervisor),
            cancel: &cancel,
            progress: &progress,
        };
        match config.supervisor.envs.build(spec, true, &sandbox) {
            Ok(dir) => println!("model {}: {}", m.name, dir.display()),
            Err(e) => {
                eprintln!("cuvisor: model {}: {e}", m.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `cuvisor ledger hibernate` and `wake`: the request made here, on the ledger.
fn ledger_power(
    dir: &std::path::Path,
    args: &LedgerPowerArgs,
    hibernate: bool,
    as_json: bool,
) -> ExitCode {
    let result = ledger::power_and_read(dir, &args.model, hibernate, args.timeout);
    let report = cuvisor::status::PowerReport::from_result(&args.model, hibernate, result);
    control::print_power(&report, as_json)
}

fn exec_command(a: ExecArgs) -> ExitCode {
    let shim = a
        .shim
        .or_else(|| std::env::var_os("CUVISOR_SHIM").map(PathBuf::from))
        .or_else(cuvisor::exec::default_shim);
    let Some(shim) = shim.filter(|p| p.is_file()) else {
        eprintln!("cuvisor: libcuvisor_preload.so not found: pass --shim PATH or set CUVISOR_SHIM");
        return ExitCode::from(125);
    };
    let options = cuvisor::exec::ExecOptions {
        model: a.model,
        quota: a.quota,
        mode: a.mode,
        ledger_dir: ledger_dir(&a.common),
        shim,
        limits: cuvisor::cgroups::Limits {
            memory: a.mem_limit,
            cpu_cores: a.cpu_limit,
            pids: a.pids_limit,
            cpus: None,
            freeze: false,
        },
        hibernate: a.hibernate,
        command: a.command,
    };
    match cuvisor::exec::exec(options) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("cuvisor: {e}");
            ExitCode::from(125)
        }
    }
}

fn ledger_dir(common: &Common) -> PathBuf {
    common
        .dir
        .clone()
        .or_else(|| std::env::var_os("CUVISOR_LEDGER_DIR").map(PathBuf::from))
        .unwrap_or_else(ledger::default_dir)
}

fn ledger_command(args: LedgerArgs) -> ExitCode {
    let dir = ledger_dir(&args.common);
    let result = match args.action {
        None => list(&dir, args.json),
        Some(LedgerAction::Create {
            model,
            quota,
            group,
        }) => create(&dir, &model, quota, group, args.json),
        Some(LedgerAction::Quota { model, quota }) => {
            ledger::set_quota_isolated(&dir, &model, Some(quota))
                .map(|was| {
                    println!(
                        "model {model}: quota {} (was {})",
                        quota_text(Some(quota)),
                        quota_text(was)
                    );
                    ExitCode::SUCCESS
                })
                .map_err(|e| e.to_string())
        }
        Some(LedgerAction::Reclaim { model }) => reclaim(&dir, model.as_deref(), args.json),
        Some(LedgerAction::Hibernate(p)) => Ok(ledger_power(&dir, &p, true, args.json)),
        Some(LedgerAction::Wake(p)) => Ok(ledger_power(&dir, &p, false, args.json)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cuvisor: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The quota as written in the ledger: the limit on each GPU the model uses.
fn quota_json(quota: Option<QuotaSpec>) -> serde_json::Value {
    match quota {
        None => serde_json::Value::Null,
        Some(QuotaSpec::Bytes(b)) => json!({ "bytes": b }),
        Some(QuotaSpec::Percent(p)) => json!({ "percent": p }),
    }
}

/// The GPUs a model has met, each with its quota resolved in bytes.
fn gpus_json(s: &Snapshot) -> serde_json::Value {
    s.gpus
        .iter()
        .map(|g| {
            json!({
                "uuid": g.uuid.to_string(), "quota_bytes": g.quota_bytes,
                "physical": g.physical, "used": g.used, "peak": g.peak, "refused": g.refused,
            })
        })
        .collect()
}

fn list(dir: &std::path::Path, as_json: bool) -> Result<ExitCode, String> {
    let models = ledger::list(dir).map_err(|e| e.to_string())?;
    let host_pids = ledger::HostPids::scan();
    let mut failed = false;
    if as_json {
        let rows: Vec<serde_json::Value> = models
            .iter()
            .map(|(model, snap)| match snap {
                Ok(s) => json!({
                    "model": model,
                    "quota": quota_json(s.quota),
                    "used": s.used,
                    "uncertain": s.uncertain,
                    "refused": s.refused,
                    "gpus": gpus_json(s),
                    "processes": s.processes.iter().map(|p| json!({
                        "pid": host_pids.of(p),
                        "pid_in_namespace": p.pid, "slot": p.slot, "start_time": p.start_time,
                        "used": p.used, "alive": p.alive,
                        "gpus": p.gpus.iter().map(|g| json!({
                            "uuid": g.gpu.to_string(), "used": g.used, "peak": g.peak,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => {
                    failed = true;
                    json!({ "model": model, "error": e.to_string() })
                }
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "dir": dir, "models": rows })).expect("JSON")
        );
    } else if models.is_empty() {
        println!("no ledgers in {}", dir.display());
    } else {
        println!(
            "{:<24} {:>18} {:>12} {:>12} {:>12} {:>6} {:>6}  PIDS",
            "MODEL", "QUOTA", "USED", "REFUSED", "UNCERTAIN", "LIVE", "DEAD"
        );
        for (model, snap) in &models {
            match snap {
                Ok(s) => {
                    let live = s.processes.iter().filter(|p| p.alive).count();
                    // Pids as this namespace sees them; `?` for one it cannot see.
                    let pids: Vec<String> = s
                        .processes
                        .iter()
                        .map(|p| {
                            host_pids
                                .of(p)
                                .map_or_else(|| format!("?{}", p.pid), |pid| pid.to_string())
                        })
                        .collect();
                    println!(
                        "{model:<24} {:>18} {:>12} {:>12} {:>12} {live:>6} {:>6}  {}",
                        quota_text(s.quota),
                        human(s.used),
                        s.refused,
                        human(s.uncertain),
                        s.processes.len() - live,
                        pids.join(",")
                    );
                    for g in &s.gpus {
                        println!(
                            "  {:<40} quota {:>12}  used {:>12}  peak {:>12}  refused {}",
                            g.uuid.to_string(),
                            g.quota_bytes.map_or("none".into(), human),
                            human(g.used),
                            human(g.peak),
                            g.refused
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    println!("{model:<24} error: {e}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn create(
    dir: &std::path::Path,
    model: &str,
    quota: Option<QuotaSpec>,
    group: Option<u32>,
    as_json: bool,
) -> Result<ExitCode, String> {
    let ledger = LedgerFile::create(dir, model, quota, CreateOptions { group })
        .map_err(|e| e.to_string())?;
    if as_json {
        println!(
            "{}",
            json!({ "model": model, "path": ledger.path(), "quota": quota_json(ledger.quota()) })
        );
    } else {
        println!(
            "created {} (quota: {})",
            ledger.path().display(),
            quota_text(ledger.quota())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reclaim(dir: &std::path::Path, only: Option<&str>, as_json: bool) -> Result<ExitCode, String> {
    let models: Vec<String> = match only {
        Some(m) => vec![m.to_owned()],
        None => ledger::list(dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(m, _)| m)
            .collect(),
    };
    let mut failed = false;
    let mut rows = Vec::new();
    for model in models {
        match ledger::reclaim_isolated(dir, &model).and_then(|r| {
            let used = ledger::read_snapshot(dir, &model)?.used;
            Ok((r, used))
        }) {
            Ok((r, used)) => {
                if as_json {
                    rows.push(json!({
                        "model": model, "slots": r.slots, "bytes": r.bytes, "uncertain": r.uncertain,
                        "healed": r.healed, "used": used,
                    }));
                } else {
                    println!(
                        "{model}: {} dead process(es), {} given back, {} uncertain{}; {} in use",
                        r.slots,
                        human(r.bytes),
                        human(r.uncertain),
                        if r.healed {
                            ", model idle: total reset"
                        } else {
                            ""
                        },
                        human(used)
                    );
                }
            }
            Err(e) => {
                failed = true;
                if as_json {
                    rows.push(json!({ "model": model, "error": e.to_string() }));
                } else {
                    eprintln!("cuvisor: {e}");
                }
            }
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "reclaimed": rows })).expect("JSON")
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
