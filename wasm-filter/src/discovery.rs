//! Reading a `kvroute` admin API's worker list (`GET /workers`) into the router.

use std::net::SocketAddr;
use std::time::Duration;

use kvroute_core::Router;
use kvroute_core::shared_state::{FleetChange, FleetWorker, sync_fleet};
use proxy_wasm::hostcalls;

use crate::config::DiscoveryConfig;

/// Starts one `GET` of the worker list; returns the call's token.
pub fn request(config: &DiscoveryConfig) -> Option<u32> {
    let auth = config.bearer_token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        (":method", "GET"),
        (":path", config.path.as_str()),
        (":authority", config.authority.as_str()),
        ("accept", "application/json"),
    ];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let timeout = Duration::from_millis(config.timeout_ms);
    match hostcalls::dispatch_http_call(&config.cluster, headers, None, vec![], timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!(
                "kvroute: cannot call the admin API through cluster {}: {status:?}",
                config.cluster
            );
            None
        }
    }
}

/// Why a worker-list answer was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The admin API answered with another status than 200.
    #[error("the admin API answered {0}")]
    Status(String),
    /// The body is not a JSON list of workers.
    #[error("the worker list is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The list is empty (kept the last known list instead).
    #[error("the worker list is empty; keeping the last known workers")]
    Empty,
}

/// Parses a worker-list answer; entries whose address is not `ip:port` are dropped (logged).
pub fn parse(status: Option<&str>, body: &[u8]) -> Result<Vec<FleetWorker>, FleetError> {
    if status != Some("200") {
        return Err(FleetError::Status(status.unwrap_or("nothing").to_owned()));
    }
    let fleet: Vec<FleetWorker> = serde_json::from_slice(body)?;
    let usable: Vec<FleetWorker> = fleet
        .into_iter()
        .filter(|w| {
            let ok = w.address.parse::<SocketAddr>().is_ok();
            if !ok {
                log::warn!(
                    "kvroute: ignoring admin worker `{}` (not ip:port)",
                    w.address
                );
            }
            ok
        })
        .collect();
    if usable.is_empty() {
        return Err(FleetError::Empty);
    }
    Ok(usable)
}

/// Applies a parsed worker list to the router.
pub fn apply(router: &mut Router, fleet: &[FleetWorker]) -> FleetChange {
    sync_fleet(router, fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_admin_worker_list() {
        let body = br#"[{"address":"10.0.0.1:80","engine":"vllm","models":["m"],"lora_adapters":[],
                         "healthy":true,"draining":false,"in_flight":2},
                        {"address":"bad","engine":"vllm"}]"#;
        let fleet = parse(Some("200"), body).unwrap();
        assert_eq!(fleet.len(), 1);
        assert_eq!(fleet[0].address, "10.0.0.1:80");
    }

    #[test]
    fn keeps_the_last_list_on_bad_answers() {
        assert!(matches!(
            parse(Some("401"), b"[]"),
            Err(FleetError::Status(_))
        ));
        assert!(matches!(parse(None, b"[]"), Err(FleetError::Status(_))));
        assert!(matches!(parse(Some("200"), b"{"), Err(FleetError::Json(_))));
        assert!(matches!(parse(Some("200"), b"[]"), Err(FleetError::Empty)));
        let only_bad = br#"[{"address":"nope"}]"#;
        assert!(matches!(
            parse(Some("200"), only_bad),
            Err(FleetError::Empty)
        ));
    }
}
