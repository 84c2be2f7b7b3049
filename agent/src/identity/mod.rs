//! The agent's identity towards the controller: its certificate and key on disk ([`files`]),
//! joining the fleet with a one-time token ([`enroll`]), renewing the certificate while the agent
//! runs ([`renew`]) and the mTLS channel made from them ([`channel`]).
//!
//! Nothing here depends on the session: the session uses these modules, never the other way.

pub mod channel;
pub mod enroll;
pub mod files;
pub mod renew;
