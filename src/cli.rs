//! Command line: `check`, `apply`, `restore`, `run`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::{Agent, Event, JournalSlot, Report};
use crate::journal::Journal;
use crate::kernel::{HostFs, Target};
use crate::metrics::Metrics;
use crate::profile::{self, Profile};

/// Exit codes (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Ready / done.
    Ok = 0,
    /// Drift (check, apply --dry-run), or something could not be set or restored.
    NotReady = 1,
    /// Bad usage, flag or config file; nothing was written.
    Usage = 2,
    /// An enforce-mode knob could not be read (check).
    Unreadable = 3,
    /// The state journal is corrupt or unreadable; nothing was written.
    Journal = 4,
    /// The daemon could not start (listen address, signals, runtime).
    Runtime = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
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
        /// The agent's own Pod name, to prove host networking (default: $POD_NAME).
        #[arg(long, env = "REDIS_NODE_TUNER_POD_NAME")]
        pod_name: Option<String>,
        /// The agent's own Pod namespace (default: $POD_NAMESPACE).
        #[arg(long, env = "REDIS_NODE_TUNER_POD_NAMESPACE")]
        pod_namespace: Option<String>,
        /// Stay standalone even inside a pod.
        #[arg(long, env = "REDIS_NODE_TUNER_NO_KUBERNETES")]
        no_kubernetes: bool,
    },
    /// Remove the agent's label, taint and condition from a Node (for uninstall).
    Cleanup,
}

/// The Kubernetes settings of `run`, validated before anything starts.
struct KubeMode {
    kubeconfig: Option<PathBuf>,
    opts: crate::k8s::GateOptions,
}

fn env_fallback(v: &Option<String>, var: &str) -> Option<String> {
    v.clone()
        .or_else(|| std::env::var(var).ok())
        .filter(|s| !s.is_empty())
}

fn kube_mode(cli: &Cli) -> Result<Option<KubeMode>, String> {
    let Command::Run {
        taint_effect,
        heartbeat,
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
            taint_effect,
            heartbeat,
            pod,
        },
    }))
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log_level).map_err(|e| e.to_string())?;
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
        match profile::parse_duration(i) {
            Some(d) if d.as_millis() >= 100 => profile.interval = d,
            _ => {
                eprintln!(
                    "error: --interval {i:?}: expected a duration of at least 100ms (e.g. 1s, 500ms)"
                );
                return Exit::Usage;
            }
        }
    }
    if let Command::Cleanup = &cli.command {
        return cleanup(&cli);
    }
    let kube = match kube_mode(&cli) {
        Ok(k) => k,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Exit::Usage;
        }
    };
    let fs = HostFs::new(&cli.proc_root, &cli.sys_root);
    match &cli.command {
        Command::Check { output } => check(Agent::new(fs, &profile, JournalSlot::None), *output),
        Command::Apply { dry_run: true } => dry_run(Agent::new(fs, &profile, JournalSlot::None)),
        Command::Apply { dry_run: false } => match Journal::load(&cli.state_dir) {
            Ok(j) => apply(Agent::new(fs, &profile, JournalSlot::Ready(j))),
            Err(e) => {
                eprintln!("error: {e}\nnothing was written");
                Exit::Journal
            }
        },
        Command::Restore => restore(&fs, &cli.state_dir),
        Command::Run { listen, .. } => {
            let journal = match Journal::load(&cli.state_dir) {
                Ok(j) => JournalSlot::Ready(j),
                Err(e) => {
                    tracing::error!(error = %e, "no knob will be changed until the journal is fixed");
                    JournalSlot::Broken(e.to_string())
                }
            };
            daemon(Agent::new(fs, &profile, journal), listen, kube)
        }
        Command::Cleanup => cleanup(&cli),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
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
    rt.block_on(async {
        let client = match crate::k8s::client(cli.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        };
        match crate::k8s::cleanup(client, &node, Arc::new(Metrics::new())).await {
            Ok(()) => {
                println!("removed label, taint and condition of redis-node-tuner from node {node}");
                Exit::Ok
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::NotReady
            }
        }
    })
}

fn print_table(report: &Report) {
    let mut rows = vec![[
        "SETTING".to_string(),
        "DESIRED".into(),
        "ACTUAL".into(),
        "MODE".into(),
        "STATE".into(),
    ]];
    for k in &report.settings {
        rows.push([
            k.name.clone(),
            k.desired.clone(),
            k.actual.clone().unwrap_or_else(|| "-".into()),
            k.mode.to_string(),
            k.state.to_string(),
        ]);
    }
    let mut width = [0usize; 5];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in &rows {
        let line = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for k in &report.settings {
        if let Some(e) = &k.error {
            let _ = writeln!(out, "{e}");
        }
    }
    let failing = report.failing().count();
    let _ = if report.ready {
        writeln!(out, "node: ready")
    } else {
        writeln!(
            out,
            "node: not ready ({failing} enforce-mode setting(s) out of sync)"
        )
    };
}

fn check(mut agent: Agent, output: Output) -> Exit {
    let report = agent.observe();
    match output {
        Output::Text => print_table(&report),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot render JSON: {e}"),
        },
    }
    if report.unreadable() {
        Exit::Unreadable
    } else if report.ready {
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

fn dry_run(mut agent: Agent) -> Exit {
    let (report, changes) = agent.plan();
    for (knob, from, to) in &changes {
        println!("would change {knob}: {from} -> {to}");
    }
    for k in report.failing().filter(|k| k.state == "error") {
        println!(
            "cannot change {}: {}",
            k.name,
            k.error.as_deref().unwrap_or("?")
        );
    }
    if report.ready {
        println!("nothing to change");
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

fn apply(mut agent: Agent) -> Exit {
    let (_, events) = agent.reconcile(Instant::now());
    for e in &events {
        match e {
            Event::Corrected { knob, from, to } => println!("changed {knob}: {from} -> {to}"),
            Event::CorrectionFailed { error, .. } => println!("failed {error}"),
            _ => {}
        }
    }
    // Verify from a fresh read of every knob, not from the write path's own read-back.
    let report = agent.observe();
    print_table(&report);
    if report.ready {
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

fn restore(fs: &HostFs, state_dir: &std::path::Path) -> Exit {
    let journal = match Journal::load(state_dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}\nnothing was written");
            return Exit::Journal;
        }
    };
    if journal.originals().is_empty() {
        println!(
            "nothing to restore: no originals recorded in {}",
            journal.path().display()
        );
        return Exit::Ok;
    }
    let mut failed = 0;
    for (knob, original) in journal.originals() {
        if original.location.is_net()
            && original.netns.is_some()
            && original.netns != fs.net_ns_ino()
        {
            failed += 1;
            println!(
                "failed {knob}: its original was recorded in network namespace net:[{}], this is {}; run restore there",
                original.netns.unwrap_or_default(),
                fs.net_ns_ino()
                    .map(|i| format!("net:[{i}]"))
                    .unwrap_or_else(|| "an unverified one".into())
            );
            continue;
        }
        let mut t = Target::for_restore(knob, original.location.clone());
        match fs.write(&mut t, &original.value) {
            Ok(r) if r.value == original.value => println!("restored {knob}: {}", original.value),
            Ok(r) => {
                failed += 1;
                println!(
                    "failed {knob}: wrote {:?} but it reads back {:?}",
                    original.value, r.value
                );
            }
            Err(e) => {
                failed += 1;
                println!("failed {e}");
            }
        }
    }
    if failed > 0 {
        println!(
            "{failed} original(s) not restored; the journal {} is kept",
            journal.path().display()
        );
        return Exit::NotReady;
    }
    match journal.remove() {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: every original was restored, but {e}");
            Exit::Journal
        }
    }
}

fn daemon(agent: Agent, listen: &str, kube: Option<KubeMode>) -> Exit {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async move {
        let listener = if listen.is_empty() {
            None
        } else {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => {
                    tracing::info!(listen, "serving /metrics, /healthz, /readyz");
                    Some(l)
                }
                Err(e) => {
                    eprintln!("error: --listen {listen:?}: {e}");
                    return Exit::Runtime;
                }
            }
        };
        let metrics = Arc::new(Metrics::new());
        let mut hooks = crate::daemon::Hooks::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut gate = None;
        if let Some(k) = kube {
            // Building the client reads the kubeconfig only: the API server may be down.
            let client = match crate::k8s::client(k.kubeconfig.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Usage;
                }
            };
            let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(1024);
            let (proof_tx, proof_rx) = tokio::sync::mpsc::channel(1);
            hooks.events = Some(ev_tx);
            hooks.netns_proof = Some(proof_rx);
            let inputs = crate::k8s::GateInputs {
                reports: hooks.reports.subscribe(),
                events: ev_rx,
                stop: stop_rx,
                netns_proof: Some(proof_tx),
            };
            tracing::info!(node = %k.opts.node_name, "Kubernetes mode");
            gate = Some(tokio::spawn(crate::k8s::run(
                client,
                k.opts,
                metrics.clone(),
                inputs,
            )));
        }
        let res = crate::daemon::run(agent, metrics, listener, hooks).await;
        let _ = stop_tx.send(true);
        if let Some(g) = gate
            && tokio::time::timeout(std::time::Duration::from_secs(8), g)
                .await
                .is_err()
        {
            tracing::warn!("Kubernetes reporter did not stop in time");
        }
        match res {
            Ok(()) => Exit::Ok,
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Runtime
            }
        }
    })
}
