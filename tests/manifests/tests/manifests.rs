//! Every manifest under `manifests/` parses into its typed Kubernetes object with no unknown
//! field, every kustomization resolves, and the objects agree with each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Probe};
use kvroute_manifests_test::crds::envoy_gateway::BodyMode;
use kvroute_manifests_test::docs::{self, Document};
use kvroute_manifests_test::envoy;
use kvroute_manifests_test::kustomize;
use kvroute_manifests_test::manifests_dir;
use kvroute_manifests_test::objects::{Object, name_of, parse_object, type_of};
use serde_json::json;

/// Every object document with its typed form; panics with every failure listed.
fn all_objects() -> Vec<(Document, Object)> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for file in docs::yaml_files(&manifests_dir()).expect("manifests/ is readable") {
        if docs::is_kustomization(&file) {
            continue;
        }
        for doc in docs::read_documents(&file).expect("valid YAML") {
            match parse_object(&doc.value) {
                Ok(object) => out.push((doc, object)),
                Err(e) => failures.push(format!("{}: {e}", doc.location())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid manifests:\n{}",
        failures.join("\n")
    );
    out
}

fn kustomization_dirs() -> Vec<PathBuf> {
    docs::yaml_files(&manifests_dir())
        .expect("manifests/ is readable")
        .into_iter()
        .filter(|f| docs::is_kustomization(f))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect()
}

fn deployments() -> Vec<(Document, Deployment)> {
    all_objects()
        .into_iter()
        .filter_map(|(d, o)| match o {
            Object::Deployment(dep) => Some((d, dep)),
            _ => None,
        })
        .collect()
}

fn picker() -> Deployment {
    let found: Vec<Deployment> = deployments()
        .into_iter()
        .filter(|(d, dep)| {
            d.file.starts_with(manifests_dir().join("base"))
                && dep.metadata.name.as_deref() == Some("kvroute")
        })
        .map(|(_, dep)| dep)
        .collect();
    assert_eq!(found.len(), 1, "exactly one kvroute Deployment in base/");
    found.into_iter().next().unwrap_or_default()
}

fn only_container(dep: &Deployment) -> Container {
    let spec = dep.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let containers = spec.map(|s| s.containers.clone()).unwrap_or_default();
    assert_eq!(containers.len(), 1, "one container");
    containers.into_iter().next().unwrap_or_default()
}

fn grpc_service(probe: Option<&Probe>) -> Option<(i32, String)> {
    let grpc = probe?.grpc.as_ref()?;
    Some((grpc.port, grpc.service.clone()?))
}

#[test]
fn every_document_is_a_known_type_without_unknown_fields() {
    let objects = all_objects();
    let kinds: BTreeSet<&str> = objects
        .iter()
        .filter_map(|(d, _)| type_of(&d.value).map(|(_, k)| k))
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "InferencePool",
        "HTTPRoute",
        "EnvoyExtensionPolicy",
        "EnvoyPatchPolicy",
        "EnvoyFilter",
        "DestinationRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} checked; found {kinds:?}");
    }
    for (doc, _) in &objects {
        assert!(name_of(&doc.value).is_some(), "{}: no name", doc.location());
    }
}

#[test]
fn unknown_or_misspelled_fields_are_rejected() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"spec": {"containers": [{"name": "c"}]}}}
    });
    let err = parse_object(&deployment).expect_err("typo must be caught");
    assert!(err.to_string().contains("spec.replica"), "{err}");

    let pool = json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 8000}],
                 "endpointPickerRef": {"name": "kvroute", "portNumber": 9002}}
    });
    let err = parse_object(&pool).expect_err("the v1 field is port.number");
    assert!(err.to_string().contains("portNumber"), "{err}");

    let metadata_typo = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "label": {}}
    });
    assert!(parse_object(&metadata_typo).is_err());

    let wrong_version = json!({
        "apiVersion": "networking.istio.io/v1beta9", "kind": "EnvoyFilter",
        "metadata": {"name": "f"}, "spec": {"configPatches": []}
    });
    assert!(parse_object(&wrong_version).is_err());

    let valid = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"},
        "data": {"k": "v"}
    });
    assert!(matches!(parse_object(&valid), Ok(Object::ConfigMap(_))));
}

#[test]
fn every_kustomization_resolves_and_stays_in_its_tree() {
    let dirs = kustomization_dirs();
    assert!(dirs.len() >= 8, "kustomizations found: {dirs:?}");
    for dir in &dirs {
        let k = kustomize::load(dir).unwrap_or_else(|e| panic!("{e}"));
        for resource in &k.resources {
            let path = dir.join(resource);
            if path.is_file() {
                assert!(
                    !resource.contains(".."),
                    "{}: file {resource} outside the kustomization root (kustomize refuses it)",
                    dir.display()
                );
            }
        }
        let resolved = kustomize::resolve(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !resolved.resources.is_empty(),
            "{}: no resources",
            dir.display()
        );
        let mut present = BTreeSet::new();
        for file in &resolved.resources {
            for doc in docs::read_documents(file).expect("valid YAML") {
                if let (Some((_, kind)), Some(name)) = (type_of(&doc.value), name_of(&doc.value)) {
                    present.insert((kind.to_owned(), name.to_owned()));
                }
            }
        }
        for file in &resolved.patch_files {
            for doc in docs::read_documents(file).expect("valid YAML") {
                let (_, kind) = type_of(&doc.value).expect("patch has a kind");
                let name = name_of(&doc.value).expect("patch has a name");
                assert!(
                    present.contains(&(kind.to_owned(), name.to_owned())),
                    "{}: patches {kind}/{name}, which {} does not include",
                    file.display(),
                    dir.display()
                );
            }
        }
        for target in &resolved.targets {
            assert!(
                present.contains(&(target.kind.clone(), target.name.clone())),
                "{}: patch target {}/{} not included",
                dir.display(),
                target.kind,
                target.name
            );
        }
    }
}

#[test]
fn every_manifest_file_is_used_by_a_kustomization() {
    let mut used = BTreeSet::new();
    for dir in kustomization_dirs() {
        let resolved = kustomize::resolve(&dir).unwrap_or_else(|e| panic!("{e}"));
        for file in resolved.resources.iter().chain(&resolved.patch_files) {
            used.insert(file.canonicalize().expect("resolved file exists"));
        }
    }
    for file in docs::yaml_files(&manifests_dir()).expect("manifests/ is readable") {
        if docs::is_kustomization(&file) {
            continue;
        }
        let canonical = file.canonicalize().expect("listed file exists");
        assert!(
            used.contains(&canonical),
            "{} is in no kustomization",
            file.display()
        );
    }
}

#[test]
fn picker_deployment_is_hardened_and_probed_over_grpc() {
    let dep = picker();
    let spec = dep.spec.clone().unwrap_or_default();
    assert!(
        spec.replicas.unwrap_or(1) >= 2,
        "base runs the active-active default"
    );
    let pod = spec.template.spec.clone().unwrap_or_default();
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    let seccomp = pod_sc.seccomp_profile.map(|s| s.type_);
    assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"));
    assert!(
        pod.affinity.and_then(|a| a.pod_anti_affinity).is_some(),
        "replicas spread over nodes"
    );

    let c = only_container(&dep);
    let sc = c.security_context.clone().unwrap_or_default();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let dropped = sc.capabilities.and_then(|c| c.drop).unwrap_or_default();
    assert_eq!(dropped, vec!["ALL".to_owned()]);
    let resources = c.resources.clone().unwrap_or_default();
    assert!(resources.requests.is_some_and(|r| r.contains_key("cpu")));
    assert!(resources.limits.is_some_and(|r| r.contains_key("memory")));

    let liveness = grpc_service(c.liveness_probe.as_ref());
    let readiness = grpc_service(c.readiness_probe.as_ref());
    assert_eq!(liveness, Some((9003, "liveness".to_owned())));
    assert_eq!(readiness, Some((9003, "readiness".to_owned())));

    let args = c.args.clone().unwrap_or_default();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    assert_eq!(c.command.as_deref(), Some(&["kvroute".to_owned()][..]));
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    assert_eq!(flag("--admin-addr").as_deref(), Some("0.0.0.0:9004"));
    let config = flag("--config").expect("--config given");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| config.starts_with(&m.mount_path) && m.read_only == Some(true)),
        "{config} is on a read-only mount"
    );
    let env = c.env.clone().unwrap_or_default();
    let token = env.iter().find(|e| e.name == "KVROUTE_ADMIN_TOKEN");
    assert!(
        token
            .and_then(|t| t.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some(),
        "a non-loopback admin address needs the token, from a Secret"
    );
    let ports: Vec<(String, i32)> = c
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert!(ports.contains(&("grpc".to_owned(), 9002)));
    assert!(ports.contains(&("grpc-health".to_owned(), 9003)));
    assert!(ports.contains(&("metrics".to_owned(), 9090)));
    assert!(ports.contains(&("admin".to_owned(), 9004)));
}

#[test]
fn service_and_budget_select_the_picker_pods() {
    let dep = picker();
    let pod_labels = dep
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selects = |selector: &std::collections::BTreeMap<String, String>| {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| pod_labels.get(k).is_some_and(|p| p == v))
    };
    let mut service_seen = false;
    let mut budget_seen = false;
    for (_, object) in all_objects() {
        match object {
            Object::Service(s) if s.metadata.name.as_deref() == Some("kvroute") => {
                let spec = s.spec.unwrap_or_default();
                assert!(selects(&spec.selector.unwrap_or_default()));
                let ports = spec.ports.unwrap_or_default();
                let grpc = ports.iter().find(|p| p.port == 9002).expect("grpc port");
                assert_eq!(grpc.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
                assert!(ports.iter().any(|p| p.port == 9090), "metrics port");
                service_seen = true;
            }
            Object::PodDisruptionBudget(b) => {
                let spec = b.spec.unwrap_or_default();
                let labels = spec.selector.and_then(|s| s.match_labels);
                assert!(selects(&labels.unwrap_or_default()));
                budget_seen = true;
            }
            _ => {}
        }
    }
    assert!(service_seen && budget_seen);
}

#[test]
fn rbac_is_read_only_on_pods_and_inference_pools() {
    let mut roles = BTreeSet::new();
    let mut accounts = BTreeSet::new();
    let mut bindings = Vec::new();
    for (_, object) in all_objects() {
        let rules = match object {
            Object::Role(r) => {
                roles.insert(("Role".to_owned(), r.metadata.name.unwrap_or_default()));
                r.rules.unwrap_or_default()
            }
            Object::ClusterRole(r) => {
                roles.insert((
                    "ClusterRole".to_owned(),
                    r.metadata.name.unwrap_or_default(),
                ));
                r.rules.unwrap_or_default()
            }
            Object::ServiceAccount(a) => {
                accounts.insert(a.metadata.name.unwrap_or_default());
                continue;
            }
            Object::RoleBinding(b) => {
                bindings.push(b);
                continue;
            }
            _ => continue,
        };
        for rule in rules {
            for verb in &rule.verbs {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "verb {verb}"
                );
            }
            for resource in rule.resources.unwrap_or_default() {
                assert!(
                    ["pods", "inferencepools"].contains(&resource.as_str()),
                    "{resource}"
                );
            }
        }
    }
    assert!(!bindings.is_empty());
    for b in bindings {
        let role = (b.role_ref.kind.clone(), b.role_ref.name.clone());
        assert!(roles.contains(&role), "binding to missing {role:?}");
        for s in b.subjects.unwrap_or_default() {
            assert_eq!(s.kind, "ServiceAccount");
            assert!(
                accounts.contains(&s.name),
                "binding to missing account {}",
                s.name
            );
        }
    }
}

#[test]
fn pools_routes_and_policies_reference_what_exists() {
    let objects = all_objects();
    let named = |kind: &str| -> BTreeSet<String> {
        objects
            .iter()
            .filter(|(d, _)| type_of(&d.value).is_some_and(|(_, k)| k == kind))
            .filter_map(|(d, _)| name_of(&d.value).map(str::to_owned))
            .collect()
    };
    let (services, pools, routes, gateways) = (
        named("Service"),
        named("InferencePool"),
        named("HTTPRoute"),
        named("Gateway"),
    );
    let mut checked = 0;
    for (doc, object) in &objects {
        let at = doc.location();
        match object {
            Object::InferencePool(p) => {
                let picker = &p.spec.endpoint_picker_ref;
                assert!(
                    services.contains(&picker.name),
                    "{at}: no Service {}",
                    picker.name
                );
                assert_eq!(picker.port.as_ref().map(|p| p.number), Some(9002), "{at}");
                assert_eq!(p.spec.target_ports.len(), 1, "{at}: one target port");
                checked += 1;
            }
            Object::HttpRoute(r) => {
                for parent in &r.spec.parent_refs {
                    assert!(gateways.contains(&parent.name), "{at}: no Gateway");
                }
                for backend in r.spec.rules.iter().flat_map(|r| &r.backend_refs) {
                    let kind = backend.kind.as_deref().unwrap_or("Service");
                    let known = if kind == "InferencePool" {
                        &pools
                    } else {
                        &services
                    };
                    assert!(
                        known.contains(&backend.name),
                        "{at}: no {kind} {}",
                        backend.name
                    );
                }
                checked += 1;
            }
            Object::EnvoyExtensionPolicy(p) => {
                for target in &p.spec.target_refs {
                    assert!(
                        routes.contains(&target.name),
                        "{at}: no route {}",
                        target.name
                    );
                }
                for ext in p.spec.ext_proc.iter().flatten() {
                    let mode = ext.processing_mode.as_ref();
                    let body = mode.and_then(|m| m.request.as_ref()).and_then(|r| r.body);
                    if body == Some(BodyMode::FullDuplexStreamed) {
                        assert_ne!(ext.fail_open, Some(true), "{at}: rejected by the CRD");
                    }
                    let writable = ext
                        .metadata
                        .as_ref()
                        .and_then(|m| m.writable_namespaces.clone());
                    assert!(
                        writable.unwrap_or_default().iter().any(|n| n == "envoy.lb"),
                        "{at}: envoy.lb metadata would be dropped"
                    );
                    assert!(
                        ext.message_timeout.is_some(),
                        "{at}: 200 ms default too short"
                    );
                    for backend in &ext.backend_refs {
                        assert!(
                            services.contains(&backend.name),
                            "{at}: no {}",
                            backend.name
                        );
                    }
                }
                checked += 1;
            }
            Object::EnvoyPatchPolicy(p) => {
                assert!(
                    gateways.contains(&p.spec.target_ref.name),
                    "{at}: no Gateway"
                );
                assert_eq!(p.spec.kind, "JSONPatch");
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 6, "too few cross-references checked: {checked}");
}

#[test]
fn engine_examples_carry_the_labels_discovery_selects() {
    let examples = manifests_dir().join("examples");
    let mut engines = BTreeSet::new();
    for (doc, dep) in deployments() {
        if !doc.file.starts_with(&examples) {
            continue;
        }
        let template = dep.spec.clone().map(|s| s.template).unwrap_or_default();
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let engine = labels
            .get("inference.networking.k8s.io/engine-type")
            .cloned()
            .unwrap_or_default();
        assert!(
            ["vllm", "sglang"].contains(&engine.as_str()),
            "{}",
            doc.location()
        );
        assert_eq!(
            labels.get("kvroute.io/pool").map(String::as_str),
            Some("llm")
        );
        assert!(
            labels.contains_key("kvroute.io/model"),
            "{}",
            doc.location()
        );
        let c = only_container(&dep);
        let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
        assert_eq!(probe.and_then(|h| h.path.as_deref()), Some("/health"));
        let timeout = c.readiness_probe.and_then(|p| p.timeout_seconds);
        assert!(
            timeout.unwrap_or(1) >= 3,
            "{}: /health can take ~1 s",
            doc.location()
        );
        let offline = c
            .env
            .unwrap_or_default()
            .into_iter()
            .any(|e| e.name == "HF_HUB_OFFLINE" && e.value.as_deref() == Some("1"));
        assert!(offline, "{}: engines never reach the hub", doc.location());
        engines.insert(engine);
    }
    assert_eq!(engines.len(), 2, "a vLLM and an SGLang example");
}

#[test]
fn shipped_envoy_bootstraps_pass_envoy_validate() {
    let binary = envoy::envoy_binary();
    assert!(
        binary.is_file(),
        "{} missing: run scripts/setup-envoy.sh or set KVROUTE_ENVOY",
        binary.display()
    );
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("manifest-bootstraps");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let (mut plain, mut with_wasm) = (0, 0);
    for (doc, object) in all_objects() {
        let Object::ConfigMap(map) = object else {
            continue;
        };
        let Some(bootstrap) = envoy::bootstrap_of(&map) else {
            continue;
        };
        let text = if bootstrap.wasm_module_path.is_some() {
            let module = envoy::wasm_module();
            assert!(
                module.is_file(),
                "{} missing: run scripts/build-wasm-filter.sh or set KVROUTE_WASM",
                module.display()
            );
            with_wasm += 1;
            bootstrap.with_module(&module)
        } else {
            plain += 1;
            bootstrap.text.to_owned()
        };
        let name = format!("bootstrap-{}", plain + with_wasm);
        if let Err(out) = envoy::validate(&binary, &scratch, &name, &text) {
            panic!("{}: envoy rejects the bootstrap:\n{out}", doc.location());
        }
    }
    assert!(plain >= 1, "no ext_proc bootstrap found");
    assert!(with_wasm >= 1, "no wasm bootstrap found");
}
