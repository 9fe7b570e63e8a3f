//! Serving a driver-to-device virtqueue: the loop every backend runs over the available ring.

use std::io;
use std::ops::Deref;

use log::warn;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

/// Takes every chain the driver made available on `vring` (virtio 1.2 §2.7.13), hands each
/// to `handle` (which returns the number of bytes it wrote into the chain's device-writable
/// part), puts it in the used ring with that length (§2.7.14) and signals the driver when it
/// wants to be (`needs_notification`), until the ring is empty.
///
/// With `event_idx` (`VIRTIO_RING_F_EVENT_IDX` negotiated, §2.7.10) notifications are
/// suppressed while draining and re-enabled at the end; a chain that arrived meanwhile is
/// then taken at once. When the ring is empty, `idle` decides whether to look again (`true`:
/// e.g. after polling the ring found more work) or return.
///
/// A queue that is not ready, or a malformed available ring (logged as `"{what}: {error}"`),
/// ends the call with `Ok`. Errors: the vring operations (`add_used`, notification state,
/// signalling the call eventfd).
pub fn process_available<M>(
    vring: &VringRwLock,
    mem: &M,
    event_idx: bool,
    what: &str,
    mut handle: impl FnMut(DescriptorChain<M>) -> u32,
    mut idle: impl FnMut() -> bool,
) -> io::Result<()>
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    loop {
        if event_idx {
            vring.disable_notification().map_err(io::Error::other)?;
        }
        let chains: Vec<_> = {
            let mut st = vring.get_mut();
            let q = st.get_queue_mut();
            if !q.ready() {
                return Ok(());
            }
            match q.iter(mem.clone()) {
                Ok(it) => it.collect(),
                Err(e) => {
                    warn!("{what}: {e}");
                    return Ok(());
                }
            }
        };
        let any = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            let used = handle(chain);
            vring.add_used(head, used).map_err(io::Error::other)?;
        }
        if any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
            if idle() {
                continue;
            }
            return Ok(());
        }
    }
}
