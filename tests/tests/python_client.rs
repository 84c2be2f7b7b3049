//! The API is usable by third-party tools: a Python `grpcio` client, with stubs generated from
//! `proto/` by `grpcio-tools`, lists the agents of a running fleet over mTLS.
//!
//! The test prepares its own virtual environment under `target/` (PyPI) the first time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Fleet, py_venv_with, workspace_root};

/// The venv's Python with the gRPC client and its stub generator.
fn venv_python() -> PathBuf {
    py_venv_with(&["grpcio", "grpcio-tools"], ".grpc-ready")
}

const CLIENT: &str = r#"
import json, sys
import grpc
sys.path.insert(0, sys.argv[1])
from syncfleet.v1 import fleet_pb2, fleet_pb2_grpc
port, ca, cert, key = sys.argv[2:6]
creds = grpc.ssl_channel_credentials(
    root_certificates=open(ca, "rb").read(),
    private_key=open(key, "rb").read(),
    certificate_chain=open(cert, "rb").read(),
)
channel = grpc.secure_channel(
    f"127.0.0.1:{port}", creds,
    options=[("grpc.ssl_target_name_override", "localhost")],
)
stub = fleet_pb2_grpc.FleetServiceStub(channel)
resp = stub.ListAgents(fleet_pb2.ListAgentsRequest(), timeout=20)
print(json.dumps([
    {"name": a.name, "state": fleet_pb2.AgentState.Name(a.state),
     "mas": [m.name for m in a.management_agents]}
    for a in resp.agents
]))
"#;

#[test]
fn python_grpcio_client_lists_agents() {
    let python = venv_python();
    let fleet = Fleet::started(&["sync-01"], 0.01);

    let stubs = fleet.dir.path().join("pystubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto = workspace_root().join("proto/proto");
    let st = Command::new(&python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args([
            "syncfleet/v1/common.proto",
            "syncfleet/v1/agent.proto",
            "syncfleet/v1/fleet.proto",
        ])
        .current_dir(&proto)
        .status()
        .unwrap();
    assert!(st.success(), "grpc_tools.protoc failed on proto/");
    let script = fleet.dir.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let pki = fleet.pki();
    let out = Command::new(&python)
        .arg(&script)
        .arg(&stubs)
        .arg(fleet.grpc_port.to_string())
        .arg(pki.join("ca.pem"))
        .arg(pki.join("operators/admin.pem"))
        .arg(pki.join("operators/admin.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &agents[0];
    assert_eq!(a["name"], "sync-01");
    assert_eq!(a["state"], "AGENT_STATE_CONNECTED");
    assert!(
        a["mas"].as_array().unwrap().iter().any(|m| m == "AD"),
        "{agents}"
    );
}
