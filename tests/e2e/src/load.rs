//! Background chat load through a [`Stack`]'s gateway, for failure tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;

use crate::openai::{chat_body, sim_id};
use crate::{MODEL, Stack};

/// One request's result: HTTP status (0 when the request itself failed) and the engine that
/// answered (or the error text).
pub type Outcome = (u16, String);

/// Sends non-streamed chats from `clients` concurrent loops until `stop`; each task returns
/// the [`Outcome`] of every request it sent.
pub fn chat_load(
    stack: &Stack,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Outcome>>> {
    (0..clients)
        .map(|c| {
            let client = stack.client().clone();
            let url = stack.gateway_url("/v1/chat/completions");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = chat_body(MODEL, &format!("client {c} request {i}"), false, 2);
                    out.push(match client.post(&url).json(&body).send().await {
                        Ok(resp) => {
                            let id = sim_id(&resp);
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            (status, id)
                        }
                        Err(e) => (0, e.to_string()),
                    });
                    i += 1;
                }
                out
            })
        })
        .collect()
}

/// Waits for the load tasks and gathers their outcomes.
pub async fn collect(handles: Vec<JoinHandle<Vec<Outcome>>>) -> anyhow::Result<Vec<Outcome>> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await?);
    }
    Ok(all)
}

/// The outcomes that are not a 200.
pub fn failed(results: &[Outcome]) -> Vec<&Outcome> {
    results
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect()
}
