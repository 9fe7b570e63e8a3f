//! A real vhost-user frontend for driving `ax-fsd` without a VM.
//!
//! Guest RAM is a memfd shared with the backend through `VHOST_USER_SET_MEM_TABLE`, split
//! virtqueues (virtio 1.2 §2.7) are laid out by hand in that memory (`ax_vhost::testing`);
//! each request is a two-descriptor chain (device-readable request, device-writable reply
//! buffer, virtio 1.2 §5.11.6), published in the available ring, kicked through the kick
//! eventfd; the harness waits on the call eventfd and reads the used ring.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ax_fsd::fuse::abi::{self, opcode, read_struct, InHeader, OutHeader};
use ax_vhost::testing::{
    ack_protocol_features, wait_for_socket, GuestRam, Vq, DESC_F_NEXT, DESC_F_WRITE,
};
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress};

use vm_memory::ByteValued;

/// Guest RAM size.
const MEM_SIZE: usize = 8 << 20;
/// Descriptors per queue.
const QSIZE: u16 = 16;
/// Request buffer (device-readable).
const REQ_GPA: u64 = 0x10_0000;
/// Reply buffer (device-writable).
const REPLY_GPA: u64 = 0x40_0000;
/// Largest reply buffer.
pub const REPLY_MAX: u32 = 0x30_0000;
/// Queue indexes (virtio 1.2 §5.11.2).
pub const HIPRIO: usize = 0;
/// First request queue.
pub const REQUEST: usize = 1;
/// Queues by default: hiprio + one request queue.
const NUM_QUEUES: usize = 2;

fn queue_base(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}

/// The frontend, the backend process and the guest memory.
pub struct Harness {
    child: Option<Child>,
    frontend: Option<Frontend>,
    mem: GuestRam,
    vqs: Vec<Vq>,
    /// The request queue `raw` uses.
    queue: usize,
    unique: u64,
    pub socket: PathBuf,
    pub stderr: PathBuf,
}

/// A FUSE reply: the header's error (0 or -errno) and the body.
pub type Reply = Result<Vec<u8>, i32>;

impl Harness {
    /// Spawns the real `ax-fsd` binary on a socket in `work` and connects to it.
    pub fn spawn(work: &Path, lower: &Path, upper: &Path, journal: Option<&Path>) -> Harness {
        let lower_args = [OsString::from("--lower"), lower.as_os_str().to_owned()];
        Self::spawn_lower(work, &lower_args, upper, journal)
    }

    /// Spawns `ax-fsd` with the given lower-layer flags (`--lower DIR`, or `--lower-git GIT_DIR
    /// --tree OID ...`).
    pub fn spawn_lower(
        work: &Path,
        lower_args: &[OsString],
        upper: &Path,
        journal: Option<&Path>,
    ) -> Harness {
        let socket = work.join("fsd.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ax-fsd"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(lower_args)
            .arg("--upper")
            .arg(upper)
            .arg("--tag")
            .arg("workspace");
        if let Some(j) = journal {
            cmd.arg("--journal").arg(j);
        }
        Self::spawn_cmd(work, cmd, socket)
    }

    /// Spawns `ax-fsd --lower LOWER --queues N` and sets up hiprio + N request queues (each
    /// in its own guest memory: queue `q`'s rings at `0x10000 * (q + 1)`); requests go to
    /// request queue 1 until [`Self::use_queue`].
    pub fn spawn_queues(work: &Path, lower: &Path, upper: &Path, n: usize) -> Harness {
        let socket = work.join("fsd.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ax-fsd"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--lower")
            .arg(lower)
            .arg("--upper")
            .arg(upper)
            .arg("--queues")
            .arg(n.to_string());
        Self::spawn_cmd_queues(work, cmd, socket, n + 1)
    }

    /// Sends the following requests on queue `q` (1..: request queues).
    pub fn use_queue(&mut self, q: usize) {
        assert!(q >= REQUEST && q < self.vqs.len(), "no request queue {q}");
        self.queue = q;
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a spawned backend").id()
    }

    /// Spawns any vhost-user-fs backend (`cmd`, already given its socket path `socket`), waits
    /// for the socket and connects: the same frontend drives ax-fsd and virtiofsd.
    pub fn spawn_cmd(work: &Path, cmd: Command, socket: PathBuf) -> Harness {
        Self::spawn_cmd_queues(work, cmd, socket, NUM_QUEUES)
    }

    /// [`Self::spawn_cmd`] with `nq` queues (hiprio included).
    fn spawn_cmd_queues(work: &Path, mut cmd: Command, socket: PathBuf, nq: usize) -> Harness {
        let stderr = work.join("fsd.stderr");
        cmd.stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn the backend");
        if let Err(e) = wait_for_socket(&mut child, &socket, Duration::from_secs(10)) {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        let frontend = Frontend::connect(&socket, nq as u64).expect("connect");
        Self::setup(Some(child), frontend, socket, stderr, nq)
    }

    fn setup(
        child: Option<Child>,
        mut frontend: Frontend,
        socket: PathBuf,
        stderr: PathBuf,
        nq: usize,
    ) -> Harness {
        // Guest RAM: a memfd, mapped here and sent to the backend.
        let mem = GuestRam::new(c"ax-fsd-guest-ram", MEM_SIZE);
        frontend.set_owner().expect("SET_OWNER");
        let features = frontend.get_features().expect("GET_FEATURES");
        let version1 = 1u64 << virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
        assert_ne!(features & version1, 0, "VIRTIO_F_VERSION_1 offered");
        let proto = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        frontend
            .set_features(features & (version1 | proto))
            .expect("SET_FEATURES");
        if features & proto != 0 {
            ack_protocol_features(&mut frontend);
        }
        frontend
            .set_mem_table(&[mem.region()])
            .expect("SET_MEM_TABLE");

        let vqs = (0..nq)
            .map(|q| Vq::setup(&mut frontend, &mem, q, queue_base(q), QSIZE, true))
            .collect();
        Harness {
            child,
            frontend: Some(frontend),
            mem,
            vqs,
            queue: REQUEST,
            unique: 0,
            socket,
            stderr,
        }
    }

    /// `VHOST_USER_GET_CONFIG` of the virtio-fs config space (virtio 1.2 §5.11.4).
    pub fn config(&mut self) -> Vec<u8> {
        let fe = self.frontend.as_mut().unwrap();
        let (_, buf) = fe
            .get_config(
                0,
                40,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[0u8; 40],
            )
            .expect("GET_CONFIG");
        buf
    }

    /// Puts one chain (readable `req`, then a writable buffer of `reply_len` bytes, if any) on
    /// queue `q`, kicks, waits for the used element; returns the written bytes.
    pub fn transact(&mut self, q: usize, req: &[u8], reply_len: u32) -> Vec<u8> {
        let vq = &mut self.vqs[q];
        let mem = &self.mem;
        mem.write_slice(req, GuestAddress(REQ_GPA)).unwrap();
        if reply_len > 0 {
            vq.write_desc(mem, 0, REQ_GPA, req.len() as u32, DESC_F_NEXT, 1);
            vq.write_desc(mem, 1, REPLY_GPA, reply_len, DESC_F_WRITE, 0);
        } else {
            vq.write_desc(mem, 0, REQ_GPA, req.len() as u32, 0, 0);
        }
        vq.publish(mem, 0);
        vq.kick();
        let t0 = Instant::now();
        let (id, len) = loop {
            if let Some(used) = vq.pop_used(mem) {
                break used;
            }
            // Spin briefly before sleeping on the call eventfd, so a round trip measures the
            // backend rather than this thread's wakeup (the bench, tests/bench.rs).
            if t0.elapsed() < Duration::from_micros(300) {
                std::hint::spin_loop();
                continue;
            }
            vq.wait_call(100);
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no used element from ax-fsd within 20 s"
            );
        };
        assert_eq!(id, 0, "used id is the head we published");
        assert!(len <= reply_len, "used len {len} > buffer {reply_len}");
        let mut out = vec![0u8; len as usize];
        mem.read_slice(&mut out, GuestAddress(REPLY_GPA)).unwrap();
        out
    }

    /// Sends one FUSE request on the request queue; returns the out header and the body.
    pub fn raw(
        &mut self,
        op: u32,
        nodeid: u64,
        body: &[u8],
        reply_len: u32,
    ) -> (OutHeader, Vec<u8>) {
        self.unique += 1;
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode: op,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 42,
            ..Default::default()
        };
        let mut req = h.as_slice().to_vec();
        req.extend_from_slice(body);
        let out = self.transact(self.queue, &req, reply_len);
        let (oh, rest) = read_struct::<OutHeader>(&out).expect("reply has a fuse_out_header");
        assert_eq!(oh.unique, self.unique, "reply matches the request");
        assert_eq!(oh.len as usize, out.len(), "out header len = bytes written");
        (oh, rest.to_vec())
    }

    /// A request whose reply is `Ok(body)` or `Err(errno)`.
    pub fn call(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Reply {
        let (h, b) = self.raw(op, nodeid, body, 1 << 20 | 4096);
        if h.error == 0 {
            Ok(b)
        } else {
            Err(-h.error)
        }
    }

    /// FUSE_INIT (protocol 7.31 from a 7.38 driver).
    pub fn init(&mut self) -> abi::InitOut {
        let i = abi::InitIn {
            major: 7,
            minor: 38,
            max_readahead: 128 << 10,
            flags: abi::init_flags::ASYNC_READ
                | abi::init_flags::DO_READDIRPLUS
                | abi::init_flags::BIG_WRITES
                | abi::init_flags::MAX_PAGES,
        };
        let mut body = i.as_slice().to_vec();
        body.extend_from_slice(&[0u8; 48]); // 7.36+ flags2 + unused
        let b = self.call(opcode::INIT, 0, &body).expect("INIT");
        read_struct::<abi::InitOut>(&b).expect("init_out").0
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<abi::EntryOut, i32> {
        let b = self.call(opcode::LOOKUP, parent, &cname(name))?;
        Ok(read_struct::<abi::EntryOut>(&b).expect("entry_out").0)
    }

    pub fn getattr(&mut self, ino: u64) -> Result<abi::Attr, i32> {
        let b = self.call(opcode::GETATTR, ino, abi::GetattrIn::default().as_slice())?;
        Ok(read_struct::<abi::AttrOut>(&b).expect("attr_out").0.attr)
    }

    pub fn open(&mut self, ino: u64, flags: i32) -> Result<u64, i32> {
        let o = abi::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        let b = self.call(opcode::OPEN, ino, o.as_slice())?;
        Ok(read_struct::<abi::OpenOut>(&b).expect("open_out").0.fh)
    }

    pub fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> Reply {
        let r = abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(opcode::READ, ino, r.as_slice())
    }

    pub fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let w = abi::WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let mut body = w.as_slice().to_vec();
        body.extend_from_slice(data);
        let b = self.call(opcode::WRITE, ino, &body)?;
        Ok(read_struct::<abi::WriteOut>(&b).expect("write_out").0.size)
    }

    pub fn release(&mut self, ino: u64, fh: u64) {
        let r = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(opcode::RELEASE, ino, r.as_slice())
            .expect("RELEASE");
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<(abi::EntryOut, u64), i32> {
        let c = abi::CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
            mode: libc::S_IFREG | mode,
            umask: 0o022,
            open_flags: 0,
        };
        let mut body = c.as_slice().to_vec();
        body.extend_from_slice(&cname(name));
        let b = self.call(opcode::CREATE, parent, &body)?;
        let (e, rest) = read_struct::<abi::EntryOut>(&b).expect("entry_out");
        let (o, _) = read_struct::<abi::OpenOut>(rest).expect("open_out");
        Ok((e, o.fh))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> Result<abi::EntryOut, i32> {
        let m = abi::MkdirIn { mode, umask: 0 };
        let mut body = m.as_slice().to_vec();
        body.extend_from_slice(&cname(name));
        let b = self.call(opcode::MKDIR, parent, &body)?;
        Ok(read_struct::<abi::EntryOut>(&b).expect("entry_out").0)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<(), i32> {
        self.call(opcode::UNLINK, parent, &cname(name)).map(drop)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<(), i32> {
        self.call(opcode::RMDIR, parent, &cname(name)).map(drop)
    }

    pub fn rename(&mut self, olddir: u64, old: &[u8], newdir: u64, new: &[u8]) -> Result<(), i32> {
        self.rename2(olddir, old, newdir, new, 0)
    }

    /// RENAME2 with renameat2(2) `flags`.
    pub fn rename2(
        &mut self,
        olddir: u64,
        old: &[u8],
        newdir: u64,
        new: &[u8],
        flags: u32,
    ) -> Result<(), i32> {
        let r = abi::Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        let mut body = r.as_slice().to_vec();
        body.extend_from_slice(&cname(old));
        body.extend_from_slice(&cname(new));
        self.call(opcode::RENAME2, olddir, &body).map(drop)
    }

    pub fn chmod(&mut self, ino: u64, mode: u32) -> Result<abi::Attr, i32> {
        let s = abi::SetattrIn {
            valid: abi::fattr::MODE,
            mode,
            ..Default::default()
        };
        let b = self.call(opcode::SETATTR, ino, s.as_slice())?;
        Ok(read_struct::<abi::AttrOut>(&b).expect("attr_out").0.attr)
    }

    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<abi::EntryOut, i32> {
        let mut body = cname(name);
        body.extend_from_slice(&cname(target));
        let b = self.call(opcode::SYMLINK, parent, &body)?;
        Ok(read_struct::<abi::EntryOut>(&b).expect("entry_out").0)
    }

    pub fn readlink(&mut self, ino: u64) -> Reply {
        self.call(opcode::READLINK, ino, &[])
    }

    /// OPENDIR + READDIR (all pages, with a small buffer to exercise offsets) + RELEASEDIR.
    pub fn readdir(&mut self, ino: u64) -> Result<Vec<(String, u64, u32)>, i32> {
        let b = self.call(opcode::OPENDIR, ino, abi::OpenIn::default().as_slice())?;
        let fh = read_struct::<abi::OpenOut>(&b).expect("open_out").0.fh;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let r = abi::ReadIn {
                fh,
                offset,
                size: 80,
                ..Default::default()
            };
            let b = self.call(opcode::READDIR, ino, r.as_slice())?;
            if b.is_empty() {
                break;
            }
            let mut rest = &b[..];
            while let Some((d, tail)) = read_struct::<abi::Dirent>(rest) {
                let n = d.namelen as usize;
                let name = String::from_utf8(tail[..n].to_vec()).unwrap();
                out.push((name, d.ino, d.type_));
                offset = d.off;
                rest = &rest[abi::dirent_size(n).min(rest.len())..];
            }
        }
        let rel = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(opcode::RELEASEDIR, ino, rel.as_slice())?;
        Ok(out)
    }

    /// Names in a directory without "." and "..", sorted.
    pub fn names(&mut self, ino: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .readdir(ino)
            .expect("readdir")
            .into_iter()
            .map(|(n, _, _)| n)
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v
    }

    /// Disconnects the frontend and waits for `ax-fsd` to exit; returns its exit status.
    pub fn shutdown(mut self) -> std::process::ExitStatus {
        self.frontend.take();
        let mut child = self.child.take().expect("child");
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("ax-fsd did not exit after the frontend disconnected");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.frontend.take();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// "name\0".
pub fn cname(n: &[u8]) -> Vec<u8> {
    let mut v = n.to_vec();
    v.push(0);
    v
}

/// sha256 over every path, type, mode, symlink target and file content under `dir`.
pub fn hash_tree(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, m));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, m) in all {
        h.update(p.strip_prefix(dir).unwrap().to_string_lossy().as_bytes());
        h.update(m.mode().to_le_bytes());
        h.update(m.mtime().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(std::fs::read_link(&p).unwrap().to_string_lossy().as_bytes());
        } else if m.is_file() {
            h.update(std::fs::read(&p).unwrap());
        }
    }
    format!("{:x}", h.finalize())
}
