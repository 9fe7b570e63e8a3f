//! Flow dispatch: what happens to a guest TCP SYN the stack holds (the stack's
//! [`FlowHandler`]; connections to the gateway itself stay in the stack).
//!
//! 1. A synthetic DNS address maps back to the name the guest resolved (`Flow::host`); one
//!    the responder never handed out is refused, and so is a connection beyond
//!    `network.max_connections` ([`crate::stack::MAX_FLOWS`] by default; DNS over TCP counts).
//! 2. The policy decides (`policy::Policy::decide`); `Deny` answers RST.
//! 3. The upstream connect (`upstream::Connector::connect_tcp`: route, blocked ranges,
//!    CONNECT proxy, timeout); failure answers RST.
//! 4. Only now the SYN reaches smoltcp and is answered SYN-ACK; the guest side becomes a
//!    [`GuestStream`]: `Allow` splices it with the upstream, `Intercept` hands both to
//!    `tls::intercept`.
//!
//! Every flow ends in one audit record (`meter::Audit::connection`) with the decision, the
//! reason for a refusal or failure, and the bytes each way.

use crate::context::Context;
use crate::meter::ConnRecord;
use crate::policy::Decision;
use crate::stack::dns::in_pool;
use crate::stack::{FlowHandler, GuestPort, GuestStream, Netstack, PendingFlow};
use crate::{tls, Flow};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

impl Netstack {
    /// Starts the stack for `ctx` (see [`Netstack::start_with`]) with [`handler`] taking its
    /// flows: the netstack as the binary runs it.
    pub fn start(ctx: Arc<Context>) -> io::Result<(Netstack, GuestPort)> {
        let on_flow = handler(ctx.clone());
        Netstack::start_with(ctx, on_flow)
    }
}

/// The stack's flow handler for `ctx`: [`serve`] each new guest flow.
pub fn handler(ctx: Arc<Context>) -> FlowHandler {
    Box::new(move |syn| Box::pin(serve(ctx.clone(), syn)))
}

/// Serves one held SYN to the end of its connection.
pub async fn serve(ctx: Arc<Context>, syn: PendingFlow) {
    let dst = syn.dst();
    let ip = *dst.ip();
    let id = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
    let flow = Flow {
        id,
        guest: syn.guest(),
        dst: SocketAddr::V4(dst),
        host: syn.host(),
    };
    let target = flow.host.clone().unwrap_or_else(|| ip.to_string());
    let record = |decision: &'static str, reason: Option<String>, up: u64, down: u64| ConnRecord {
        flow_id: id,
        host: flow.host.clone(),
        ip: IpAddr::V4(ip),
        port: dst.port(),
        decision,
        reason,
        bytes_up: up,
        bytes_down: down,
    };
    let refuse = |decision: &'static str, reason: String| {
        log::debug!(
            "flow {id} {} -> {target}:{}: refused: {reason}",
            flow.guest,
            dst.port()
        );
        syn.refuse();
        ctx.audit.connection(record(decision, Some(reason), 0, 0));
    };
    if in_pool(ip) && flow.host.is_none() {
        return refuse(
            "deny",
            format!("{ip} was not handed out by the DNS responder"),
        );
    }
    let limit = ctx.config.network.max_connections;
    if syn.open_flows() >= limit {
        return refuse(
            "deny",
            format!("too many open connections ({limit}, network.max_connections)"),
        );
    }
    let decision = ctx
        .policy
        .decide(flow.host.as_deref(), IpAddr::V4(ip), dst.port());
    if let Decision::Deny(reason) = &decision {
        return refuse("deny", reason.clone());
    }
    let upstream = match ctx
        .upstream
        .connect_tcp(flow.host.as_deref(), flow.dst)
        .await
    {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return refuse("deny", format!("blocked: {e}"));
        }
        Err(e) => return refuse(decision.label(), format!("upstream connect failed: {e}")),
    };
    let guest = syn.accept();
    log::debug!(
        "flow {id} {} -> {target}:{}: {}",
        flow.guest,
        dst.port(),
        decision.label()
    );
    let counters = guest.counters();
    let result = match decision {
        Decision::Intercept => tls::intercept(
            ctx.clone(),
            flow.clone(),
            Box::new(guest),
            Box::new(upstream),
        )
        .await
        .map_err(|e| format!("{e:#}")),
        _ => splice(guest, upstream).await.map_err(|e| e.to_string()),
    };
    if let Err(e) = &result {
        log::debug!("flow {id} -> {target}:{} ended: {e}", dst.port());
    }
    ctx.audit.connection(record(
        decision.label(),
        result.err(),
        counters.up.load(Ordering::Relaxed),
        counters.down.load(Ordering::Relaxed),
    ));
}

/// Which side of a splice failed.
enum Side {
    Guest(io::Error),
    Upstream(io::Error),
}

/// Copies both ways until both sides finished sending; a FIN on one side becomes a FIN
/// (`shutdown`) on the other, a reset on one side becomes a reset on the other.
pub async fn splice(guest: GuestStream, upstream: TcpStream) -> io::Result<()> {
    let aborter = guest.abort_handle();
    let (mut gr, mut gw) = tokio::io::split(guest);
    let (mut ur, mut uw) = upstream.into_split();
    let up = async {
        pump(&mut gr, &mut uw, Side::Guest, Side::Upstream).await?;
        uw.shutdown().await.map_err(Side::Upstream)
    };
    let down = async {
        pump(&mut ur, &mut gw, Side::Upstream, Side::Guest).await?;
        gw.shutdown().await.map_err(Side::Guest)
    };
    let r = tokio::try_join!(up, down);
    match r {
        Ok(_) => Ok(()),
        Err(Side::Guest(e)) => {
            // The guest reset or vanished: reset the upstream too (zero linger, then close;
            // reunited first, since dropping a lone write half would send a FIN).
            if let Ok(s) = ur.reunite(uw) {
                let _ = s.set_zero_linger();
            }
            Err(e)
        }
        Err(Side::Upstream(e)) => {
            aborter.abort();
            Err(e)
        }
    }
}

async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    rerr: fn(io::Error) -> Side,
    werr: fn(io::Error) -> Side,
) -> Result<u64, Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.map_err(rerr)?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n]).await.map_err(werr)?;
        total += n as u64;
    }
}
