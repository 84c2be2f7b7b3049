//! The agent's own check of commands against its engine's inventory: a `StartRun`
//! naming a management agent or run profile the engine does not have is refused before it is
//! journaled, whatever the controller believes. This keeps a compromised or confused controller
//! from driving the engine with names the operator never saw in `syncfleet agents show`.

use syncfleet_proto::v1;

use crate::engine::MaInfo;

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// Why run profile `profile` of MA `ma` cannot run on an engine with `inventory`, or `None`
/// when it can.
pub fn step_problem(ma_name: &str, profile: &str, inventory: &[MaInfo]) -> Option<String> {
    let Some(ma) = inventory.iter().find(|m| m.name == ma_name) else {
        return Some(format!(
            "unknown management agent \"{}\" (this server has: {})",
            ma_name,
            list(inventory.iter().map(|m| m.name.as_str()))
        ));
    };
    if ma.profile(profile).is_none() {
        return Some(format!(
            "management agent \"{}\" has no run profile \"{}\" (it has: {})",
            ma.name,
            profile,
            list(ma.run_profiles.iter().map(|p| p.name.as_str()))
        ));
    }
    None
}

/// Checks every step of `start` (ad-hoc steps and the steps of every stage) against
/// `inventory`; the error lists each distinct problem, separated by `; `.
pub fn check_start_run(start: &v1::StartRun, inventory: &[MaInfo]) -> Result<(), String> {
    let steps = start
        .steps
        .iter()
        .map(|s| (s.ma.as_str(), s.profile.as_str()))
        .chain(
            start
                .stages
                .iter()
                .flat_map(|s| s.steps.iter())
                .map(|s| (s.ma.as_str(), s.profile.as_str())),
        );
    let mut problems: Vec<String> = Vec::new();
    for (ma, profile) in steps {
        if let Some(p) = step_problem(ma, profile, inventory)
            && !problems.contains(&p)
        {
            problems.push(p);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::sim::{SimConfig, SimEngine};
    use crate::executor::{Executor, ExecutorOptions};
    use crate::journal::Journal;

    fn step(ma: &str, profile: &str) -> v1::StepSpec {
        v1::StepSpec {
            ma: ma.into(),
            profile: profile.into(),
        }
    }

    fn start(
        run_id: &str,
        steps: Vec<v1::StepSpec>,
        stages: Vec<Vec<v1::StepSpec>>,
    ) -> v1::StartRun {
        v1::StartRun {
            run_id: run_id.into(),
            steps,
            stages: stages
                .into_iter()
                .map(|steps| v1::PlanStage {
                    steps: steps
                        .into_iter()
                        .map(|s| v1::PlanStep {
                            ma: s.ma,
                            profile: s.profile,
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn executor(dir: &std::path::Path) -> (Arc<Journal>, Arc<Executor>, Vec<MaInfo>) {
        let engine = Arc::new(SimEngine::try_new(SimConfig::example(0)).unwrap());
        let journal = Arc::new(Journal::open(&dir.join("agent.db")).unwrap());
        let exec = Arc::new(Executor::new(
            engine,
            Arc::clone(&journal),
            Arc::new(tokio::sync::Notify::new()),
            ExecutorOptions::default(),
        ));
        let inv = exec.refresh_inventory().await.unwrap();
        (journal, exec, inv)
    }

    #[tokio::test]
    async fn unknown_mas_and_profiles_are_named_with_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, inv) = executor(dir.path()).await;
        let ma = &inv[0];
        let profile = &ma.run_profiles[0].name;
        let mas = inv
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let profiles = ma
            .run_profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");

        assert_eq!(
            check_start_run(&start("r", vec![step(&ma.name, profile)], vec![]), &inv),
            Ok(())
        );
        assert_eq!(
            check_start_run(&start("r", vec![step("Nope", profile)], vec![]), &inv),
            Err(format!(
                "unknown management agent \"Nope\" (this server has: {mas})"
            ))
        );
        // Stages are checked too; every distinct problem is listed once.
        let bad = start(
            "r",
            vec![],
            vec![
                vec![step(&ma.name, profile)],
                vec![
                    step(&ma.name, "Bogus"),
                    step(&ma.name, "Bogus"),
                    step("X", "Y"),
                ],
            ],
        );
        assert_eq!(
            check_start_run(&bad, &inv),
            Err(format!(
                "management agent \"{}\" has no run profile \"Bogus\" (it has: {profiles}); unknown management agent \"X\" (this server has: {mas})",
                ma.name
            ))
        );
        assert_eq!(
            check_start_run(&start("r", vec![step("AD", "x")], vec![]), &[]),
            Err("unknown management agent \"AD\" (this server has: none)".into())
        );
    }

    #[tokio::test]
    async fn the_session_refuses_unknown_steps_before_journaling() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, exec, inv) = executor(dir.path()).await;
        let ma = &inv[0];
        let cmd = |run: v1::StartRun| v1::Command {
            command_id: format!("c-{}", run.run_id),
            kind: Some(v1::command::Kind::StartRun(run)),
        };
        let ack = crate::session::handle_command(
            cmd(start("r-bad", vec![step(&ma.name, "Bogus")], vec![])),
            &journal,
            &exec,
        );
        assert!(!ack.accepted);
        assert!(
            ack.reason.starts_with(&format!(
                "management agent \"{}\" has no run profile \"Bogus\"",
                ma.name
            )),
            "{}",
            ack.reason
        );
        assert!(exec.runs_in_flight().is_empty());
        // Not journaled: the same run id is still new once it names real steps.
        let ack = crate::session::handle_command(
            cmd(start(
                "r-bad",
                vec![step(&ma.name, &ma.run_profiles[0].name)],
                vec![],
            )),
            &journal,
            &exec,
        );
        assert!(ack.accepted, "{}", ack.reason);
        assert!(!ack.duplicate);
        exec.cancel("r-bad");
    }
}
