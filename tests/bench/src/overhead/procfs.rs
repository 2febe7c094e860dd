//! Resident memory and CPU time of a local process, from `/proc` (Linux).

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

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 in Linux's ABI).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) the process has used so far, in seconds; `None` when unreadable.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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

    #[test]
    fn parses_stat_cpu_times() {
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        assert_eq!(parse_stat_cpu("garbage"), None);
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
