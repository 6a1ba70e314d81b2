//! Kubernetes: the manifests under `deploy/k8s/` through `kubernetes-validate` (the API's own
//! schemas, strict: an unknown field is an error), what a rollout without lost questions relies
//! on read back from them, and the ConfigMap's settings through `zen-server check-config`. The
//! YAML is read with PyYAML, which comes with kubernetes-validate.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::helpers::{DEADLINE, Launch, TempConfig, TempDir, ZenServer, run_server};

const DIR: &str = "deploy/k8s";
/// What `kustomization.yaml` applies, in its order.
const RESOURCES: [&str; 3] = ["configmap.yaml", "deployment.yaml", "service.yaml"];
/// The oldest Kubernetes the manifests are for: the first whose kubelet runs the preStop sleep
/// action without a feature gate.
const OLDEST_KUBERNETES: &str = "1.30.0";
/// What every probe runs, and where the image reads its settings.
const PROBE: [&str; 2] = ["/usr/local/bin/zen-client", "probe"];
const SETTINGS_DIR: &str = "/etc/zen-server";
const SETTINGS_KEY: &str = "zen-server.toml";
/// `zen-client probe`'s own default `--timeout`.
const PROBE_TIMEOUT_SECS: i64 = 2;

fn shipped(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// `kubernetes-validate --strict` on `path` against `version` (the tool's newest when `None`):
/// whether it passed, and what it said.
fn validate(path: &Path, version: Option<&str>) -> (bool, String) {
    let mut command = Command::new("kubernetes-validate");
    command.arg("--strict");
    if let Some(version) = version {
        command.args(["--kubernetes-version", version]);
    }
    let output = command.arg(path).output().expect("kubernetes-validate runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// Every YAML document in `path`, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let output = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "reading {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The one object a shipped manifest holds.
fn manifest(name: &str) -> Value {
    let mut documents = documents(&shipped(name));
    assert_eq!(documents.len(), 1, "{name} holds one object");
    documents.remove(0)
}

/// The Deployment's pod spec and its one container.
fn pod_and_container() -> (Value, Value) {
    let deployment = manifest("deployment.yaml");
    let pod = deployment["spec"]["template"]["spec"].clone();
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = containers[0].clone();
    (pod, container)
}

/// The settings file the ConfigMap holds.
fn configmap_settings() -> String {
    let configmap = manifest("configmap.yaml");
    configmap["data"][SETTINGS_KEY].as_str().unwrap_or_else(|| panic!("no {SETTINGS_KEY} in {configmap}")).to_owned()
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("{value} is not a whole number"))
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_manifests_pass_strict_validation_from_kubernetes_1_30_on() {
    for name in RESOURCES {
        for version in [Some(OLDEST_KUBERNETES), None] {
            let (ok, said) = validate(&shipped(name), version);
            assert!(ok && said.contains("passed"), "{name} against {version:?}:\n{said}");
        }
    }
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn strict_validation_rejects_a_misspelled_field() {
    let deployment = std::fs::read_to_string(shipped("deployment.yaml")).unwrap();
    assert!(deployment.contains("\n  replicas: "), "no spec.replicas line to misspell");
    let dir = TempDir::new("k8s");
    let broken = dir.path().join("deployment.yaml");
    std::fs::write(&broken, deployment.replace("\n  replicas: ", "\n  replicaz: ")).unwrap();
    let (ok, said) = validate(&broken, Some(OLDEST_KUBERNETES));
    assert!(!ok && said.contains("'replicaz' was unexpected"), "{said}");
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_kustomization_applies_the_three_manifests() {
    let kustomization = manifest("kustomization.yaml");
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["resources"], serde_json::json!(RESOURCES));
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_pods_are_probed_with_zen_client_and_run_unprivileged_on_a_read_only_root() {
    let (pod, container) = pod_and_container();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert_eq!(probe["exec"]["command"], serde_json::json!(PROBE), "{probe}");
        // zen-client's own timeout decides, not the kubelet's.
        assert!(int(&probe["timeoutSeconds"]) > PROBE_TIMEOUT_SECS, "{probe}");
    }
    let patience = |probe: &str| int(&container[probe]["periodSeconds"]) * int(&container[probe]["failureThreshold"]);
    assert!(patience("livenessProbe") > patience("readinessProbe"), "liveness must be the more lenient");

    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["runAsUser"], 65532);
    assert_eq!(pod_security["runAsGroup"], 65532);
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn a_leaving_pod_drops_out_of_the_service_then_drains_within_its_grace_period() {
    let deployment = manifest("deployment.yaml");
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);

    let (pod, container) = pod_and_container();
    let pre_stop = int(&container["lifecycle"]["preStop"]["sleep"]["seconds"]);
    assert!(pre_stop > 0);
    let settings: toml::Table = configmap_settings().parse().unwrap();
    let drain = match settings.get("server").and_then(|server| server.get("shutdown_timeout_secs")) {
        Some(secs) => secs.as_integer().expect("a whole number of seconds"),
        None => {
            i64::try_from(zen_server::config::Settings::builtin().unwrap().server.shutdown_timeout_secs.get()).unwrap()
        }
    };
    let grace = int(&pod["terminationGracePeriodSeconds"]);
    assert!(grace > pre_stop + drain, "grace {grace} s, preStop {pre_stop} s, drain {drain} s");
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_settings_are_the_configmap_mounted_where_the_image_reads_them() {
    let configmap = manifest("configmap.yaml");
    let (pod, container) = pod_and_container();
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let mount = mounts.iter().find(|mount| mount["mountPath"] == SETTINGS_DIR).expect("a mount at /etc/zen-server");
    assert_eq!(mount["readOnly"], true);
    // A subPath mount would never see a changed ConfigMap.
    assert!(mount.get("subPath").is_none(), "{mount}");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = volumes.iter().find(|volume| volume["name"] == mount["name"]).expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    assert!(configmap["data"][SETTINGS_KEY].is_string(), "{configmap}");

    // Settings come from the file only: Kubernetes' service-link variables (ZEN_SERVER_PORT and
    // the like) would be taken for settings and refused.
    assert!(container.get("env").is_none() && container.get("args").is_none(), "{container}");
    assert_eq!(pod["enableServiceLinks"], false);
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn a_changed_configmap_changes_the_pod_template() {
    let output = Command::new("sha256sum").arg(shipped("configmap.yaml")).output().unwrap();
    let checksum = String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    let annotations = &manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["checksum/config"], checksum,
        "configmap.yaml changed: record its checksum in deployment.yaml (the command is in configmap.yaml)"
    );
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_service_sends_port_1060_to_the_zen_port_of_the_deployments_pods() {
    let service = manifest("service.yaml");
    let deployment = manifest("deployment.yaml");
    let (_, container) = pod_and_container();
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    let ports = service["spec"]["ports"].as_array().expect("ports");
    let port = ports.iter().find(|port| port["port"] == 1060).expect("service port 1060");
    assert_eq!(port["protocol"], "TCP");
    let container_ports = container["ports"].as_array().expect("container ports");
    let target = container_ports.iter().find(|p| p["name"] == port["targetPort"]).expect("the target port");
    assert_eq!(target["containerPort"], 1060);
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn prometheus_finds_the_metrics_port_the_settings_listen_on() {
    let (_, container) = pod_and_container();
    let container_ports = container["ports"].as_array().expect("container ports");
    let metrics = container_ports.iter().find(|p| p["name"] == "metrics").expect("a metrics port");
    let port = int(&metrics["containerPort"]);
    let annotations = &manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    let settings: toml::Table = configmap_settings().parse().unwrap();
    let listen = settings.get("metrics").and_then(|metrics| metrics.get("listen")).and_then(|listen| listen.as_str());
    assert_eq!(listen, Some(format!("0.0.0.0:{port}").as_str()));
}

#[test]
#[ignore = "needs kubernetes-validate: pip install kubernetes-validate"]
fn the_configmap_settings_pass_check_config() {
    let file = TempConfig::new(&configmap_settings());
    let (status, stdout, stderr) = run_server(&["check-config", "--config", file.path()], &[]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    for line in ["listen = [\"0.0.0.0:1060\"]", "output = \"stdout\"", "format = \"json\""] {
        assert!(stdout.lines().any(|l| l == line), "{line} missing from the effective settings:\n{stdout}");
    }
}

/// What a pod gets for Services named `zen` and `zen-server` in its namespace, unless
/// `enableServiceLinks` is false.
const SERVICE_LINKS: [(&str, &str); 10] = [
    ("ZEN_SERVER_SERVICE_HOST", "10.96.0.10"),
    ("ZEN_SERVER_SERVICE_PORT", "1060"),
    ("ZEN_SERVER_SERVICE_PORT_ZEN", "1060"),
    ("ZEN_SERVER_PORT", "tcp://10.96.0.10:1060"),
    ("ZEN_SERVER_PORT_1060_TCP", "tcp://10.96.0.10:1060"),
    ("ZEN_SERVER_PORT_1060_TCP_ADDR", "10.96.0.10"),
    ("ZEN_SERVER_PORT_1060_TCP_PORT", "1060"),
    ("ZEN_SERVER_PORT_1060_TCP_PROTO", "tcp"),
    ("ZEN_PORT", "tcp://10.96.0.11:1060"),
    ("ZEN_SERVICE_HOST", "10.96.0.11"),
];

#[test]
fn kubernetes_service_links_are_no_settings_and_are_named_in_one_warning() {
    let (status, _, stderr) = run_server(&["check-config"], &SERVICE_LINKS);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("zen-server: warning: ignoring environment variables that are not settings"),
        "{stderr}"
    );
    for (name, _) in SERVICE_LINKS {
        assert!(stderr.contains(name), "check-config names {name}: {stderr}");
    }
    let server = ZenServer::launch(
        SERVICE_LINKS.iter().fold(Launch::with_env(&[]), |launch, (name, value)| launch.env(name, value)),
    );
    let warning = server
        .wait_for_log(&["WARN", "not settings"], DEADLINE)
        .unwrap_or_else(|| panic!("no warning; log:\n{}", server.log()));
    for (name, _) in SERVICE_LINKS {
        assert!(warning.contains(name), "{name} missing from {warning}");
    }
    assert_eq!(server.log().matches("not settings").count(), 1, "one warning:\n{}", server.log());
    // A setting misspelt stays a mistake, service links or not.
    let mut misspelt = SERVICE_LINKS.to_vec();
    misspelt.push(("ZEN_SERVER__WORKERZ", "2"));
    let (status, _, stderr) = run_server(&["check-config"], &misspelt);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("unknown key server.workerz in environment variable ZEN_SERVER__WORKERZ"), "{stderr}");
}
