//! The shipped Envoy configs and compose file: valid for the real Envoy, safe by construction.

use std::net::SocketAddr;
use std::process::Command;

use kvroute_e2e::{BodyMode, EnvoyLayout, paths, render_envoy_config};
use serde_yaml_ng::Value;

fn envoy_validates(path: &std::path::Path) {
    let envoy = paths::envoy_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(path)
        .output()
        .expect("cannot run envoy --mode validate");
    assert!(
        out.status.success(),
        "{} rejected by Envoy:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load(file: &str) -> Value {
    let text = std::fs::read_to_string(paths::envoy_config(file)).expect("config readable");
    serde_yaml_ng::from_str(&text).expect("config is YAML")
}

fn layout(body_mode: BodyMode) -> EnvoyLayout {
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    EnvoyLayout {
        listen_port: 18000,
        kvroute_grpc: addr(19002),
        engines: vec![addr(18101), addr(18102)],
        body_mode: Some(body_mode),
        kvroute_tls: None,
        per_try_timeout: None,
    }
}

/// The HTTP filter chain of the `gateway` listener.
fn http_filters(doc: &Value) -> Vec<Value> {
    let listener = doc["static_resources"]["listeners"]
        .as_sequence()
        .and_then(|ls| ls.iter().find(|l| l["name"].as_str() == Some("gateway")))
        .expect("gateway listener");
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_sequence()
        .expect("http_filters")
        .clone()
}

fn cluster<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["static_resources"]["clusters"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("cluster {name}"))
}

#[test]
fn shipped_configs_pass_envoy_validate() {
    envoy_validates(&paths::envoy_config("envoy.yaml"));
    envoy_validates(&paths::envoy_config("envoy-original-dst.yaml"));
}

#[test]
fn rendered_configs_pass_envoy_validate() {
    let dir = paths::log_dir("rendered_configs_pass_envoy_validate").expect("log dir");
    for (file, mode) in [
        ("envoy.yaml", BodyMode::Buffered),
        ("envoy.yaml", BodyMode::FullDuplexStreamed),
        ("envoy-original-dst.yaml", BodyMode::Buffered),
    ] {
        let template = std::fs::read_to_string(paths::envoy_config(file)).expect("readable");
        let rendered = render_envoy_config(&template, &layout(mode)).expect("renders");
        let out = dir.join(format!("{mode:?}-{file}"));
        std::fs::write(&out, rendered).expect("written");
        envoy_validates(&out);
    }
}

#[test]
fn render_changes_only_addresses_and_body_mode() {
    let template = std::fs::read_to_string(paths::envoy_config("envoy.yaml")).expect("readable");
    let shipped: Value = serde_yaml_ng::from_str(&template).expect("YAML");
    let rendered: Value = serde_yaml_ng::from_str(
        &render_envoy_config(&template, &layout(BodyMode::Buffered)).expect("renders"),
    )
    .expect("YAML");
    let engines = &cluster(&rendered, "engines")["load_assignment"]["endpoints"][0]["lb_endpoints"];
    let ports: Vec<u64> = engines
        .as_sequence()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["endpoint"]["address"]["socket_address"]["port_value"].as_u64())
        .collect();
    assert_eq!(ports, vec![18101, 18102]);
    let grpc = &cluster(&rendered, "kvroute")["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
    assert_eq!(
        grpc["endpoint"]["address"]["socket_address"]["port_value"].as_u64(),
        Some(19002)
    );
    let ext_proc = |doc: &Value| {
        http_filters(doc)
            .into_iter()
            .find(|f| f["name"].as_str() == Some("envoy.filters.http.ext_proc"))
            .expect("ext_proc filter")
    };
    let mode = &ext_proc(&rendered)["typed_config"]["processing_mode"];
    assert_eq!(mode["request_body_mode"].as_str(), Some("BUFFERED"));
    assert_eq!(mode["request_trailer_mode"].as_str(), Some("SKIP"));
    assert_eq!(
        ext_proc(&shipped)["typed_config"]["processing_mode"]["request_body_mode"].as_str(),
        Some("FULL_DUPLEX_STREAMED"),
        "the shipped mode is the endpoint-picker protocol's"
    );
    // Everything else of the ext_proc filter and the engines' policy is the shipped one.
    let mut shipped_ext = ext_proc(&shipped);
    let mut rendered_ext = ext_proc(&rendered);
    for f in [&mut shipped_ext, &mut rendered_ext] {
        f["typed_config"]["processing_mode"] = Value::Null;
    }
    assert_eq!(shipped_ext, rendered_ext);
    assert_eq!(
        cluster(&shipped, "engines")["load_balancing_policy"],
        cluster(&rendered, "engines")["load_balancing_policy"]
    );
}

#[test]
fn default_config_is_safe_by_construction() {
    let doc = load("envoy.yaml");
    let filters = http_filters(&doc);
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_proc",
            "envoy.filters.http.router"
        ],
        "the destination header must be stripped before ext_proc"
    );
    let removed = &filters[0]["typed_config"]["mutations"]["request_mutations"][0]["remove"];
    assert_eq!(removed.as_str(), Some("x-gateway-destination-endpoint"));

    let ext = &filters[1]["typed_config"];
    assert_eq!(ext["failure_mode_allow"].as_bool(), Some(true), "fail-open");
    assert_eq!(
        ext["processing_mode"]["request_body_mode"].as_str(),
        Some("FULL_DUPLEX_STREAMED"),
        "the body mode every gateway uses"
    );
    assert_eq!(
        ext["processing_mode"]["request_trailer_mode"].as_str(),
        Some("SEND"),
        "FULL_DUPLEX_STREAMED needs trailers sent"
    );
    assert_eq!(
        ext["processing_mode"]["response_body_mode"].as_str(),
        Some("NONE")
    );
    assert_eq!(
        ext["response_attributes"][0].as_str(),
        Some("response.code_details"),
        "kvroute tells proxy-made errors from the engine's"
    );
    let namespaces = &ext["metadata_options"]["receiving_namespaces"]["untyped"];
    assert_eq!(namespaces[0].as_str(), Some("envoy.lb"));

    let engines = cluster(&doc, "engines");
    let policy = &engines["load_balancing_policy"]["policies"][0]["typed_extension_config"];
    assert_eq!(
        policy["name"].as_str(),
        Some("envoy.load_balancing_policies.override_host")
    );
    let sources = policy["typed_config"]["override_host_sources"]
        .as_sequence()
        .expect("sources");
    assert_eq!(
        sources.len(),
        1,
        "metadata only, never the client-reachable header"
    );
    assert_eq!(sources[0]["metadata"]["key"].as_str(), Some("envoy.lb"));
    assert_eq!(
        sources[0]["metadata"]["path"][0]["key"].as_str(),
        Some("x-gateway-destination-endpoint")
    );
    assert!(sources[0].get("header").is_none());

    let listener = &doc["static_resources"]["listeners"][0];
    assert!(listener["per_connection_buffer_limit_bytes"].as_u64() >= Some(8 << 20));
}

#[test]
fn original_dst_variant_strips_the_header_first_and_fails_closed() {
    let doc = load("envoy-original-dst.yaml");
    let filters = http_filters(&doc);
    assert_eq!(
        filters[0]["name"].as_str(),
        Some("envoy.filters.http.header_mutation")
    );
    assert_eq!(
        filters[1]["name"].as_str(),
        Some("envoy.filters.http.ext_proc")
    );
    assert_eq!(
        filters[1]["typed_config"]["failure_mode_allow"].as_bool(),
        Some(false)
    );
    let engines = cluster(&doc, "engines");
    assert_eq!(engines["type"].as_str(), Some("ORIGINAL_DST"));
    assert_eq!(
        engines["original_dst_lb_config"]["http_header_name"].as_str(),
        Some("x-gateway-destination-endpoint")
    );
}

#[test]
fn compose_file_parses_and_uses_the_shipped_config() {
    let text = std::fs::read_to_string(paths::workspace_root().join("envoy/docker-compose.yaml"))
        .expect("compose file readable");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("compose file is YAML");
    let services = doc["services"].as_mapping().expect("services");
    let envoy = &doc["services"]["envoy"];
    assert!(
        envoy["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("envoyproxy/envoy:v1.40")),
        "Envoy image"
    );
    let mounts: Vec<&str> = envoy["volumes"]
        .as_sequence()
        .expect("envoy volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts.iter().any(|m| m.starts_with("./envoy.yaml:")),
        "mounts envoy.yaml: {mounts:?}"
    );
    assert!(services.contains_key("kvroute"));
    // The image's entrypoint is `kvroute` (the inferencepool chart appends only arguments),
    // so a service's command is kvroute's arguments and the engines name their binary.
    let dockerfile = std::fs::read_to_string(paths::workspace_root().join("Dockerfile"))
        .expect("Dockerfile readable");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == r#"ENTRYPOINT ["kvroute"]"#),
        "the image's entrypoint is kvroute"
    );
    assert_eq!(
        doc["services"]["kvroute"]["command"][0].as_str(),
        Some("serve")
    );
    for (name, service) in services {
        if name.as_str().is_some_and(|n| n.starts_with("engine")) {
            assert_eq!(
                service["entrypoint"][0].as_str(),
                Some("kvroute-sim"),
                "{name:?}"
            );
        }
    }
    let engines = services
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| k.starts_with("engine"))
        .count();
    assert_eq!(engines, 4);
}

#[test]
fn rendered_mutual_tls_to_kvroute_passes_envoy_validate() {
    let dir = paths::log_dir("rendered_mutual_tls_to_kvroute_passes_envoy_validate").expect("dir");
    let pki = kvroute_e2e::certs::TestPki::generate(&dir.join("pki")).expect("certificates");
    let template = std::fs::read_to_string(paths::envoy_config("envoy.yaml")).expect("readable");
    let mut tls_layout = layout(BodyMode::Buffered);
    tls_layout.kvroute_tls = Some(pki.envoy_client());
    let rendered = render_envoy_config(&template, &tls_layout).expect("renders");
    let doc: Value = serde_yaml_ng::from_str(&rendered).expect("YAML");
    let socket = &cluster(&doc, "kvroute")["transport_socket"];
    assert_eq!(socket["name"], "envoy.transport_sockets.tls");
    assert!(cluster(&doc, "engines").get("transport_socket").is_none());
    let out = dir.join("envoy-tls.yaml");
    std::fs::write(&out, rendered).expect("written");
    envoy_validates(&out);
}

/// The Envoy configs the gateways generate for an InferencePool route (the e2e fixtures).
const GATEWAY_SHAPES: [&str; 4] = ["envoy-gateway", "gie-test-envoy", "istio", "kgateway"];

#[test]
fn gateway_shapes_render_as_generated_and_pass_envoy_validate() {
    let dir = paths::log_dir("gateway_shapes_render_as_generated").expect("log dir");
    for shape in GATEWAY_SHAPES {
        let file = format!("gateways/{shape}.yaml");
        envoy_validates(&paths::envoy_config(&file));
        let template = std::fs::read_to_string(paths::envoy_config(&file)).expect("readable");
        let layout = EnvoyLayout {
            body_mode: None,
            ..layout(BodyMode::Buffered)
        };
        let rendered = render_envoy_config(&template, &layout).expect("renders");
        let out = dir.join(format!("{shape}.yaml"));
        std::fs::write(&out, &rendered).expect("written");
        envoy_validates(&out);
        // The processing modes stay as the gateway generated them.
        assert!(
            !rendered.contains("BUFFERED") && rendered.contains("FULL_DUPLEX_STREAMED"),
            "{shape}: body mode changed"
        );
        let doc: Value = serde_yaml_ng::from_str(&rendered).expect("YAML");
        let engines = cluster(&doc, "engines");
        if let Some(endpoints) =
            engines["load_assignment"]["endpoints"][0]["lb_endpoints"].as_sequence()
        {
            assert_eq!(endpoints.len(), 2, "{shape}");
            for (e, port) in endpoints.iter().zip([18101, 18102]) {
                let meta =
                    &e["metadata"]["filter_metadata"]["envoy.lb"]["x-gateway-destination-endpoint"];
                if shape == "kgateway" {
                    assert_eq!(meta.as_str(), Some(format!("127.0.0.1:{port}").as_str()));
                } else {
                    assert!(meta.is_null(), "{shape}: unexpected endpoint metadata");
                }
            }
        }
    }
}
