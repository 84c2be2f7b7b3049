//! The Kubernetes manifests of `deploy/kubernetes/`: both variants (`sqlite/`, `postgres/`) are
//! rendered the way `kubectl kustomize` renders them (resources, recursively, and the
//! namespace; the renderer refuses any other kustomization field, so a manifest change that
//! needs more fails here instead of being rendered wrongly), every object is validated with
//! `kubernetes-validate --strict` against the Kubernetes schema of [`KUBERNETES`], and the
//! manifests are checked against the real controller: its default ports, the configuration
//! keys the ConfigMap and the pod environment set (read back by `serve --dump-config`), the
//! `init` command of the init container, the probe and scrape paths (asked of a running
//! controller) and the image's user.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES: &str = "1.35";
/// The validator, pinned so that a new release cannot change the verdict unnoticed.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The image's runtime user (`USER` of the Containerfile).
const IMAGE_USER: i64 = 65532;

/// Objects of the kustomization in `dir`, as `kubectl kustomize` renders it.
fn render(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("kustomization.yaml").display()));
    let k: Value = serde_norway::from_str(&text).unwrap();
    for key in k.as_object().unwrap().keys() {
        assert!(
            ["apiVersion", "kind", "namespace", "resources"].contains(&key.as_str()),
            "{}: the test's renderer does not handle `{key}`; extend it (or keep to resources and namespace)",
            dir.display()
        );
    }
    let mut objects = Vec::new();
    for r in k["resources"].as_array().unwrap() {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            objects.extend(render(&path));
        } else {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for doc in serde_norway::Deserializer::from_str(&text) {
                let v =
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if !v.is_null() {
                    objects.push(v);
                }
            }
        }
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for o in &mut objects {
            if o["kind"] != "Namespace" {
                o["metadata"]["namespace"] = json!(ns);
            }
        }
    }
    objects
}

fn variant(name: &str) -> Vec<Value> {
    render(&workspace_root().join("deploy/kubernetes").join(name))
}

fn the<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `section.key` → value (as TOML text) of a flat `--dump-config` output.
fn dumped(toml: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in toml.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
        } else if let Some((k, v)) = line.split_once(" = ") {
            out.insert(format!("{section}{k}"), v.trim_matches('"').to_string());
        }
    }
    out
}

/// `syncfleet-controller ARGS` with only `env` set; Ok(stdout) or Err(stderr).
fn controller(args: &[&str], env: &[(String, String)]) -> Result<String, String> {
    let out = Command::new(bin("syncfleet-controller"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(stderr(&out))
    }
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn both_variants_render_and_every_object_validates_strictly() {
    let python = py_venv_with(&[VALIDATOR], "kubernetes-validate-1.37.0");
    let validator = python.with_file_name("kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    for name in ["sqlite", "postgres"] {
        let objects = variant(name);
        let mut kinds: Vec<String> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        println!("{name}: {} objects: {}", objects.len(), kinds.join(", "));
        for kind in [
            "ConfigMap",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceMonitor",
            "StatefulSet",
        ] {
            assert!(kinds.iter().any(|k| k == kind), "{name} has no {kind}");
        }
        // The core objects against the Kubernetes schema; the ServiceMonitor (a CRD of the
        // Prometheus operator, not in that schema) is checked field by field below.
        let core: Vec<String> = objects
            .iter()
            .filter(|o| o["kind"] != "ServiceMonitor")
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, core.join("\n---\n")).unwrap();
        let out = Command::new(&validator)
            .args(["--strict", "-k", KUBERNETES])
            .arg(&file)
            .output()
            .unwrap();
        let report = format!("{}{}", stdout(&out), stderr(&out));
        println!("{report}");
        assert!(
            out.status.success(),
            "{name}: kubernetes-validate --strict -k {KUBERNETES} failed:\n{report}"
        );
        assert_eq!(
            report.matches("passed for resource").count(),
            core.len(),
            "{name}: not every object was validated:\n{report}"
        );

        let sm = the(&objects, "ServiceMonitor", "syncfleet-controller");
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        let svc = the(&objects, "Service", "syncfleet-controller");
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(
                &svc["metadata"]["labels"][k], v,
                "ServiceMonitor selects {k}={v}"
            );
        }
        for ep in sm["spec"]["endpoints"].as_array().unwrap() {
            let keys: Vec<&String> = ep.as_object().unwrap().keys().collect();
            for k in &keys {
                assert!(
                    ["port", "path", "interval", "scheme", "scrapeTimeout"].contains(&k.as_str()),
                    "unexpected ServiceMonitor endpoint field {k}"
                );
            }
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == ep["port"]),
                "ServiceMonitor port {} is not a port of the Service",
                ep["port"]
            );
        }
    }
}

#[test]
fn manifests_match_the_real_controller() {
    let defaults = dumped(&controller(&["serve", "--dump-config"], &[]).unwrap());
    let grpc = port_of(&defaults["grpc_listen"]);
    let http = port_of(&defaults["http_listen"]);
    let console = port_of(&defaults["console.listen"]);
    println!("controller defaults: gRPC {grpc}, HTTP {http}, console {console}");

    let containerfile =
        std::fs::read_to_string(workspace_root().join("deploy/container/Containerfile")).unwrap();
    assert!(
        containerfile.contains(&format!("EXPOSE {grpc} {http} {console}")),
        "the Containerfile does not EXPOSE {grpc} {http} {console}"
    );
    assert!(containerfile.contains(&format!("USER {IMAGE_USER}:{IMAGE_USER}")));
    assert!(
        containerfile.contains(&format!(
            "CMD [\"serve\", \"--data-dir\", \"/data\", \"--http-listen\", \"0.0.0.0:{http}\"]"
        )),
        "the image's serve command does not listen for HTTP on 0.0.0.0:{http}"
    );

    // A real controller answers the probe and scrape paths the manifests use.
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();

    let dir = tempfile::tempdir().unwrap();
    for name in ["sqlite", "postgres"] {
        let objects = variant(name);
        let sts = the(&objects, "StatefulSet", "syncfleet-controller");
        let pod = &sts["spec"]["template"]["spec"];
        let svc = the(&objects, "Service", "syncfleet-controller");
        let named = |ports: &Value, key: &str| -> BTreeMap<String, i64> {
            ports
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_string(),
                        p[key].as_i64().unwrap(),
                    )
                })
                .collect()
        };
        let want: BTreeMap<String, i64> = [("console", console), ("grpc", grpc), ("http", http)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            named(&svc["spec"]["ports"], "port"),
            want,
            "{name}: Service ports"
        );
        let main = &pod["containers"][0];
        assert_eq!(
            named(&main["ports"], "containerPort"),
            want,
            "{name}: container ports"
        );
        let policy = the(&objects, "NetworkPolicy", "syncfleet-controller");
        let allowed: Vec<i64> = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap().iter())
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        for p in [grpc, http, console] {
            assert!(
                allowed.contains(&p),
                "{name}: NetworkPolicy does not admit port {p}"
            );
        }

        // Probes and the scrape path, against the running controller.
        let monitor = the(&objects, "ServiceMonitor", "syncfleet-controller");
        let mut paths = vec![monitor["spec"]["endpoints"][0]["path"].as_str().unwrap()];
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = &main[probe]["httpGet"];
            assert_eq!(get["port"], "http", "{name}: {probe} port");
            paths.push(get["path"].as_str().unwrap());
        }
        assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/readyz");
        for path in paths {
            let answer = http_get(fleet.http_port, path);
            assert_eq!(
                answer.as_ref().map(|a| a.0),
                Some(200),
                "{name}: {path} on the controller: {answer:?}"
            );
        }

        // Hardening: every container, the init container too, as the image's user.
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsUser"], IMAGE_USER, "{name}");
        assert_eq!(psc["runAsGroup"], IMAGE_USER, "{name}");
        assert_eq!(psc["runAsNonRoot"], true, "{name}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let containers: Vec<&Value> = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten())
            .collect();
        for c in &containers {
            let sc = &c["securityContext"];
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{name} {}",
                c["name"]
            );
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name} {}", c["name"]);
            assert_eq!(
                sc["capabilities"]["drop"],
                json!(["ALL"]),
                "{name} {}",
                c["name"]
            );
        }

        // The configuration the pod gets, read by the real controller: the ConfigMap's file and
        // the pod's SYNCFLEET_* variables (downward-API values filled in as for pod 0, Secret
        // values from the rendered Secret).
        let cm = the(&objects, "ConfigMap", "syncfleet-controller");
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, cm["data"]["controller.toml"].as_str().unwrap()).unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        for e in main["env"].as_array().unwrap() {
            let key = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.replace("$(POD_NAME)", "syncfleet-controller-0")
                    .replace("$(POD_NAMESPACE)", "syncfleet")
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                let secret = the(&objects, "Secret", r["name"].as_str().unwrap());
                secret["stringData"][r["key"].as_str().unwrap()]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                continue;
            };
            env.push((key, value));
        }
        let config_path = env
            .iter()
            .find(|(k, _)| k == "SYNCFLEET_CONTROLLER_CONFIG")
            .map(|(_, v)| v.clone())
            .expect("the pod names its configuration file");
        let config_mount = main["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap();
        assert_eq!(
            Path::new(&config_path).parent().unwrap(),
            Path::new(config_mount["mountPath"].as_str().unwrap()),
            "{name}: SYNCFLEET_CONTROLLER_CONFIG is not in the ConfigMap's mount"
        );
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| {
                if k == "SYNCFLEET_CONTROLLER_CONFIG" {
                    (k, file.display().to_string())
                } else {
                    (k, v)
                }
            })
            .collect();
        let effective = dumped(
            &controller(&["serve", "--dump-config"], &env)
                .unwrap_or_else(|e| panic!("{name}: the pod's configuration is refused: {e}")),
        );
        assert_eq!(port_of(&effective["grpc_listen"]), grpc, "{name}");
        assert_eq!(port_of(&effective["http_listen"]), http, "{name}");
        assert_eq!(port_of(&effective["console.listen"]), console, "{name}");
        assert!(
            effective["http_listen"].starts_with("0.0.0.0:"),
            "{name}: http_listen {} cannot be reached by the kubelet's probes",
            effective["http_listen"]
        );
        let data_mount = main["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "data")
            .unwrap();
        assert_eq!(
            effective["data_dir"],
            data_mount["mountPath"].as_str().unwrap()
        );

        match name {
            "sqlite" => {
                assert_eq!(sts["spec"]["replicas"], 1);
                assert_eq!(
                    sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
                    "data"
                );
                assert!(!effective.contains_key("store"), "sqlite: store is set");
                // The init container's command initialises a data folder with this
                // configuration (data_dir pointed at a temporary folder).
                let init = &pod["initContainers"][0];
                let mut args: Vec<String> = init["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(args[0], "init");
                let data = dir.path().join("data");
                args.extend(["--data-dir".into(), data.display().to_string()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                controller(&args, &env).unwrap_or_else(|e| panic!("init container: {e}"));
                controller(&args, &env).unwrap_or_else(|e| panic!("init container, again: {e}"));
                for f in ["ca.pem", "ca.key", "controller.pem", "operators/admin.pem"] {
                    assert!(data.join("pki").join(f).exists(), "init wrote no {f}");
                }
            }
            "postgres" => {
                assert_eq!(sts["spec"]["replicas"], 3);
                assert!(pod["initContainers"].is_null());
                assert_eq!(
                    pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                        [0]["topologyKey"],
                    "kubernetes.io/hostname"
                );
                assert!(
                    effective["store"].starts_with("postgres://"),
                    "{effective:?}"
                );
                assert_eq!(
                    effective["advertise_url"],
                    format!(
                        "https://syncfleet-controller-0.syncfleet-controller-headless.syncfleet.svc:{grpc}"
                    )
                );
                let pki = main["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "pki")
                    .unwrap();
                assert_eq!(pki["mountPath"], format!("{}/pki", effective["data_dir"]));
                let headless = the(&objects, "Service", "syncfleet-controller-headless");
                assert_eq!(sts["spec"]["serviceName"], "syncfleet-controller-headless");
                assert_eq!(headless["spec"]["clusterIP"], "None");
            }
            _ => unreachable!(),
        }
    }
}
