//! redis-node-tuner: sets, keeps and proves the Linux kernel settings Redis needs.
//!
//! Data flows [`profile`] (desired state) → [`kernel`] (observe) → [`reconcile`] (diff,
//! decide) → [`agent`] (act, [`journal`] the originals first) → reporters ([`metrics`],
//! [`http`], the Kubernetes gate [`k8s`]). One fact flows back: the gate's proof, from the
//! agent's own Pod, that it runs on host networking reaches the kernel layer through
//! [`daemon`], which runs the enforce pass on its own thread, the reporters on the runtime, and
//! supervises both. [`cli`] parses and dispatches; [`commands`] holds `check`, `apply`,
//! `restore`; [`wait`] is the init-container gate of Redis pods; [`status`] is the fleet view
//! (every marked Node's state, from the Node objects alone); [`backoff`] is shared by the agent
//! and the gate. [`writers`], the optional writer watch of `run` (BPF), names the process behind
//! each foreign write and wakes the enforce pass at once; its attribution rides on the pass's
//! events to the reporters.
//!
//! The larger layers are folders, one responsibility a file: [`profile`] (the model apart from
//! the YAML validator and sysctl names), [`kernel`] (knob locations, targets and their I/O apart
//! from the network-namespace proof and the errors), [`k8s`] (the node gate). Test fixtures (a
//! fake `/proc` + `/sys` tree) are in `testing`, built only for tests (`--features testing`).
#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod exit;
pub mod foreign;
pub mod http;
pub mod journal;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod procs;
pub mod profile;
pub mod reconcile;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wait;
pub mod writers;
