//! The simulated engine: FIFO admission up to `max_running`, prefix-cache lookup,
//! prefill and decode timing on tokio timers, and the counters behind `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};

use crate::cache::{KvCache, KvEventSink};
use crate::config::SimConfig;
use crate::metrics::Histogram;
use crate::prompt::Prompt;

/// Why a request stopped producing tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// End of sequence (not produced by the simulator today; kept for the metric label).
    Stop,
    /// The client went away before the end.
    Abort,
}

impl FinishReason {
    /// Label value used by the engines.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Abort => "abort",
        }
    }
}

/// Counters and gauges exported on `/metrics`.
#[derive(Debug)]
pub struct Stats {
    /// Requests holding a running slot.
    pub running: AtomicU64,
    /// Requests waiting for a slot.
    pub waiting: AtomicU64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Generated tokens.
    pub generation_tokens: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits: AtomicU64,
    /// Finished requests by reason: length, stop, abort.
    pub finished: [AtomicU64; 3],
    /// KV blocks held privately by running requests (partial and decode blocks).
    pub private_blocks: AtomicU64,
    /// Time from arrival to first token.
    pub ttft: Mutex<Histogram>,
}

impl Stats {
    fn finish_slot(reason: FinishReason) -> usize {
        match reason {
            FinishReason::Length => 0,
            FinishReason::Stop => 1,
            FinishReason::Abort => 2,
        }
    }

    /// Finished requests with this reason.
    pub fn finished(&self, reason: FinishReason) -> u64 {
        self.finished[Self::finish_slot(reason)].load(Ordering::Relaxed)
    }

    /// Locks the TTFT histogram, recovering from a poisoned lock.
    pub fn ttft(&self) -> MutexGuard<'_, Histogram> {
        self.ttft.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared engine state.
pub struct Engine {
    /// Configuration the engine was started with.
    pub cfg: SimConfig,
    /// Metric counters.
    pub stats: Stats,
    cache: Mutex<KvCache>,
    slots: Arc<Semaphore>,
    /// When the prefill compute queue drains (`--serial-prefill`).
    prefill_free_at: Mutex<Instant>,
    next_id: AtomicU64,
    started_unix: u64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Engine {
    /// An engine publishing KV events to `sink`.
    pub fn new(cfg: SimConfig, sink: Box<dyn KvEventSink>, ttft_buckets: &'static [f64]) -> Self {
        let capacity = usize::try_from(cfg.kv_blocks).unwrap_or(usize::MAX);
        Engine {
            cache: Mutex::new(KvCache::new(capacity, cfg.block_size, sink)),
            slots: Arc::new(Semaphore::new(cfg.max_running as usize)),
            prefill_free_at: Mutex::new(Instant::now()),
            stats: Stats {
                running: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
                prompt_tokens: AtomicU64::new(0),
                generation_tokens: AtomicU64::new(0),
                prefix_queries: AtomicU64::new(0),
                prefix_hits: AtomicU64::new(0),
                finished: Default::default(),
                private_blocks: AtomicU64::new(0),
                ttft: Mutex::new(Histogram::new(ttft_buckets)),
            },
            next_id: AtomicU64::new(0),
            started_unix: unix_now(),
            cfg,
        }
    }

    fn cache(&self) -> MutexGuard<'_, KvCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unix time the engine started (the `created` of `/v1/models`).
    pub fn started_unix(&self) -> u64 {
        self.started_unix
    }

    /// A fresh request number.
    pub fn next_request_number(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Fraction of KV blocks in use by running requests (0..1).
    pub fn kv_usage(&self) -> f64 {
        let (pinned, capacity) = {
            let c = self.cache();
            (c.pinned() as u64, c.capacity() as u64)
        };
        let used = pinned + self.stats.private_blocks.load(Ordering::Relaxed);
        if capacity == 0 {
            0.0
        } else {
            (used as f64 / capacity as f64).min(1.0)
        }
    }

    /// Flushes the prefix cache; false when requests hold blocks.
    pub fn reset_cache(&self) -> bool {
        self.cache().clear()
    }

    /// Stretch factor from the current number of running requests.
    fn load_stretch(&self) -> f64 {
        let running = self.stats.running.load(Ordering::Relaxed).max(1);
        1.0 + self.cfg.load_factor.max(0.0) * (running - 1) as f64
    }

    /// When a prefill needing `compute` that is ready now starts and finishes computing: at
    /// once, or, with `--serial-prefill`, after the prefills queued before it.
    fn schedule_prefill(&self, compute: Duration) -> (Instant, Instant) {
        let now = Instant::now();
        if !self.cfg.serial_prefill {
            return (now, now + compute);
        }
        let mut free_at = self
            .prefill_free_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let starts = (*free_at).max(now);
        *free_at = starts + compute;
        (starts, starts + compute)
    }

    /// Queues, prefills and returns a generation whose first token is ready.
    /// Dropping the future or the generation releases the slot and the blocks.
    /// Returns `None` only if the engine's slot semaphore was closed.
    pub async fn start(self: &Arc<Self>, prompt: &Prompt, max_tokens: usize) -> Option<Generation> {
        let arrival = Instant::now();
        let permit = {
            let _waiting = GaugeGuard::inc(&self.stats.waiting);
            self.slots.clone().acquire_owned().await.ok()?
        };
        let bs = self.cfg.block_size as usize;
        let hashes = &prompt.block_hashes;
        let (matched, looked_up) = {
            let mut c = self.cache();
            let matched = c.match_prefix(hashes);
            let pinned = c.pin(&hashes[..matched]);
            (matched, pinned)
        };
        let mut active = Active {
            engine: Arc::clone(self),
            _permit: permit,
            _running: None,
            held: looked_up,
            private_blocks: 0,
            finished: false,
        };
        // Blocks for the uncached part are allocated for the prefill's duration.
        active.set_private_blocks((prompt.tokens + 1).div_ceil(bs).saturating_sub(matched));
        let cached = (matched * bs).min(prompt.tokens.saturating_sub(1));
        let s = &self.stats;
        s.prefix_queries
            .fetch_add(prompt.tokens as u64, Ordering::Relaxed);
        s.prefix_hits.fetch_add(cached as u64, Ordering::Relaxed);

        let uncached = (prompt.tokens - cached) as f64;
        let stretch = self.load_stretch();
        let overhead = self
            .cfg
            .scaled(self.cfg.prefill_overhead_ms * 1000.0 * stretch);
        let compute = self
            .cfg
            .scaled(uncached * self.cfg.prefill_us_per_token * stretch);
        let (compute_starts, compute_done) = self.schedule_prefill(compute);
        if compute_starts > Instant::now() {
            // Queued behind other prefills: not scheduled yet, what vLLM reports as waiting.
            let _waiting = GaugeGuard::inc(&self.stats.waiting);
            sleep_until(compute_starts).await;
        }
        active._running = Some(RunningGuard::new(self));
        sleep_until(compute_done + overhead).await;

        {
            let mut c = self.cache();
            let stored = c.store_pinned_tokens(hashes, &prompt.token_ids);
            let previous = std::mem::replace(&mut active.held, stored);
            c.unpin(&previous);
        }
        s.prompt_tokens
            .fetch_add(prompt.tokens as u64, Ordering::Relaxed);
        s.ttft().observe(arrival.elapsed().as_secs_f64());

        let seed = self.cfg.seed ^ prompt.fingerprint();
        let mut generation = Generation {
            active,
            prompt_tokens: prompt.tokens,
            full_prompt_blocks: prompt.tokens / bs,
            block_size: bs,
            cached_tokens: cached,
            max_tokens: max_tokens.max(1),
            produced: 0,
            deadline: Instant::now(),
            rng: SmallRng::seed_from_u64(seed),
        };
        generation.account_token();
        Some(generation)
    }
}

/// Increments a gauge on creation and decrements it on drop.
struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    fn inc(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as running until dropped (it may outlive the handler future).
struct RunningGuard(Arc<Engine>);

impl RunningGuard {
    fn new(engine: &Arc<Engine>) -> Self {
        engine.stats.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard(Arc::clone(engine))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.stats.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resources of a running request, released on drop.
struct Active {
    engine: Arc<Engine>,
    _permit: OwnedSemaphorePermit,
    /// Set once the request is scheduled (after any wait for prefill compute).
    _running: Option<RunningGuard>,
    held: Vec<u64>,
    private_blocks: u64,
    finished: bool,
}

impl Active {
    /// Sets how many blocks this request holds outside the shared cache.
    fn set_private_blocks(&mut self, blocks: usize) {
        let blocks = blocks as u64;
        let total = &self.engine.stats.private_blocks;
        if blocks >= self.private_blocks {
            total.fetch_add(blocks - self.private_blocks, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.private_blocks - blocks, Ordering::Relaxed);
        }
        self.private_blocks = blocks;
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.engine.cache().unpin(&self.held);
        let s = &self.engine.stats;
        s.private_blocks
            .fetch_sub(self.private_blocks, Ordering::Relaxed);
        if !self.finished {
            s.finished[Stats::finish_slot(FinishReason::Abort)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How far decoding may fall behind its schedule before the lag is forgotten.
const MAX_CATCH_UP: Duration = Duration::from_millis(20);

/// Words the simulated model emits.
const WORDS: &[&str] = &[
    "the", "cache", "prefix", "token", "model", "router", "engine", "block", "stream", "request",
    "latency", "envoy", "queue", "decode", "prefill", "answer", "simple", "fast", "and", "of", "a",
    "to", "in", "is", "that", "for", "with", "on", "data", "it", "we", "can",
];

/// A running request after prefill: yields its tokens at the decode pace.
pub struct Generation {
    active: Active,
    prompt_tokens: usize,
    full_prompt_blocks: usize,
    block_size: usize,
    cached_tokens: usize,
    max_tokens: usize,
    produced: usize,
    deadline: Instant,
    rng: SmallRng,
}

impl Generation {
    /// Prompt length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Prompt tokens served from the prefix cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached_tokens
    }

    /// Tokens produced so far.
    pub fn completion_tokens(&self) -> usize {
        self.produced
    }

    /// True once every token has been produced.
    pub fn is_done(&self) -> bool {
        self.produced >= self.max_tokens
    }

    fn account_token(&mut self) {
        self.produced += 1;
        let e = &self.active.engine;
        e.stats.generation_tokens.fetch_add(1, Ordering::Relaxed);
        let blocks = (self.prompt_tokens + self.produced).div_ceil(self.block_size);
        self.active
            .set_private_blocks(blocks.saturating_sub(self.full_prompt_blocks));
    }

    fn word(&mut self, index: usize) -> String {
        let w = WORDS[self.rng.random_range(0..WORDS.len())];
        if index == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        }
    }

    /// Text of the first token (already produced by prefill).
    pub fn first_token(&mut self) -> String {
        self.word(0)
    }

    /// Waits one inter-token interval and returns the next token, or `None` when done.
    pub async fn next_token(&mut self) -> Option<String> {
        if self.is_done() {
            return None;
        }
        let e = &self.active.engine;
        let step = e.cfg.scaled(e.cfg.decode_us_per_token * e.load_stretch());
        // Keep a running deadline so timer rounding does not accumulate, but never
        // burst more than a little to catch up after a slow reader.
        let now = Instant::now();
        let floor = now.checked_sub(MAX_CATCH_UP).unwrap_or(now);
        self.deadline = self.deadline.max(floor) + step;
        sleep_until(self.deadline).await;
        let index = self.produced;
        self.account_token();
        Some(self.word(index))
    }

    /// Records a normal finish (length) and releases the request.
    pub fn finish(mut self) -> FinishReason {
        let reason = FinishReason::Length;
        self.active.finished = true;
        self.active.engine.stats.finished[Stats::finish_slot(reason)]
            .fetch_add(1, Ordering::Relaxed);
        reason
    }
}
