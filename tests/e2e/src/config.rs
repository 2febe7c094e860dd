//! Renders a shipped Envoy config for a test: same file, other addresses and ports.
//!
//! The YAML is parsed and only well-defined spots are replaced (admin port, the `gateway`
//! listener, the `kvroute` and `engines` cluster endpoints, optionally the ext_proc request
//! body mode), so the tested config is the shipped config.

use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use serde_yaml_ng::Value;

/// How ext_proc receives request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// As shipped: `BUFFERED`.
    #[default]
    Buffered,
    /// The documented alternative: `FULL_DUPLEX_STREAMED` (with trailers sent).
    FullDuplexStreamed,
}

/// Addresses and ports to put into a shipped Envoy config.
#[derive(Debug, Clone)]
pub struct EnvoyLayout {
    /// Port of the `gateway` listener, bound on 127.0.0.1 (0: any free port).
    pub listen_port: u16,
    /// kvroute's gRPC address (the `kvroute` cluster).
    pub kvroute_grpc: SocketAddr,
    /// The engines (the `engines` cluster, when it lists endpoints).
    pub engines: Vec<SocketAddr>,
    /// ext_proc request body mode.
    pub body_mode: BodyMode,
}

/// Returns `template` (an Envoy bootstrap in YAML) rewritten for `layout`; admin on an
/// ephemeral 127.0.0.1 port (use `--admin-address-path` to learn it).
pub fn render_envoy_config(template: &str, layout: &EnvoyLayout) -> anyhow::Result<String> {
    let mut doc: Value = serde_yaml_ng::from_str(template).context("Envoy config is not YAML")?;
    let admin = field(
        field(field(&mut doc, "admin")?, "address")?,
        "socket_address",
    )?;
    *field(admin, "address")? = Value::from("127.0.0.1");
    *field(admin, "port_value")? = Value::from(0);

    let resources = field(&mut doc, "static_resources")?;
    let listener = named(field(resources, "listeners")?, "gateway")?;
    *field(listener, "address")? =
        socket_address(SocketAddr::from(([127, 0, 0, 1], layout.listen_port)))?;
    if layout.body_mode == BodyMode::FullDuplexStreamed {
        set_full_duplex(listener)?;
    }

    let clusters = field(resources, "clusters")?;
    set_endpoints(named(clusters, "kvroute")?, &[layout.kvroute_grpc])?;
    let engines = named(clusters, "engines")?;
    if engines.get("load_assignment").is_some() {
        set_endpoints(engines, &layout.engines)?;
    }
    serde_yaml_ng::to_string(&doc).context("cannot serialize the rendered Envoy config")
}

/// The mapping entry `key` of `value`.
fn field<'a>(value: &'a mut Value, key: &str) -> anyhow::Result<&'a mut Value> {
    value
        .get_mut(key)
        .ok_or_else(|| anyhow!("Envoy config: missing field {key:?}"))
}

/// The element of a sequence whose `name` is `name`.
fn named<'a>(list: &'a mut Value, name: &str) -> anyhow::Result<&'a mut Value> {
    list.as_sequence_mut()
        .ok_or_else(|| anyhow!("Envoy config: expected a list holding {name:?}"))?
        .iter_mut()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("Envoy config: no element named {name:?}"))
}

/// `{socket_address: {address, port_value}}` as YAML.
fn socket_address(addr: SocketAddr) -> anyhow::Result<Value> {
    Ok(serde_yaml_ng::to_value(socket_json(addr))?)
}

/// Replaces a cluster's `load_assignment.endpoints` with one locality holding `addrs`.
fn set_endpoints(cluster: &mut Value, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let lb_endpoints = addrs
        .iter()
        .map(|a| json!({ "endpoint": { "address": socket_json(*a) } }))
        .collect::<Vec<_>>();
    let endpoints = serde_yaml_ng::to_value(json!([{ "lb_endpoints": lb_endpoints }]))?;
    *field(field(cluster, "load_assignment")?, "endpoints")? = endpoints;
    Ok(())
}

/// `{socket_address: {...}}` as JSON.
fn socket_json(addr: SocketAddr) -> serde_json::Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// Switches every ext_proc filter of the listener to `FULL_DUPLEX_STREAMED` request bodies.
fn set_full_duplex(listener: &mut Value) -> anyhow::Result<()> {
    let mut found = false;
    for chain in field(listener, "filter_chains")?
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("Envoy config: filter_chains is not a list"))?
    {
        let hcm = named(
            field(chain, "filters")?,
            "envoy.filters.network.http_connection_manager",
        )?;
        let filters = field(field(hcm, "typed_config")?, "http_filters")?;
        let ext_proc = named(filters, "envoy.filters.http.ext_proc")?;
        let mode = field(field(ext_proc, "typed_config")?, "processing_mode")?;
        let mode = mode
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("Envoy config: processing_mode is not a mapping"))?;
        mode.insert("request_body_mode".into(), "FULL_DUPLEX_STREAMED".into());
        mode.insert("request_trailer_mode".into(), "SEND".into());
        found = true;
    }
    if !found {
        bail!("Envoy config: no filter chain to switch to FULL_DUPLEX_STREAMED");
    }
    Ok(())
}

/// Sets `failure_mode_allow` of every ext_proc filter in a rendered config: `false` is the
/// fail-closed variant (a request fails with a 5xx when kvroute cannot be reached).
pub fn set_failure_mode_allow(rendered: &str, allow: bool) -> anyhow::Result<String> {
    let mut doc: Value = serde_yaml_ng::from_str(rendered).context("Envoy config is not YAML")?;
    let resources = field(&mut doc, "static_resources")?;
    let listener = named(field(resources, "listeners")?, "gateway")?;
    let mut found = false;
    for chain in field(listener, "filter_chains")?
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("Envoy config: filter_chains is not a list"))?
    {
        let hcm = named(
            field(chain, "filters")?,
            "envoy.filters.network.http_connection_manager",
        )?;
        let filters = field(field(hcm, "typed_config")?, "http_filters")?;
        let ext_proc = field(
            named(filters, "envoy.filters.http.ext_proc")?,
            "typed_config",
        )?;
        ext_proc
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("Envoy config: ext_proc typed_config is not a mapping"))?
            .insert("failure_mode_allow".into(), allow.into());
        found = true;
    }
    if !found {
        bail!("Envoy config: no ext_proc filter to set failure_mode_allow on");
    }
    serde_yaml_ng::to_string(&doc).context("cannot serialize the rendered Envoy config")
}
