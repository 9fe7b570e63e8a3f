//! agentd: the guest's init (PID 1) and control-protocol server.
//!
//! As PID 1 (or with `--init`) it runs the boot sequence in [`init`] and serves the control
//! port on vsock. For debugging on a host, `--listen-unix <path>` serves the protocol on a
//! Unix socket without any init duties, and `--vsock` serves vsock without them.

#[cfg(target_os = "linux")]
mod agents_layer;
#[cfg(target_os = "linux")]
mod cmdline;
#[cfg(target_os = "linux")]
mod console;
#[cfg(target_os = "linux")]
mod dotenv;
#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod modules;
#[cfg(target_os = "linux")]
mod mounts;
#[cfg(target_os = "linux")]
mod net;
#[cfg(target_os = "linux")]
mod power;
#[cfg(target_os = "linux")]
mod trust;
#[cfg(target_os = "linux")]
mod vsock;

#[cfg(target_os = "linux")]
const USAGE: &str =
    "usage: agentd                    as PID 1: boot the guest and serve vsock port 1024
       agentd --init             the same, even when not PID 1 (mounts, switch root, power off!)
       agentd --listen-unix PATH serve the control protocol on a Unix socket (no init duties)
       agentd --vsock            serve the control protocol on vsock port 1024 (no init duties)";

#[cfg(target_os = "linux")]
fn main() {
    use agentd::server::{Config, Event, Server};
    if std::process::id() == 1 {
        // The kernel passes unrecognised command line words as arguments; ignore them.
        init::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    console::init(if std::env::var_os("AGENTD_DEBUG").is_some() {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let server = Server::new(Config::default(), tx);
    match args.as_slice() {
        ["--init"] => init::run(),
        ["--listen-unix", path] => {
            let _ = std::fs::remove_file(path);
            let l = match std::os::unix::net::UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("agentd: cannot listen on {path}: {e}");
                    std::process::exit(1);
                }
            };
            log::info!("serving on unix:{path}");
            std::thread::spawn(move || server.serve_unix(l));
        }
        ["--vsock"] => {
            let l = match vsock::VsockListener::bind(agentd::proto::CONTROL_PORT) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "agentd: cannot listen on vsock port {}: {e}",
                        agentd::proto::CONTROL_PORT
                    );
                    std::process::exit(1);
                }
            };
            std::thread::spawn(move || loop {
                match l.accept() {
                    Ok(s) => server.serve(s),
                    Err(e) => log::warn!("accept: {e}"),
                }
            });
        }
        ["--help"] | ["-h"] => {
            println!("{USAGE}");
            return;
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
    // Not PID 1: events are only logged; SHUTDOWN ends the process.
    for ev in rx {
        log::info!("event: {ev:?}");
        if let Event::Shutdown { .. } = ev {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::process::exit(0);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("agentd runs only on Linux");
    std::process::exit(1);
}
