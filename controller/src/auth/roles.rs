//! Roles and permissions, and the one table saying what each RPC needs.

use super::AuthError;
use super::identity::{PeerIdentity, Role};

/// What an operator may do (carried in the operator's certificate, so it cannot be changed
/// without issuing a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OperatorRole {
    /// Read everything.
    Viewer,
    /// Also run, cancel, approve, pause, resume and drain.
    Operator,
    /// Also apply and delete fleet files, create tokens and operators, revoke agents and operators.
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Operator => "operator",
            OperatorRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(OperatorRole::Viewer),
            "operator" => Some(OperatorRole::Operator),
            "admin" => Some(OperatorRole::Admin),
            _ => None,
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read anything.
    Read,
    /// Run, cancel, approve, pause, resume, drain.
    Operate,
    /// Apply/delete fleet files, tokens, operators, revocation.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Admin => "admin",
        }
    }

    pub fn needs(self) -> OperatorRole {
        match self {
            Permission::Read => OperatorRole::Viewer,
            Permission::Operate => OperatorRole::Operator,
            Permission::Admin => OperatorRole::Admin,
        }
    }
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Operators whose role grants this permission ([`permits`]).
    Operator(Permission),
    /// Agents, as themselves.
    Agent,
    /// Anyone, without a client certificate (enrollment).
    Anyone,
}

/// What every syncfleet RPC needs: `(service, method, access)`, services by their full proto
/// name. Handlers pass only their method name to the API's authorization layer, which reads the
/// permission here ([`permits`]), so the rules live in one place.
pub const RPC_ACCESS: &[(&str, &str, Access)] = &[
    (FLEET, "ListAgents", Access::Operator(Permission::Read)),
    (FLEET, "GetAgent", Access::Operator(Permission::Read)),
    (FLEET, "StartRun", Access::Operator(Permission::Operate)),
    (FLEET, "StartRuns", Access::Operator(Permission::Operate)),
    (FLEET, "GetRun", Access::Operator(Permission::Read)),
    (FLEET, "ListRuns", Access::Operator(Permission::Read)),
    (FLEET, "WatchRuns", Access::Operator(Permission::Read)),
    (FLEET, "CancelRun", Access::Operator(Permission::Operate)),
    (FLEET, "ApproveRun", Access::Operator(Permission::Operate)),
    (FLEET, "RejectRun", Access::Operator(Permission::Operate)),
    (FLEET, "Apply", Access::Operator(Permission::Admin)),
    (FLEET, "GetDocuments", Access::Operator(Permission::Read)),
    (FLEET, "DeleteDocument", Access::Operator(Permission::Admin)),
    (FLEET, "GetSchedule", Access::Operator(Permission::Read)),
    (
        FLEET,
        "PauseSchedule",
        Access::Operator(Permission::Operate),
    ),
    (
        FLEET,
        "ResumeSchedule",
        Access::Operator(Permission::Operate),
    ),
    (FLEET, "DrainAgent", Access::Operator(Permission::Operate)),
    (FLEET, "ResumeAgent", Access::Operator(Permission::Operate)),
    (FLEET, "PauseFleet", Access::Operator(Permission::Operate)),
    (FLEET, "ResumeFleet", Access::Operator(Permission::Operate)),
    (FLEET, "GetFleetStatus", Access::Operator(Permission::Read)),
    (FLEET, "ListNotifiers", Access::Operator(Permission::Read)),
    (FLEET, "GetNotifier", Access::Operator(Permission::Read)),
    (FLEET, "CreateToken", Access::Operator(Permission::Admin)),
    (FLEET, "RevokeAgent", Access::Operator(Permission::Admin)),
    (FLEET, "CreateOperator", Access::Operator(Permission::Admin)),
    (FLEET, "ListOperators", Access::Operator(Permission::Read)),
    (FLEET, "RevokeOperator", Access::Operator(Permission::Admin)),
    (FLEET, "GetVersion", Access::Operator(Permission::Read)),
    (FLEET, "ListAudit", Access::Operator(Permission::Read)),
    (
        FLEET,
        "CreateConsoleLogin",
        Access::Operator(Permission::Read),
    ),
    (AGENT, "Session", Access::Agent),
    (AGENT, "Renew", Access::Agent),
    (ENROLL, "Enroll", Access::Anyone),
];

const FLEET: &str = "syncfleet.v1.FleetService";
const AGENT: &str = "syncfleet.v1.AgentService";
const ENROLL: &str = "syncfleet.v1.EnrollService";

/// The permission an operator needs for `FleetService` method `rpc`; `None` when the table has
/// no operator entry for it.
pub fn operator_permission(rpc: &str) -> Option<Permission> {
    RPC_ACCESS
        .iter()
        .find_map(|(service, method, access)| match access {
            Access::Operator(p) if *service == FLEET && *method == rpc => Some(*p),
            _ => None,
        })
}

/// Whether `who` may call `FleetService` method `rpc`: an operator whose role grants the
/// permission [`RPC_ACCESS`] gives it. The error names the missing permission (or, for a method
/// without an operator entry, the gap in the table).
pub fn permits(who: &PeerIdentity, rpc: &str) -> Result<(), AuthError> {
    let permission = operator_permission(rpc).ok_or_else(|| AuthError::NotInPermissionTable {
        rpc: rpc.to_string(),
    })?;
    match (who.role, who.operator_role) {
        (Role::Operator, Some(r)) if r >= permission.needs() => Ok(()),
        (Role::Operator, role) => Err(AuthError::RoleTooLow {
            who: who.to_string(),
            role,
            rpc: rpc.to_string(),
            permission,
        }),
        (Role::Agent, _) => Err(AuthError::AgentNotOperator {
            who: who.to_string(),
            rpc: rpc.to_string(),
            permission,
        }),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    /// Every method of every syncfleet service, as the generated descriptors list them, has
    /// exactly one entry in the table, and the table names no method that does not exist.
    #[test]
    fn every_rpc_has_one_table_entry() {
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
            syncfleet_proto::FILE_DESCRIPTOR_SET,
        )
        .unwrap();
        let mut rpcs = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        for service in [FLEET, AGENT, ENROLL] {
            assert!(
                rpcs.iter().any(|r| r.starts_with(&format!("{service}/"))),
                "{service} is not in the descriptors"
            );
        }
        let mut table: Vec<String> = RPC_ACCESS
            .iter()
            .map(|(service, method, _)| format!("{service}/{method}"))
            .collect();
        rpcs.sort();
        table.sort();
        assert_eq!(rpcs, table);
        assert_eq!(operator_permission("Apply"), Some(Permission::Admin));
        assert_eq!(operator_permission("Enroll"), None);
    }

    fn peer(role: Role, name: &str, operator_role: Option<OperatorRole>) -> PeerIdentity {
        PeerIdentity {
            role,
            name: name.into(),
            operator_role,
            issued_ms: None,
        }
    }

    /// Roles are cumulative, and each refusal names the permission the RPC needs.
    #[test]
    fn permits_follows_the_table_and_names_the_missing_permission() {
        let viewer = peer(Role::Operator, "vic", Some(OperatorRole::Viewer));
        let admin = peer(Role::Operator, "ada", Some(OperatorRole::Admin));
        let agent = peer(Role::Agent, "sync-01", None);
        assert!(permits(&viewer, "ListRuns").is_ok());
        assert!(permits(&admin, "StartRun").is_ok());
        assert!(permits(&admin, "RevokeAgent").is_ok());
        let e = permits(&viewer, "StartRun").unwrap_err();
        assert!(matches!(e, AuthError::RoleTooLow { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "operator/vic has role viewer; StartRun needs the 'operate' permission (role operator or higher)"
        );
        assert_eq!(
            permits(&peer(Role::Operator, "x", None), "Apply")
                .unwrap_err()
                .to_string(),
            "operator/x has role none; Apply needs the 'admin' permission (role admin or higher)"
        );
        assert_eq!(
            permits(&agent, "ListAgents").unwrap_err().to_string(),
            "agent/sync-01 is an agent; ListAgents is for operators ('read' permission)"
        );
        let e = permits(&admin, "Renew").unwrap_err();
        assert!(matches!(e, AuthError::NotInPermissionTable { .. }), "{e:?}");
        assert_eq!(e.to_string(), "Renew has no entry in the permission table");
    }
}
