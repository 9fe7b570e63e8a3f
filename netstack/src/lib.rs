//! `ax-netstack`: every byte a guest sends leaves through here.
//!
//! One process per agent, a vhost-user-net backend holding a userspace TCP/IP stack (smoltcp).
//! Guest TCP connections are proxied to real host sockets after the egress policy allowed
//! them; TLS to intercepted hosts is terminated with a per-agent CA so that secrets can be
//! swapped in (placeholder → real value) and LLM usage metered. Wire formats and addresses:
//! `docs/network.md`; config: [`config::Config`].
//!
//! Module map (one concern each):
//! - [`config`]: the per-agent TOML config the supervisor pipes in.
//! - [`context`]: the shared state of one agent's netstack (config, CA, secrets, meter, audit).
//! - [`stack`]: Ethernet frames ↔ smoltcp; ARP, DNS responder, TCP flows, SYN held until the
//!   upstream connect succeeded.
//! - [`policy`]: allow / deny / intercept per host name, port and address.
//! - [`flow`]: flow dispatch — policy, upstream connect, then splice or intercept.
//! - [`upstream`]: connecting to the real destination (host resolver, route overrides, blocked
//!   ranges, optional HTTP CONNECT proxy, TLS client with the routes' extra CAs).
//! - [`ca`]: the per-agent CA, leaf certificates per SNI, the guest-side TLS server configs.
//! - [`tls`]: TLS interception: the guest's TLS terminated, TLS to the upstream, the HTTP
//!   proxy between them.
//! - [`http`]: the HTTP proxy inside intercepted TLS (hyper both sides, streaming bodies,
//!   content decoding).
//! - [`secrets`]: placeholders, substitution in requests, scrubbing of responses, and the
//!   streaming search-and-replace under both ([`secrets::rewrite`]).
//! - [`meter`]: usage parsing per provider, prices, spend cap, the ledger and the audit log.
//! - [`jail`]: Landlock, seccomp, capabilities and namespaces after setup (docs/jail.md).
//! - [`vhost_user`]: the vhost-user-net backend moving frames between the VMM and the stack.
//! - [`stream`]: the same for QEMU's `-netdev stream` (length-prefixed frames on a socket).

pub mod ca;
pub mod config;
pub mod context;
pub mod flow;
pub mod http;
pub mod jail;
pub mod meter;
pub mod policy;
pub mod secrets;
pub mod stack;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod vhost_user;

use std::net::{SocketAddr, SocketAddrV4};

/// A byte stream either side of a proxied connection: the guest's TCP connection (bridged out
/// of smoltcp) or the upstream one (a host socket, possibly through a CONNECT proxy).
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}

/// A boxed [`IoStream`].
pub type BoxStream = Box<dyn IoStream>;

/// One guest TCP connection as the proxy layers see it.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Per-process connection number (audit records and log lines).
    pub id: u64,
    /// The guest's end (eth0 address, ephemeral port).
    pub guest: SocketAddrV4,
    /// The address the guest connected to (as the guest sees it).
    pub dst: SocketAddr,
    /// The host name the guest resolved to `dst` through our DNS responder, if any.
    pub host: Option<String>,
}
