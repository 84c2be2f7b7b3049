//! The open-file limit of a whole fleet in one process (`dev --agents N`).
//!
//! Each in-process agent holds about [`FILES_PER_AGENT`] descriptors (its connection to the
//! controller and the controller's end of it, its journal's SQLite database, write-ahead log and
//! shared memory), so a few thousand agents need more than the 1,024 a shell often allows. The
//! soft limit is raised towards the hard one, as servers with many connections do; when even
//! the hard limit is too low, `dev` refuses with the numbers and the fix instead of failing
//! half-way through with "too many open files".

/// Descriptors one in-process agent holds (see the module doc), with some headroom.
pub const FILES_PER_AGENT: u64 = 8;
/// Descriptors the controller needs besides its agents (listeners, store, logs, CLI
/// connections, the console).
pub const FILES_BASE: u64 = 512;

/// The open-file limit cannot hold the fleet.
#[derive(Debug, thiserror::Error)]
#[error(
    "{agents} in-process agents need about {needed} open files, but this process may open at most {allowed} (`ulimit -Hn`); raise the limit (e.g. `ulimit -n {needed}` as root, or LimitNOFILE= in a unit) or run fewer agents"
)]
pub struct TooFewFiles {
    pub agents: usize,
    pub needed: u64,
    pub allowed: u64,
}

/// Descriptors `agents` in-process agents and their controller need.
pub fn needed(agents: usize) -> u64 {
    FILES_BASE + FILES_PER_AGENT * agents as u64
}

/// Make sure this process may open [`needed`]`(agents)` files, raising the soft limit up to
/// the hard limit if needed. Returns the soft limit now in force.
#[cfg(unix)]
pub fn ensure_for(agents: usize) -> Result<u64, TooFewFiles> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = needed(agents);
    let current = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let soft = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if soft >= need {
        return Ok(soft);
    }
    if hard < need {
        return Err(TooFewFiles {
            agents,
            needed: need,
            allowed: hard,
        });
    }
    let raised = Rlimit {
        current: Some(need),
        maximum: current.maximum,
    };
    setrlimit(Resource::Nofile, raised).map_err(|_| TooFewFiles {
        agents,
        needed: need,
        allowed: soft,
    })?;
    Ok(need)
}

/// Other systems have no such per-process limit to raise here.
#[cfg(not(unix))]
pub fn ensure_for(_agents: usize) -> Result<u64, TooFewFiles> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_grows_with_the_agents() {
        assert_eq!(needed(0), FILES_BASE);
        assert_eq!(needed(5000), FILES_BASE + 5000 * FILES_PER_AGENT);
    }

    #[cfg(unix)]
    #[test]
    fn a_fleet_within_the_hard_limit_raises_the_soft_limit_and_one_beyond_it_is_refused() {
        use rustix::process::{Resource, getrlimit};
        let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
        let agents = usize::try_from((hard.min(4096) - FILES_BASE) / FILES_PER_AGENT).unwrap();
        let soft = ensure_for(agents).unwrap();
        assert!(soft >= needed(agents));
        if hard < u64::MAX / 2 {
            let too_many = usize::try_from(hard / FILES_PER_AGENT + 1).unwrap();
            let e = ensure_for(too_many).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("ulimit -n"), "{msg}");
            assert!(msg.contains(&hard.to_string()), "{msg}");
        }
    }
}
