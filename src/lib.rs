//! redis-node-tuner: sets, keeps and proves the Linux kernel settings Redis needs.
//!
//! Data flows one way: [`profile`] (desired state) → [`kernel`] (observe) → [`reconcile`]
//! (diff, decide) → [`agent`] (act, journal originals) → reporters ([`metrics`], [`http`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod http;
pub mod journal;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod profile;
pub mod reconcile;
