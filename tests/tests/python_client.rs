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

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Fleet;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn venv_python() -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let venv = target.join("py-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".grpc-ready");
    if !ready.exists() {
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for this test");
        assert!(st.success(), "python3 -m venv failed");
        let st = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "grpcio", "grpcio-tools"])
            .status()
            .unwrap();
        assert!(st.success(), "pip install grpcio grpcio-tools failed");
        std::fs::write(&ready, "").unwrap();
    }
    python
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
