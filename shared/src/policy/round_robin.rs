//! `round_robin`: strict rotation over the candidates.

use super::{Pick, Policy, PolicyEnv};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Rotates through the candidates; fallbacks are the next ones in rotation.
#[derive(Debug, Default)]
pub struct RoundRobinPolicy {
    next: usize,
}

impl Policy for RoundRobinPolicy {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(
        &mut self,
        _req: &RouteRequest<'_>,
        candidates: &[&Worker],
        _env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let n = candidates.len();
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        Pick {
            ranked: (0..n).map(|i| candidates[(start + i) % n].id).collect(),
            prefix_match: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests_support::{env_rng, workers};
    use crate::request::Prompt;

    #[test]
    fn rotates_evenly() {
        let ws = workers(3);
        let refs: Vec<&Worker> = ws.iter().collect();
        let prompt = Prompt::Text("x".into());
        let req = crate::policy::tests_support::request(&prompt);
        let mut p = RoundRobinPolicy::default();
        let mut rng = env_rng();
        let firsts: Vec<u32> = (0..6)
            .map(|_| {
                let mut env = PolicyEnv {
                    now_ms: 0,
                    rng: &mut rng,
                };
                p.pick(&req, &refs, &mut env).ranked[0].0
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }
}
