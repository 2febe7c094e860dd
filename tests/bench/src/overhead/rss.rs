//! Resident memory of a local process, from `/proc/<pid>/status` (Linux).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Resident set size in KiB (`VmRSS`), `None` when unreadable (no such process, not Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmRSS:")
}

/// The value in KiB of the `/proc/<pid>/status` line starting with `key`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples a process's RSS in the background and keeps the largest value seen since the last
/// [`PeakSampler::take_peak`].
#[derive(Debug)]
pub struct PeakSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> PeakSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
            }
        });
        PeakSampler { peak, task }
    }

    /// The largest RSS seen since the last call (KiB; `None` if nothing could be read), and
    /// resets it.
    pub fn take_peak(&self) -> Option<u64> {
        Some(self.peak.swap(0, Ordering::Relaxed)).filter(|&k| k > 0)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tkvroute\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(parse_status_kib("VmRSS: lots", "VmRSS:"), None);
    }

    #[tokio::test]
    async fn samples_this_process() {
        let me = std::process::id();
        if rss_kib(me).is_none() {
            return; // no /proc here
        }
        let sampler = PeakSampler::start(me, Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sampler.take_peak().is_some_and(|k| k > 0));
    }
}
