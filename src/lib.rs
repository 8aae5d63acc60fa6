//! claude-operator: a Kubernetes operator that lets a team run Claude Code on
//! GitHub events inside sandboxed, short-lived, budgeted pods.
//!
//! The crate is one library with a thin binary (`src/main.rs`). Pure decision
//! modules (`admission`, `cost`, `sandbox`, parts of `github`) hold the policy
//! logic; the receiver (`receiver`) and reconcilers (`controller`) fetch, call
//! them, and apply.

pub mod admission;
pub mod api;
pub mod cli;
pub mod controller;
pub mod cost;
pub mod gateway;
pub mod github;
pub mod grant;
pub mod operator;
pub mod receiver;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod scope;
pub mod telemetry;
pub mod tenancy;
