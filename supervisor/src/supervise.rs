//! The supervisor: one detached process per agent that owns its VM from boot to teardown.
//!
//! `axctl run` starts it as `axctl __supervise <name> [--attached]` in a new session. It
//! starts the vsock backend, ax-fsd (repository runs) and ax-netstack (unless `--no-net`;
//! config piped on stdin), spawns the VMM, waits for agentd, hands the guest the agent's CA
//! and the secrets' placeholders (SETUP), starts the agent (EXEC, role primary), writes its output to `output.log` (and, when `--attached`, also to its inherited
//! stdout/stderr, forwarding its stdin), records the exit, shuts the VM down, and keeps
//! `state.json` true at every step: a VM that dies is `failed` with the reason, never
//! `running`.
//!
//! Signals: SIGTERM/SIGINT/SIGHUP are forwarded to the agent (SIGTERM after `axctl stop`),
//! and the VM is torn down if the agent has not exited after [`STOP_GRACE`]. SIGUSR1 stops
//! mirroring output to the inherited descriptors (the `--wait` client went away).

use crate::client;
use crate::driver::{self, axvmm, qemu, NetDevice, VmSpec};
use crate::launch::{self, LaunchRecord};
use crate::netconf;
use crate::secret::ResolvedSecret;
use crate::state::{self, now_ms, AgentState, Status};
use crate::Host;
use agentd::proto::{self, Exec, Frame, Role, Setup, Shutdown, WinSize};
use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{SigSet, Signal as NixSignal};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the agent gets to exit after a forwarded SIGTERM before the VM is torn down.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the guest gets from VMM spawn to agentd answering.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest gets to power off after SHUTDOWN before the VMM is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Guest CID on the vsock device.
const GUEST_CID: u64 = 3;

/// The signals the supervisor handles itself (blocked, then taken with sigwait).
fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        NixSignal::SIGTERM,
        NixSignal::SIGINT,
        NixSignal::SIGHUP,
        NixSignal::SIGUSR1,
    ] {
        s.add(sig);
    }
    s
}

enum Event {
    Frame(Frame),
    ConnLost(String),
    VmExited(ExitStatus),
    /// An ax-fsd process (its share's tag) ended.
    FsdExited(String, ExitStatus),
    /// The ax-netstack process ended.
    NetstackExited(ExitStatus),
    Signal(NixSignal),
    Timeout,
}

/// Appends timestamped lines to `supervisor.log`.
struct Log {
    file: Mutex<File>,
    start: Instant,
}

impl Log {
    fn line(&self, msg: impl AsRef<str>) {
        let ms = self.start.elapsed().as_millis();
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "[{ms:>7} ms] {}", msg.as_ref());
        }
    }
}

/// Entry point of `axctl __supervise`. Returns the process exit code.
/// The supervisor process of agent `name` (`axctl __supervise NAME [--attached]`): runs the
/// agent to its end and returns the exit code the process should exit with (the agent's own
/// code, 1 when it failed). `host` gives the secrets' values and the default commit identity.
/// Errors: only those before the state is loaded (an unknown agent); later failures are
/// recorded in `state.json` as `failed` with the reason.
pub fn run(name: &str, attached: bool, host: &dyn Host) -> Result<i32> {
    let start = Instant::now();
    // Block handled signals before any thread exists, so every thread inherits the mask and
    // only the sigwait thread takes them.
    handled_signals()
        .thread_block()
        .context("blocking signals")?;
    let (dir, mut st) = state::load(name)?;
    let log = Arc::new(Log {
        file: Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("supervisor.log"))?,
        ),
        start,
    });
    log.line(format!(
        "supervisor pid {} for agent {name}",
        std::process::id()
    ));
    st.supervisor_pid = Some(std::process::id() as i32);
    state::save(&dir, &st)?;

    let mut sup = Supervisor {
        dir: dir.clone(),
        st,
        log: log.clone(),
        attached,
        host,
    };
    let result = sup.boot_and_run(start);
    if let Err(e) = &result {
        log.line(format!("failed: {e:#}"));
        if sup.st.status.is_live() {
            sup.finish(Status::Failed, None, Some(format!("{e:#}")));
        }
    }
    let _ = std::fs::remove_file(dir.join("vsock.sock"));
    let _ = std::fs::remove_file(dir.join("vhost-vsock.sock"));
    for tag in [driver::WORKSPACE_TAG, driver::OBJECTS_TAG] {
        let _ = std::fs::remove_file(dir.join(format!("{tag}.sock")));
    }
    let _ = std::fs::remove_file(dir.join("net.sock"));
    // Whatever happened to the VM, the agent's finished writes are in the upper layer.
    sup.build_branch();
    log.line(format!("done: {}", sup.st.status_label()));
    Ok(match sup.st.status {
        Status::Exited => sup.st.exit_code.unwrap_or(1),
        _ => 1,
    })
}

struct Supervisor<'h> {
    dir: PathBuf,
    st: AgentState,
    log: Arc<Log>,
    attached: bool,
    host: &'h dyn Host,
}

impl Supervisor<'_> {
    fn save(&self) {
        if let Err(e) = state::save(&self.dir, &self.st) {
            self.log.line(format!("cannot save state: {e:#}"));
        }
    }

    fn finish(&mut self, status: Status, exit_code: Option<i32>, reason: Option<String>) {
        self.st.status = status;
        self.st.exit_code = exit_code;
        if reason.is_some() {
            self.st.reason = reason;
        }
        self.st.finished_ms = Some(now_ms());
        self.save();
    }

    fn boot_and_run(&mut self, start: Instant) -> Result<()> {
        let img = ax_image::resolve(Some(&self.st.image_id))?
            .ok_or_else(|| anyhow!("image {} is gone from the cache", self.st.image_id))?;
        let (tx, rx) = channel::<Event>();
        spawn_signal_thread(tx.clone());

        let vhost_sock = self.dir.join("vhost-vsock.sock");
        let uds = self.dir.join("vsock.sock");
        let accel = driver::accel_for(&self.st.vmm);
        let fs_shares = match self.st.repo.clone() {
            Some(repo) => self.start_fsd(&repo, &tx)?,
            None => Vec::new(),
        };
        // The rendered agent definition (`axctl run` wrote it; none for older agents).
        let rec = LaunchRecord::load(&self.dir)?;
        let (net, resolved) = self.start_netstack(&tx, rec.as_ref())?;
        let spec = VmSpec {
            // The ELF vmlinux boots through its PVH entry, skipping decompression in the guest.
            kernel: img.vmlinux.clone().unwrap_or_else(|| img.kernel.clone()),
            initrd: img.initrd.clone(),
            rootfs: img.rootfs.clone(),
            cmdline: driver::kernel_cmdline(
                &self.st.name,
                accel,
                !fs_shares.is_empty(),
                net.as_ref().map(|n| n.cmdline.as_str()),
            ) + &driver::agents_param(img.agents.is_some()),
            cpus: self.st.cpus,
            memory_mib: self.st.memory_mib,
            console_log: self.dir.join("console.log"),
            vhost_vsock_socket: vhost_sock.clone(),
            accel,
            fs_shares,
            agents: img.agents.clone(),
            net: net.as_ref().map(|n| NetDevice {
                socket: n.socket.clone(),
                mac: netconf::GUEST_MAC.to_string(),
            }),
        };
        self.st.kernel_cmdline = Some(spec.cmdline.clone());
        let mut cmd = match self.st.vmm.as_str() {
            "ax" => {
                let _ = std::fs::remove_file(&uds);
                let conf = self.dir.join("vm.toml");
                std::fs::write(&conf, axvmm::config(&spec, &uds)).context("writing vm.toml")?;
                let mut c = Command::new(axvmm::find_binary()?);
                c.arg("--config").arg(conf);
                c
            }
            _ => {
                // vsock backend: listening before QEMU starts, serving on a thread.
                start_vsock_backend(&vhost_sock, &uds, self.log.clone())?;
                let mut c = Command::new(qemu::find_binary()?);
                c.args(qemu::args(&spec));
                c
            }
        };
        let vmm_log = File::create(self.dir.join("vmm.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(vmm_log.try_clone()?)
            .stderr(vmm_log);
        die_with_supervisor(&mut cmd);
        self.log.line(format!("spawning {:?}", cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the VMM ({})", self.st.vmm))?;
        let vm_spawned = Instant::now();
        self.st.vmm_pid = Some(child.id() as i32);
        self.st.timings.vm_spawn_ms = Some(start.elapsed().as_millis() as u64);
        self.save();

        let vm_status: Arc<Mutex<Option<ExitStatus>>> = Arc::new(Mutex::new(None));
        {
            let vm_status = vm_status.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                if let Ok(status) = child.wait() {
                    *vm_status.lock().unwrap() = Some(status);
                    let _ = tx.send(Event::VmExited(status));
                }
            });
        }

        let (conn, hello) = {
            let vm_status = vm_status.clone();
            let dir = self.dir.clone();
            client::connect_when_ready(&self.dir, vm_spawned + BOOT_TIMEOUT, move || {
                vm_status
                    .lock()
                    .unwrap()
                    .map(|s| vm_death_reason(&dir, s, "during boot"))
            })?
        };
        self.st.timings.agentd_ready_ms = Some(vm_spawned.elapsed().as_millis() as u64);
        self.st.timings.guest_ready_ms = Some(hello.guest.ready_ms);
        self.st.timings.guest_init_ms = Some(hello.guest.init_ms);
        self.log.line(format!(
            "agentd {} ready: kernel {}, guest uptime {} ms",
            hello.agentd_version, hello.guest.kernel_release, hello.guest.uptime_ms
        ));
        let conn = match net {
            Some(n) => {
                self.setup_guest(conn, n)?;
                client::connect(&self.dir)?.0
            }
            None => conn,
        };
        let env = match &rec {
            Some(rec) if !rec.files.is_empty() => {
                drop(conn);
                self.write_guest_files(&rec.files)?;
                let conn = client::connect(&self.dir)?.0;
                return self.run_agent(conn, rec.env.clone(), &resolved, tx, rx, vm_status);
            }
            Some(rec) => rec.env.clone(),
            None => BTreeMap::new(),
        };
        self.run_agent(conn, env, &resolved, tx, rx, vm_status)
    }

    /// Writes the agent's native config files into the guest (an aux EXEC per file, the
    /// contents on its stdin; docs/agents.md "What a run does").
    fn write_guest_files(&self, files: &[launch::GuestFile]) -> Result<()> {
        for f in files {
            let (mut c, _) = client::connect(&self.dir)?;
            let exec = Exec {
                argv: launch::write_file_argv(f),
                env: BTreeMap::new(),
                cwd: None,
                tty: None,
                role: Role::Aux,
            };
            proto::write_frame(&mut c, &Frame::Exec(exec))?;
            for chunk in f.contents.as_bytes().chunks(proto::MAX_CHUNK) {
                proto::write_frame(&mut c, &Frame::Stdin(chunk.to_vec()))?;
            }
            proto::write_frame(&mut c, &Frame::Stdin(Vec::new()))?;
            let mut err = Vec::new();
            loop {
                match proto::read_frame(&mut c)
                    .with_context(|| format!("writing {} in the guest", f.path))?
                {
                    Frame::Started(_) | Frame::Stdout(_) => {}
                    Frame::Stderr(b) => err.extend_from_slice(&b),
                    Frame::Exit(e) if e.code == Some(0) => break,
                    Frame::Exit(e) => {
                        return Err(anyhow!(
                            "cannot write {} in the guest (exit {}): {}",
                            f.path,
                            e.shell_code(),
                            String::from_utf8_lossy(&err).trim()
                        ))
                    }
                    Frame::Error(e) => {
                        return Err(anyhow!(
                            "cannot write {} in the guest: {}",
                            f.path,
                            e.message
                        ))
                    }
                    other => {
                        return Err(anyhow!(
                            "agentd answered a file write with {:?}",
                            other.kind()
                        ))
                    }
                }
            }
        }
        self.log.line(format!(
            "wrote {} agent config files into the guest",
            files.len()
        ));
        Ok(())
    }

    /// Runs the agent to its end in named steps: [`Self::send_exec`], the frame reader
    /// ([`spawn_frame_reader`]), then one event at a time: output ([`Output::write`]), the
    /// exit ([`Self::on_exit`]), a backend that died ([`Self::fail_backend`]), signals and the
    /// timeout ([`Self::forward_stop`]), and the stop grace period running out.
    fn run_agent(
        &mut self,
        mut conn: UnixStream,
        env: BTreeMap<String, String>,
        resolved: &[ResolvedSecret],
        tx: Sender<Event>,
        rx: Receiver<Event>,
        vm_status: Arc<Mutex<Option<ExitStatus>>>,
    ) -> Result<()> {
        let Some(exec_sent) = self.send_exec(&mut conn, env, &vm_status, &rx)? else {
            return Ok(());
        };
        self.st.status = Status::Running;
        self.save();
        self.mark_secrets_used(resolved);
        // --timeout counts the agent's own run time, from its start (not the VM's boot).
        if let Some(secs) = self.st.timeout_secs {
            let tx = tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                let _ = tx.send(Event::Timeout);
            });
        }
        let writer = Arc::new(Mutex::new(conn.try_clone()?));
        spawn_frame_reader(conn, tx.clone());
        if self.attached {
            let writer = writer.clone();
            std::thread::spawn(move || forward_stdin(writer));
        }
        let mut out = Output {
            log: OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("output.log"))?,
            mirror: self.attached,
        };
        let mut stop = Stop::default();
        loop {
            let ev = match stop.deadline {
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(ev) => ev,
                    Err(_) => {
                        self.log
                            .line("agent did not exit after the stop grace period; tearing down");
                        self.shutdown_vm(&vm_status, &rx);
                        let reason = stop.reason.unwrap_or_else(|| "stopped".into());
                        self.finish(Status::Failed, None, Some(format!("{reason}; the agent did not exit within {}s and the VM was torn down", STOP_GRACE.as_secs())));
                        return Ok(());
                    }
                },
                None => rx.recv().map_err(|_| anyhow!("event channel closed"))?,
            };
            match ev {
                Event::Frame(Frame::Stdout(b)) => out.write(&b, false)?,
                Event::Frame(Frame::Stderr(b)) => out.write(&b, true)?,
                Event::Frame(Frame::Exit(e)) => {
                    self.st.timings.command_ms = Some(exec_sent.elapsed().as_millis() as u64);
                    self.on_exit(e, stop.reason.clone(), &vm_status, &rx);
                    return Ok(());
                }
                Event::Frame(Frame::Error(e)) => {
                    self.shutdown_vm(&vm_status, &rx);
                    self.finish(
                        Status::Failed,
                        None,
                        Some(format!("agentd error: {} ({})", e.message, e.code)),
                    );
                    return Ok(());
                }
                Event::Frame(other) => self
                    .log
                    .line(format!("ignoring unexpected {:?} frame", other.kind())),
                Event::ConnLost(why) => {
                    self.log.line(format!("control connection lost: {why}"));
                    // The VM is probably going down; give the waiter a moment to see it.
                    let status = wait_vm(&vm_status, &rx, Duration::from_secs(3));
                    let reason = match status {
                        Some(s) => vm_death_reason(&self.dir, s, "while the agent was running"),
                        None => format!("lost the control connection to agentd ({why})"),
                    };
                    self.fail_backend(reason, status.is_some(), &vm_status, &rx);
                    return Ok(());
                }
                Event::FsdExited(tag, s) => {
                    // In-flight FUSE requests would never be answered: end the VM now. The
                    // upper layer keeps every finished write.
                    let reason = format!(
                        "ax-fsd ({tag} share) ended while the agent was running ({s}); see fsd-{tag}.log; \
                         finished writes are kept (axctl commit {} builds the branch)",
                        self.st.name
                    );
                    self.fail_backend(reason, false, &vm_status, &rx);
                    return Ok(());
                }
                Event::NetstackExited(s) => {
                    // The guest's network is gone: every connection would hang or fail.
                    let reason = format!(
                        "ax-netstack ended while the agent was running ({s}){}; see netstack.log",
                        last_line(&self.dir.join("netstack.log"))
                            .map(|l| format!(": {l}"))
                            .unwrap_or_default()
                    );
                    self.fail_backend(reason, false, &vm_status, &rx);
                    return Ok(());
                }
                Event::VmExited(s) => {
                    let reason = vm_death_reason(&self.dir, s, "while the agent was running");
                    self.fail_backend(reason, true, &vm_status, &rx);
                    return Ok(());
                }
                Event::Signal(NixSignal::SIGUSR1) => {
                    self.log.line("client detached: no longer mirroring output");
                    out.mirror = false;
                }
                Event::Signal(sig) => {
                    self.log.line(format!("got {sig}: forwarding to the agent"));
                    // A hangup of the client's terminal asks the agent to terminate.
                    let fwd = if sig == NixSignal::SIGHUP {
                        NixSignal::SIGTERM
                    } else {
                        sig
                    };
                    let reason = stop
                        .reason
                        .take()
                        .unwrap_or_else(|| format!("stopped ({sig})"));
                    self.forward_stop(&writer, fwd as i32, reason, &mut stop);
                }
                Event::Timeout => {
                    let secs = self.st.timeout_secs.unwrap_or(0);
                    let reason = format!(
                        "timed out after {}",
                        humantime::format_duration(Duration::from_secs(secs))
                    );
                    self.log.line(&reason);
                    self.forward_stop(&writer, libc::SIGTERM, reason, &mut stop);
                }
            }
        }
    }

    /// Sends the primary EXEC and waits for STARTED. Returns when it was sent, or `None`
    /// when agentd refused to start the agent (the VM is then down and the agent failed).
    fn send_exec(
        &mut self,
        conn: &mut UnixStream,
        mut env: BTreeMap<String, String>,
        vm_status: &Arc<Mutex<Option<ExitStatus>>>,
        rx: &Receiver<Event>,
    ) -> Result<Option<Instant>> {
        env.insert("AX_AGENT_NAME".to_string(), self.st.name.clone());
        let exec = Exec {
            argv: self.st.argv.clone(),
            env,
            cwd: Some("/workspace".into()),
            tty: self.st.tty.then_some(WinSize { rows: 24, cols: 80 }),
            role: Role::Primary,
        };
        proto::write_frame(conn, &Frame::Exec(exec))?;
        let exec_sent = Instant::now();
        match proto::read_frame(conn).context("waiting for STARTED")? {
            Frame::Started(s) => {
                self.log.line(format!("agent started: guest pid {}", s.pid));
                Ok(Some(exec_sent))
            }
            Frame::Error(e) => {
                self.shutdown_vm(vm_status, rx);
                self.finish(
                    Status::Failed,
                    None,
                    Some(format!("agent did not start: {}", e.message)),
                );
                Ok(None)
            }
            other => Err(anyhow!("agentd answered EXEC with {:?}", other.kind())),
        }
    }

    /// Records the use of the secrets that came from the store (a failure is only logged).
    fn mark_secrets_used(&self, resolved: &[ResolvedSecret]) {
        let stored = LaunchRecord::stored_names(resolved);
        if !stored.is_empty() {
            if let Err(e) = self.host.mark_used(&stored) {
                self.log
                    .line(format!("cannot record the secrets' use: {e:#}"));
            }
        }
    }

    /// The agent exited with `e`: record the result first (it is what the user waits for),
    /// then power the VM off. A timeout is a failure even if the agent then exited by itself.
    fn on_exit(
        &mut self,
        e: proto::Exit,
        stop_reason: Option<String>,
        vm_status: &Arc<Mutex<Option<ExitStatus>>>,
        rx: &Receiver<Event>,
    ) {
        self.log.line(format!("agent exited: {e:?}"));
        let code = e.shell_code();
        let timed_out = stop_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("timed out"));
        let status = if timed_out {
            Status::Failed
        } else {
            Status::Exited
        };
        self.finish(status, Some(code), stop_reason);
        let t = Instant::now();
        self.shutdown_vm(vm_status, rx);
        self.st.timings.teardown_ms = Some(t.elapsed().as_millis() as u64);
        self.save();
    }

    /// Something the agent depends on is gone (the control connection, an ax-fsd, the
    /// netstack, the VM itself): log `reason`, end the VM unless it is already down
    /// (`vm_down`), and mark the agent failed with `reason`.
    fn fail_backend(
        &mut self,
        reason: String,
        vm_down: bool,
        vm_status: &Arc<Mutex<Option<ExitStatus>>>,
        rx: &Receiver<Event>,
    ) {
        self.log.line(&reason);
        if !vm_down {
            self.kill_vm();
            let _ = wait_vm(vm_status, rx, Duration::from_secs(5));
        }
        self.finish(Status::Failed, None, Some(reason));
    }

    /// Forwards `signal` to the agent and starts the stop grace period (once: a second
    /// signal does not extend it). `reason` becomes the stop's reason.
    fn forward_stop(
        &self,
        writer: &Mutex<UnixStream>,
        signal: i32,
        reason: String,
        stop: &mut Stop,
    ) {
        let _ = proto::write_frame(
            &mut *writer.lock().unwrap(),
            &Frame::Signal(proto::Signal { signal }),
        );
        stop.reason = Some(reason);
        stop.deadline
            .get_or_insert_with(|| Instant::now() + STOP_GRACE);
    }

    /// Asks agentd to power off, then waits for the VMM to exit; kills it if it does not.
    fn shutdown_vm(&self, vm_status: &Arc<Mutex<Option<ExitStatus>>>, rx: &Receiver<Event>) {
        if vm_status.lock().unwrap().is_some() {
            return;
        }
        match client::connect(&self.dir) {
            Ok((mut c, _)) => {
                let _ = proto::write_frame(&mut c, &Frame::Shutdown(Shutdown { reboot: false }));
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = proto::read_frame(&mut c);
            }
            Err(e) => self.log.line(format!("cannot send SHUTDOWN: {e:#}")),
        }
        if wait_vm(vm_status, rx, POWEROFF_TIMEOUT).is_none() {
            self.log.line("VM did not power off in time; killing it");
            self.kill_vm();
            let _ = wait_vm(vm_status, rx, Duration::from_secs(5));
        }
    }

    /// Starts the ax-fsd processes of a repository run: the workspace share (the snapshot of
    /// `repo` from git objects as the lower layer, this agent's upper layer) and the read-only
    /// share of the host's object directory (the alternate of the agent's `.git`). Returns
    /// their (vhost-user socket, tag) once they listen.
    fn start_fsd(&self, repo: &Path, tx: &Sender<Event>) -> Result<Vec<(PathBuf, String)>> {
        /// Default disk quota per upper layer, MiB (`axctl run --disk-quota`).
        const DEFAULT_DISK_QUOTA_MIB: u64 = 10 << 10;
        let snap: ax_branch::Snapshot = serde_json::from_slice(
            &std::fs::read(self.dir.join("snapshot.json")).context("reading snapshot.json")?,
        )?;
        let git_dir = gix::open(repo)
            .with_context(|| format!("opening {}", repo.display()))?
            .common_dir()
            .to_path_buf();
        // The upper layers are the agent's: nobody else on the host reads them (0700).
        let private_dir = |d: &Path| -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            Ok(())
        };
        let upper = self.dir.join("upper");
        private_dir(&upper)?;
        let objects_upper = self.dir.join("objects-upper");
        private_dir(&objects_upper)?;
        let host_objects = git_dir.join("objects");
        // Each upper layer gets the agent's disk quota (docs/fsd.md "Quota").
        let quota = self
            .st
            .disk_quota_mib
            .unwrap_or(DEFAULT_DISK_QUOTA_MIB)
            .saturating_mul(1 << 20)
            .to_string();
        let workspace: Vec<OsString> = vec![
            "--lower-git".into(),
            git_dir.into(),
            "--tree".into(),
            snap.tree.to_string().into(),
            "--objects".into(),
            snap.objects_dir.into(),
            "--upper".into(),
            upper.into(),
            "--quota".into(),
            quota.clone().into(),
            "--journal".into(),
            self.dir.join("journal.jsonl").into(),
        ];
        // The host object store as it was at the agent's first start: objects other agents'
        // branch builds write later stay invisible (docs/fsd.md "The objects share").
        let objects: Vec<OsString> = vec![
            "--lower".into(),
            host_objects.into(),
            "--lower-freeze".into(),
            self.dir.join("objects.freeze").into(),
            "--upper".into(),
            objects_upper.into(),
            "--quota".into(),
            quota.into(),
        ];
        Ok(vec![
            (
                self.spawn_fsd(driver::WORKSPACE_TAG, &workspace, tx)?,
                driver::WORKSPACE_TAG.into(),
            ),
            (
                self.spawn_fsd(driver::OBJECTS_TAG, &objects, tx)?,
                driver::OBJECTS_TAG.into(),
            ),
        ])
    }

    /// Runs one ax-fsd (`<tag>.sock`, `fsd-<tag>.log`) and waits until it listens.
    fn spawn_fsd(&self, tag: &str, layer_args: &[OsString], tx: &Sender<Event>) -> Result<PathBuf> {
        let sock = self.dir.join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&sock);
        let bin = crate::paths::sibling_binary("ax-fsd")
            .or_else(|| qemu::which("ax-fsd"))
            .context("ax-fsd not found beside axctl or in PATH; install it (scripts/install)")?;
        let log = File::create(self.dir.join(format!("fsd-{tag}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(&sock)
            .args(layer_args)
            .arg("--tag")
            .arg(tag)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_supervisor(&mut cmd);
        self.log.line(format!("spawning {cmd:?}"));
        let mut child = cmd.spawn().context("starting ax-fsd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!("ax-fsd ({tag}) exited at start ({st}); see fsd-{tag}.log");
            }
            if Instant::now() > deadline {
                anyhow::bail!("ax-fsd ({tag}) did not listen within 10 s; see fsd-{tag}.log");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Reap it when it exits (after the VMM disconnects).
        // Reap it when it exits, and tell the event loop: normally after the VMM disconnected
        // at the end, but if it dies while the agent runs, the guest's file system is gone.
        let (tx, tag) = (tx.clone(), tag.to_string());
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(Event::FsdExited(tag, status));
            }
        });
        Ok(sock)
    }

    /// Starts ax-netstack for this agent unless it runs without a network (`net.json`): the
    /// config (with the secrets' values) goes to its stdin, never to disk; its socket is
    /// `net.sock` (vhost-user for ax-vmm, a netdev stream for QEMU), its log `netstack.log`,
    /// the agent's CA certificate `ca.pem`.
    fn start_netstack(
        &self,
        tx: &Sender<Event>,
        rec: Option<&LaunchRecord>,
    ) -> Result<(Option<NetUp>, Vec<ResolvedSecret>)> {
        let choice = netconf::NetChoice::load(&self.dir)?;
        if !choice.enabled {
            self.log.line("no network (--no-net)");
            return Ok((None, Vec::new()));
        }
        let mut fragment = match &choice.config_file {
            Some(p) => Some(netconf::load_fragment(p)?),
            None => None,
        };
        // The agent's secrets: their values from the store or this process's environment
        // (inherited from `axctl run`), with the placeholders the guest was rendered with.
        let mut resolved = Vec::new();
        if let Some(rec) = rec {
            resolved = self.host.resolve_secrets(&rec.secrets)?;
            fragment = Some(netconf::net_fragment(rec, &resolved, fragment));
        }
        let ledger = crate::paths::ledger_path();
        let (text, cfg, env) = netconf::build_config(
            &self.st.name,
            &ledger,
            fragment,
            ax_netstack::secrets::placeholder_for,
        )?;
        let sock = self.dir.join("net.sock");
        let ca = self.dir.join("ca.pem");
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&ca);
        let bin = netconf::find_binary()?;
        let log = File::create(self.dir.join("netstack.log"))?;
        let mut cmd = Command::new(bin);
        // ax-vmm speaks vhost-user; QEMU gets a netdev stream (netstack/src/stream.rs).
        cmd.arg(if self.st.vmm == "ax" {
            "--socket"
        } else {
            "--stream"
        })
        .arg(&sock)
        .arg("--config")
        .arg("-")
        .arg("--ca-out")
        .arg(&ca)
        .arg("--mac")
        .arg(netconf::GUEST_MAC)
        // ax-vmm reads MAC and MTU from the backend; QEMU fills them itself.
        .args((self.st.vmm == "ax").then_some("--config-space"))
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
        die_with_supervisor(&mut cmd);
        self.log.line(format!(
            "spawning {cmd:?} ({} routes, {} secrets: {})",
            cfg.routes.len(),
            cfg.secrets.len(),
            env.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        let mut child = cmd.spawn().context("starting ax-netstack")?;
        {
            let mut stdin = child.stdin.take().context("ax-netstack stdin")?;
            // A netstack that exits at once (bad config) closes the pipe: its log says why.
            let _ = stdin.write_all(text.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!(
                    "ax-netstack exited at start ({st}){}; see netstack.log",
                    last_line(&self.dir.join("netstack.log"))
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!("ax-netstack did not listen within 10 s; see netstack.log");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let ca_pem = std::fs::read_to_string(&ca).context("reading the agent's CA (ca.pem)")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(Event::NetstackExited(status));
            }
        });
        Ok((
            Some(NetUp {
                socket: sock,
                cmdline: netconf::cmdline_value(&cfg),
                ca_pem,
                env,
            }),
            resolved,
        ))
    }

    /// SETUP on `conn`: the agent's CA into the guest trust store, the placeholders into the
    /// environment of every session (docs/protocol.md).
    fn setup_guest(&self, mut conn: UnixStream, net: NetUp) -> Result<()> {
        let setup = Setup {
            ca_pem: (!net.ca_pem.trim().is_empty()).then_some(net.ca_pem),
            env: net.env,
        };
        proto::write_frame(&mut conn, &Frame::Setup(setup))?;
        match proto::read_frame(&mut conn).context("waiting for agentd to answer SETUP")? {
            Frame::Ok => {
                self.log
                    .line("guest set up: CA installed, placeholders in the environment");
                Ok(())
            }
            Frame::Error(e) => Err(anyhow!("agentd refused SETUP: {} ({})", e.message, e.code)),
            other => Err(anyhow!("agentd answered SETUP with {:?}", other.kind())),
        }
    }

    /// Builds branch `ax/<name>` from the snapshot and the upper layer (the VM is down, so the
    /// upper layer is quiescent) and records the result.
    fn build_branch(&mut self) {
        if self.st.repo.is_none() {
            return;
        }
        let result = state::build_branch(&self.dir, &self.st, self.host);
        match result {
            Ok(b) => {
                self.log.line(format!(
                    "branch {} at {}: {} files changed, +{} -{}",
                    b.branch, b.commit, b.files_changed, b.insertions, b.deletions
                ));
                self.st.branch = Some(b);
                self.save();
            }
            Err(e) => self
                .log
                .line(format!("cannot build branch ax/{}: {e:#}", self.st.name)),
        }
    }

    fn kill_vm(&self) {
        if let Some(pid) = self.st.vmm_pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), NixSignal::SIGKILL);
        }
    }
}

/// A running ax-netstack, as the VM and the guest need it.
struct NetUp {
    /// Its vhost-user socket.
    socket: PathBuf,
    /// The `ax.net=` value.
    cmdline: String,
    /// The agent's CA certificate (PEM); empty if the netstack has none.
    ca_pem: String,
    /// Secret name → placeholder, for the guest's environment.
    env: BTreeMap<String, String>,
}

/// Why and until when the agent is being stopped (a forwarded signal or the timeout).
#[derive(Default)]
struct Stop {
    deadline: Option<Instant>,
    reason: Option<String>,
}

/// Where the agent's output goes: `output.log`, and while `mirror` also this process's own
/// stdout/stderr (the `--wait` client's terminal); mirroring stops at the first failed write.
struct Output {
    log: File,
    mirror: bool,
}

impl Output {
    fn write(&mut self, b: &[u8], stderr: bool) -> Result<()> {
        self.log.write_all(b)?;
        if self.mirror {
            let ok = if stderr {
                std::io::stderr().write_all(b).is_ok()
            } else {
                std::io::stdout()
                    .write_all(b)
                    .and_then(|_| std::io::stdout().flush())
                    .is_ok()
            };
            self.mirror = ok;
        }
        Ok(())
    }
}

/// Reads agentd's frames on a thread and sends them as events until EXIT/ERROR or the
/// connection is lost.
fn spawn_frame_reader(mut reader: UnixStream, tx: Sender<Event>) {
    std::thread::spawn(move || loop {
        match proto::read_frame(&mut reader) {
            Ok(f) => {
                let end = matches!(f, Frame::Exit(_) | Frame::Error(_));
                if tx.send(Event::Frame(f)).is_err() || end {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Event::ConnLost(e.to_string()));
                return;
            }
        }
    });
}

/// The last non-empty line of a log file.
fn last_line(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Waits up to `limit` for the VMM to exit (draining other events meanwhile).
fn wait_vm(
    vm_status: &Arc<Mutex<Option<ExitStatus>>>,
    rx: &Receiver<Event>,
    limit: Duration,
) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = *vm_status.lock().unwrap() {
            return Some(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(Event::VmExited(s)) => return Some(s),
            _ => continue,
        }
    }
}

/// Explains an unexpected VMM exit, with the tail of the console for context.
fn vm_death_reason(dir: &Path, status: ExitStatus, when: &str) -> String {
    let how = match (status.code(), status.signal()) {
        (_, Some(sig)) => format!(
            "killed by signal {sig} ({})",
            NixSignal::try_from(sig).map(|s| s.as_str()).unwrap_or("?")
        ),
        (Some(c), _) => format!("exited with status {c}"),
        _ => "ended".to_string(),
    };
    let mut msg = format!("the VM process {how} {when}");
    let vmm_err = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
    if let Some(last) = vmm_err.lines().rev().find(|l| !l.trim().is_empty()) {
        msg.push_str(&format!("; the VMM said: {}", last.trim()));
    }
    msg.push_str("; see console.log");
    msg
}

/// Makes a child (the VMM, ax-fsd) die with the supervisor (PR_SET_PDEATHSIG) and start
/// with no blocked signals (the supervisor blocks the ones it takes with sigwait).
fn die_with_supervisor(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
}

fn spawn_signal_thread(tx: Sender<Event>) {
    std::thread::spawn(move || {
        let set = handled_signals();
        while let Ok(sig) = set.wait() {
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
}

/// Copies the supervisor's stdin to the agent as STDIN frames, then an empty one (EOF).
fn forward_stdin(writer: Arc<Mutex<UnixStream>>) {
    let mut buf = vec![0u8; proto::MAX_CHUNK];
    let mut stdin = std::io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let frame = Frame::Stdin(buf[..n].to_vec());
        if proto::write_frame(&mut *writer.lock().unwrap(), &frame).is_err() || n == 0 {
            return;
        }
    }
}

/// Starts the hybrid vsock device as a vhost-user backend on a thread: the vhost-user socket
/// is listening when this returns; the hybrid socket `uds` is bound once serving starts.
fn start_vsock_backend(vhost_sock: &Path, uds: &Path, log: Arc<Log>) -> Result<()> {
    let _ = std::fs::remove_file(vhost_sock);
    let _ = std::fs::remove_file(uds);
    let cfg = ax_vsock::HybridConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.to_path_buf(),
    };
    let listener = ax_vsock::listen(vhost_sock).context("creating the vhost-user vsock socket")?;
    std::thread::spawn(move || {
        if let Err(e) = ax_vsock::serve(listener, cfg) {
            log.line(format!("vsock backend: {e:#}"));
        }
    });
    Ok(())
}
