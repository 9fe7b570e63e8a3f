//! The `axctl` command line (also installed as `git-ax`, so `git ax …` works).
//!
//! Both binaries call [`main`]; the modules are public to the crate's tests.

pub mod agents;
pub mod cmd;
pub mod config;
pub mod secrets;
pub mod table;

// The crates below the command line, under the names the commands use.
pub(crate) use ax_common::{error, paths};
pub(crate) use ax_supervisor::{client, driver, state};

use clap::{Parser, Subcommand};

/// Run coding agents in parallel, each in its own microVM; their work lands on branch ax/<name>.
#[derive(Debug, Parser)]
#[command(name = "axctl", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start an agent in a new microVM (in the background unless --wait).
    Run(cmd::run::RunArgs),
    /// List agents (live ones; --all for every one).
    Ps {
        /// Include exited and failed agents.
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print an agent's output.
    Logs {
        name: String,
        /// Keep printing new output until the agent ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Attach the terminal to the agent's PTY (detach with Ctrl+] then d).
    Attach { name: String },
    /// Run a command in a running agent's VM.
    Exec {
        name: String,
        /// Allocate a PTY (default: when stdin and stdout are terminals).
        #[arg(short = 't', long, overrides_with = "no_tty")]
        tty: bool,
        /// Never allocate a PTY.
        #[arg(short = 'T', long)]
        no_tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop an agent: SIGTERM to it, then the VM is torn down.
    Stop { name: String },
    /// Remove ended agents' state (-f stops running ones first).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// Show everything about one agent.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the paths an agent created (A), modified (M) and deleted (D) in its repository.
    Diff {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Build (or move forward) branch ax/<name> from the agent's work now.
    Commit { name: String },
    /// What the agents' LLM calls cost (tokens and USD, from the ledger).
    Cost(cmd::cost::CostArgs),
    /// An agent's audit log: its connections and HTTP requests.
    Audit(cmd::audit::AuditArgs),
    /// List agent definitions (built-in, user, repository) and whether their secrets are
    /// available.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Manage stored secrets (values are read from stdin, never from the command line).
    Secrets {
        #[command(subcommand)]
        cmd: cmd::secrets::SecretsCmd,
    },
    /// Show which credential each provider would use (stored, environment, none).
    Accounts {
        #[arg(long)]
        json: bool,
    },
    /// Build and list guest images.
    Image {
        #[command(subcommand)]
        cmd: cmd::image::ImageCmd,
    },
    /// (internal) Snapshot / branch plumbing, for tests and debugging.
    #[command(name = "__git", hide = true)]
    Git {
        #[command(subcommand)]
        cmd: cmd::git::GitCmd,
    },
    /// (internal) The per-agent supervisor process started by `run`.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        name: String,
        #[arg(long)]
        attached: bool,
    },
}

/// Parses the command line, runs the command, exits with its code (0, 1 runtime, 2 usage).
pub fn main() -> ! {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.cmd {
        Cmd::Run(a) => cmd::run::run(a),
        Cmd::Ps { all, json } => cmd::ps::ps(all, json),
        Cmd::Logs { name, follow } => cmd::logs::logs(&name, follow),
        Cmd::Attach { name } => cmd::attach::attach(&name),
        Cmd::Exec {
            name,
            tty,
            no_tty,
            command,
        } => {
            let tty = if no_tty {
                Some(false)
            } else if tty {
                Some(true)
            } else {
                None
            };
            cmd::attach::exec(&name, command, tty)
        }
        Cmd::Stop { name } => cmd::lifecycle::stop(&name),
        Cmd::Rm { names, force } => cmd::lifecycle::rm(&names, force),
        Cmd::Inspect { name, json } => cmd::ps::inspect(&name, json),
        Cmd::Diff { name, json } => cmd::branch::diff(&name, json),
        Cmd::Commit { name } => cmd::branch::commit(&name),
        Cmd::Cost(a) => cmd::cost::cost(a),
        Cmd::Audit(a) => cmd::audit::audit(a),
        Cmd::Agents { json } => cmd::agents::agents(json),
        Cmd::Secrets { cmd } => cmd::secrets::run(cmd),
        Cmd::Accounts { json } => cmd::accounts::accounts(json),
        Cmd::Image { cmd } => cmd::image::run(cmd),
        Cmd::Git { cmd } => cmd::git::run(cmd),
        Cmd::Supervise { name, attached } => cmd::supervise::run(&name, attached),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            error::report(&e);
            std::process::exit(error::exit_code(&e));
        }
    }
}
