//! The `ax.*` parameters agentd reads from the kernel command line (`/proc/cmdline`).

use crate::net::NetConfig;
use std::time::Duration;

/// Settings from the kernel command line. Unknown parameters are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `ax.name=<name>`: the guest's host name. Default: none (the kernel's, `(none)`).
    pub name: Option<String>,
    /// `ax.root=<device>|none`: block device holding the erofs root file system
    /// (default `/dev/vda`); `none` skips the root switch and stays in the initramfs.
    pub root: Option<String>,
    /// `ax.grace_ms=<ms>`: after the primary session exits, how long to wait for SHUTDOWN
    /// before powering off on our own. Default 3000.
    pub grace: Duration,
    /// `ax.debug` (or `ax.debug=1`): log at debug level.
    pub debug: bool,
    /// `ax.workspace=<tag>`: mount the virtio-fs share with this tag on `/workspace`
    /// (the repository served by ax-fsd). Default: none (an empty `/workspace`).
    pub workspace: Option<String>,
    /// `ax.objects=<tag>`: mount the virtio-fs share with this tag read-only on
    /// `/run/ax/objects` (the host repository's objects, the alternate of the agent's `.git`).
    pub objects: Option<String>,
    /// `ax.net=ADDR/PREFIX,GATEWAY[,MTU]`: configure eth0 (address, default route through
    /// the gateway, DNS server = gateway, MTU). Default: none (no network; eth0 stays down).
    pub net: Option<NetConfig>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            name: None,
            root: Some("/dev/vda".into()),
            grace: Duration::from_millis(3000),
            debug: false,
            workspace: None,
            objects: None,
            net: None,
        }
    }
}

impl Cmdline {
    /// Reads `/proc/cmdline`; defaults if it cannot be read.
    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    /// Parses a kernel command line: whitespace-separated `key` or `key=value` words;
    /// double quotes group a value containing spaces (`ax.name="a b"`), as the kernel does.
    pub fn parse(s: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in split(s) {
            let (k, v) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (k, v) {
                ("ax.name", Some(v)) if !v.is_empty() => c.name = Some(v.to_string()),
                ("ax.root", Some("none")) => c.root = None,
                ("ax.root", Some(v)) if !v.is_empty() => c.root = Some(v.to_string()),
                ("ax.grace_ms", Some(v)) => match v.parse::<u64>() {
                    Ok(ms) => c.grace = Duration::from_millis(ms),
                    Err(_) => {
                        log::warn!("ignoring ax.grace_ms={v:?}: not a number of milliseconds")
                    }
                },
                ("ax.debug", None) | ("ax.debug", Some("1")) => c.debug = true,
                ("ax.workspace", Some(v)) if !v.is_empty() => c.workspace = Some(v.to_string()),
                ("ax.objects", Some(v)) if !v.is_empty() => c.objects = Some(v.to_string()),
                ("ax.net", Some(v)) => match NetConfig::parse(v) {
                    Ok(n) => c.net = Some(n),
                    Err(e) => log::warn!("ignoring {e}"),
                },
                _ => {}
            }
        }
        c
    }
}

fn split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ax_parameters() {
        let c = Cmdline::parse("console=ttyS0 ax.name=fix-bug ax.grace_ms=500 ax.debug quiet\n");
        assert_eq!(c.name.as_deref(), Some("fix-bug"));
        assert_eq!(c.root.as_deref(), Some("/dev/vda"));
        assert_eq!(c.grace, Duration::from_millis(500));
        assert!(c.debug);
        let c = Cmdline::parse("ax.root=none ax.name=\"a b\" ax.grace_ms=x");
        assert_eq!(c.root, None);
        assert_eq!(c.name.as_deref(), Some("a b"));
        assert_eq!(c.grace, Duration::from_millis(3000));
        assert_eq!(
            Cmdline::parse("ax.root=/dev/vdb").root.as_deref(),
            Some("/dev/vdb")
        );
    }

    #[test]
    fn parses_ax_net() {
        let c = Cmdline::parse("console=ttyS0 ax.net=100.96.0.2/30,100.96.0.1,1400");
        assert_eq!(
            c.net,
            Some(NetConfig {
                addr: "100.96.0.2".parse().unwrap(),
                prefix: 30,
                gateway: "100.96.0.1".parse().unwrap(),
                mtu: Some(1400),
            })
        );
        assert_eq!(
            Cmdline::parse("ax.net=10.0.0.2/24,10.0.0.1")
                .net
                .unwrap()
                .mtu,
            None
        );
        assert_eq!(Cmdline::default().net, None);
        for bad in [
            "ax.net=100.96.0.2,100.96.0.1",
            "ax.net=100.96.0.2/31,100.96.0.1",
            "ax.net=100.96.0.2/30",
            "ax.net=100.96.0.2/30,gw",
            "ax.net=100.96.0.2/30,100.96.0.1,100",
            "ax.net=100.96.0.2/30,100.96.0.1,1500,x",
        ] {
            assert_eq!(Cmdline::parse(bad).net, None, "{bad}");
        }
    }
}
