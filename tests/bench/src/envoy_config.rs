//! Renders the shipped Envoy config (`envoy/envoy.yaml`) for a local run: other ports and
//! addresses, and optionally a second, plain round-robin listener next to the kvroute one.
//!
//! The YAML is parsed and only well-defined spots are changed, so what runs is the shipped
//! config. The plain listener is derived from the `gateway` listener itself (same connection
//! manager settings, access log and limits) minus the `header_mutation` and `ext_proc`
//! filters, routing to a copy of the `engines` cluster with round robin instead of
//! `override_host`: Envoy alone, as a baseline.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use serde_yaml_ng::Value;

/// Arguments of `envoy-config`.
#[derive(Clone, Debug, clap::Args)]
pub struct EnvoyConfigArgs {
    /// The shipped Envoy config to start from.
    #[arg(long, default_value = "envoy/envoy.yaml")]
    pub template: PathBuf,
    /// Envoy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Address of the kvroute (`gateway`) listener.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: SocketAddr,
    /// kvroute's gRPC address.
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub kvroute: SocketAddr,
    /// An engine of the kvroute listener; repeatable.
    #[arg(long = "engine", value_name = "IP:PORT", required = true)]
    pub engines: Vec<SocketAddr>,
    /// Also add a plain round-robin listener (Envoy alone) on this address.
    #[arg(long)]
    pub plain_listen: Option<SocketAddr>,
    /// An engine of the plain listener (default: the kvroute listener's); repeatable.
    #[arg(long = "plain-engine", value_name = "IP:PORT")]
    pub plain_engines: Vec<SocketAddr>,
    /// Write the config here instead of stdout.
    #[arg(long, value_name = "FILE.yaml")]
    pub output: Option<PathBuf>,
}

/// Runs `envoy-config`: renders the template and writes it out.
pub fn envoy_config_command(args: &EnvoyConfigArgs) -> Result<()> {
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("reading {}", args.template.display()))?;
    let layout = Layout {
        admin: args.admin,
        listen: args.listen,
        kvroute: args.kvroute,
        engines: args.engines.clone(),
        plain: args.plain_listen.map(|listen| PlainListener {
            listen,
            engines: if args.plain_engines.is_empty() {
                args.engines.clone()
            } else {
                args.plain_engines.clone()
            },
        }),
    };
    let yaml = render(&template, &layout)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

/// Name of the derived plain listener and of its cluster.
pub const PLAIN_NAME: &str = "roundrobin";

/// Filters removed from the plain listener: they exist only for kvroute.
const KVROUTE_FILTERS: [&str; 2] = [
    "envoy.filters.http.header_mutation",
    "envoy.filters.http.ext_proc",
];

/// A plain round-robin listener added next to the kvroute one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainListener {
    /// Listen address.
    pub listen: SocketAddr,
    /// Its engines (may be the kvroute listener's own engines).
    pub engines: Vec<SocketAddr>,
}

/// Where everything listens and connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Envoy's admin address.
    pub admin: SocketAddr,
    /// The `gateway` (kvroute) listener.
    pub listen: SocketAddr,
    /// kvroute's gRPC address (the `kvroute` cluster).
    pub kvroute: SocketAddr,
    /// The `engines` cluster.
    pub engines: Vec<SocketAddr>,
    /// An optional plain round-robin listener.
    pub plain: Option<PlainListener>,
}

/// Returns `template` (an Envoy bootstrap in YAML shaped like `envoy/envoy.yaml`) rewritten
/// for `layout`.
pub fn render(template: &str, layout: &Layout) -> Result<String> {
    if layout.engines.is_empty() {
        bail!("at least one engine is required");
    }
    let mut doc: Value = serde_yaml_ng::from_str(template).context("Envoy config is not YAML")?;
    *field(field(&mut doc, "admin")?, "address")? = socket_address(layout.admin)?;

    let resources = field(&mut doc, "static_resources")?;
    let listeners = field(resources, "listeners")?;
    let gateway = named(listeners, "gateway")?;
    *field(gateway, "address")? = socket_address(layout.listen)?;
    let plain_listener = layout
        .plain
        .as_ref()
        .map(|p| plain_listener(gateway.clone(), p.listen))
        .transpose()?;
    if let Some(l) = plain_listener {
        seq(listeners)?.push(l);
    }

    let clusters = field(resources, "clusters")?;
    set_endpoints(named(clusters, "kvroute")?, &[layout.kvroute])?;
    let engines = named(clusters, "engines")?;
    set_endpoints(engines, &layout.engines)?;
    let plain_cluster = layout
        .plain
        .as_ref()
        .map(|p| plain_cluster(engines.clone(), &p.engines))
        .transpose()?;
    if let Some(c) = plain_cluster {
        seq(clusters)?.push(c);
    }
    serde_yaml_ng::to_string(&doc).context("cannot serialize the rendered Envoy config")
}

/// The `gateway` listener turned into a plain round-robin one on `listen`.
fn plain_listener(mut listener: Value, listen: SocketAddr) -> Result<Value> {
    *field(&mut listener, "name")? = Value::from(PLAIN_NAME);
    *field(&mut listener, "address")? = socket_address(listen)?;
    let mut chains = 0;
    for chain in seq(field(&mut listener, "filter_chains")?)? {
        let hcm = named(
            field(chain, "filters")?,
            "envoy.filters.network.http_connection_manager",
        )?;
        let config = field(hcm, "typed_config")?;
        *field(config, "stat_prefix")? = Value::from(PLAIN_NAME);
        seq(field(config, "http_filters")?)?.retain(|f| {
            f.get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| !KVROUTE_FILTERS.contains(&n))
        });
        let routes = field(config, "route_config")?;
        *field(routes, "name")? = Value::from(PLAIN_NAME);
        for host in seq(field(routes, "virtual_hosts")?)? {
            for route in seq(field(host, "routes")?)? {
                if let Some(action) = route.get_mut("route") {
                    *field(action, "cluster")? = Value::from(PLAIN_NAME);
                }
            }
        }
        chains += 1;
    }
    if chains == 0 {
        bail!("Envoy config: the gateway listener has no filter chain");
    }
    Ok(listener)
}

/// The `engines` cluster turned into a plain round-robin cluster over `engines`.
fn plain_cluster(mut cluster: Value, engines: &[SocketAddr]) -> Result<Value> {
    if engines.is_empty() {
        bail!("the plain listener needs at least one engine");
    }
    *field(&mut cluster, "name")? = Value::from(PLAIN_NAME);
    let map = cluster
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("Envoy config: the engines cluster is not a mapping"))?;
    map.remove("load_balancing_policy");
    map.insert("lb_policy".into(), "ROUND_ROBIN".into());
    *field(field(&mut cluster, "load_assignment")?, "cluster_name")? = Value::from(PLAIN_NAME);
    set_endpoints(&mut cluster, engines)?;
    Ok(cluster)
}

/// The mapping entry `key` of `value`.
fn field<'a>(value: &'a mut Value, key: &str) -> Result<&'a mut Value> {
    value
        .get_mut(key)
        .ok_or_else(|| anyhow!("Envoy config: missing field {key:?}"))
}

/// `value` as a sequence.
fn seq(value: &mut Value) -> Result<&mut Vec<Value>> {
    value
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("Envoy config: expected a list"))
}

/// The element of a sequence whose `name` is `name`.
fn named<'a>(list: &'a mut Value, name: &str) -> Result<&'a mut Value> {
    seq(list)?
        .iter_mut()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("Envoy config: no element named {name:?}"))
}

/// `{socket_address: {address, port_value}}` as YAML.
fn socket_address(addr: SocketAddr) -> Result<Value> {
    Ok(serde_yaml_ng::to_value(socket_json(addr))?)
}

/// `{socket_address: {...}}` as JSON.
fn socket_json(addr: SocketAddr) -> serde_json::Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// Replaces a cluster's `load_assignment.endpoints` with one locality holding `addrs`.
fn set_endpoints(cluster: &mut Value, addrs: &[SocketAddr]) -> Result<()> {
    let lb_endpoints = addrs
        .iter()
        .map(|a| json!({ "endpoint": { "address": socket_json(*a) } }))
        .collect::<Vec<_>>();
    let endpoints = serde_yaml_ng::to_value(json!([{ "lb_endpoints": lb_endpoints }]))?;
    *field(field(cluster, "load_assignment")?, "endpoints")? = endpoints;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../envoy/envoy.yaml");

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn layout(plain: Option<PlainListener>) -> Layout {
        Layout {
            admin: addr(19901),
            listen: addr(10101),
            kvroute: addr(19002),
            engines: vec![addr(18001), addr(18002)],
            plain,
        }
    }

    fn filters(listener: &Value) -> Vec<String> {
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn ports(cluster: &Value) -> Vec<u64> {
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                e["endpoint"]["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn renders_the_shipped_config_with_a_plain_listener() {
        let plain = PlainListener {
            listen: addr(10100),
            engines: vec![addr(18003)],
        };
        let out = render(SHIPPED, &layout(Some(plain))).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["port_value"],
            19901
        );
        let listeners = doc["static_resources"]["listeners"].as_sequence().unwrap();
        assert_eq!(listeners.len(), 2);
        let (gateway, plain) = (&listeners[0], &listeners[1]);
        assert_eq!(gateway["address"]["socket_address"]["port_value"], 10101);
        assert_eq!(plain["address"]["socket_address"]["port_value"], 10100);
        assert!(filters(gateway).iter().any(|f| f.ends_with("ext_proc")));
        assert_eq!(filters(plain), ["envoy.filters.http.router"]);
        let hcm = &plain["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            PLAIN_NAME
        );
        // The gateway listener keeps routing to the override_host cluster.
        let gw_hcm = &gateway["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            gw_hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "engines"
        );
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        let find = |n: &str| clusters.iter().find(|c| c["name"] == n).unwrap();
        assert_eq!(ports(find("kvroute")), [19002]);
        assert_eq!(ports(find("engines")), [18001, 18002]);
        let rr = find(PLAIN_NAME);
        assert_eq!(ports(rr), [18003]);
        assert_eq!(rr["lb_policy"], "ROUND_ROBIN");
        assert!(rr.get("load_balancing_policy").is_none());
        assert!(find("engines").get("load_balancing_policy").is_some());
    }

    #[test]
    fn without_plain_listener_only_addresses_change() {
        let out = render(SHIPPED, &layout(None)).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
        let mut shipped: Value = serde_yaml_ng::from_str(SHIPPED).unwrap();
        let l = &mut shipped["static_resources"]["listeners"][0];
        l["address"] = doc["static_resources"]["listeners"][0]["address"].clone();
        shipped["admin"] = doc["admin"].clone();
        for i in 0..2 {
            let c = &mut shipped["static_resources"]["clusters"][i];
            c["load_assignment"] =
                doc["static_resources"]["clusters"][i]["load_assignment"].clone();
        }
        assert_eq!(doc, shipped);
    }

    #[test]
    fn bad_templates_are_errors() {
        assert!(render("not: [yaml", &layout(None)).is_err());
        assert!(render("admin: {}", &layout(None)).is_err());
        let no_engines = Layout {
            engines: Vec::new(),
            ..layout(None)
        };
        assert!(render(SHIPPED, &no_engines).is_err());
    }
}
