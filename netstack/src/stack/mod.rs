//! Ethernet frames ↔ smoltcp: ARP, the DNS responder, guest TCP flows bridged to tokio
//! streams (the SYN is answered only once the upstream connect succeeded).
//! SKELETON: filled in by the netstack-stack work.
