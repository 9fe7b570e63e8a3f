//! `axctl image build|ls|rm|prune`: the flags, over the image store of ax-image.

use ax_image::{agents, build};
use std::path::PathBuf;

/// `axctl image …`
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Build the guest image (kernel, initrd with agentd, rootfs.erofs, manifest.json) into
    /// $XDG_CACHE_HOME/ax/images/<id>/ and print its id. Needs root (mmdebstrap).
    Build(BuildArgs),
    /// List built images, newest (the default) first.
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove images by id (or unique prefix); refuses images a live agent boots from.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove every image except the newest (the default) and those live agents use.
    Prune,
}

/// Flags of `axctl image build`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// agentd binary to install as /init [default: the agentd beside axctl]
    #[arg(long, value_name = "PATH")]
    pub agentd: Option<PathBuf>,
    /// apt sources file handed to mmdebstrap (deb822 .sources or one-line .list)
    /// [default: /etc/apt/sources.list.d/debian.sources]
    #[arg(long, value_name = "FILE", env = "AX_APT_SOURCES")]
    pub sources: Option<PathBuf>,
    /// Lock file with the pins [default: the image/debian.lock.toml built into axctl]
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// No progress display on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Keep the build directory (rootfs tree, build.log) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// Build the image without the agents layer (agents.erofs: the agent CLIs on /opt/ax).
    #[arg(long, conflicts_with = "agents")]
    pub no_agents: bool,
    /// Only these runtimes in the agents layer, comma-separated, e.g. claude,codex (node is
    /// added when one needs it) [default: all in the agents lock]
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub agents: Option<Vec<String>>,
    /// Agents lock file [default: the image/agents.lock.toml built into axctl]
    #[arg(long, value_name = "FILE")]
    pub agents_lock: Option<PathBuf>,
}

impl From<&BuildArgs> for build::Options {
    fn from(a: &BuildArgs) -> Self {
        build::Options {
            agentd: a.agentd.clone(),
            sources: a.sources.clone(),
            lock: a.lock.clone(),
            quiet: a.quiet,
            keep_work: a.keep_work,
            agents: match (&a.agents, a.no_agents) {
                (_, true) => agents::Selection::None,
                (Some(names), false) => agents::Selection::Only(names.clone()),
                (None, false) => agents::Selection::All,
            },
            agents_lock: a.agents_lock.clone(),
            ..Default::default()
        }
    }
}

/// Runs an `axctl image` subcommand; returns the exit code.
pub fn run(cmd: ImageCmd) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::Build(args) => {
            let img = build::build(&(&args).into())?;
            println!("{}", img.id);
            Ok(0)
        }
        ImageCmd::Rm { ids } => {
            ax_image::remove(&ids, &images_in_use()?, |id| println!("{id}"))?;
            Ok(0)
        }
        ImageCmd::Prune => {
            ax_image::prune(&images_in_use()?, |id| println!("{id}"))?;
            Ok(0)
        }
        ImageCmd::Ls { json } => {
            let images = ax_image::list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print!("{}", ax_image::table(&images, ax_image::now_secs()));
            }
            Ok(0)
        }
    }
}

/// Ids of the images live (starting or running) agents boot from.
fn images_in_use() -> anyhow::Result<Vec<String>> {
    Ok(crate::state::list()?
        .into_iter()
        .filter(|(_, s)| s.status.is_live())
        .map(|(_, s)| s.image_id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: ImageCmd,
        }
        let t = T::try_parse_from([
            "t",
            "build",
            "--agentd",
            "/a",
            "--sources",
            "/s.sources",
            "-q",
        ])
        .unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(b.agentd.as_deref(), Some(std::path::Path::new("/a")));
        assert!(b.quiet && !b.keep_work);
        assert_eq!(build::Options::from(&b).agents, agents::Selection::All);
        let t = T::try_parse_from(["t", "build", "--agents", "claude,codex"]).unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(
            build::Options::from(&b).agents,
            agents::Selection::Only(vec!["claude".into(), "codex".into()])
        );
        let t = T::try_parse_from(["t", "build", "--no-agents"]).unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(build::Options::from(&b).agents, agents::Selection::None);
        assert!(T::try_parse_from(["t", "build", "--no-agents", "--agents", "claude"]).is_err());
        let t = T::try_parse_from(["t", "ls", "--json"]).unwrap();
        assert!(matches!(t.c, ImageCmd::Ls { json: true }));
    }
}
