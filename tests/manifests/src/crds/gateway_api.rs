//! Gateway API `gateway.networking.k8s.io/v1`: Gateway and HTTPRoute.

use serde::{Deserialize, Serialize};

use super::{BackendObjectRef, custom_resource};

custom_resource!(
    /// A Gateway: listeners of a gateway class.
    Gateway,
    GatewaySpec
);
custom_resource!(
    /// An HTTPRoute: matches and backends.
    HttpRoute,
    HttpRouteSpec
);

/// `Gateway.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// GatewayClass implementing this Gateway.
    pub gateway_class_name: String,
    /// Listeners.
    pub listeners: Vec<Listener>,
}

/// A Gateway listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Listener name.
    pub name: String,
    /// Hostname filter.
    pub hostname: Option<String>,
    /// Port.
    pub port: u16,
    /// `HTTP`, `HTTPS`, ...
    pub protocol: String,
    /// Which routes may attach.
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].allowedRoutes`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    pub namespaces: Option<RouteNamespaces>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same`, `All` or `Selector`.
    pub from: String,
}

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// Gateways the route attaches to.
    pub parent_refs: Vec<ParentRef>,
    /// Host names matched.
    pub hostnames: Option<Vec<String>>,
    /// Rules.
    pub rules: Vec<HttpRouteRule>,
}

/// `spec.parentRefs[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// API group (Gateway API by default).
    pub group: Option<String>,
    /// Kind (`Gateway` by default).
    pub kind: Option<String>,
    /// Gateway name.
    pub name: String,
    /// Gateway namespace.
    pub namespace: Option<String>,
    /// Listener name.
    pub section_name: Option<String>,
}

/// `spec.rules[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Rule name.
    pub name: Option<String>,
    /// Request matches.
    pub matches: Option<Vec<HttpRouteMatch>>,
    /// Backends.
    pub backend_refs: Vec<BackendObjectRef>,
    /// Timeouts.
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// `rules[].matches[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path match.
    pub path: Option<PathMatch>,
    /// Method match.
    pub method: Option<String>,
}

/// `matches[].path`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The path.
    pub value: String,
}

/// `rules[].timeouts`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// Whole request, client to gateway and back.
    pub request: Option<String>,
    /// One attempt to a backend.
    pub backend_request: Option<String>,
}
