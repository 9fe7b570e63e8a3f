//! `axctl run`: start an agent in a new microVM.

use crate::agents::{self, Agent, LaunchVars, Mode};
use crate::driver::{self, VmmChoice};
use crate::error::usage;
use crate::secrets;
use crate::state::{self, now_ms, AgentState, Status, Timings};
use anyhow::{Context, Result};
use ax_image as image;
use ax_supervisor::launch::{GuestFile, LaunchRecord};
use ax_supervisor::netconf;
use ax_supervisor::secret::ResolvedSecret;
use nix::sys::signal::{SigSet, Signal};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `--vmm`: which VMM runs the guest (ax-supervisor's [`VmmChoice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmmArg {
    Auto,
    Ax,
    Qemu,
}

impl From<VmmArg> for VmmChoice {
    fn from(v: VmmArg) -> Self {
        match v {
            VmmArg::Auto => VmmChoice::Auto,
            VmmArg::Ax => VmmChoice::Ax,
            VmmArg::Qemu => VmmChoice::Qemu,
        }
    }
}

/// `axctl run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Agent name (default: a slug of the prompt); also the guest host name and branch ax/<name>.
    #[arg(long)]
    pub name: Option<String>,
    /// Agent definition to run.
    #[arg(long, default_value = "shell")]
    pub agent: String,
    /// Which VMM runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub vmm: VmmArg,
    /// Virtual CPUs [default: the agent definition's `cpus`, else 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: Option<u32>,
    /// Guest memory in MiB [default: the agent definition's `memory`, else 1024].
    #[arg(long, value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub memory: Option<u32>,
    /// Disk quota of the agent's /workspace changes (and of its objects share), in MiB: a
    /// write past it fails with ENOSPC in the guest; 0 = unlimited [default: 10240].
    #[arg(long, value_name = "MIB")]
    pub disk_quota: Option<u64>,
    /// Stop the agent after it has run this long (e.g. 30s, 10m, 2h; boot not counted); it is
    /// then marked failed [default: the agent definition's `timeout`, else none].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Image id (or unique prefix) to boot; default: the newest built image.
    #[arg(long)]
    pub image: Option<String>,
    /// The git repository whose work tree the agent gets on /workspace (a snapshot of HEAD plus
    /// the uncommitted changes, copy-on-write; the host tree is never written); its changes
    /// become branch ax/<name> when it ends. Default: the repository around the current
    /// directory, if there is one.
    #[arg(long, value_name = "PATH", conflicts_with = "no_repo")]
    pub repo: Option<std::path::PathBuf>,
    /// Give the agent an empty /workspace even inside a git repository.
    #[arg(long)]
    pub no_repo: bool,
    /// Network settings for the agent (TOML: [[route]], [policy], [[secret]], [limits]; see
    /// docs/network.md). Secrets' values stay on the host; the agent gets placeholders in its
    /// environment under the secrets' names.
    #[arg(long, value_name = "FILE", conflicts_with = "no_net")]
    pub net_config: Option<std::path::PathBuf>,
    /// Run the agent without any network (no network device in the VM).
    #[arg(long)]
    pub no_net: bool,
    /// Author (and, unless `[branch] committer_*` is configured, committer) of the commits on
    /// ax/<name> and of the agent's own commits, instead of the config's `[branch]` identity
    /// (docs/config.md); kept in the agent's state for later `axctl commit`.
    #[arg(long, value_name = "NAME <EMAIL>")]
    pub author: Option<String>,
    /// Stay in the foreground: stream the agent's output, forward stdin, exit with its code.
    #[arg(short, long)]
    pub wait: bool,
    /// What the agent should do (for the `shell` agent: a shell command). Without it the
    /// agent's interactive command runs in the background on a terminal (e.g. Claude Code's
    /// TUI, `bash -l` for `shell`): `axctl attach NAME` to use it.
    #[arg(long)]
    pub prompt: Option<String>,
}

/// `axctl run`: resolve the definition, preflight (prompt, identity, network, secrets),
/// prepare the agent's state (image, launch record, snapshot), start the supervisor, and
/// with `--wait` stay in the foreground until the agent ends.
pub fn run(args: RunArgs) -> Result<i32> {
    let t0 = Instant::now();
    let agent = resolve_definition(&args)?;
    let pre = preflight(&args, &agent)?;
    let (name, dir) = prepare_state(&args, &agent, &pre, t0)?;
    let mut cmd = supervisor_command(&name, &dir, args.wait)?;
    if args.wait {
        return foreground_wait(cmd, &name, &dir);
    }
    cmd.spawn().context("starting the supervisor")?;
    println!("{name}");
    Ok(0)
}

/// The definition: the repository's .ax/agents (of --repo, else around the current
/// directory), the user's, the built-ins (docs/agents.md).
fn resolve_definition(args: &RunArgs) -> Result<Agent> {
    match &args.repo {
        Some(r) => {
            let root = gix::discover(r)
                .ok()
                .and_then(|g| g.workdir().map(|w| w.to_path_buf()));
            agents::load(&agents::Dirs::new(root.as_deref()), &args.agent)
        }
        None if args.no_repo => agents::load(&agents::Dirs::new(None), &args.agent),
        None => agents::find(&args.agent),
    }
}

/// What the preflight decided, before anything is built or started.
struct Preflight {
    branch_cfg: crate::config::BranchConfig,
    author: Option<ax_branch::Person>,
    net: netconf::NetChoice,
    /// The agent's secrets with their values (none without a network): each gets a fresh
    /// placeholder in the launch record; the supervisor resolves them again for the netstack.
    resolved: Vec<ResolvedSecret>,
}

/// Every check that can fail on the user's input, before anything is built or started
/// (usage errors, exit 2): the name, the prompt, the identity's config and --author, the
/// network flags, and the secrets (a missing one names the `axctl secrets add` that fixes
/// it; the supervisor resolves them again).
fn preflight(args: &RunArgs, agent: &Agent) -> Result<Preflight> {
    if let Some(n) = &args.name {
        state::validate_name(n)?;
    }
    match &args.prompt {
        Some(p) if p.trim().is_empty() => {
            return Err(usage(
                "the prompt is empty",
                "say what the agent should do: --prompt '…' (or leave it out for an interactive session)",
            ))
        }
        None if args.wait => {
            return Err(usage(
                "an interactive session (no --prompt) runs in the background",
                format!(
                    "drop --wait and use `axctl attach NAME`, or give --prompt '…' with --wait (agent {})",
                    agent.name
                ),
            ))
        }
        _ => {}
    }
    let branch_cfg = crate::config::load()?.branch;
    let author = match &args.author {
        Some(a) => Some(crate::config::parse_person(a)?),
        None => None,
    };
    if let Some(a) = &author {
        branch_cfg
            .identity_with_author("agent", Some(a))
            .map_err(|e| usage(format!("--author: {e:#}"), "give \"Name <email>\""))?;
    }
    let net = check_net(args)?;
    let resolved = if net.enabled {
        secrets::resolve(&agent.secrets)?
    } else {
        Vec::new()
    };
    Ok(Preflight {
        branch_cfg,
        author,
        net,
        resolved,
    })
}

/// Picks the VMM and the image (building the default one the first time), creates the
/// agent's state directory and fills it: `launch.json`, `state.json` with the identity,
/// the repository snapshot, `net.json` (docs/state.md). On an error after the directory
/// exists, the directory is removed again. Returns the agent's name and directory.
fn prepare_state(
    args: &RunArgs,
    agent: &Agent,
    pre: &Preflight,
    t0: Instant,
) -> Result<(String, std::path::PathBuf)> {
    let vmm = driver::resolve(args.vmm.into())?;
    let img = match image::resolve(args.image.as_deref())? {
        Some(i) => i,
        None if args.image.is_none() => {
            eprintln!("axctl: no guest image built yet; building one now (once, a few minutes)");
            image::build_default()?
        }
        None => unreachable!("resolve(Some) reports unknown ids as errors"),
    };
    let image_ms = t0.elapsed().as_millis() as u64;

    let (name, dir) = match &args.name {
        Some(n) => (n.clone(), state::create_dir(n)?),
        None => state::create_unique(&state::slug(args.prompt.as_deref().unwrap_or(&agent.name)))?,
    };
    let fill = || -> Result<AgentState> {
        let rec = prepare(agent, &name, args.prompt.as_deref(), &pre.resolved)?;
        rec.save(&dir)?;
        let mut st = AgentState {
            name: name.clone(),
            agent: agent.name.to_string(),
            prompt: args.prompt.clone().unwrap_or_default(),
            argv: rec.argv.clone(),
            image_id: img.id.clone(),
            vmm: vmm.to_string(),
            kernel_cmdline: None,
            accel: driver::accel_for(vmm).as_str().to_string(),
            cpus: args.cpus.or(rec.cpus).unwrap_or(1),
            memory_mib: args.memory.or(rec.memory_mib).unwrap_or(1024),
            disk_quota_mib: args.disk_quota,
            timeout_secs: args
                .timeout
                .map(|d| d.as_secs().max(1))
                .or(rec.timeout_secs),
            tty: !args.wait,
            repo: None,
            branch: None,
            identity: None,
            status: Status::Starting,
            exit_code: None,
            reason: None,
            created_ms: now_ms(),
            finished_ms: None,
            supervisor_pid: None,
            vmm_pid: None,
            timings: Timings {
                image_ms: Some(image_ms),
                ..Default::default()
            },
        };
        let identity = pre
            .branch_cfg
            .identity_with_author(&name, pre.author.as_ref())?;
        if let Some(repo) = repo_of(args) {
            st.repo = Some(snapshot_repo(&repo, &dir, &identity)?);
        }
        st.identity = Some(identity);
        pre.net.save(&dir)?;
        Ok(st)
    };
    match fill() {
        Ok(st) => {
            state::save(&dir, &st)?;
            Ok((name, dir))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The repository the agent gets on /workspace: --repo, none with --no-repo, else (like git
/// itself) the repository containing the current directory, if any.
fn repo_of(args: &RunArgs) -> Option<std::path::PathBuf> {
    match (&args.repo, args.no_repo) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => None,
        (None, false) => std::env::current_dir()
            .ok()
            .and_then(|cwd| gix::discover(cwd).ok())
            .and_then(|r| r.workdir().map(|w| w.to_path_buf())),
    }
}

/// `axctl __supervise NAME` in a new session: attached to this terminal with `wait`, else
/// detached with its stderr in `supervisor.log`.
fn supervisor_command(name: &str, dir: &std::path::Path, wait: bool) -> Result<Command> {
    let exe = std::env::current_exe().context("locating the axctl executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("__supervise").arg(name);
    if wait {
        cmd.arg("--attached");
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("supervisor.log"))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    }
    // SAFETY: setsid is async-signal-safe. A new session: the terminal's ^C and hangups do
    // not reach the supervisor directly (the foreground client forwards them).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd)
}

/// `--wait`: runs the supervisor, forwarding ^C / SIGTERM / SIGHUP to it (it forwards them to
/// the agent), and returns the agent's exit code, or ≥ 1 with the reason when it failed.
fn foreground_wait(mut cmd: Command, name: &str, dir: &std::path::Path) -> Result<i32> {
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block()?;
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let sup_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        while let Ok(sig) = sigs.wait() {
            let _ = nix::sys::signal::kill(sup_pid, sig);
        }
    });
    let status = child.wait()?;
    let (_, st) = state::load(name)?;
    match st.status {
        Status::Exited => Ok(st.exit_code.unwrap_or(1)),
        _ => {
            eprintln!(
                "axctl: agent {name} {}: {}; details in {}/console.log and supervisor.log",
                st.status_label(),
                st.reason.as_deref().unwrap_or("unknown reason"),
                dir.display()
            );
            Ok(if status.success() {
                1
            } else {
                status.code().unwrap_or(1).max(1)
            })
        }
    }
}

/// Checks the network flags (usage errors, exit 2) and returns what to record in `net.json`.
fn check_net(args: &RunArgs) -> Result<netconf::NetChoice> {
    if args.no_net {
        return Ok(netconf::NetChoice {
            enabled: false,
            config_file: None,
        });
    }
    let config_file = match &args.net_config {
        Some(p) => {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            let fragment = netconf::load_fragment(&abs)?;
            // The same checks the supervisor's config will get (placeholders do not matter).
            netconf::build_config(
                "check",
                std::path::Path::new("/"),
                Some(fragment),
                |n, _| format!("placeholder-{n}"),
            )?;
            Some(abs)
        }
        None => None,
    };
    netconf::find_binary()?;
    Ok(netconf::NetChoice {
        enabled: true,
        config_file,
    })
}

/// Snapshots `repo` (HEAD + uncommitted changes) into `<dir>/snapshot.json` and
/// `<dir>/objects`; returns the work tree's absolute path.
fn snapshot_repo(
    repo: &std::path::Path,
    dir: &std::path::Path,
    identity: &ax_branch::Identity,
) -> Result<std::path::PathBuf> {
    let root = std::fs::canonicalize(repo).map_err(|e| {
        usage(
            format!("--repo {}: {e}", repo.display()),
            "give the path of a git work tree",
        )
    })?;
    let snap = ax_branch::snapshot(&root, &dir.join("objects")).map_err(|e| {
        usage(
            format!(
                "cannot snapshot {} as a git repository: {e:#}",
                root.display()
            ),
            "give the path of a git work tree (git init, or clone one)",
        )
    })?;
    std::fs::write(
        dir.join(ax_branch::SNAPSHOT_FILE),
        serde_json::to_vec_pretty(&snap)?,
    )
    .context("writing snapshot.json")?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("agent");
    ax_branch::prepare_guest_git(
        &root,
        &snap,
        &dir.join("upper/.git"),
        name,
        identity,
        "/run/ax/objects",
    )
    .context("preparing the agent's .git")?;
    Ok(root)
}

/// Renders `agent` for instance `name`: with a `prompt` its batch command, without one its
/// interactive command (usage error when it has none). Each of the `resolved` secrets (the
/// preflight's; none without a network) gets a fresh placeholder. Returns the record.
pub fn prepare(
    agent: &Agent,
    name: &str,
    prompt: Option<&str>,
    resolved: &[ResolvedSecret],
) -> Result<LaunchRecord> {
    let placeholders: BTreeMap<String, String> = resolved
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                ax_netstack::secrets::placeholder_for(&r.name, &r.value),
            )
        })
        .collect();
    let mode = if prompt.is_some() {
        Mode::Batch
    } else {
        Mode::Interactive
    };
    let l = agent.launch(mode, &LaunchVars::new(name, prompt, &placeholders))?;
    let rec = LaunchRecord {
        agent: agent.name.clone(),
        argv: l.argv,
        env: l.env,
        files: l
            .files
            .into_iter()
            .map(|f| GuestFile {
                path: f.path,
                mode: f.mode,
                contents: f.contents,
            })
            .collect(),
        secrets: l.secrets,
        placeholders,
        policy: l.policy,
        cpus: l.cpus,
        memory_mib: l.memory_mib,
        timeout_secs: l.timeout.map(|d| d.as_secs().max(1)),
    };
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(name: &str, value: &str, host: &str) -> ResolvedSecret {
        ResolvedSecret {
            name: name.into(),
            value: value.into(),
            hosts: vec![host.into()],
            body: false,
            env: name.into(),
            origin: secrets::Origin::Environment,
        }
    }

    #[test]
    fn claude_record_has_placeholders_and_the_fragment_the_values() {
        let dirs = agents::Dirs {
            repo: None,
            user: std::path::PathBuf::from("/nonexistent/ax-agents"),
        };
        let agent = agents::load(&dirs, "claude").unwrap();
        let real = "sk-ant-api03-realrealrealrealrealrealrealrealrealreal";
        let ph = BTreeMap::from([(
            "ANTHROPIC_API_KEY".to_string(),
            "sk-ant-api03-axph1".to_string(),
        )]);
        let l = agent
            .launch(Mode::Batch, &LaunchVars::new("a1", Some("do it"), &ph))
            .unwrap();
        let rec = LaunchRecord {
            agent: "claude".into(),
            argv: l.argv,
            env: l.env,
            files: Vec::new(),
            secrets: l.secrets,
            placeholders: ph,
            policy: None,
            cpus: None,
            memory_mib: None,
            timeout_secs: None,
        };
        assert_eq!(rec.argv.last().unwrap(), "do it");
        assert_eq!(rec.env["ANTHROPIC_API_KEY"], "sk-ant-api03-axph1");
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains(real));

        let r = [resolved("ANTHROPIC_API_KEY", real, "api.anthropic.com")];
        let f = netconf::net_fragment(&rec, &r, None);
        let s = &f["secret"].as_array().unwrap()[0];
        assert_eq!(s["value"].as_str(), Some(real));
        assert_eq!(s["placeholder"].as_str(), Some("sk-ant-api03-axph1"));

        // A --net-config secret of the same name wins; others are kept; its policy wins.
        let user: toml::Table = toml::from_str(
            "[[secret]]\nname = \"ANTHROPIC_API_KEY\"\nvalue = \"v2\"\nhosts = [\"h\"]\n\
             [policy]\ndefault = \"deny\"\n",
        )
        .unwrap();
        let mut rec2 = rec.clone();
        rec2.policy = Some(toml::from_str("default = \"allow\"").unwrap());
        let f = netconf::net_fragment(&rec2, &r, Some(user));
        let a = f["secret"].as_array().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["value"].as_str(), Some("v2"));
        assert_eq!(f["policy"]["default"].as_str(), Some("deny"));
        let f = netconf::net_fragment(&rec2, &r, None);
        assert_eq!(f["policy"]["default"].as_str(), Some("allow"));
    }
}
