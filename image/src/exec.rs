//! Running host tools with their output captured to a log file, so the progress display stays
//! clean and a failure can quote the tool's last lines.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

/// How many trailing log lines a failure quotes.
const TAIL: usize = 25;

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with stdout+stderr appended to `log`; returns what it wrote. On a non-zero exit
/// the error quotes the last lines and names the log.
pub fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<String> {
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .with_context(|| format!("starting {prog}"))?;
    let all = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&all[(before as usize).min(all.len())..]).into_owned();
    if !status.success() {
        anyhow::bail!(
            "{prog} failed ({status}); its last lines:\n{}",
            tail(&text, TAIL)
        );
    }
    Ok(text)
}

/// Runs `cmd` and returns its stdout (stderr is quoted on failure).
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {prog}"))?;
    if !o.status.success() {
        anyhow::bail!(
            "{prog} failed ({}): {}",
            o.status,
            tail(&String::from_utf8_lossy(&o.stderr), TAIL)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_failure_quotes_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let ok = run_logged(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            &log,
        )
        .unwrap();
        assert!(ok.contains("out") && ok.contains("err"));
        let e = run_logged(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            &log,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sh failed") && s.contains("boom") && !s.contains("out"),
            "{s}"
        );
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
