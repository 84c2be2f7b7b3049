//! The `syncfleet.v1` protocol shared by the controller, the agent and the CLI, and the code both
//! daemons share, so that it exists once and the controller does not depend on the agent.
//!
//! - [`v1`]: types and gRPC stubs generated from `proto/syncfleet/v1/*.proto` (compiled with
//!   protox at build time; no system `protoc`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection so third-party
//!   clients (grpcurl, Python) need no copy of the `.proto` files.
//! - [`vocab`]: the engine's result-string vocabulary, its classification and severity order.
//! - [`time`]: conversions between protobuf timestamps and `chrono`.
//! - [`names`]: the name rule of agents, fleets, sequences and schedules.
//! - [`status`]: the request id on gRPC responses.
//! - [`digest`]: SHA-256 as hex (CA pins, token hashes).
//! - [`step_errors`]: the bounds on object errors and connection incidents sent and stored
//!   with a step.
//!
//! Shared by the two daemons:
//! - [`config_layers`]: configuration read from a TOML file, `SYNCFLEET_*` variables and flags;
//!   which variables belong to which daemon.
//! - [`telemetry`]: logs, OTLP trace export, W3C trace context.
//! - [`shutdown`]: Ctrl-C / SIGTERM as a cancellation token.
//! - [`process`]: `--set`, `--dump-config`, exit codes and the runtime of the binaries.
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "unit tests time their own code with the real clock"
    )
)]

pub mod config_layers;
pub mod digest;
pub mod echo;
pub mod names;
pub mod process;
pub mod schedule_model;
pub mod service_manager;
pub mod shutdown;
pub mod status;
pub mod step_errors;
pub mod sync;
pub mod telemetry;
pub mod time;
pub mod trigger;
pub mod vocab;

/// Generated code for package `syncfleet.v1`.
pub mod v1 {
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::allow_attributes_without_reason,
        missing_docs,
        reason = "generated protobuf code"
    )]
    tonic::include_proto!("syncfleet.v1");
}

/// Encoded `FileDescriptorSet` of every syncfleet `.proto` file (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/syncfleet_descriptor.bin"));

impl v1::RunState {
    /// True once the run can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::CompletedWithErrors
                | Self::Failed
                | Self::Skipped
                | Self::Cancelled
                | Self::Unknown
                | Self::Held
        )
    }

    /// Lower-case name used by the CLI, the store and JSON output (`completed_with_errors`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::CompletedWithErrors => "completed_with_errors",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
            Self::Held => "held",
        }
    }

    /// Inverse of [`label`](Self::label).
    pub fn from_label(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "dispatched" => Self::Dispatched,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "completed_with_errors" => Self::CompletedWithErrors,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            "cancelled" => Self::Cancelled,
            "unknown" => Self::Unknown,
            "held" => Self::Held,
            _ => return None,
        })
    }
}

impl v1::StepState {
    /// Lower-case name used by the CLI, the store and JSON output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Done => "done",
            Self::NotRun => "not_run",
            Self::Skipped => "skipped",
            Self::Held => "held",
        }
    }

    /// Inverse of [`label`](Self::label).
    pub fn from_label(s: &str) -> Option<Self> {
        Some(match s {
            "waiting" => Self::Waiting,
            "running" => Self::Running,
            "done" => Self::Done,
            "not_run" => Self::NotRun,
            "skipped" => Self::Skipped,
            "held" => Self::Held,
            _ => return None,
        })
    }
}

impl v1::AgentState {
    /// Lower-case name used by the CLI and JSON output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
        }
    }
}
