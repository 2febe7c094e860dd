//! Renders a shipped Envoy config for a test: same file, other addresses and ports.
//!
//! The YAML is parsed and only well-defined spots are replaced (admin port, the `gateway`
//! listener, the `kvroute` and `engines` cluster endpoints, optionally the ext_proc request
//! body mode), so the tested config is the shipped config.

use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use serde_yaml_ng::Value;

use crate::certs::ClientTls;

/// How ext_proc receives request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// The documented alternative: `BUFFERED` (request trailers skipped).
    Buffered,
    /// As shipped: `FULL_DUPLEX_STREAMED` (with trailers sent).
    #[default]
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
    /// ext_proc request body mode; `None` leaves the config's processing modes as written
    /// (the gateway-generated configs).
    pub body_mode: Option<BodyMode>,
    /// Connect to kvroute over mutual TLS with these files (adds the `kvroute` cluster's
    /// `transport_socket`, as documented in `envoy/README.md`).
    pub kvroute_tls: Option<ClientTls>,
    /// Overrides the routes' `retry_policy.per_try_timeout` (for instance `"1s"`).
    pub per_try_timeout: Option<String>,
}

/// Returns `template` (an Envoy bootstrap in YAML) rewritten for `layout`; admin on an
/// ephemeral 127.0.0.1 port (use `--admin-address-path` to learn it).
pub fn render_envoy_config(template: &str, layout: &EnvoyLayout) -> anyhow::Result<String> {
    let mut config = EnvoyConfig::parse(template)?;
    config.admin_on_ephemeral_port()?;
    config.listen(
        "gateway",
        SocketAddr::from(([127, 0, 0, 1], layout.listen_port)),
    )?;
    if let Some(mode) = layout.body_mode {
        set_body_mode(config.listener("gateway")?, mode)?;
    }
    if let Some(timeout) = &layout.per_try_timeout {
        set_per_try_timeout(config.listener("gateway")?, timeout)?;
    }
    config.cluster_endpoints("kvroute", &[layout.kvroute_grpc])?;
    if let Some(tls) = &layout.kvroute_tls {
        config
            .cluster("kvroute")?
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("Envoy config: the kvroute cluster is not a mapping"))?
            .insert("transport_socket".into(), kvroute_transport_socket(tls)?);
    }
    if config.cluster("engines")?.get("load_assignment").is_some() {
        config.cluster_endpoints("engines", &layout.engines)?;
    }
    config.render()
}

/// A parsed Envoy bootstrap, edited in well-defined spots and rendered back to YAML.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    doc: Value,
}

impl EnvoyConfig {
    /// Parses an Envoy bootstrap in YAML.
    pub fn parse(template: &str) -> anyhow::Result<EnvoyConfig> {
        let doc = serde_yaml_ng::from_str(template).context("Envoy config is not YAML")?;
        Ok(EnvoyConfig { doc })
    }

    /// Reads and parses the shipped config `envoy/<file>`.
    pub fn shipped(file: &str) -> anyhow::Result<EnvoyConfig> {
        let path = crate::paths::envoy_config(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        EnvoyConfig::parse(&text)
    }

    /// Puts the admin interface on an ephemeral 127.0.0.1 port.
    pub fn admin_on_ephemeral_port(&mut self) -> anyhow::Result<()> {
        let admin = field(
            field(field(&mut self.doc, "admin")?, "address")?,
            "socket_address",
        )?;
        *field(admin, "address")? = Value::from("127.0.0.1");
        *field(admin, "port_value")? = Value::from(0);
        Ok(())
    }

    /// The listener named `name`.
    pub fn listener(&mut self, name: &str) -> anyhow::Result<&mut Value> {
        named(field(self.resources()?, "listeners")?, name)
    }

    /// Binds listener `name` to `addr` (port 0: any free port).
    pub fn listen(&mut self, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
        *field(self.listener(name)?, "address")? = socket_address(addr)?;
        Ok(())
    }

    /// The HTTP filter list of listener `name`'s first filter chain.
    pub fn http_filters(&mut self, listener: &str) -> anyhow::Result<&mut Vec<Value>> {
        let chain = field(self.listener(listener)?, "filter_chains")?
            .get_mut(0)
            .ok_or_else(|| anyhow!("Envoy config: listener {listener:?} has no filter chain"))?;
        let hcm = named(
            field(chain, "filters")?,
            "envoy.filters.network.http_connection_manager",
        )?;
        field(field(hcm, "typed_config")?, "http_filters")?
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("Envoy config: http_filters is not a list"))
    }

    /// The HTTP filter named `name` of listener `listener`.
    pub fn http_filter(&mut self, listener: &str, name: &str) -> anyhow::Result<&mut Value> {
        self.http_filters(listener)?
            .iter_mut()
            .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| anyhow!("Envoy config: no HTTP filter named {name:?}"))
    }

    /// Removes the HTTP filter named `name` from listener `listener`; fails if it is absent.
    pub fn remove_http_filter(&mut self, listener: &str, name: &str) -> anyhow::Result<()> {
        let filters = self.http_filters(listener)?;
        let before = filters.len();
        filters.retain(|f| f.get("name").and_then(Value::as_str) != Some(name));
        if filters.len() == before {
            bail!("Envoy config: no HTTP filter named {name:?} to remove");
        }
        Ok(())
    }

    /// The cluster named `name`.
    pub fn cluster(&mut self, name: &str) -> anyhow::Result<&mut Value> {
        named(field(self.resources()?, "clusters")?, name)
    }

    /// Replaces cluster `name`'s endpoints with `addrs` (one locality).
    pub fn cluster_endpoints(&mut self, name: &str, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        set_endpoints(self.cluster(name)?, addrs)
    }

    /// Adds a `STATIC` cluster `name` over `addrs`.
    pub fn add_static_cluster(&mut self, name: &str, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        let mut cluster = serde_yaml_ng::to_value(json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [] },
        }))?;
        set_endpoints(&mut cluster, addrs)?;
        field(self.resources()?, "clusters")?
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("Envoy config: clusters is not a list"))?
            .push(cluster);
        Ok(())
    }

    /// The config as YAML.
    pub fn render(&self) -> anyhow::Result<String> {
        serde_yaml_ng::to_string(&self.doc).context("cannot serialize the rendered Envoy config")
    }

    /// `static_resources`.
    fn resources(&mut self) -> anyhow::Result<&mut Value> {
        field(&mut self.doc, "static_resources")
    }
}

/// Mutual TLS from Envoy to kvroute: Envoy presents its certificate and checks kvroute's
/// against the CA and the name `localhost`; HTTP/2 is negotiated with ALPN.
fn kvroute_transport_socket(tls: &ClientTls) -> anyhow::Result<Value> {
    let file = |p: &std::path::Path| json!({ "filename": p.display().to_string() });
    Ok(serde_yaml_ng::to_value(json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": file(&tls.cert),
                    "private_key": file(&tls.key),
                }],
                "validation_context": {
                    "trusted_ca": file(&tls.ca),
                    "match_typed_subject_alt_names": [
                        { "san_type": "DNS", "matcher": { "exact": "localhost" } }
                    ],
                },
            },
        },
    }))?)
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

/// Replaces a cluster's `load_assignment.endpoints` with one locality holding `addrs`. When
/// the template's first endpoint carries `metadata.filter_metadata.<ns>.<key>: "ip:port"`
/// (kgateway's subset clusters), every endpoint gets its own address there.
fn set_endpoints(cluster: &mut Value, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let address_key = endpoint_address_metadata(cluster);
    let lb_endpoints = addrs
        .iter()
        .map(|a| {
            let mut e = json!({ "endpoint": { "address": socket_json(*a) } });
            if let Some((ns, key)) = &address_key {
                e["metadata"] = json!({ "filter_metadata": { ns: { key: a.to_string() } } });
            }
            e
        })
        .collect::<Vec<_>>();
    let endpoints = serde_yaml_ng::to_value(json!([{ "lb_endpoints": lb_endpoints }]))?;
    *field(field(cluster, "load_assignment")?, "endpoints")? = endpoints;
    Ok(())
}

/// `(namespace, key)` of the first endpoint's metadata entry holding its own address.
fn endpoint_address_metadata(cluster: &Value) -> Option<(String, String)> {
    let first = cluster
        .get("load_assignment")?
        .get("endpoints")?
        .get(0)?
        .get("lb_endpoints")?
        .get(0)?;
    let metadata = first
        .get("metadata")?
        .get("filter_metadata")?
        .as_mapping()?;
    let (ns, entries) = metadata.iter().next()?;
    let (key, _) = entries.as_mapping()?.iter().next()?;
    Some((ns.as_str()?.to_owned(), key.as_str()?.to_owned()))
}

/// `{socket_address: {...}}` as JSON.
fn socket_json(addr: SocketAddr) -> serde_json::Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// Calls `edit` with the connection manager's `typed_config` of every filter chain of
/// `listener`; fails with `what` when there is none.
fn edit_connection_managers(
    listener: &mut Value,
    what: &str,
    mut edit: impl FnMut(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut found = false;
    for chain in field(listener, "filter_chains")?
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("Envoy config: filter_chains is not a list"))?
    {
        let hcm = named(
            field(chain, "filters")?,
            "envoy.filters.network.http_connection_manager",
        )?;
        edit(field(hcm, "typed_config")?)?;
        found = true;
    }
    if !found {
        bail!("Envoy config: no filter chain to {what}");
    }
    Ok(())
}

/// The ext_proc filter's `typed_config` in a connection manager's `typed_config`.
fn ext_proc_config(hcm: &mut Value) -> anyhow::Result<&mut serde_yaml_ng::Mapping> {
    let filters = field(hcm, "http_filters")?;
    field(
        named(filters, "envoy.filters.http.ext_proc")?,
        "typed_config",
    )?
    .as_mapping_mut()
    .ok_or_else(|| anyhow!("Envoy config: ext_proc typed_config is not a mapping"))
}

/// Sets the request body mode of every ext_proc filter of the listener (trailers sent with
/// `FULL_DUPLEX_STREAMED`, skipped with `BUFFERED`).
fn set_body_mode(listener: &mut Value, body_mode: BodyMode) -> anyhow::Result<()> {
    let (body, trailers) = match body_mode {
        BodyMode::Buffered => ("BUFFERED", "SKIP"),
        BodyMode::FullDuplexStreamed => ("FULL_DUPLEX_STREAMED", "SEND"),
    };
    edit_connection_managers(listener, "set the request body mode of", |hcm| {
        let mode = ext_proc_config(hcm)?
            .get_mut("processing_mode")
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("Envoy config: processing_mode is not a mapping"))?;
        mode.insert("request_body_mode".into(), body.into());
        mode.insert("request_trailer_mode".into(), trailers.into());
        Ok(())
    })
}

/// Sets `per_try_timeout` in the retry policy of every route of `listener`.
fn set_per_try_timeout(listener: &mut Value, timeout: &str) -> anyhow::Result<()> {
    edit_connection_managers(listener, "set per_try_timeout on", |hcm| {
        let route_config = field(hcm, "route_config")?;
        for host in field(route_config, "virtual_hosts")?
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("Envoy config: virtual_hosts is not a list"))?
        {
            for route in field(host, "routes")?
                .as_sequence_mut()
                .ok_or_else(|| anyhow!("Envoy config: routes is not a list"))?
            {
                field(field(route, "route")?, "retry_policy")?
                    .as_mapping_mut()
                    .ok_or_else(|| anyhow!("Envoy config: retry_policy is not a mapping"))?
                    .insert("per_try_timeout".into(), timeout.into());
            }
        }
        Ok(())
    })
}

/// Sets `failure_mode_allow` of every ext_proc filter in a rendered config: `false` is the
/// fail-closed variant (a request fails with a 5xx when kvroute cannot be reached).
pub fn set_failure_mode_allow(rendered: &str, allow: bool) -> anyhow::Result<String> {
    let mut doc: Value = serde_yaml_ng::from_str(rendered).context("Envoy config is not YAML")?;
    let resources = field(&mut doc, "static_resources")?;
    let listener = named(field(resources, "listeners")?, "gateway")?;
    edit_connection_managers(listener, "set failure_mode_allow on", |hcm| {
        ext_proc_config(hcm)?.insert("failure_mode_allow".into(), allow.into());
        Ok(())
    })?;
    serde_yaml_ng::to_string(&doc).context("cannot serialize the rendered Envoy config")
}
