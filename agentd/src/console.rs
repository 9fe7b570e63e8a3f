//! Logging to the console: one line per record, `agentd: <message>` (warnings and errors
//! tagged), written with a single `write(2)` to fd 2, which in the guest is `/dev/console`
//! (the VM's serial console, i.e. its console.log).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Console;

impl Log for Console {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = match r.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Debug | Level::Trace => "debug: ",
            Level::Info => "",
        };
        let line = format!("agentd: {tag}{}\n", r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

static CONSOLE: Console = Console;

/// Installs the console logger at `level` (idempotent; a later call only changes the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&CONSOLE);
    log::set_max_level(level);
}

/// Points fds 0, 1 and 2 at `/dev/console` (opened `O_NOCTTY`, so PID 1 gets no controlling
/// terminal). Needed when the initramfs had no `/dev/console` node, in which case the kernel
/// started `/init` with those fds closed.
pub fn attach_console() {
    // SAFETY: plain open/dup2/close on fds this process owns.
    unsafe {
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd < 0 {
            return;
        }
        for target in 0..3 {
            if fd != target {
                libc::dup2(fd, target);
            }
        }
        if fd > 2 {
            libc::close(fd);
        }
    }
}
