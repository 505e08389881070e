//! Latchkey: a Kubernetes operator for embedded connections.
pub mod admin;
pub mod api;
pub mod config;
pub mod connect;
pub mod controller;
pub mod credentials;
pub mod instance;
pub mod jobs;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod naming;
pub mod providers;
pub mod run;
pub mod telemetry;
pub mod users;
pub mod variables;
