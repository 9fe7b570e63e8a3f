//! Facts about the host machine that more than one crate needs.

/// The host's TSC frequency in kHz, measured against CLOCK_MONOTONIC over ~10 ms; `None`
/// off x86_64.
pub fn tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::time::{Duration, Instant};
        // SAFETY: RDTSC has no preconditions on x86_64.
        let (t0, c0) = (Instant::now(), unsafe { core::arch::x86_64::_rdtsc() });
        std::thread::sleep(Duration::from_millis(10));
        let (c1, t1) = (unsafe { core::arch::x86_64::_rdtsc() }, Instant::now());
        let ns = t1.duration_since(t0).as_nanos() as u64;
        let khz = c1.wrapping_sub(c0).checked_mul(1_000_000)? / ns.max(1);
        (100_000..20_000_000).contains(&khz).then_some(khz)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
