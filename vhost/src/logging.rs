//! The backend processes' logger: `log` records on stderr.

/// Writes `<prog>: <LEVEL>: <message>` lines to stderr.
struct StderrLogger {
    prog: &'static str,
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}: {}", self.prog, r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the process logger: records at or above the level named by the environment
/// variable `env` (`error`, `warn`, `info`, `debug` or `trace`; anything else or unset:
/// `info`) go to stderr as `<prog>: <LEVEL>: <message>`, e.g. `ax-fsd: INFO: serving …`.
/// Call it once, first thing in `main`; if a logger is already installed it stays.
/// Returns the level chosen.
pub fn log_to_stderr(prog: &'static str, env: &str) -> log::LevelFilter {
    let level = match std::env::var(env).as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_logger(Box::leak(Box::new(StderrLogger { prog, level })));
    log::set_max_level(level);
    level
}
