//! State shared by the gRPC service, the health checkers and the admin API.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use kvroute_core::circuit::Transition;
use kvroute_core::tokenize::PromptTokenizer;
use kvroute_core::{Gateway, ResponseReport, Router, Ticket, WorkerId};

use crate::metrics::Metrics;

/// The one router, the request flow and the metrics.
pub struct Shared {
    router: Mutex<Router>,
    /// The request flow settings.
    pub gateway: Gateway,
    /// Exported metrics.
    pub metrics: Metrics,
    started: Instant,
    tokenizer: OnceLock<Arc<PromptTokenizer>>,
    /// Request-body bytes held by all streams (`limits.max_buffered_bytes`).
    pub body_budget: Arc<crate::budget::ByteBudget>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Wraps a router; the body budget comes from the gateway's limits.
    pub fn new(router: Router, gateway: Gateway) -> Arc<Shared> {
        let body_budget = crate::budget::ByteBudget::new(gateway.limits().max_buffered_bytes);
        Arc::new(Shared {
            body_budget,
            router: Mutex::new(router),
            gateway,
            metrics: Metrics::new(),
            started: Instant::now(),
            tokenizer: OnceLock::new(),
        })
    }

    /// Locks the router. Never hold the guard across an `.await`. A panic while locked cannot
    /// leave the router half-updated in a way that matters more than stopping would, so a
    /// poisoned lock is recovered.
    pub fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the router, waiting at most `timeout` for it; `None` when it stayed busy (the
    /// decision deadline of `limits.decision_timeout_ms`). Never holds a thread while waiting.
    pub async fn router_within(&self, timeout: Duration) -> Option<MutexGuard<'_, Router>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            match self.router.try_lock() {
                Ok(guard) => return Some(guard),
                Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Installs the prompt tokenizer (once, at startup).
    pub fn set_tokenizer(&self, tokenizer: Arc<PromptTokenizer>) {
        let _ = self.tokenizer.set(tokenizer);
    }

    /// The prompt tokenizer, when one is configured.
    pub fn tokenizer(&self) -> Option<&PromptTokenizer> {
        self.tokenizer.get().map(Arc::as_ref)
    }

    /// Milliseconds on the service's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether at least one worker may receive requests.
    pub fn any_routable(&self) -> bool {
        self.router().workers().iter().any(|w| w.is_routable())
    }
}

/// An in-flight ticket that is handed back to the router exactly once: explicitly with
/// [`TicketGuard::release`], or when the guard is dropped (the gRPC stream ended, was reset, or
/// its task was cancelled).
#[derive(Debug)]
pub struct TicketGuard {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl TicketGuard {
    /// Guards `ticket`.
    pub fn new(shared: Arc<Shared>, ticket: Ticket) -> TicketGuard {
        TicketGuard {
            shared,
            ticket: Some(ticket),
        }
    }

    /// The proxy sent the response headers: the endpoint that served the request, if it
    /// says, the `:status` and the response's origin ([`Router::response_started`]).
    pub fn response_started(&mut self, report: ResponseReport<'_>) {
        let Some(ticket) = self.ticket.as_mut() else {
            return;
        };
        let now = self.shared.now_ms();
        let transitions = self.shared.router().response_started(ticket, report, now);
        for (worker, transition) in transitions {
            log_transition(&self.shared, worker, transition);
        }
    }

    /// Releases the ticket now.
    pub fn release(mut self) {
        self.complete();
    }

    fn complete(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.router().complete(ticket);
        }
    }
}

/// Logs a circuit opening or closing on `worker`.
fn log_transition(shared: &Shared, worker: WorkerId, transition: Transition) {
    let address = shared
        .router()
        .workers()
        .get(worker)
        .map(|w| w.spec.address.clone())
        .unwrap_or_default();
    match transition {
        Transition::Opened => tracing::warn!(worker = %address, "circuit open: worker failing"),
        Transition::Closed => {
            tracing::info!(worker = %address, "circuit closed: worker answers again")
        }
    }
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        self.complete();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvroute_core::RouterConfig;

    #[tokio::test]
    // Holding the router across the wait is the point: it is what a stuck decision looks like.
    #[allow(clippy::await_holding_lock)]
    async fn router_within_gives_up_while_the_router_is_busy() {
        let shared = Shared::new(Router::new(RouterConfig::default(), 1), Gateway::default());
        let held = shared.router();
        let started = Instant::now();
        assert!(
            shared
                .router_within(Duration::from_millis(30))
                .await
                .is_none()
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        drop(held);
        assert!(
            shared
                .router_within(Duration::from_millis(30))
                .await
                .is_some()
        );
    }
}
