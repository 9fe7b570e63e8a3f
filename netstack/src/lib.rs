//! `ax-netstack`: every byte a guest sends leaves through here.
//!
//! One process per agent, a vhost-user-net backend holding a userspace TCP/IP stack (smoltcp).
//! Guest TCP connections are proxied to real host sockets after the egress policy allowed
//! them; TLS to intercepted hosts is terminated with a per-agent CA so that secrets can be
//! swapped in (placeholder → real value) and LLM usage metered. Wire formats and addresses:
//! `docs/network.md`; config: [`config::Config`].
//!
//! Module map, bottom up: each module uses only the ones listed before it (no cycles).
//! - crate root: [`Flow`], [`IoStream`], [`BoxStream`], the types the layers pass; uses nothing.
//! - [`hostname`]: the one normal form of host names, refusing non-hostname bytes; uses nothing.
//! - [`config`]: the per-agent TOML config the supervisor pipes in; uses hostname.
//! - [`policy`]: allow / deny / intercept per host name, port and address; uses config,
//!   hostname.
//! - [`meter`]: usage per provider, prices, spend cap, ledger, audit log; uses config.
//! - [`secrets`]: placeholders, substitution, scrubbing, [`secrets::rewrite`]; uses config.
//! - [`ca`]: the per-agent CA, leaves per SNI, guest-side TLS configs; uses secrets (serials).
//! - [`upstream`]: resolver, routes, blocked ranges (address rules of the policy too), CONNECT
//!   proxy, TLS client; uses config, hostname, policy, ca.
//! - [`context`]: one agent's shared state; uses config, policy, upstream, ca, secrets, meter.
//! - [`http`]: the HTTP proxy inside intercepted TLS; uses context, policy, meter, secrets.
//! - [`tls`]: TLS interception (guest TLS, upstream TLS, then http); uses context, upstream, http.
//! - [`jail`]: Landlock, seccomp, capabilities, namespaces after setup, the per-thread filters
//!   the threads below enter; uses context, upstream, tls.
//! - [`stack`]: frames ↔ smoltcp, ARP, DNS, new flows to a handler; uses context, upstream,
//!   jail (its tokio threads enter their filter).
//! - [`flow`]: the handler: decide, connect, splice/tls; uses context, policy, meter, stack, tls.
//! - [`vhost_user`]: the vhost-user-net backend moving frames to a `FramePort`; uses jail.
//! - [`stream`]: the same for QEMU's `-netdev stream` (length-prefixed frames); uses
//!   vhost_user, jail.
//!
//! A module holding the [`context::Context`] also reaches the layers it holds through it (http
//! and flow connect through its `upstream`). The binary (`main.rs`) starts the stack with
//! flow's handler ([`stack::Netstack::start`]) and serves its `GuestPort` with vhost_user or
//! stream.

pub mod ca;
pub mod config;
pub mod context;
pub mod flow;
pub mod hostname;
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
