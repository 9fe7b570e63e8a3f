//! The host's resolver: getaddrinfo(3), which the DNS responder asks whether a name exists
//! and the upstream connect uses to find a name's addresses.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};

/// Why a host lookup found nothing.
#[derive(Debug)]
pub enum Lookup {
    /// The name does not exist (EAI_NONAME).
    NoName,
    /// Temporary or other resolver failure.
    Failed(String),
}

/// getaddrinfo(3) for `name` (any family). A name that exists without addresses
/// (EAI_NODATA) is an empty list, not an error.
pub fn host_lookup(name: &str) -> Result<Vec<IpAddr>, Lookup> {
    let c = CString::new(name).map_err(|_| Lookup::NoName)?;
    // SAFETY: zeroed addrinfo is a valid "no hints" value; fields set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string, hints and out pointer; res freed below.
    let rc = unsafe { libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        return match rc {
            libc::EAI_NONAME => Err(Lookup::NoName),
            libc::EAI_NODATA => Ok(Vec::new()),
            _ => {
                // SAFETY: gai_strerror returns a static C string.
                let msg = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(rc)) };
                Err(Lookup::Failed(msg.to_string_lossy().into_owned()))
            }
        };
    }
    let mut out = Vec::new();
    let mut p = res;
    while !p.is_null() {
        // SAFETY: p walks the list getaddrinfo returned; sockaddr types checked by family.
        unsafe {
            let ai = &*p;
            match ai.ai_family {
                libc::AF_INET => {
                    let sa = &*(ai.ai_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = &*(ai.ai_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::V6(sa.sin6_addr.s6_addr.into()));
                }
                _ => {}
            }
            p = ai.ai_next;
        }
    }
    // SAFETY: res came from getaddrinfo.
    unsafe { libc::freeaddrinfo(res) };
    out.dedup();
    Ok(out)
}
