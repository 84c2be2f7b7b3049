//! Observability end to end, with the real binaries:
//! - `/metrics` counts equal the runs the CLI lists, before and after a controller restart;
//! - one trace per run: an in-test OTLP receiver gets the controller's run span and the agent's
//!   run and step spans with one trace id and the right parent links, over gRPC and over
//!   http/protobuf; failed exports are logged;
//! - a real Prometheus (the Debian `prometheus` package) scrapes the controller: `up == 1`, and
//!   loads the alert rules of `deploy/prometheus/alerts.yml`.
//!
//! Waits are liveness bounds only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fleet, Proc, bin, free_port, http_get, poll, wait_for, workspace_root};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const TERMINAL: &[&str] = &[
    "succeeded",
    "completed_with_errors",
    "failed",
    "skipped",
    "cancelled",
    "unknown",
    "held",
];

/// One sample of the text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").unwrap();
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = after.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, n)) = chars.next() {
                                    value.push(if n == 'n' { '\n' } else { n });
                                }
                            }
                            '"' => {
                                end = i;
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    labels.insert(k.trim_start_matches(',').to_string(), value);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

/// The controller's /metrics once it answers 200.
fn scrape(fleet: &Fleet) -> Vec<Sample> {
    let port = fleet.http_port;
    let body = wait_for(
        "/metrics to answer 200",
        Duration::from_secs(60),
        || match http_get(port, "/metrics") {
            Some((200, body)) => Some(body),
            _ => None,
        },
    );
    parse_metrics(&body)
}

/// `(by, value, result)`: `by` is `agent` (the agent's runs) or `sequence` (the runs of a
/// sequence on every agent).
type RunKey = (String, String, String);

/// `syncfleet_agent_runs_total` by agent and `syncfleet_runs_total` by sequence, as
/// [`RunKey`] -> count, without the series still at 0.
fn runs_total(samples: &[Sample]) -> BTreeMap<RunKey, u64> {
    samples
        .iter()
        .filter(|(_, _, v)| *v > 0.0)
        .filter_map(|(n, l, v)| {
            let by = match n.as_str() {
                "syncfleet_agent_runs_total" => "agent",
                "syncfleet_runs_total" => "sequence",
                _ => return None,
            };
            Some((
                (
                    by.to_string(),
                    l.get(by).cloned().unwrap_or_default(),
                    l["result"].clone(),
                ),
                *v as u64,
            ))
        })
        .collect()
}

/// Ended runs as `syncfleet runs list` shows them, counted the same way.
fn runs_listed(fleet: &Fleet) -> BTreeMap<RunKey, u64> {
    let list = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    let mut out = BTreeMap::new();
    for r in list.as_array().unwrap() {
        let state = r["state"].as_str().unwrap();
        if !TERMINAL.contains(&state) {
            continue;
        }
        for by in ["agent", "sequence"] {
            let key = (
                by.to_string(),
                r[by].as_str().unwrap_or_default().to_string(),
                state.to_string(),
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// Wait until the metrics count exactly the runs listed (the metrics follow run updates
/// asynchronously); fail with both views.
fn assert_counts_match(fleet: &Fleet, what: &str) -> BTreeMap<RunKey, u64> {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let matched = poll(Duration::from_secs(60), || {
        let listed = runs_listed(fleet);
        let counted = runs_total(&scrape(fleet));
        if listed == counted {
            return Some(listed);
        }
        last = (listed, counted);
        None
    });
    matched.unwrap_or_else(|| {
        panic!(
            "{what}: syncfleet_runs_total differs from `runs list`\nlisted:  {:?}\nmetrics: {:?}",
            last.0, last.1
        )
    })
}

/// SIGTERM, then wait (bounded) for a clean exit.
fn stop_gracefully(p: &mut Proc) {
    p.signal("TERM");
    let status = wait_for(
        &format!("{} to exit after SIGTERM", p.name),
        Duration::from_secs(60),
        || p.child.try_wait().unwrap(),
    );
    assert!(
        status.success(),
        "{} exit after SIGTERM: {status}\n{}",
        p.name,
        p.log_text()
    );
}

/// A simulated server whose first `AD: Delta Import` stops with a connectivity failure.
fn failing_server(fleet: &Fleet) -> String {
    let server = fleet.dir.path().join("flaky-server.toml");
    std::fs::write(
        &server,
        "seed = 11\ntime_scale = 0.01\n\
         [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 500\nchange_rate_per_hour = 200.0\n\
         [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 500\nchange_rate_per_hour = 0.0\n\
         [[script]]\nma = \"AD\"\nprofile = \"Delta Import\"\nresult = \"stopped-connectivity\"\n",
    )
    .unwrap();
    format!("[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n")
}

/// `syncfleet run AGENT --step ... --follow -o json`: the run's id and whether the CLI
/// reported success.
fn run_follow(fleet: &Fleet, agent: &str, steps: &[&str]) -> (String, bool) {
    let mut args = vec!["run", agent];
    for s in steps {
        args.extend(["--step", s]);
    }
    args.extend(["--follow", "-o", "json"]);
    let out = fleet.cli(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "syncfleet {args:?} printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let id = v["id"].as_str().unwrap().to_string();
    fleet.wait_run_state(&id, TERMINAL, RUN_TIMEOUT);
    (id, out.status.success())
}

fn sample<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

#[test]
fn metrics_count_the_runs_in_the_store_also_after_a_restart() {
    let mut fleet = Fleet::init(&["sync-01", "sync-02"]);
    fleet.start_controller();
    fleet.start_agent("sync-01", 0, 0.01);
    let flaky = failing_server(&fleet);
    fleet.start_agent_with("sync-02", &flaky);
    fleet.wait_connected(&["sync-01", "sync-02"]);

    let (http_status, body) = http_get(fleet.http_port, "/readyz").unwrap();
    // One controller on SQLite is always the leader, with epoch 1.
    assert_eq!(
        (http_status, body.trim()),
        (200, "ready\nrole: leader\nepoch: 1")
    );
    let (http_status, _) = http_get(fleet.http_port, "/healthz").unwrap();
    assert_eq!(http_status, 200);

    // Every end state of a known agent is a series from 0 before its first run ends, so that
    // `increase()` sees the first one (a held run fires SyncfleetRunHeld).
    let zeros = wait_for(
        "zero-valued run series of the connected agents",
        Duration::from_secs(60),
        || {
            let s = scrape(&fleet);
            ["sync-01", "sync-02"]
                .iter()
                .all(|a| {
                    sample(
                        &s,
                        "syncfleet_agent_runs_total",
                        &[("agent", a), ("result", "held")],
                    )
                    .is_some()
                        && sample(
                            &s,
                            "syncfleet_agent_object_errors_total",
                            &[("agent", a), ("ma", "AD")],
                        )
                        .is_some_and(|s| s.2 == 0.0)
                })
                .then_some(s)
        },
    );
    for state in TERMINAL {
        let s = sample(
            &zeros,
            "syncfleet_agent_runs_total",
            &[("agent", "sync-01"), ("result", state)],
        );
        assert_eq!(s.map(|s| s.2), Some(0.0), "{state}");
        let s = sample(
            &zeros,
            "syncfleet_runs_total",
            &[("sequence", ""), ("result", state)],
        );
        assert_eq!(s.map(|s| s.2), Some(0.0), "ad-hoc {state}");
    }
    assert!(
        sample(
            &zeros,
            "syncfleet_step_objects_total",
            &[("ma", "AD"), ("counter", "errors")]
        )
        .is_some_and(|s| s.2 == 0.0)
    );

    for _ in 0..2 {
        let (_, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import", "AD:Delta Sync"]);
        assert!(ok, "runs on sync-01 succeed");
    }
    let (failed, ok) = run_follow(&fleet, "sync-02", &["AD:Delta Import"]);
    assert!(!ok, "the scripted connectivity failure fails the run");
    assert_eq!(fleet.run_json(&failed).unwrap()["state"], "failed");
    let (_, ok) = run_follow(&fleet, "sync-02", &["AD:Delta Import"]);
    assert!(ok, "the script fails one execution only");

    let counted = assert_counts_match(&fleet, "before the restart");
    let key = |a: &str, s: &str| ("agent".to_string(), a.to_string(), s.to_string());
    assert_eq!(counted.get(&key("sync-01", "succeeded")), Some(&2));
    assert_eq!(counted.get(&key("sync-02", "failed")), Some(&1));
    assert_eq!(counted.get(&key("sync-02", "succeeded")), Some(&1));
    let ad_hoc = |s: &str| ("sequence".to_string(), String::new(), s.to_string());
    assert_eq!(counted.get(&ad_hoc("succeeded")), Some(&3));
    assert_eq!(counted.get(&ad_hoc("failed")), Some(&1));

    let samples = scrape(&fleet);
    // By default the fleet-wide families carry no agent label: their series do not grow with
    // the fleet.
    for family in [
        "syncfleet_runs_total",
        "syncfleet_step_duration_seconds_count",
        "syncfleet_step_objects_total",
    ] {
        assert!(
            samples
                .iter()
                .filter(|(n, _, _)| n == family)
                .all(|(_, l, _)| !l.contains_key("agent")),
            "{family} has an agent label"
        );
    }
    // Step families: durations and objects changed per MA and profile across the fleet, the
    // last success per agent, MA and step type.
    assert!(
        sample(
            &samples,
            "syncfleet_step_duration_seconds_count",
            &[("ma", "AD"), ("profile", "Delta Sync")]
        )
        .is_some_and(|s| s.2 == 2.0),
        "step durations of AD Delta Sync"
    );
    let stage_adds = sample(
        &samples,
        "syncfleet_step_objects_total",
        &[("ma", "AD"), ("counter", "stage-add")],
    )
    .expect("staged adds of AD");
    let listed_adds: u64 = fleet
        .cli_json(&["runs", "list", "-o", "json"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["steps"].as_array().unwrap().clone())
        .filter(|s| s["ma"] == "AD")
        .map(|s| s["counters"]["stage-add"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        stage_adds.2 as u64, listed_adds,
        "stage-add equals the runs' counters"
    );
    for step_type in ["import", "sync"] {
        assert!(
            sample(
                &samples,
                "syncfleet_last_success_timestamp_seconds",
                &[("agent", "sync-01"), ("ma", "AD"), ("step_type", step_type)]
            )
            .is_some_and(|s| s.2 > 1.0e9),
            "last {step_type} success of sync-01 AD"
        );
    }
    // An agent's series stay within 13 + 8 per MA.
    let own: Vec<&Sample> = samples
        .iter()
        .filter(|(_, l, _)| l.get("agent").map(String::as_str) == Some("sync-01"))
        .collect();
    let mas: std::collections::BTreeSet<&String> =
        own.iter().filter_map(|(_, l, _)| l.get("ma")).collect();
    assert!(!mas.is_empty());
    assert!(
        own.len() <= 13 + 8 * mas.len(),
        "{} series of sync-01 with {} MAs",
        own.len(),
        mas.len()
    );
    assert!(
        sample(
            &samples,
            "syncfleet_run_duration_seconds_count",
            &[("sequence", "")]
        )
        .is_some_and(|s| s.2 == 4.0)
    );
    assert!(
        sample(&samples, "syncfleet_agents", &[("state", "connected")]).is_some_and(|s| s.2 == 2.0)
    );
    assert!(
        sample(
            &samples,
            "syncfleet_agent_state",
            &[("agent", "sync-02"), ("state", "connected")]
        )
        .is_some()
    );
    // Pending exports come with the agents' heartbeats.
    wait_for(
        "pending exports of both agents in /metrics",
        Duration::from_secs(90),
        || {
            let s = scrape(&fleet);
            ["sync-01", "sync-02"]
                .iter()
                .all(|a| {
                    sample(
                        &s,
                        "syncfleet_pending_exports",
                        &[("agent", a), ("ma", "AD"), ("kind", "update")],
                    )
                    .is_some()
                })
                .then_some(())
        },
    );

    // Restart the controller: the counts are read back from the store.
    stop_gracefully(fleet.controller_mut());
    fleet.start_controller();
    let after = assert_counts_match(&fleet, "after the restart");
    assert_eq!(after, counted, "a restart changes no count");
    // Runs after the restart are counted on top.
    fleet.wait_connected(&["sync-01", "sync-02"]);
    let (_, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import"]);
    assert!(ok);
    let last = assert_counts_match(&fleet, "after a run following the restart");
    assert_eq!(last.get(&key("sync-01", "succeeded")), Some(&3));
}

/// `metrics.per_agent_detail = true` puts the agent back on the fleet-wide run and step
/// families and the run profile on the last success; the per-agent families stay as by default.
#[test]
fn per_agent_detail_labels_the_fleet_wide_families_by_agent() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller_with(&["--set", "metrics.per_agent_detail=true"]);
    fleet.start_agent("sync-01", 0, 0.01);
    fleet.wait_connected(&["sync-01"]);
    let (_, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import", "AD:Delta Sync"]);
    assert!(ok, "the run on sync-01 succeeds");
    let samples = wait_for(
        "the run counted per agent in /metrics",
        Duration::from_secs(60),
        || {
            let s = scrape(&fleet);
            sample(
                &s,
                "syncfleet_runs_total",
                &[
                    ("agent", "sync-01"),
                    ("sequence", ""),
                    ("result", "succeeded"),
                ],
            )
            .is_some_and(|v| v.2 == 1.0)
            .then_some(s)
        },
    );
    assert!(
        sample(
            &samples,
            "syncfleet_step_duration_seconds_count",
            &[
                ("agent", "sync-01"),
                ("ma", "AD"),
                ("profile", "Delta Sync")
            ]
        )
        .is_some_and(|s| s.2 == 1.0)
    );
    assert!(
        sample(
            &samples,
            "syncfleet_step_objects_total",
            &[("agent", "sync-01"), ("ma", "AD"), ("counter", "stage-add")]
        )
        .is_some()
    );
    assert!(
        sample(
            &samples,
            "syncfleet_last_success_timestamp_seconds",
            &[
                ("agent", "sync-01"),
                ("ma", "AD"),
                ("step_type", "sync"),
                ("profile", "Delta Sync")
            ]
        )
        .is_some_and(|s| s.2 > 1.0e9)
    );
    assert!(
        sample(
            &samples,
            "syncfleet_agent_runs_total",
            &[("agent", "sync-01"), ("result", "succeeded")]
        )
        .is_some_and(|s| s.2 == 1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// OTLP receiver

mod otlp {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

    /// One span as received.
    #[derive(Debug, Clone)]
    pub struct Got {
        pub service: String,
        pub resource: HashMap<String, String>,
        pub name: String,
        pub trace_id: String,
        pub span_id: String,
        pub parent: String,
        pub attrs: HashMap<String, String>,
    }

    #[derive(Clone, Default)]
    pub struct Receiver {
        pub spans: Arc<Mutex<Vec<Got>>>,
    }

    fn text(v: &Option<AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            _ => String::new(),
        }
    }

    fn map(kvs: &[KeyValue]) -> HashMap<String, String> {
        kvs.iter()
            .map(|kv| (kv.key.clone(), text(&kv.value)))
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    impl Receiver {
        fn take(&self, req: ExportTraceServiceRequest) {
            let mut got = Vec::new();
            for rs in req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| map(&r.attributes))
                    .unwrap_or_default();
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for ss in rs.scope_spans {
                    for sp in ss.spans {
                        got.push(Got {
                            service: service.clone(),
                            resource: resource.clone(),
                            name: sp.name.clone(),
                            trace_id: hex(&sp.trace_id),
                            span_id: hex(&sp.span_id),
                            parent: hex(&sp.parent_span_id),
                            attrs: map(&sp.attributes),
                        });
                    }
                }
            }
            self.spans.lock().unwrap().extend(got);
        }
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.take(req.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Serve OTLP http/protobuf (`POST /v1/traces`) on `port` until the runtime is dropped.
    pub fn serve_http(rt: &tokio::runtime::Runtime, port: u16) -> Receiver {
        use axum::http::{StatusCode, header};
        let receiver = Receiver::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let content_type = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    if content_type != "application/x-protobuf" {
                        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                    }
                    match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                        Ok(req) => {
                            state.take(req);
                            let resp = ExportTraceServiceResponse {
                                partial_success: None,
                            };
                            (StatusCode::OK, prost::Message::encode_to_vec(&resp))
                        }
                        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                    }
                },
            ),
        );
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        wait_for(
            "the OTLP/HTTP receiver to listen",
            Duration::from_secs(30),
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        receiver
    }

    /// Serve the OTLP trace service on `port` until the runtime is dropped.
    pub fn serve(rt: &tokio::runtime::Runtime, port: u16) -> Receiver {
        let receiver = Receiver::default();
        let svc = TraceServiceServer::new(receiver.clone());
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve(([127, 0, 0, 1], port).into())
                .await
                .unwrap();
        });
        wait_for(
            "the OTLP receiver to listen",
            Duration::from_secs(30),
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        receiver
    }
}

const OTEL_ENV: &[(&str, &str)] = &[
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
];

fn start_controller_traced(fleet: &mut Fleet, endpoint: &str, env: &[(&str, &str)]) {
    let log = fleet.dir.path().join("controller-traced.log");
    let mut cmd = Command::new(bin("syncfleet-controller"));
    cmd.args(["serve", "--fleet", "e2e", "--data-dir"])
        .arg(fleet.data_dir())
        .args(["--grpc-listen", &format!("127.0.0.1:{}", fleet.grpc_port)])
        .args(["--http-listen", &format!("127.0.0.1:{}", fleet.http_port)])
        .args(["--set", "console.listen=127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .envs(OTEL_ENV.iter().copied())
        .envs(env.iter().copied());
    let proc = Proc::spawn("controller", &mut cmd, log);
    let port = fleet.grpc_port;
    wait_for("the controller to listen", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    fleet.controller = Some(proc);
}

fn start_agent_traced(
    fleet: &mut Fleet,
    name: &str,
    extra: &str,
    endpoint: &str,
    env: &[(&str, &str)],
) {
    let cfg = fleet.dir.path().join(format!("agent-{name}-traced.toml"));
    std::fs::write(
        &cfg,
        format!(
            "name = {name:?}\ncontroller = \"https://127.0.0.1:{}\"\ndata_dir = {:?}\n[labels]\nenv = \"e2e\"\n{extra}\n",
            fleet.grpc_port,
            fleet.agent_dir(name)
        ),
    )
    .unwrap();
    let log = fleet.dir.path().join(format!("agent-{name}-traced.log"));
    let mut cmd = Command::new(bin("syncfleet-agent"));
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .args(["--log-format", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .envs(OTEL_ENV.iter().copied())
        .envs(env.iter().copied());
    let proc = Proc::spawn(name, &mut cmd, log);
    fleet.agents.insert(name.to_string(), proc);
}

/// The spans of one run, once the controller's span, the agent's run span and `steps` step
/// spans have all arrived.
fn run_spans(receiver: &otlp::Receiver, run_id: &str, steps: usize) -> Vec<otlp::Got> {
    wait_for(
        &format!("the spans of run {run_id}"),
        Duration::from_secs(60),
        || {
            let all = receiver.spans.lock().unwrap().clone();
            let mine: Vec<otlp::Got> = all
                .into_iter()
                .filter(|s| s.attrs.get("run_id").map(String::as_str) == Some(run_id))
                .collect();
            let controller = mine
                .iter()
                .filter(|s| s.service == "syncfleet-controller" && s.name == "create run")
                .count();
            let agent = mine
                .iter()
                .filter(|s| s.service == "syncfleet-agent" && s.name == "execute run")
                .count();
            let step_spans = mine
                .iter()
                .filter(|s| s.service == "syncfleet-agent" && s.attrs.contains_key("ma"))
                .count();
            (controller == 1 && agent == 1 && step_spans == steps).then_some(mine)
        },
    )
}

#[test]
fn each_run_is_one_trace_across_controller_and_agent() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let otlp_port = free_port();
    let receiver = otlp::serve(&rt, otlp_port);
    let endpoint = format!("http://127.0.0.1:{otlp_port}");

    let mut fleet = Fleet::init(&["sync-01", "sync-02"]);
    start_controller_traced(&mut fleet, &endpoint, &[]);
    start_agent_traced(
        &mut fleet,
        "sync-01",
        "[engine]\nkind = \"sim\"\nserver = 0\ntime_scale = 0.01\n",
        &endpoint,
        &[],
    );
    let flaky = failing_server(&fleet);
    start_agent_traced(&mut fleet, "sync-02", &flaky, &endpoint, &[]);
    fleet.wait_connected(&["sync-01", "sync-02"]);

    let (ok_run, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import", "AD:Delta Sync"]);
    assert!(ok);
    let (failed_run, ok) = run_follow(&fleet, "sync-02", &["AD:Delta Import"]);
    assert!(!ok);

    for (run_id, steps, agent) in [(&ok_run, 2, "sync-01"), (&failed_run, 1, "sync-02")] {
        let spans = run_spans(&receiver, run_id, steps);
        let controller = spans
            .iter()
            .find(|s| s.service == "syncfleet-controller")
            .unwrap();
        let run = spans.iter().find(|s| s.name == "execute run").unwrap();
        let step_spans: Vec<&otlp::Got> = spans
            .iter()
            .filter(|s| s.attrs.contains_key("ma"))
            .collect();
        for s in &spans {
            assert_eq!(
                s.trace_id, controller.trace_id,
                "every span of run {run_id} is in one trace: {spans:#?}"
            );
        }
        assert_eq!(controller.attrs["agent"], agent);
        assert_eq!(
            run.parent, controller.span_id,
            "the agent's run span is the child of the controller's span"
        );
        for s in &step_spans {
            assert_eq!(
                s.parent, run.span_id,
                "step spans are children of the run span"
            );
            assert_eq!(s.attrs["ma"], "AD");
            for a in [
                "profile",
                "result",
                "run_number",
                "stage_add",
                "stage_update",
                "stage_delete",
                "export_add",
                "export_update",
                "export_delete",
                "error_count",
            ] {
                assert!(s.attrs.contains_key(a), "step span lacks {a}: {s:#?}");
            }
        }
        assert_eq!(run.resource["syncfleet.agent.name"], agent);
        // In-process agents (dev mode) share a resource: the spans name their agent too.
        assert_eq!(run.attrs.get("agent").map(String::as_str), Some(agent));
        for s in &step_spans {
            assert_eq!(s.attrs.get("agent").map(String::as_str), Some(agent));
        }
        assert_eq!(run.resource["syncfleet.agent.label.env"], "e2e");
        assert_eq!(controller.resource["service.name"], "syncfleet-controller");
    }
    let spans = run_spans(&receiver, &failed_run, 1);
    let step = spans.iter().find(|s| s.attrs.contains_key("ma")).unwrap();
    assert_eq!(step.attrs["result"], "stopped-connectivity");
    let spans = run_spans(&receiver, &ok_run, 2);
    let profiles: Vec<&str> = spans
        .iter()
        .filter_map(|s| s.attrs.get("profile").map(String::as_str))
        .collect();
    assert!(
        profiles.contains(&"Delta Import") && profiles.contains(&"Delta Sync"),
        "{profiles:?}"
    );

    // JSON log lines about the run carry its run id and trace id, on both sides.
    let trace = &spans[0].trace_id;
    let agent_log = fleet.agents["sync-01"].log_text();
    let line = agent_log
        .lines()
        .find(|l| l.contains("\"step finished\"") && l.contains(ok_run.as_str()))
        .unwrap_or_else(|| panic!("no step log line of {ok_run}:\n{agent_log}"));
    assert!(line.contains(trace.as_str()), "{line}");
    let controller_log = fleet.controller.as_ref().unwrap().log_text();
    let line = controller_log
        .lines()
        .find(|l| l.contains("\"run created\"") && l.contains(ok_run.as_str()))
        .unwrap_or_else(|| panic!("no 'run created' line of {ok_run}:\n{controller_log}"));
    assert!(line.contains(trace.as_str()), "{line}");

    // Every agent log line names its agent; a failed run's line has one `message` key.
    for name in ["sync-01", "sync-02"] {
        let log = fleet.agents[name].log_text();
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let agents: Vec<&str> = v["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["agent"].as_str())
                .collect();
            assert!(
                !agents.is_empty() && agents.iter().all(|a| *a == name),
                "a line of {name} without its agent: {line}"
            );
        }
    }
    let log = fleet.agents["sync-02"].log_text();
    let line = log
        .lines()
        .find(|l| l.contains("\"run finished\"") && l.contains(failed_run.as_str()))
        .unwrap_or_else(|| panic!("no 'run finished' line of {failed_run}:\n{log}"));
    assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
    assert!(line.contains("\"detail\":"), "{line}");

    // Both daemons stop cleanly on SIGTERM with the exporter on (spans are flushed at exit).
    for name in ["sync-01", "sync-02"] {
        stop_gracefully(fleet.agents.get_mut(name).unwrap());
    }
    stop_gracefully(fleet.controller_mut());
}

#[test]
fn traces_go_over_http_protobuf_and_failed_exports_are_logged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http_port = free_port();
    let receiver = otlp::serve_http(&rt, http_port);
    let endpoint = format!("http://127.0.0.1:{http_port}");
    let http = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];

    let mut fleet = Fleet::init(&["sync-01", "sync-02"]);
    start_controller_traced(&mut fleet, &endpoint, &http);
    start_agent_traced(
        &mut fleet,
        "sync-01",
        "[engine]\nkind = \"sim\"\nserver = 0\ntime_scale = 0.01\n",
        &endpoint,
        &http,
    );
    // sync-02 exports to a port nothing listens on, over each protocol in turn.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let sim = "[engine]\nkind = \"sim\"\nserver = 1\ntime_scale = 0.01\n";
    start_agent_traced(&mut fleet, "sync-02", sim, &nowhere, &[]);
    fleet.wait_connected(&["sync-01", "sync-02"]);

    let (run_id, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import", "AD:Delta Sync"]);
    assert!(ok);
    let spans = run_spans(&receiver, &run_id, 2);
    let controller = spans
        .iter()
        .find(|s| s.service == "syncfleet-controller")
        .unwrap();
    let run = spans.iter().find(|s| s.name == "execute run").unwrap();
    assert_eq!(run.parent, controller.span_id);
    assert!(spans.iter().all(|s| s.trace_id == controller.trace_id));
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert!(
        log.contains("\"protocol\":\"http/protobuf\""),
        "the controller says which protocol it exports with:\n{log}"
    );

    let failed_export = |fleet: &Fleet, what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            let log = fleet.agents["sync-02"].log_text();
            log.lines()
                .find(|l| l.contains("OTLP trace export failed"))
                .map(str::to_string)
        })
    };
    let (_, ok) = run_follow(&fleet, "sync-02", &["AD:Delta Import"]);
    assert!(ok);
    let line = failed_export(&fleet, "a logged gRPC export failure");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["protocol"], "grpc", "{line}");
    assert!(v["fields"]["failures"].as_u64().unwrap() >= 1, "{line}");
    stop_gracefully(fleet.agents.get_mut("sync-02").unwrap());

    start_agent_traced(&mut fleet, "sync-02", sim, &nowhere, &http);
    fleet.wait_connected(&["sync-02"]);
    let (_, ok) = run_follow(&fleet, "sync-02", &["AD:Delta Import"]);
    assert!(ok);
    let line = failed_export(&fleet, "a logged http/protobuf export failure");
    assert!(line.contains("\"protocol\":\"http/protobuf\""), "{line}");

    for name in ["sync-01", "sync-02"] {
        stop_gracefully(fleet.agents.get_mut(name).unwrap());
    }
    stop_gracefully(fleet.controller_mut());
}

// ---------------------------------------------------------------------------------------------
// Real Prometheus

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_controller_and_loads_the_alert_rules() {
    let found = Command::new("prometheus").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "the `prometheus` binary is not on PATH: install it (Debian: `apt-get install -y prometheus`; .ci/run does) to run this test"
    );
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let (_, ok) = run_follow(&fleet, "sync-01", &["AD:Delta Import"]);
    assert!(ok);

    let rules = workspace_root().join("deploy/prometheus/alerts.yml");
    let dir = fleet.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: syncfleet-controller\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display().to_string(),
            fleet.http_port
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Proc::spawn("prometheus", &mut cmd, dir.join("prometheus.log"));

    let query = |q: &str| -> Option<serde_json::Value> {
        let (status, body) = http_get(port, &format!("/api/v1/query?query={}", url_encode(q)))?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let up = poll(Duration::from_secs(120), || {
        let v = query("up{job=\"syncfleet-controller\"}")?;
        let value = v["data"]["result"][0]["value"][1].as_str()?.to_string();
        (value == "1").then_some(value)
    });
    assert!(
        up.is_some(),
        "Prometheus never saw the controller up; its log:\n{}",
        prom.log_text()
    );
    // The scraped families are queryable by name.
    let runs = poll(Duration::from_secs(60), || {
        let v = query("sum(syncfleet_runs_total{result=\"succeeded\"})")?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(runs.as_deref(), Some("1"));
    // The rules file of deploy/ loads: every group is there.
    let (status, body) = http_get(port, "/api/v1/rules").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let groups = v["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "no rule group loaded: {body}");
    let names: Vec<String> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for alert in [
        "SyncfleetNoSuccessfulDeltaSync",
        "SyncfleetAgentLost",
        "SyncfleetScheduleSaturated",
        "SyncfleetGuardRailHold",
        "SyncfleetSyncErrorsSpike",
    ] {
        assert!(
            names.iter().any(|n| n == alert),
            "{alert} missing: {names:?}"
        );
    }
    // Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    let dashboard = workspace_root().join("deploy/grafana/syncfleet-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
    let mut checked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$agent", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            let (status, body) =
                http_get(port, &format!("/api/v1/query?query={}", url_encode(&expr))).unwrap();
            assert_eq!(status, 200, "dashboard query {expr}: {body}");
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked} dashboard queries");
    drop(prom);
}
