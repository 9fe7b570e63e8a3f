//! The build's progress display on stderr: `[2/6] rootfs (mmdebstrap)…` with a spinner and the
//! elapsed time on a terminal, plain start/done lines otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spinner lines (stderr is a terminal).
    Spinner,
    /// One line per step start and end.
    Plain,
    /// Nothing.
    Quiet,
}

/// Step-by-step progress of a build.
pub struct Progress {
    mode: Mode,
    total: usize,
    n: usize,
    label: String,
    bar: Option<ProgressBar>,
    step_start: Instant,
    start: Instant,
}

impl Progress {
    /// Progress over `total` steps; `quiet` silences it, otherwise the mode follows stderr.
    pub fn new(total: usize, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Spinner
        } else {
            Mode::Plain
        };
        Progress {
            mode,
            total,
            n: 0,
            label: String::new(),
            bar: None,
            step_start: Instant::now(),
            start: Instant::now(),
        }
    }

    /// Ends the current step (if any) and starts the next one.
    pub fn step(&mut self, label: &str) {
        self.end_step();
        self.n += 1;
        self.label = format!("[{}/{}] {label}", self.n, self.total);
        self.step_start = Instant::now();
        match self.mode {
            Mode::Spinner => {
                let pb = ProgressBar::new_spinner();
                pb.set_style(
                    ProgressStyle::with_template("{spinner:.cyan} {msg}… {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(self.label.clone());
                pb.enable_steady_tick(Duration::from_millis(120));
                self.bar = Some(pb);
            }
            Mode::Plain => eprintln!("{}…", self.label),
            Mode::Quiet => {}
        }
    }

    /// A detail line under the current step (e.g. what was chosen).
    pub fn note(&self, text: &str) {
        match (&self.bar, self.mode) {
            (Some(pb), _) => pb.println(format!("      {text}")),
            (None, Mode::Plain) => eprintln!("      {text}"),
            _ => {}
        }
    }

    fn end_step(&mut self) {
        if self.n == 0 {
            return;
        }
        let secs = self.step_start.elapsed().as_secs_f64();
        match self.mode {
            Mode::Spinner => {
                if let Some(pb) = self.bar.take() {
                    pb.finish_and_clear();
                }
                eprintln!("✓ {} ({secs:.1}s)", self.label);
            }
            Mode::Plain => eprintln!("  done ({secs:.1}s)"),
            Mode::Quiet => {}
        }
    }

    /// Ends the last step and prints the total time.
    pub fn finish(&mut self, summary: &str) {
        self.end_step();
        self.n = 0;
        if self.mode != Mode::Quiet {
            eprintln!("{summary} in {:.1}s", self.start.elapsed().as_secs_f64());
        }
    }

    /// Clears the spinner after a failure (the error is printed by the caller).
    pub fn abandon(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
        if self.mode != Mode::Quiet && self.n > 0 {
            eprintln!(
                "✗ {} (failed after {:.1}s)",
                self.label,
                self.step_start.elapsed().as_secs_f64()
            );
        }
        self.n = 0;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}
