//! Driver settings and declared run profiles.

use std::time::Duration;

use crate::engine::wmi::fake::*;
use crate::engine::wmi::*;
use crate::engine::*;

#[test]
fn config_defaults_and_toml() {
    let c: WmiConfig = toml::from_str("").unwrap();
    assert_eq!(c, WmiConfig::default());
    assert_eq!(c.poll_interval, Duration::from_secs(2));
    assert_eq!(c.completing_poll, Duration::from_secs(5));
    assert_eq!(c.post_run_delay, Duration::from_secs(2));
    c.validate().unwrap();

    let c: WmiConfig = toml::from_str(
        "poll_interval = \"1s\"\nblocking_timeout = \"2m\"\n\
         [[profiles]]\nma = \"AD\"\nname = \"Delta Import and Sync\"\nstep_types = [\"delta-import\"]\n",
    )
    .unwrap();
    assert_eq!(c.poll_interval, Duration::from_secs(1));
    assert_eq!(c.blocking_timeout, Duration::from_secs(120));
    c.validate().unwrap();
    let p = c.profiles_for("AD").unwrap();
    assert!(
        p[0].steps[0].is_sync(),
        "combined import+sync is sync-class"
    );

    assert!(toml::from_str::<WmiConfig>("pol_interval = \"1s\"").is_err());
    assert!(
        toml::from_str::<WmiConfig>("[[profiles]]\nma=\"a\"\nname=\"b\"\nstep_types=[]\nx=1")
            .is_err()
    );
}

#[test]
fn config_validation() {
    let bad = |f: fn(&mut WmiConfig)| {
        let mut c = WmiConfig::default();
        f(&mut c);
        matches!(c.validate(), Err(EngineError::Config(_)))
    };
    assert!(bad(|c| c.poll_interval = Duration::ZERO));
    assert!(bad(|c| c.completing_poll = Duration::from_millis(1)));
    assert!(bad(|c| c.blocking_timeout = Duration::ZERO));
    assert!(bad(|c| c.service_name = " ".into()));
    let decl = |steps: &[&str]| ProfileDecl {
        ma: "AD".into(),
        name: "P".into(),
        step_types: steps.iter().map(|s| s.to_string()).collect(),
    };
    assert!(bad(|c| c.profiles = vec![ProfileDecl {
        ma: "AD".into(),
        name: "P".into(),
        step_types: vec!["sync".into()],
    }]));
    assert!(bad(|c| c.profiles = vec![ProfileDecl {
        ma: "AD".into(),
        name: "P".into(),
        step_types: vec![],
    }]));
    let c = WmiConfig {
        profiles: vec![decl(&["export"]), decl(&["export"])],
        ..WmiConfig::default()
    };
    assert!(c.validate().is_err(), "duplicate");
    assert!(
        WmiEngine::new(
            FakeWmi::new(),
            WmiConfig {
                poll_interval: Duration::ZERO,
                ..WmiConfig::default()
            }
        )
        .is_err()
    );
}

#[test]
fn step_specs() {
    let s = parse_step_spec("apply-rules/reevaluate-flow-connectors").unwrap();
    assert_eq!(
        (
            s.step_type.as_str(),
            s.subtype.as_str(),
            s.partition.as_str()
        ),
        ("apply-rules", "reevaluate-flow-connectors", "")
    );
    let s = parse_step_spec(" export @ default").unwrap();
    assert_eq!(
        (s.step_type.as_str(), s.partition.as_str()),
        ("export", "default")
    );
    let s = parse_step_spec("full-import/to-file, resume-from-file, to-cs").unwrap();
    assert_eq!(s.subtype, "to-file, resume-from-file, to-cs");
    assert!(
        parse_step_spec("full-import-reevaluate-rules")
            .unwrap()
            .is_sync()
    );
    assert!(parse_step_spec("Delta Import").is_err());
    assert!(parse_step_spec("").is_err());
}

#[test]
fn discovery_settings() {
    let c = WmiConfig::default();
    assert!(c.discover, "discovery is on by default");
    assert_eq!(c.database_server, None);
    assert_eq!(c.database_name, None);

    let c: WmiConfig = toml::from_str(
        "discover = false\ndatabase_server = 'sql01\\MIM'\ndatabase_name = \"FIMSync\"\n",
    )
    .unwrap();
    assert!(!c.discover);
    assert_eq!(c.database_server.as_deref(), Some("sql01\\MIM"));
    assert_eq!(c.database_name.as_deref(), Some("FIMSync"));
    c.validate().unwrap();

    let c: WmiConfig = toml::from_str("database_server = \" \"").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("database_server is empty"), "{e}");
    assert!(toml::from_str::<WmiConfig>("discovery = true").is_err());
}
