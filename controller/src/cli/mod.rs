//! `syncfleet`, the operator CLI: a thin gRPC client of `FleetService`.
//!
//! Everything it does is one or a few FleetService calls, so anything shown here can also be
//! done with grpcurl or any gRPC client. The binary (`src/bin/syncfleet.rs`) only calls
//! [`main`].
//!
//! # Commands
//!
//! ```text
//! syncfleet agents list                         NAME STATE DRAIN ENGINE MAS LAST-SEEN LABELS
//! syncfleet agents show NAME
//! syncfleet agents drain NAME [--note TEXT]     running runs finish, nothing new starts
//! syncfleet agents resume NAME [--note TEXT]
//! syncfleet agents revoke NAME [--note TEXT]    close its session, refuse it from now on
//! syncfleet run AGENT (--step "MA:PROFILE" [--step ...] | --sequence NAME) [--follow]
//! syncfleet run (AGENT... | -l SELECTOR | --all) (--step ... | --sequence NAME) [--follow]
//!               [--max-parallel N] [--idempotency-key KEY]     one run per agent (StartRuns)
//! syncfleet runs list [--agent NAME] [-l SELECTOR] [--state S]... [--schedule NAME]
//!                     [--since 2h|RFC3339] [--limit N] [--watch]
//! syncfleet timeline [--since 6h|RFC3339] [-l SELECTOR] [--width N]
//! syncfleet runs show ID
//! syncfleet runs cancel ID [--reason TEXT]
//! syncfleet runs approve ID [--note TEXT]       run a held step once, as a new run
//! syncfleet runs reject ID --note TEXT         record that a held change must not go through
//! syncfleet apply -f FILE|DIR [-f ...] [--dry-run] [--prune] [--force]
//! syncfleet get sequences|schedules [NAME]      YAML fleet documents (-o json: an array)
//! syncfleet delete sequence|schedule NAME
//! syncfleet schedules list                      NAME SEQUENCE STATE TRIGGER TARGETS NEXT
//! syncfleet schedules show NAME
//! syncfleet schedules pause NAME --note TEXT
//! syncfleet schedules resume NAME [--note TEXT]
//! syncfleet fleet pause --note TEXT             no new runs anywhere
//! syncfleet fleet resume [--note TEXT]
//! syncfleet fleet status
//! syncfleet tokens create --agent NAME [--labels k=v,...] [--ttl 30m]
//! syncfleet operators create NAME --role viewer|operator|admin [--ttl 90d] [--out FILE]
//! syncfleet operators list                     NAME ROLE STATE SERIAL ISSUED EXPIRES
//! syncfleet operators revoke NAME --note TEXT   refuse every certificate of NAME from now on
//! syncfleet audit list [--since 1h|RFC3339] [--who IDENTITY] [--limit N]
//! syncfleet completion bash|zsh|fish|powershell shell completion script
//! syncfleet docs man DIR                        one man page per command and subcommand
//! syncfleet config get-contexts|use-context NAME|current-context
//! syncfleet version                             client and controller versions
//! syncfleet ui [--open]                         one-time sign-in link to the web console
//! syncfleet dev [--agents N] [--data-dir DIR]      a whole fleet on this machine (see crate::dev)
//! ```
//!
//! Run ids can be given whole or as any unique prefix of at least 4 characters (the 8-character
//! ids that progress lines and tables show).
//!
//! Global flags: `--config PATH` (env `SYNCFLEET_CONFIG`), `--context NAME` (env
//! `SYNCFLEET_CONTEXT`), `--controller URL`, `--cacert`/`--cert`/`--key PATH`,
//! `-o/--output table|wide|json|yaml`, `--no-headers`. See [`crate::contexts`] for the config
//! file. Without one, `SYNCFLEET_ADDR`, `SYNCFLEET_CACERT`, `SYNCFLEET_CERT` and
//! `SYNCFLEET_KEY` say how to connect; precedence is flags > those variables > the context
//! ([`contexts::resolve_connection`]), and a partial set of variables is an error naming the
//! missing ones.
//!
//! `-o wide` shows the extra columns list tables mark wide ([`table::Table::wide`]);
//! `--no-headers` leaves out their header row. Both apply to every list printed through
//! `Session::print_list` ([`table::with_view`]).
//!
//! `completion`, `docs`, `config` and `version` (its client line) work without a controller.
//!
//! # Layout
//!
//! This file holds the top level: [`Cli`], [`Command`], the dispatch to each command group, the
//! error type and the exit codes. Each command group is one file holding its clap arguments,
//! its handlers (methods of the per-invocation `Session`) and its human rendering:
//! [`agents`], [`runs`] (`run` and `runs`, with `--follow`), [`documents`] (`apply`, `get`,
//! `delete`), [`schedules`], [`fleet`], [`access`] (`tokens`, `operators`, `audit`). They share
//! [`table`] (the table type, times and durations), [`output`] (the stdout writers, and the
//! JSON shapes of `crate::views`, which the web console serves too) and [`connect`] (the gRPC
//! channel and error lines); the contexts file is [`crate::contexts`], shared with `syncfleet
//! dev`.
//! Dependencies point one way: command files use the shared modules, never each other (except
//! `schedules` reading documents with [`documents::parse_documents`]); `connect` uses
//! `contexts`, not the reverse. The CLI starts `crate::dev`; `dev` never uses the CLI.
//!
//! # Output contract
//!
//! - **stdout carries data only**: tables, key/value blocks, run ids, the apply diff, fleet
//!   documents, JSON documents. With `-o json` stdout is exactly one JSON document (see
//!   [`output`] for the shapes); `-o yaml` prints the same shape as YAML. `get` prints fleet
//!   documents as YAML by default (`-o table` and `-o yaml` alike), ready for `apply -f`.
//! - **stderr carries messages for humans**: `run --follow` progress lines, hints, the
//!   `applied N change(s)` line, and errors, which are one line starting with `error: `. Lists
//!   of problems in fleet files (found locally or by the controller) are printed first, one per
//!   line, verbatim, followed by one `error: ` line.
//! - `run` on several agents (`AGENT...`, `-l`, `--all`) prints a table `AGENT RUN STATE`
//!   (with `--follow` or `--max-parallel`, once every run has ended, with result and duration)
//!   and each refused agent with its reason on stderr; `-o json` is `{idempotency_key, runs,
//!   refused}` (plus `failed` when followed). `runs list --watch` prints the list, then one line
//!   per change (`-o json`: one JSON object per line) until interrupted.
//! - `run` without `--follow` prints just the new run's id (table mode), so
//!   `id=$(syncfleet run sync-01 --step "AD:Delta Import")` works; with `--follow` it prints the
//!   final run (summary, or the run object with `-o json`) once the run has ended. `runs
//!   approve` likewise prints the id of the new (continuation) run.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the request succeeded (`apply --dry-run`: the documents are valid and every step fits its target agents' inventories, or `--force` was given); for `run --follow`, the run ended `succeeded` (which includes engine results such as `completed-warnings`) |
//! | 1 | the thing asked for failed: invalid fleet files (nothing is sent), config file or context problem, cannot reach or authenticate to the controller, the controller refused the request (gRPC status, e.g. `INVALID_ARGUMENT` for documents, `NOT_FOUND`), `delete` of something that does not exist, or `run --follow` ended `held`, `completed_with_errors`, `failed`, `cancelled`, `skipped` or `unknown`, or the watch was lost for longer than ~30 s |
//! | 1 (fan-out) | `run` on several agents: some agent of the selection was refused, or (followed) some run did not succeed; each is named on stderr with its agent, run id, state and result |
//! | 2 | usage error (unknown flag, bad `--step`, bad `--state`, `--step` with `--sequence`, `pause` without `--note`), reported by clap |
//!
//! A failed call whose response carried an `x-request-id` ends its `error:` line with
//! `(request <id>)`: the same id is in the controller's logs, traces and `syncfleet audit list`.
//!
//! Config and connection errors deliberately share code 1 with request failures: scripts only
//! need "did it work", and the `error:` line tells humans which it was.
//!
//! # `apply`
//!
//! Loads every file (directories: all `*.yaml`/`*.yml` below them) and validates the documents
//! locally first ([`crate::documents`]); on any problem it prints them all and exits 1 without
//! contacting the controller. Locally it cannot know the controller's stored sequences, so a
//! schedule naming a sequence that is not in the files is checked by the controller, which
//! validates everything again and applies all or nothing. Files holding no document at all are
//! refused (with `--prune` they would delete everything).
//!
//! The controller also checks each step against the inventories its target agents reported.
//! Problems are printed to stderr as `warning: FILE document N (KIND NAME): ...`; steps naming
//! an MA or run profile a target agent lacks refuse the apply (`FAILED_PRECONDITION`, exit 1)
//! unless `--force` is given, and make `--dry-run` exit 1 after showing the diff. `--dry-run`
//! also prints, on stderr, which agents each schedule's targets match now.
//!
//! # `run --follow`
//!
//! Watches the run with `WatchRuns{run_id}`; the server sends the current snapshot first, so a
//! run that ends between `StartRun` and the watch is still seen ending. If the stream breaks the
//! CLI re-opens it with a growing backoff (0.5 s … 5 s) for up to ~30 s without any successful
//! message before giving up; the run itself is unaffected (it executes on the agent), and
//! interrupting the CLI (Ctrl-C) only stops watching.

pub mod access;
pub mod agents;
pub mod completion;
pub mod config;
pub mod connect;
pub mod documents;
pub mod fleet;
pub mod notifiers;
pub mod output;
pub mod run;
pub mod run_errors;
pub mod runs;
pub mod schedules;
pub mod table;
pub mod timeline;
pub mod ui;
pub mod version;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::contexts::{self, ConfigError, ResolvedContext};
use access::{AuditCommand, OperatorsCommand, TokensCommand};
use agents::AgentsCommand;
use completion::{CompletionShell, DocsCommand};
use config::ConfigCommand;
use connect::ConnectError;
use documents::{ApplyArgs, DocKind};
use fleet::FleetCommand;
use notifiers::NotifiersCommand;
use run::RunArgs;
use runs::RunsCommand;
use schedules::SchedulesCommand;

/// Exit code: the request succeeded (for `run --follow`: the run succeeded).
pub const EXIT_OK: u8 = 0;

/// Exit code: the request failed, the controller could not be reached or configured, or the
/// followed run did not succeed.
pub const EXIT_FAILED: u8 = 1;

/// Exit code: usage error (set by clap).
pub const EXIT_USAGE: u8 = 2;

/// Operator CLI of syncfleet: schedule and run identity sync engine run profiles across a fleet.
#[derive(Debug, Parser)]
#[command(
    name = "syncfleet",
    version,
    after_help = "Data goes to stdout, messages to stderr. Exit status: 0 done (run --follow: run \
                  succeeded), 1 failed (invalid fleet files, config, connection, request, or \
                  followed run did not succeed), 2 usage error.\n\nExamples (the names are \
                  those of the `syncfleet dev` fleet):\n  syncfleet dev\n  syncfleet \
                  agents list\n  syncfleet run sync-01 --step \"AD:Delta Import\" --step \
                  \"AD:Delta Sync\" --follow\n  syncfleet run sync-01 --sequence delta-cycle \
                  --follow\n  syncfleet apply -f deploy/examples/ --dry-run\n  syncfleet get \
                  schedules > fleet-backup.yaml\n  syncfleet schedules pause delta-every-3m \
                  --note \"AD maintenance\"\n  syncfleet runs list --state failed -o json"
)]
pub struct Cli {
    /// Config file with the contexts [default: ~/.config/syncfleet/config.toml]
    #[arg(long, global = true, env = contexts::CONFIG_ENV, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Context (controller + credentials) to use [default: current_context of the config file]
    #[arg(long, global = true, env = contexts::CONTEXT_ENV, value_name = "NAME")]
    pub context: Option<String>,
    /// Controller URL to use instead of the context's (or SYNCFLEET_ADDR); repeat for several
    /// controllers sharing one store (the first that answers is used)
    #[arg(long = "controller", global = true, value_name = "URL")]
    pub controllers: Vec<String>,
    /// CA certificate (PEM) to verify the controller with, instead of the context's (or
    /// SYNCFLEET_CACERT)
    #[arg(long, global = true, value_name = "PATH")]
    pub cacert: Option<PathBuf>,
    /// Operator client certificate (PEM), instead of the context's (or SYNCFLEET_CERT)
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM), instead of the context's (or SYNCFLEET_KEY)
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Output format: human tables (wide: with extra columns), or one JSON (or YAML) document
    /// on stdout
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
    /// Print tables without their header row
    #[arg(long, global = true)]
    pub no_headers: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns / key-value lines for humans.
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
    /// The JSON document's shape as YAML; for `get`, fleet documents ready for `apply -f`.
    Yaml,
}

/// `-o` values as typed; [`OutputArg::format`] is what commands see, `wide` being a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Aligned columns / key-value lines for humans.
    Table,
    /// Tables with their extra columns (for lists that have them).
    Wide,
    /// One JSON document on stdout, for scripts.
    Json,
    /// The JSON document's shape as YAML; for `get`, fleet documents ready for `apply -f`.
    Yaml,
}

impl OutputArg {
    /// The format commands print in.
    pub fn format(self) -> OutputFormat {
        match self {
            OutputArg::Table | OutputArg::Wide => OutputFormat::Table,
            OutputArg::Json => OutputFormat::Json,
            OutputArg::Yaml => OutputFormat::Yaml,
        }
    }
}

impl Cli {
    /// How list tables are printed (`-o wide`, `--no-headers`).
    pub fn view(&self) -> table::View {
        table::View {
            wide: self.output == OutputArg::Wide,
            no_headers: self.no_headers,
        }
    }

    /// The connection settings the flags give.
    pub fn connection_flags(&self) -> contexts::Connection {
        contexts::Connection {
            controllers: self.controllers.clone(),
            ca_cert: self.cacert.clone(),
            client_cert: self.cert.clone(),
            client_key: self.key.clone(),
        }
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync servers (agents) known to the controller
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Start an ad-hoc run of run profiles on one agent, several, those matching a label
    /// selector (-l) or all (--all)
    Run(RunArgs),
    /// Runs: list (and watch), show, cancel, approve, reject
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Per server, the steps of recent runs as bars on a time axis: synchronizations marked,
    /// overlaps and waits highlighted
    Timeline(timeline::TimelineArgs),
    /// Create or change sequences and schedules from fleet files (diff first; --prune deletes
    /// stored ones not in the files)
    Apply(ApplyArgs),
    /// Print stored sequences or schedules as fleet documents (YAML, ready for apply -f)
    Get {
        /// What to print
        kind: DocKind,
        /// Only this one
        name: Option<String>,
    },
    /// Delete one stored sequence or schedule (a sequence in use by a schedule cannot be
    /// deleted)
    Delete {
        /// What to delete
        kind: DocKind,
        /// Its name
        name: String,
    },
    /// Schedules: list, show, pause, resume
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// The whole fleet: pause or resume all new runs, status
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Notifiers: where held runs, failures and lost agents are sent, and how delivery went
    #[command(subcommand)]
    Notifiers(NotifiersCommand),
    /// One-time enrollment tokens for new agents
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Operator credentials (client certificates with a role): create, list, revoke
    #[command(subcommand)]
    Operators(OperatorsCommand),
    /// The audit log: every change, denial, enrollment, renewal and revocation
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell)
    Completion {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Generated documentation: man pages
    #[command(subcommand)]
    Docs(DocsCommand),
    /// The CLI config file's contexts: list, switch, show the current one
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a one-time sign-in link to the controller's web console for this CLI's operator
    /// (--open: also open it in the browser)
    Ui(ui::UiArgs),
    /// Print this CLI's version and the controller's
    Version,
    /// Run a whole fleet on this machine: a controller, simulated sync servers and the example
    /// fleet; writes a `dev` context into the CLI config so a second terminal can drive it
    #[cfg(feature = "dev")]
    Dev(crate::dev::DevArgs),
}

/// Rejects empty or blank notes.
fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty: say why".to_string())
    } else {
        Ok(s.to_string())
    }
}

/// Everything a command can fail with; `Display` is the one line after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Config file or context problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Could not connect to the controller.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The controller answered a call with an error status.
    #[error("{line}")]
    Rpc { line: String },
    /// `run --follow` lost the watch for too long.
    #[error(
        "lost the watch on run {run_id} for {}s: {cause}; the run continues on the agent — check it with 'syncfleet runs show {run_id}'",
        runs::WATCH_GIVE_UP.as_secs()
    )]
    WatchLost { run_id: String, cause: String },
    /// Writing to stdout failed (other than a closed pipe, which is not an error).
    #[error("cannot write output: {0}")]
    Stdout(#[source] std::io::Error),
    /// A list of problems (invalid fleet files, or the controller's INVALID_ARGUMENT message):
    /// `details` is printed verbatim before the `error: {summary}` line.
    #[error("{summary}")]
    Invalid { details: String, summary: String },
    /// A request that reached the controller but did not do what was asked (e.g. nothing to
    /// delete).
    #[error("{0}")]
    Failed(String),
}

/// Entry point of the `syncfleet` binary: builds a Tokio runtime and runs
/// [`main_with_args`] with the process arguments.
pub fn main() -> ExitCode {
    let cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // `dev` is a long-running daemon with its own multi-threaded runtime and signal handling.
    #[cfg(feature = "dev")]
    if let Command::Dev(args) = &cli.command {
        return crate::dev::main(args, cli.config.as_deref());
    }
    // `process::runtime` ends with exit code 1 (`EXIT_FAILED`) when the runtime cannot start.
    let rt = match syncfleet_proto::process::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(run_parsed(&cli))
}

/// Parses the arguments; on a usage error (or `--help`/`--version`) prints clap's message and
/// returns the exit code to end with.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, ExitCode> {
    Cli::try_parse_from(args).map_err(|e| {
        // --help and --version are "errors" with exit code 0 and go to stdout.
        let _ = e.print();
        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE))
    })
}

/// Parses `args` (including the program name) and runs the command; returns the exit code per
/// the module's contract, having printed data to stdout and messages to stderr.
pub async fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match parse(args) {
        Ok(cli) => run_parsed(&cli).await,
        Err(code) => code,
    }
}

/// Runs a parsed command (other than `dev`) and turns its outcome into the exit code.
async fn run_parsed(cli: &Cli) -> ExitCode {
    match execute(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let CliError::Invalid { details, .. } = &e
                && !details.is_empty()
            {
                eprintln!("{details}");
            }
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs one parsed command; `Ok` carries the exit code for outcomes that are not errors of the
/// CLI itself (a followed run that did not succeed).
pub async fn execute(cli: &Cli) -> Result<u8, CliError> {
    // apply checks its files before anything else: nothing is sent when they are wrong, and
    // no controller is needed to find out.
    let prepared = match &cli.command {
        Command::Apply(a) => documents::prepare_apply(&a.files)?,
        _ => Vec::new(),
    };
    let printer = Printer {
        format: cli.output.format(),
        view: cli.view(),
    };
    // Commands that need no controller (or, for `version`, print before asking one).
    match &cli.command {
        Command::Completion { shell } => return completion::completion(*shell),
        Command::Docs(c) => return completion::docs(c),
        Command::Config(c) => return printer.config(cli.config.as_deref(), c),
        Command::Version => return version::version(cli, &printer).await,
        _ => {}
    }
    let rc = resolve(cli)?;
    let mut client = connect::connect(&rc).await?;
    let s = Session {
        rc: &rc,
        format: printer.format,
        view: printer.view,
    };
    let client = &mut client;
    match &cli.command {
        Command::Agents(c) => s.agents(client, c).await,
        Command::Run(args) => s.run(client, args).await,
        Command::Runs(c) => s.runs(client, c).await,
        Command::Timeline(a) => s.timeline(client, a).await,
        Command::Ui(a) => s.ui(client, a).await,
        Command::Apply(a) => s.apply(client, a, prepared).await,
        Command::Get { kind, name } => s.get(client, *kind, name.as_deref()).await,
        Command::Delete { kind, name } => s.delete(client, *kind, name).await,
        Command::Schedules(c) => s.schedules(client, c).await,
        Command::Fleet(c) => s.fleet(client, c).await,
        Command::Notifiers(c) => s.notifiers(client, c).await,
        Command::Tokens(c) => s.tokens(client, c).await,
        Command::Operators(c) => s.operators(client, c).await,
        Command::Audit(c) => s.audit(client, c).await,
        Command::Completion { .. } | Command::Docs(_) | Command::Config(_) | Command::Version => {
            Err(CliError::Failed(
                "this command runs without a controller and was handled above".to_string(),
            ))
        }
        #[cfg(feature = "dev")]
        Command::Dev(_) => Err(CliError::Failed(
            "`dev` runs as its own process: start it with `syncfleet dev`".to_string(),
        )),
    }
}

/// How to reach the controller for this invocation: flags, then the `SYNCFLEET_ADDR`/`_CACERT`/
/// `_CERT`/`_KEY` variables, then the context ([`contexts::resolve_connection`]).
fn resolve(cli: &Cli) -> Result<ResolvedContext, CliError> {
    Ok(contexts::resolve_connection(
        cli.config.as_deref(),
        cli.context.as_deref(),
        &cli.connection_flags(),
        &contexts::Connection::from_env(),
    )?)
}

/// Per-invocation state shared by the commands; each command file adds its handlers as methods.
struct Session<'a> {
    rc: &'a ResolvedContext,
    format: OutputFormat,
    /// `-o wide` and `--no-headers`, applied to lists by [`Session::print_list`].
    view: table::View,
}

/// Printing in the chosen format, for commands with or without a controller ([`Session`]
/// prints through it).
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    format: OutputFormat,
    view: table::View,
}

impl Printer {
    /// Prints a machine-readable document in the chosen format (`-o yaml` as YAML, otherwise
    /// JSON).
    fn data(&self, v: &serde_json::Value) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Yaml => output::out_yaml(v),
            OutputFormat::Json | OutputFormat::Table => output::out_json(v),
        }
    }

    /// Prints what a call returned: `json` with `-o json`/`-o yaml`; in table mode `text` on
    /// stdout, then `hint` (what happens next, how to undo it) on stderr when there is one, so
    /// that stdout holds the result alone for scripts.
    fn print_result(
        &self,
        json: &serde_json::Value,
        text: &str,
        hint: Option<&str>,
    ) -> Result<u8, CliError> {
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(json)?,
            OutputFormat::Table => {
                output::out(text)?;
                if let Some(hint) = hint {
                    eprintln!("{hint}");
                }
            }
        }
        Ok(EXIT_OK)
    }

    /// Prints a list: `json` with `-o json`/`-o yaml`; in table mode the `table` of its rows
    /// (rendered under the `-o wide`/`--no-headers` view), or `none` on stderr when it
    /// `is_empty` (stdout then stays empty).
    fn print_list(
        &self,
        json: &serde_json::Value,
        is_empty: bool,
        table: impl FnOnce() -> String,
        none: &str,
    ) -> Result<u8, CliError> {
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(json)?,
            OutputFormat::Table if is_empty => eprintln!("{none}"),
            OutputFormat::Table => output::out(&table::with_view(self.view, table))?,
        }
        Ok(EXIT_OK)
    }
}

impl Session<'_> {
    fn printer(&self) -> Printer {
        Printer {
            format: self.format,
            view: self.view,
        }
    }

    /// [`Printer::data`].
    fn data(&self, v: &serde_json::Value) -> Result<(), CliError> {
        self.printer().data(v)
    }

    /// [`Printer::print_result`].
    fn print_result(
        &self,
        json: &serde_json::Value,
        text: &str,
        hint: Option<&str>,
    ) -> Result<u8, CliError> {
        self.printer().print_result(json, text, hint)
    }

    /// [`Printer::print_list`].
    fn print_list(
        &self,
        json: &serde_json::Value,
        is_empty: bool,
        table: impl FnOnce() -> String,
        none: &str,
    ) -> Result<u8, CliError> {
        self.printer().print_list(json, is_empty, table, none)
    }

    fn rpc_err(&self, status: &tonic::Status) -> CliError {
        let mut line = connect::describe_status(status, &self.rc.context.controller);
        if let Some(id) = access::request_id(status) {
            line.push_str(&format!(" (request {id})"));
        }
        CliError::Rpc { line }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use std::time::Duration;
    use syncfleet_proto::v1::RunState;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Splits a command line the way a shell does for the simple quoting used in examples.
    #[cfg(feature = "dev")]
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                _ => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[cfg(feature = "dev")]
    #[test]
    fn help_examples_parse_and_name_what_the_dev_fleet_has() {
        let help = Cli::command().render_long_help().to_string();
        let examples: Vec<&str> = help
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("syncfleet "))
            .collect();
        assert!(examples.len() >= 5, "{help}");
        let docs = crate::dev::example_documents().unwrap();
        let has = |kind: &str, name: &str| docs.iter().any(|d| d.kind == kind && d.name == name);
        // `dev` names its agents sync-01 .. sync-NN (3 by default).
        let dev_agent = |name: &str| ["sync-01", "sync-02", "sync-03"].contains(&name);
        for line in examples {
            // A shell redirection is not the CLI's business.
            let line = line.split(" > ").next().unwrap_or(line);
            let cli = Cli::try_parse_from(shell_words(line))
                .unwrap_or_else(|e| panic!("help example {line:?} does not parse: {e}"));
            match &cli.command {
                Command::Run(args) => {
                    for agent in &args.agents {
                        assert!(dev_agent(agent), "{line}: no agent {agent}");
                    }
                    if let Some(seq) = &args.sequence {
                        assert!(has("Sequence", seq), "{line}: no sequence {seq}");
                    }
                }
                Command::Schedules(
                    SchedulesCommand::Show { name } | SchedulesCommand::Pause { name, .. },
                ) => assert!(has("Schedule", name), "{line}: no schedule {name}"),
                Command::Apply(args) => {
                    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                    for f in &args.files {
                        assert!(root.join(f).exists(), "{line}: no {}", f.display());
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn parses_run_and_runs_list() {
        let cli = Cli::try_parse_from([
            "syncfleet",
            "run",
            "sync01",
            "--step",
            "AD:Delta Import",
            "--step",
            "HR:Export",
            "--follow",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.output.format(), OutputFormat::Json);
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.steps.len(), 2);
        assert!(args.follow);

        let cli = Cli::try_parse_from([
            "syncfleet",
            "runs",
            "list",
            "--state",
            "failed,cancelled",
            "--state",
            "running",
        ])
        .unwrap();
        let Command::Runs(RunsCommand::List { states, limit, .. }) = cli.command else {
            panic!("not runs list")
        };
        assert_eq!(
            states,
            vec![RunState::Failed, RunState::Cancelled, RunState::Running]
        );
        assert_eq!(limit, 20);
    }

    #[test]
    fn usage_errors_exit_2() {
        let e =
            Cli::try_parse_from(["syncfleet", "run", "sync01", "--step", "nocolon"]).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE));
        let e = Cli::try_parse_from(["syncfleet", "runs", "list", "--state", "bogus"]).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE));
        let e = Cli::try_parse_from(["syncfleet", "run", "sync01"]).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE));
    }

    #[tokio::test]
    async fn missing_config_file_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        let code = main_with_args(
            [
                "syncfleet",
                "--config",
                p.to_str().unwrap(),
                "agents",
                "list",
            ]
            .into_iter()
            .map(OsString::from),
        )
        .await;
        assert_eq!(code, ExitCode::from(EXIT_FAILED));
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("syncfleet").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        let e = Cli::try_parse_from(std::iter::once("syncfleet").chain(args.iter().copied()))
            .expect_err("should be a usage error");
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE), "{args:?}: {e}");
        e
    }

    #[test]
    fn parses_run_with_a_sequence_but_not_with_both() {
        let Command::Run(a) = parse(&["run", "sync01", "--sequence", "delta-cycle", "-f"]).command
        else {
            panic!("not run")
        };
        assert_eq!(a.sequence.as_deref(), Some("delta-cycle"));
        assert!(a.steps.is_empty());
        assert!(a.follow);
        usage_error(&["run", "sync01", "--sequence", "x", "--step", "AD:Export"]);
        usage_error(&["run", "sync01"]);
    }

    #[test]
    fn parses_apply() {
        let cli = parse(&[
            "apply",
            "-f",
            "a.yaml",
            "--filename",
            "dir",
            "--dry-run",
            "--prune",
        ]);
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.files, vec![PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert!(a.dry_run && a.prune);
        let Command::Apply(a) = parse(&["apply", "-f", "a.yaml"]).command else {
            panic!("not apply")
        };
        assert!(!a.dry_run && !a.prune);
        usage_error(&["apply"]);
    }

    #[test]
    fn parses_get_and_delete_with_singular_or_plural_kinds() {
        let cli = parse(&["get", "schedules", "-o", "yaml"]);
        assert_eq!(cli.output.format(), OutputFormat::Yaml);
        assert!(matches!(
            cli.command,
            Command::Get {
                kind: DocKind::Schedules,
                name: None
            }
        ));
        let Command::Get { kind, name } = parse(&["get", "sequence", "delta-cycle"]).command else {
            panic!("not get")
        };
        assert_eq!(
            (kind, name.as_deref()),
            (DocKind::Sequences, Some("delta-cycle"))
        );
        assert_eq!(kind.kind(), "Sequence");
        let Command::Delete { kind, name } = parse(&["delete", "schedule", "x"]).command else {
            panic!("not delete")
        };
        assert_eq!((kind.kind(), name.as_str()), ("Schedule", "x"));
        usage_error(&["get", "widgets"]);
        usage_error(&["delete", "schedule"]);
    }

    #[test]
    fn pausing_requires_a_note() {
        let Command::Schedules(SchedulesCommand::Pause { name, note }) =
            parse(&["schedules", "pause", "delta", "--note", "AD maintenance"]).command
        else {
            panic!("not pause")
        };
        assert_eq!((name.as_str(), note.as_str()), ("delta", "AD maintenance"));
        usage_error(&["schedules", "pause", "delta"]);
        usage_error(&["schedules", "pause", "delta", "--note", "  "]);
        usage_error(&["fleet", "pause"]);
        let Command::Schedules(SchedulesCommand::Resume { note, .. }) =
            parse(&["schedules", "resume", "delta"]).command
        else {
            panic!("not resume")
        };
        assert_eq!(note, "");
        assert!(matches!(
            parse(&["schedules", "show", "delta", "-o", "json"]).command,
            Command::Schedules(SchedulesCommand::Show { .. })
        ));
        assert!(matches!(
            parse(&["schedules", "ls"]).command,
            Command::Schedules(SchedulesCommand::List)
        ));
        let Command::Fleet(FleetCommand::Pause { note }) =
            parse(&["fleet", "pause", "--note", "move"]).command
        else {
            panic!("not fleet pause")
        };
        assert_eq!(note, "move");
        assert!(matches!(
            parse(&["fleet", "resume"]).command,
            Command::Fleet(FleetCommand::Resume { .. })
        ));
        assert!(matches!(
            parse(&["fleet", "status"]).command,
            Command::Fleet(FleetCommand::Status)
        ));
    }

    #[test]
    fn parses_drain_approve_and_held_state() {
        let Command::Agents(AgentsCommand::Drain { name, note }) =
            parse(&["agents", "drain", "sync01", "--note", "patch"]).command
        else {
            panic!("not drain")
        };
        assert_eq!((name.as_str(), note.as_str()), ("sync01", "patch"));
        assert!(matches!(
            parse(&["agents", "resume", "sync01"]).command,
            Command::Agents(AgentsCommand::Resume { .. })
        ));
        let Command::Runs(RunsCommand::Approve { id, note }) =
            parse(&["runs", "approve", "r1", "--note", "expected deletes"]).command
        else {
            panic!("not approve")
        };
        assert_eq!((id.as_str(), note.as_str()), ("r1", "expected deletes"));
        let Command::Runs(RunsCommand::Reject { id, note }) =
            parse(&["runs", "reject", "r1", "--note", "wrong feed"]).command
        else {
            panic!("not reject")
        };
        assert_eq!((id.as_str(), note.as_str()), ("r1", "wrong feed"));
        let Command::Runs(RunsCommand::List { states, .. }) =
            parse(&["runs", "list", "--state", "held"]).command
        else {
            panic!("not runs list")
        };
        assert_eq!(states, vec![RunState::Held]);
    }

    #[test]
    fn parses_security_commands() {
        let Command::Tokens(access::TokensCommand::Create { agent, labels, ttl }) = parse(&[
            "tokens",
            "create",
            "--agent",
            "sync-07",
            "--labels",
            "env=prod,role=staging",
            "--labels",
            "site=ams",
            "--ttl",
            "1h",
        ])
        .command
        else {
            panic!("not tokens create")
        };
        assert_eq!(agent, "sync-07");
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[1], ("role".to_string(), "staging".to_string()));
        assert_eq!(ttl, Some(3600));
        let Command::Tokens(access::TokensCommand::Create { labels, ttl, .. }) =
            parse(&["tokens", "create", "--agent", "a", "-o", "json"]).command
        else {
            panic!("not tokens create")
        };
        assert!(labels.is_empty());
        assert_eq!(ttl, None);
        usage_error(&["tokens", "create"]);
        usage_error(&["tokens", "create", "--agent", "a", "--labels", "nokv"]);
        usage_error(&["tokens", "create", "--agent", "a", "--ttl", "soon"]);

        let Command::Operators(access::OperatorsCommand::Create {
            name,
            role,
            ttl,
            out,
        }) = parse(&[
            "operators",
            "create",
            "alice",
            "--role",
            "viewer",
            "--ttl",
            "90d",
            "--out",
            "/tmp/alice/config.toml",
        ])
        .command
        else {
            panic!("not operators create")
        };
        assert_eq!(name, "alice");
        assert_eq!(role, access::RoleArg::Viewer);
        assert_eq!(role.proto(), syncfleet_proto::v1::Role::Viewer);
        assert_eq!(ttl, Some(90 * 86_400));
        assert_eq!(out, Some(PathBuf::from("/tmp/alice/config.toml")));
        usage_error(&["operators", "create", "alice"]);
        usage_error(&["operators", "create", "alice", "--role", "root"]);
        usage_error(&["operators", "create", "al ice", "--role", "admin"]);

        let Command::Agents(AgentsCommand::Revoke { name, note }) =
            parse(&["agents", "revoke", "sync-01", "--note", "decommissioned"]).command
        else {
            panic!("not revoke")
        };
        assert_eq!(
            (name.as_str(), note.as_str()),
            ("sync-01", "decommissioned")
        );

        let Command::Audit(access::AuditCommand::List { since, who, limit }) = parse(&[
            "audit",
            "list",
            "--since",
            "1h",
            "--who",
            "operator/alice",
            "--limit",
            "5",
            "-o",
            "json",
        ])
        .command
        else {
            panic!("not audit list")
        };
        assert_eq!(since, Some(access::Since::Ago(Duration::from_secs(3600))));
        assert_eq!(who.as_deref(), Some("operator/alice"));
        assert_eq!(limit, Some(5));
        assert!(matches!(
            parse(&["audit", "ls"]).command,
            Command::Audit(access::AuditCommand::List { since: None, .. })
        ));
        usage_error(&["audit", "list", "--since", "yesterday"]);
        usage_error(&["audit", "list", "--limit", "0"]);
    }

    #[test]
    fn failed_calls_show_the_request_id() {
        let rc = ResolvedContext {
            name: "dev".into(),
            config_path: PathBuf::from("/c.toml"),
            context: contexts::Context {
                controller: "https://h:1".into(),
                controllers: Vec::new(),
                ca_cert: "/ca.pem".into(),
                client_cert: "/op.pem".into(),
                client_key: "/op.key".into(),
                tls_server_name: None,
            },
        };
        let s = Session {
            rc: &rc,
            format: OutputFormat::Table,
            view: table::View::default(),
        };
        let mut status = tonic::Status::permission_denied(
            "operator/alice (viewer) lacks permission run:operate",
        );
        let plain = s.rpc_err(&status).to_string();
        assert!(!plain.contains("(request"), "{plain}");
        status
            .metadata_mut()
            .insert("x-request-id", "01J0REQ".parse().unwrap());
        let line = s.rpc_err(&status).to_string();
        assert!(
            line.starts_with(
                "operator/alice (viewer) lacks permission run:operate (PermissionDenied)"
            ),
            "{line}"
        );
        assert!(line.ends_with(" (request 01J0REQ)"), "{line}");
    }

    #[tokio::test]
    async fn apply_checks_files_before_config_or_network() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "kind: Schedule\nname: s\nsequence: q\ntargets: {agents: [a]}\ntrigger: {every: 5m}\noverlap: skipp\n",
        )
        .unwrap();
        let missing_config = dir.path().join("none.toml");
        let cli = parse(&[
            "--config",
            missing_config.to_str().unwrap(),
            "apply",
            "-f",
            bad.to_str().unwrap(),
        ]);
        match execute(&cli).await {
            Err(CliError::Invalid { details, summary }) => {
                assert_eq!(
                    details,
                    format!(
                        "{} document 1 (Schedule s): overlap: unknown value \"skipp\"; use skip, buffer_one or cancel_other (line 6)",
                        bad.display()
                    )
                );
                assert!(summary.contains("nothing was sent"), "{summary}");
            }
            other => panic!("expected the file problems, got {other:?}"),
        }
        // A valid file gets as far as the (missing) config.
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "kind: Schedule\nname: s\nsequence: q\ntargets: {agents: [a]}\ntrigger: {every: 5m}\n",
        )
        .unwrap();
        let cli = parse(&[
            "--config",
            missing_config.to_str().unwrap(),
            "apply",
            "-f",
            good.to_str().unwrap(),
        ]);
        assert!(matches!(execute(&cli).await, Err(CliError::Config(_))));
        let code = main_with_args(
            ["syncfleet", "apply", "-f", bad.to_str().unwrap()]
                .into_iter()
                .map(OsString::from),
        )
        .await;
        assert_eq!(code, ExitCode::from(EXIT_FAILED));
    }
}
