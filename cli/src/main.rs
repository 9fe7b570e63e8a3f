//! `axctl` (also installed as `git-ax`): run coding agents in microVMs.

mod error;
mod image;
mod paths;

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
    /// Build and list guest images.
    Image {
        #[command(subcommand)]
        cmd: image::ImageCmd,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.cmd {
        Cmd::Image { cmd } => image::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            error::report(&e);
            std::process::exit(error::exit_code(&e));
        }
    }
}
