//! Command line: parses flags and the profile, validates the Kubernetes settings, and
//! dispatches to [`crate::commands`] (`check`, `apply`, `restore`), [`crate::daemon`] (`run`)
//! or the gate's `cleanup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::{Agent, JournalSlot};
use crate::commands::{apply, check, dry_run, journal_failed, restore};
use crate::daemon::{DaemonError, KubeMode, LockUnavailable, WatchOptions};
pub use crate::exit::{Exit, Output};
use crate::journal::{self, Journal, JournalError, StateLock};
use crate::k8s::{ConditionType, GateError};
use crate::kernel::HostFs;
use crate::metrics::Metrics;
use crate::profile::{self, Profile};

/// `--lock-unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockPolicy {
    Run,
    Exit,
}

/// `status --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusOutput {
    /// An aligned table and a summary line (`text` is taken too).
    #[value(alias = "text")]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets, keeps and proves the kernel settings Redis needs: vm.overcommit_memory=1,
/// net.core.somaxconn>=2048, transparent hugepages never.
#[derive(Debug, Parser)]
#[command(name = "redis-node-tuner", version, about, max_term_width = 100)]
pub struct Cli {
    /// YAML profile applied over the built-in Redis profile (none: the built-in profile).
    #[arg(short, long, global = true, env = "REDIS_NODE_TUNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where procfs is mounted (a host mount in a container).
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,
    /// Where sysfs is mounted.
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_SYS_ROOT",
        default_value = "/sys"
    )]
    pub sys_root: PathBuf,
    /// The kubelet's pod log directory (`<ns>_<name>_<uid>/` per pod): names the pod of a Redis
    /// process, node-locally.
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_POD_LOGS_DIR",
        default_value = crate::procs::DEFAULT_POD_LOGS_DIR
    )]
    pub pod_logs_dir: PathBuf,
    /// Directory of the originals journal.
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_STATE_DIR",
        default_value = "/var/lib/redis-node-tuner"
    )]
    pub state_dir: PathBuf,
    /// Log format (logs go to stderr).
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// Kubernetes mode: kubeconfig to use (Kubernetes mode is also on inside a pod).
    #[arg(long, global = true, env = "REDIS_NODE_TUNER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the Node this agent runs on (default: $NODE_NAME).
    #[arg(long, global = true, env = "REDIS_NODE_TUNER_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubernetes mode: bound of every API request (e.g. 10s).
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_KUBE_TIMEOUT",
        default_value = "10s"
    )]
    pub kube_timeout: String,
    /// Kubernetes mode: type of the agent's Node condition, a qualified name (e.g.
    /// redis-node-tuner.io/KernelTuned for node-readiness-controller); `cleanup` removes this
    /// type, `status` reads it.
    #[arg(
        long,
        global = true,
        env = "REDIS_NODE_TUNER_CONDITION_TYPE",
        value_name = "TYPE",
        default_value = crate::k8s::CONDITION
    )]
    pub condition_type: ConditionType,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Audit the node against the profile; never writes.
    Check {
        /// Output format.
        #[arg(
            short,
            long,
            env = "REDIS_NODE_TUNER_OUTPUT",
            value_enum,
            default_value = "text"
        )]
        output: Output,
    },
    /// Record originals, write the enforce-mode settings, and verify them by read-back.
    Apply {
        /// Print what would change; write nothing.
        #[arg(long, env = "REDIS_NODE_TUNER_DRY_RUN")]
        dry_run: bool,
    },
    /// Write back every recorded original, then remove the journal.
    Restore,
    /// The daemon: keep the settings enforced, serve /metrics, /healthz, /readyz.
    Run {
        /// Address for /metrics, /healthz and /readyz ("" to serve nothing).
        #[arg(
            long,
            env = "REDIS_NODE_TUNER_LISTEN",
            default_value = "127.0.0.1:9977"
        )]
        listen: String,
        /// Loop interval, overriding the profile's (e.g. 1s, 500ms).
        #[arg(long, env = "REDIS_NODE_TUNER_INTERVAL")]
        interval: Option<String>,
        /// Effect of the not-ready taint: NoSchedule, PreferNoSchedule, NoExecute, or none.
        #[arg(
            long,
            env = "REDIS_NODE_TUNER_TAINT_EFFECT",
            default_value = "NoSchedule"
        )]
        taint_effect: String,
        /// How often the node condition is rewritten when nothing changes (e.g. 5m).
        #[arg(long, env = "REDIS_NODE_TUNER_HEARTBEAT", default_value = "5m")]
        heartbeat: String,
        /// The Node watch is renewed after about this long, and re-established when nothing
        /// arrives for this long plus --kube-timeout (e.g. 5m).
        #[arg(long, env = "REDIS_NODE_TUNER_WATCH_TIMEOUT", default_value = "5m")]
        watch_timeout: String,
        /// The agent's own Pod name, to prove host networking (default: $POD_NAME).
        #[arg(long, env = "REDIS_NODE_TUNER_POD_NAME")]
        pod_name: Option<String>,
        /// The agent's own Pod namespace (default: $POD_NAMESPACE).
        #[arg(long, env = "REDIS_NODE_TUNER_POD_NAMESPACE")]
        pod_namespace: Option<String>,
        /// Stay standalone even inside a pod.
        #[arg(long, env = "REDIS_NODE_TUNER_NO_KUBERNETES")]
        no_kubernetes: bool,
        /// The writer watch: off, observe or lock, overriding the profile's `writers`.
        #[arg(long, env = "REDIS_NODE_TUNER_WRITERS")]
        writers: Option<String>,
        /// The host's cgroup v2 root for the writer watch (default: the cgroup2 mount, unless
        /// the agent is in a cgroup namespace).
        #[arg(long, env = "REDIS_NODE_TUNER_CGROUP_ROOT")]
        cgroup_root: Option<PathBuf>,
        /// With writers lock: what to do when the kernel will not refuse writes (the sysctl
        /// program cannot load): run without the lock (saying so on the node, the metric and an
        /// event), or exit 8.
        #[arg(long, env = "REDIS_NODE_TUNER_LOCK_UNAVAILABLE", value_enum, default_value_t = LockPolicy::Run)]
        lock_unavailable: LockPolicy,
        /// /healthz and /readyz fail, and the node's condition turns Unknown (EnforceStalled),
        /// when no enforce pass has finished for this long (e.g. 30s; default: 3 intervals, at
        /// least 30s).
        #[arg(long, env = "REDIS_NODE_TUNER_STALL_TIMEOUT")]
        stall_timeout: Option<String>,
    },
    /// Remove the agent's label, taint, condition and annotations from a Node (for uninstall).
    Cleanup,
    /// The fleet view (with a kubeconfig): every Node the agent marks, one row each (ready or
    /// not, reason, drifted and contested knobs, last writer, agent version, heartbeat age),
    /// problems first; exit 10 when a node listed is not ready. Also `kubectl redis-node-tuner`.
    Status {
        /// Output format.
        #[arg(
            short,
            long,
            env = "REDIS_NODE_TUNER_OUTPUT",
            value_enum,
            default_value = "table"
        )]
        output: StatusOutput,
        /// Label selector passed to the API (e.g. pool=redis): every node it picks is listed,
        /// those without any mark of the agent as `unmarked` (the agent never ran there).
        #[arg(
            short = 'l',
            long,
            env = "REDIS_NODE_TUNER_SELECTOR",
            value_name = "SELECTOR"
        )]
        selector: Option<String>,
        /// List every node, those without any mark as `unmarked`.
        #[arg(long, env = "REDIS_NODE_TUNER_ALL_NODES")]
        all: bool,
        /// The agents' --heartbeat: a condition not rewritten for twice this long is stale.
        #[arg(long, env = "REDIS_NODE_TUNER_HEARTBEAT", default_value = "5m")]
        heartbeat: String,
        /// Nodes per page of the list (1..=5000).
        #[arg(
            long,
            env = "REDIS_NODE_TUNER_CHUNK_SIZE",
            default_value_t = crate::status::DEFAULT_CHUNK_SIZE,
            value_parser = clap::value_parser!(u32).range(1..=5000)
        )]
        chunk_size: u32,
    },
    /// Block until the kernel, as this process sees it, is what Redis needs (an init container
    /// of Redis pods: no privilege, no API access); exit 9 after --timeout.
    Wait {
        /// Redis's tcp-backlog: this network namespace's net.core.somaxconn must be at least it.
        #[arg(
            long,
            env = "REDIS_NODE_TUNER_TCP_BACKLOG",
            default_value_t = 511,
            value_parser = clap::value_parser!(u32).range(1..=2_147_483_647)
        )]
        tcp_backlog: u32,
        /// Give up after this long (exit 9), e.g. 10m.
        #[arg(long, env = "REDIS_NODE_TUNER_WAIT_TIMEOUT", default_value = "10m")]
        timeout: String,
        /// How often the files are read again, e.g. 1s.
        #[arg(long, env = "REDIS_NODE_TUNER_WAIT_INTERVAL", default_value = "1s")]
        interval: String,
    },
}

/// The break-glass file in the state directory: while it exists, `writers: lock` refuses
/// nothing (`touch` it on the node; remove it to lock again).
pub const UNLOCK_FILE: &str = "unlock";

fn env_fallback(v: &Option<String>, var: &str) -> Option<String> {
    v.clone()
        .or_else(|| std::env::var(var).ok())
        .filter(|s| !s.is_empty())
}

/// `--kube-timeout`, validated.
fn kube_timeout(cli: &Cli) -> Result<std::time::Duration, String> {
    profile::parse_duration(&cli.kube_timeout)
        .filter(|d| d.as_millis() >= 100 && d.as_secs() <= 300)
        .ok_or_else(|| {
            format!(
                "--kube-timeout {:?}: expected a duration between 100ms and 5m (e.g. 10s)",
                cli.kube_timeout
            )
        })
}

fn kube_mode(cli: &Cli) -> Result<Option<KubeMode>, String> {
    let Command::Run {
        taint_effect,
        heartbeat,
        watch_timeout,
        pod_name,
        pod_namespace,
        no_kubernetes,
        ..
    } = &cli.command
    else {
        return Ok(None);
    };
    if *no_kubernetes || (cli.kubeconfig.is_none() && !crate::k8s::in_cluster()) {
        return Ok(None);
    }
    let node_name = env_fallback(&cli.node_name, "NODE_NAME")
        .ok_or("Kubernetes mode needs --node-name (or NODE_NAME)")?;
    let taint_effect = match taint_effect.as_str() {
        "none" => None,
        e @ ("NoSchedule" | "PreferNoSchedule" | "NoExecute") => Some(e.to_string()),
        other => {
            return Err(format!(
                "--taint-effect {other:?}: expected NoSchedule, PreferNoSchedule, NoExecute or none"
            ));
        }
    };
    let heartbeat = profile::parse_duration(heartbeat)
        .filter(|d| d.as_secs() >= 1)
        .ok_or_else(|| {
            format!("--heartbeat {heartbeat:?}: expected a duration of at least 1s (e.g. 5m)")
        })?;
    let watch_timeout = profile::parse_duration(watch_timeout)
        .filter(|d| d.as_secs() >= 1 && d.as_secs() <= 1800)
        .ok_or_else(|| {
            format!(
                "--watch-timeout {watch_timeout:?}: expected a duration between 1s and 30m (e.g. 5m)"
            )
        })?;
    let request_timeout = kube_timeout(cli)?;
    let pod = match (
        env_fallback(pod_namespace, "POD_NAMESPACE"),
        env_fallback(pod_name, "POD_NAME"),
    ) {
        (Some(ns), Some(name)) => Some((ns, name)),
        _ => None,
    };
    Ok(Some(KubeMode {
        kubeconfig: cli.kubeconfig.clone(),
        opts: crate::k8s::GateOptions {
            node_name,
            condition_type: cli.condition_type.clone(),
            taint_effect,
            heartbeat,
            pod,
            request_timeout,
            watch_timeout,
        },
    }))
}

/// The name kubectl finds a plugin by: `kubectl redis-node-tuner` runs
/// `kubectl-redis_node_tuner` from $PATH (a symlink to this binary).
pub const KUBECTL_PLUGIN: &str = "kubectl-redis_node_tuner";

/// The command line as parsed: invoked as [`KUBECTL_PLUGIN`] (its argv[0]'s file name), the
/// binary is `redis-node-tuner status` (so `kubectl redis-node-tuner -o json` is `status -o
/// json`); a first argument `status`, `--help`, `-h`, `--version` or `-V` is taken as given.
pub fn plugin_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let plugin = args.first().is_some_and(|a0| {
        std::path::Path::new(a0)
            .file_name()
            .is_some_and(|n| n == KUBECTL_PLUGIN)
    });
    let explicit = args
        .get(1)
        .is_some_and(|a| ["status", "--version", "-V"].iter().any(|w| a == w));
    if !plugin || explicit {
        return args;
    }
    let mut out = vec!["redis-node-tuner".into(), "status".into()];
    out.extend(args.into_iter().skip(1));
    out
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(plugin_args(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    if let Err(msg) = init_logging(&cli) {
        eprintln!("error: --log-level {:?}: {msg}", cli.log_level);
        return Exit::Usage.into();
    }
    run_cli(cli).into()
}

fn init_logging(cli: &Cli) -> Result<(), String> {
    // The Kubernetes client logs an ERROR line of its own for every failed request; the gate
    // reports the same failures once per outage. Silenced unless the filter names it.
    let directives = if cli.log_level.contains("kube_client") {
        cli.log_level.clone()
    } else {
        // Its watch stream also warns once per connection cut ("eof in poll"): an outage is
        // reported by the gate, once.
        format!(
            "{},kube_client::client=error,kube_client::client::builder=off",
            cli.log_level
        )
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| e.to_string())?;
    // Colours only on a terminal: under systemd stderr is the journal, where escape sequences
    // would end up in every message (between `knob`, `=` and the value).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let res = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|e| e.to_string())
}

fn load_profile(cli: &Cli) -> Result<Profile, Exit> {
    match &cli.config {
        None => Ok(Profile::default()),
        Some(p) => Profile::load(p).map_err(|e| {
            eprintln!("error: {e}");
            Exit::Usage
        }),
    }
}

/// Runs a parsed command line.
pub fn run_cli(cli: Cli) -> Exit {
    let mut profile = match load_profile(&cli) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Command::Run {
        interval: Some(i), ..
    } = &cli.command
    {
        // The same bounds as the config file's `interval`.
        match profile::parse_duration(i) {
            Some(d) if (profile::MIN_INTERVAL..=profile::MAX_INTERVAL).contains(&d) => {
                profile.interval = d
            }
            _ => {
                eprintln!(
                    "error: --interval {i:?}: expected a duration between 100ms and 1h (e.g. 1s, 500ms)"
                );
                return Exit::Usage;
            }
        }
    }
    if let Command::Run {
        writers: Some(w), ..
    } = &cli.command
    {
        match crate::profile::WritersMode::parse(w) {
            Some(m) => {
                profile.writers = m;
                profile.writers_explicit = true;
            }
            None => {
                eprintln!("error: --writers {w:?}: expected off, observe or lock");
                return Exit::Usage;
            }
        }
    }
    if let Command::Cleanup = &cli.command {
        return cleanup(&cli);
    }
    if let Err(msg) = kube_timeout(&cli) {
        eprintln!("error: {msg}");
        return Exit::Usage;
    }
    let kube = match kube_mode(&cli) {
        Ok(k) => k,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Exit::Usage;
        }
    };
    let fs = HostFs::new(&cli.proc_root, &cli.sys_root);
    let redis = crate::procs::ScanOptions {
        proc_root: cli.proc_root.clone(),
        sys_root: cli.sys_root.clone(),
        pod_logs_dir: cli.pod_logs_dir.clone(),
        redis: profile.redis_processes.clone(),
        host_netns: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            fs.net_ns_ino().unwrap_or(0),
        )),
    };
    match &cli.command {
        Command::Check { output } => check(
            Agent::new(fs, &profile, JournalSlot::None),
            *output,
            &cli.state_dir,
            journal::boot_id(&cli.proc_root),
            crate::procs::Scanner::new(redis),
        ),
        Command::Apply { dry_run: true } => dry_run(Agent::new(fs, &profile, JournalSlot::None)),
        Command::Apply { dry_run: false } => match Journal::load(&cli.state_dir) {
            Ok(j) => {
                let j = j.with_boot_id(journal::boot_id(&cli.proc_root));
                apply(Agent::new(fs, &profile, JournalSlot::Ready(j)))
            }
            Err(e) => journal_failed(&e),
        },
        Command::Restore => restore(&fs, &cli.state_dir, journal::boot_id(&cli.proc_root)),
        Command::Run {
            listen,
            cgroup_root,
            lock_unavailable,
            stall_timeout,
            ..
        } => {
            let stall = match stall_timeout.as_deref().map(|s| {
                profile::parse_duration(s).filter(|d| d.as_secs() >= 1 && d.as_secs() <= 86_400)
            }) {
                None => None,
                Some(Some(d)) => Some(d),
                Some(None) => {
                    eprintln!(
                        "error: --stall-timeout {:?}: expected a duration between 1s and 24h (e.g. 30s)",
                        stall_timeout.as_deref().unwrap_or_default()
                    );
                    return Exit::Usage;
                }
            };
            let watch = WatchOptions {
                mode: profile.writers,
                cgroup_root: cgroup_root.clone(),
                explicit: profile.writers_explicit,
                lock_unavailable: match lock_unavailable {
                    LockPolicy::Run => LockUnavailable::Run,
                    LockPolicy::Exit => LockUnavailable::Exit,
                },
                unlock_file: Some(cli.state_dir.join(UNLOCK_FILE)),
            };
            // Held for the life of the daemon: no apply, restore or second run meanwhile.
            let _lock = match StateLock::acquire(&cli.state_dir) {
                Ok(l) => l,
                Err(e @ JournalError::Locked { .. }) => return journal_failed(&e),
                Err(e) => {
                    tracing::error!(error = %e, "no knob will be changed until the journal is fixed");
                    return daemon(
                        Agent::new(fs, &profile, JournalSlot::Broken(e.to_string())),
                        listen,
                        kube,
                        (watch, redis, stall),
                    );
                }
            };
            let journal = match Journal::load(&cli.state_dir) {
                Ok(j) => JournalSlot::Ready(j.with_boot_id(journal::boot_id(&cli.proc_root))),
                Err(e) => {
                    tracing::error!(error = %e, "no knob will be changed until the journal is fixed");
                    JournalSlot::Broken(e.to_string())
                }
            };
            daemon(
                Agent::new(fs, &profile, journal),
                listen,
                kube,
                (watch, redis, stall),
            )
        }
        Command::Cleanup => cleanup(&cli),
        Command::Status {
            output,
            selector,
            all,
            heartbeat,
            chunk_size,
        } => status(
            &cli,
            *output,
            selector.as_deref(),
            *all,
            heartbeat,
            *chunk_size,
        ),
        Command::Wait {
            tcp_backlog,
            timeout,
            interval,
        } => wait_command(fs, &profile, *tcp_backlog, timeout, interval),
    }
}

fn wait_command(
    fs: HostFs,
    profile: &Profile,
    tcp_backlog: u32,
    timeout: &str,
    interval: &str,
) -> Exit {
    let Some(timeout) = profile::parse_duration(timeout).filter(|d| d.as_secs() <= 86_400) else {
        eprintln!("error: --timeout {timeout:?}: expected a duration of at most 24h (e.g. 10m)");
        return Exit::Usage;
    };
    let Some(interval) = profile::parse_duration(interval)
        .filter(|d| (profile::MIN_INTERVAL..=profile::MAX_INTERVAL).contains(d))
    else {
        eprintln!(
            "error: --interval {interval:?}: expected a duration between 100ms and 1h (e.g. 1s)"
        );
        return Exit::Usage;
    };
    let opts = crate::wait::WaitOptions {
        tcp_backlog,
        timeout,
        interval,
    };
    crate::wait::wait(fs, profile, &opts)
}

/// The runtime of `run` and `cleanup`: two worker threads, so a request that blocks its thread
/// (a kubeconfig exec plugin run synchronously by the client) never stops `/healthz` and
/// `/metrics` from answering. The enforce pass has a thread of its own.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            Exit::Runtime
        })
}

fn cleanup(cli: &Cli) -> Exit {
    let Some(node) = env_fallback(&cli.node_name, "NODE_NAME") else {
        eprintln!("error: cleanup needs --node-name (or NODE_NAME)");
        return Exit::Usage;
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    let timeout = match kube_timeout(cli) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Exit::Usage;
        }
    };
    rt.block_on(async {
        let metrics = Arc::new(Metrics::new());
        match crate::k8s::cleanup(
            cli.kubeconfig.as_deref(),
            &node,
            &cli.condition_type,
            timeout,
            metrics,
        )
        .await
        {
            Ok(()) => {
                println!(
                    "removed label, taint, condition {} and annotations of redis-node-tuner from node {node}",
                    cli.condition_type
                );
                Exit::Ok
            }
            Err(e @ (GateError::Kubeconfig { .. } | GateError::InCluster(_))) => {
                eprintln!("error: {e}");
                Exit::Usage
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::NotReady
            }
        }
    })
}

/// `status`: the fleet view.
fn status(
    cli: &Cli,
    output: StatusOutput,
    selector: Option<&str>,
    all: bool,
    heartbeat: &str,
    chunk_size: u32,
) -> Exit {
    let Some(period) = profile::parse_duration(heartbeat).filter(|d| d.as_secs() >= 1) else {
        eprintln!("error: --heartbeat {heartbeat:?}: expected a duration of at least 1s (e.g. 5m)");
        return Exit::Usage;
    };
    let request_timeout = match kube_timeout(cli) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Exit::Usage;
        }
    };
    let opts = crate::status::ListOptions {
        kubeconfig: cli.kubeconfig.clone(),
        selector: selector.filter(|s| !s.is_empty()).map(String::from),
        chunk_size,
        request_timeout,
    };
    let view = crate::status::View {
        condition_type: cli.condition_type.clone(),
        stale_after: period.saturating_mul(crate::status::STALE_PERIODS),
        unmarked: all || opts.selector.is_some(),
        now: k8s_openapi::jiff::Timestamp::now(),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    match rt.block_on(crate::status::list(&opts, &view)) {
        Ok(rows) => {
            let text = match output {
                StatusOutput::Table if rows.is_empty() => {
                    "No node carries a mark of redis-node-tuner (label, taint or condition).\n"
                        .to_string()
                }
                StatusOutput::Table => crate::status::render_table(&rows, view.now),
                StatusOutput::Json => crate::status::render_json(&rows, &view) + "\n",
            };
            // A closed pipe (`| head`) is no error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            crate::status::exit(&rows)
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit()
        }
    }
}

fn daemon(
    agent: Agent,
    listen: &str,
    kube: Option<KubeMode>,
    (watch, redis, stall): (
        WatchOptions,
        crate::procs::ScanOptions,
        Option<std::time::Duration>,
    ),
) -> Exit {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    match rt.block_on(crate::daemon::run(
        agent,
        listen,
        kube,
        (watch, Some(redis)),
        stall,
    )) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                DaemonError::Listen { .. } | DaemonError::Start(_) => Exit::Runtime,
                DaemonError::Gate(_) => Exit::Usage,
                DaemonError::TaskDied(_) => Exit::TaskDied,
                DaemonError::LockUnavailable(_) => Exit::LockUnavailable,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(Into::into).collect()
    }

    #[test]
    fn invoked_as_the_kubectl_plugin_the_binary_is_status() {
        let plugin = "/home/u/.krew/bin/kubectl-redis_node_tuner";
        assert_eq!(
            plugin_args(args(&[plugin, "-o", "json"])),
            args(&["redis-node-tuner", "status", "-o", "json"])
        );
        assert_eq!(
            plugin_args(args(&[plugin])),
            args(&["redis-node-tuner", "status"])
        );
        // Named again, or the version: as given.
        for given in [&[plugin, "status", "-l", "a=b"][..], &[plugin, "--version"]] {
            assert_eq!(plugin_args(args(given)), args(given));
        }
        // Any other name: as given.
        let own = ["/usr/bin/redis-node-tuner", "check"];
        assert_eq!(plugin_args(args(&own)), args(&own));
        assert_eq!(plugin_args(vec![]), Vec::<std::ffi::OsString>::new());
        let parsed = Cli::try_parse_from(plugin_args(args(&[plugin, "-l", "pool=redis"])));
        assert!(
            matches!(parsed, Ok(Cli { command: Command::Status { selector: Some(ref s), .. }, .. }) if s == "pool=redis"),
            "{parsed:?}"
        );
    }
}
