//! `ax-vsock`: the hybrid vsock vhost-user backend as a standalone process, for debugging.
//!
//! ```text
//! ax-vsock --socket /tmp/vhost-vsock.sock --uds /tmp/vsock.sock [--guest-cid 3]
//! ```
//! Logs go to stderr; `AX_VSOCK_LOG=debug` shows every packet.

use std::path::PathBuf;
use std::process::ExitCode;

use ax_vsock::{listen, serve, HybridConfig, DEFAULT_GUEST_CID};

const USAGE: &str = "usage: ax-vsock --socket PATH --uds PATH [--guest-cid N]
  --socket PATH    vhost-user socket to listen on (QEMU: -chardev socket,path=PATH)
  --uds PATH       hybrid vsock socket: host clients send 'CONNECT <port>\\n' here;
                   guest connections to CID 2 port P go to PATH_P
  --guest-cid N    guest CID (default 3)
env: AX_VSOCK_LOG=error|warn|info|debug|trace (default info)";

fn main() -> ExitCode {
    ax_vhost::log_to_stderr("ax-vsock", "AX_VSOCK_LOG");

    let mut socket = None;
    let mut uds = None;
    let mut cid = DEFAULT_GUEST_CID;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--uds" => uds = args.next().map(PathBuf::from),
            "--guest-cid" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => cid = v,
                None => {
                    eprintln!("ax-vsock: --guest-cid needs a number, e.g. --guest-cid 3\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("ax-vsock: unknown argument '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(socket), Some(uds)) = (socket, uds) else {
        eprintln!("ax-vsock: --socket and --uds are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let cfg = HybridConfig {
        guest_cid: cid,
        uds_path: uds,
    };
    let run = || -> anyhow::Result<()> {
        let listener = listen(&socket)?;
        eprintln!(
            "ax-vsock: waiting for a vhost-user frontend on {}",
            socket.display()
        );
        serve(listener, cfg)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ax-vsock: {e:#}");
            ExitCode::from(1)
        }
    }
}
