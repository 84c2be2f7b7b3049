//! Certificate renewal while the agent runs (in the manner of kubelet certificate rotation and
//! linkerd's `refresh_in`).
//!
//! Schedule: the lifetime of the current certificate runs from the later of its `not_before`
//! and the time the agent wrote it (controllers backdate `not_before` a few minutes for clock
//! skew, which must not eat a short lifetime) to its `not_after`. The agent renews at
//! [`RENEW_AT`] of it, ± [`JITTER`] (so a fleet enrolled together does not renew together), and
//! at once when less than [`LATE`] is left (e.g. after being stopped for a while).
//!
//! A renewal generates a fresh key and CSR and calls `AgentService.Renew` authenticated by the
//! current certificate. While a session is open the call rides that session's HTTP/2
//! connection ([`LiveChannel`]); only when none is open does it make its own mTLS connection
//! ([`channel::connect`]). It installs the new pair with
//! [`files::install_pair`]; the next connect uses it. Failures are retried with a backoff from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`] (never sleeping past half the remaining lifetime), logged
//! as warnings, and as errors once less than [`LOUD`] of the lifetime is left. An expired or
//! revoked agent is told, once per check, that it must re-enroll; the task keeps checking the
//! files, so a re-enrollment while the agent runs is picked up.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rand::Rng as _;
use syncfleet_proto::v1::{RenewRequest, agent_service_client::AgentServiceClient};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::identity::channel::{self, ChannelError, LiveChannel};
use crate::identity::files::{self, CertError, CertInfo, NewKey, Recovery};

/// Renew at this fraction of the certificate's lifetime ...
pub const RENEW_AT: f64 = 0.7;
/// ... plus or minus this fraction of the lifetime, chosen at random.
pub const JITTER: f64 = 0.1;
/// Renew at once when less than this fraction of the lifetime is left.
pub const LATE: f64 = 0.3;
/// Failures are logged at error level once less than this fraction of the lifetime is left.
pub const LOUD: f64 = 0.15;
/// First retry delay after a failed renewal.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay, and the re-check interval of an expired certificate.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Deadline of one Renew call.
const RENEW_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Key(#[from] CertError),
    #[error(transparent)]
    Connect(#[from] ChannelError),
    #[error("the controller refused the renewal: {}", status_line(.0))]
    Refused(tonic::Status),
    #[error("the controller did not answer the renewal within {}s", RENEW_TIMEOUT.as_secs())]
    Timeout,
    #[error(
        "the controller issued a certificate for {got:?}, not for this agent's identity {want:?}; keeping the current one"
    )]
    Identity { want: String, got: String },
}

/// `message (Code) (request ID)`.
pub fn status_line(s: &tonic::Status) -> String {
    let mut line = format!("{} ({:?})", s.message(), s.code());
    if let Some(id) = request_id(s) {
        line.push_str(&format!(" (request {id})"));
    }
    line
}

pub use syncfleet_proto::status::request_id;

/// Start of the lifetime used for scheduling: the later of `not_before` and `obtained` (when
/// the agent got the certificate), never after `not_after`.
pub fn lifetime_start(info: &CertInfo, obtained: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let start = match obtained {
        Some(o) if o > info.not_before => o,
        _ => info.not_before,
    };
    start.min(info.not_after)
}

/// How long to wait before renewing a certificate valid from `start` to `not_after`, at `now`.
/// `jitter` in `[-1, 1]` moves the target by up to ±[`JITTER`] of the lifetime. Zero when less
/// than [`LATE`] of the lifetime is left or the target has passed.
pub fn renew_delay(
    start: DateTime<Utc>,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
    jitter: f64,
) -> Duration {
    let lifetime = (not_after - start).as_seconds_f64();
    let left = (not_after - now).as_seconds_f64();
    if lifetime <= 0.0 || left < LATE * lifetime {
        return Duration::ZERO;
    }
    let fraction = RENEW_AT + JITTER * jitter.clamp(-1.0, 1.0);
    let target = lifetime * fraction - (now - start).as_seconds_f64();
    if target.is_finite() && target > 0.0 {
        Duration::from_secs_f64(target)
    } else {
        Duration::ZERO
    }
}

/// Retry delay after `failures` consecutive failures (≥ 1), with `left` of the lifetime
/// remaining: doubling from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`], but at most half of `left`
/// (and at least [`MIN_BACKOFF`]) so several attempts happen before expiry.
pub fn retry_delay(failures: u32, left: Duration) -> Duration {
    let exp = MIN_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(MAX_BACKOFF).min(left / 2).max(MIN_BACKOFF)
}

/// Finishes or undoes a renewal interrupted by a crash (see [`files::recover_pair`]); call
/// before the first connect.
pub fn prepare(cfg: &AgentConfig) {
    match files::recover_pair(&cfg.cert_path(), &cfg.key_path()) {
        Ok(Recovery::Clean) => {}
        Ok(Recovery::Completed) => tracing::warn!(
            cert = %cfg.cert_path().display(),
            "finished a certificate renewal interrupted by the last stop"
        ),
        Ok(Recovery::Discarded(files)) => tracing::warn!(
            files = ?files,
            "removed the leftovers of a certificate renewal interrupted by the last stop; keeping the current certificate"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot check for an interrupted certificate renewal"),
    }
}

/// One renewal: fresh key and CSR, `Renew` over mTLS with the current certificate — on the live
/// session's connection when there is one, else on a new one — new pair installed. Returns the
/// new certificate's details.
pub async fn renew_once(cfg: &AgentConfig, live: &LiveChannel) -> Result<CertInfo, RenewError> {
    let current = files::read_cert_info(&cfg.cert_path()).ok();
    let new_key = NewKey::generate(&cfg.name)?;
    let channel = match channel::live_channel(live) {
        Some(c) => c,
        None => channel::connect(cfg).await?,
    };
    let mut client = AgentServiceClient::new(channel);
    let call = client.renew(RenewRequest {
        csr_pem: new_key.csr_pem.clone(),
    });
    let resp = tokio::time::timeout(RENEW_TIMEOUT, call)
        .await
        .map_err(|_| RenewError::Timeout)?
        .map_err(RenewError::Refused)?
        .into_inner();
    let info = new_key.check_issued(&resp.cert_pem)?;
    if let Some(want) = current.and_then(|c| c.identity)
        && info.identity.as_deref() != Some(want.as_str())
    {
        return Err(RenewError::Identity {
            want,
            got: info.identity.unwrap_or_default(),
        });
    }
    files::install_pair(
        &cfg.cert_path(),
        &cfg.key_path(),
        &resp.cert_pem,
        &new_key.key_pem(),
    )?;
    Ok(info)
}

/// The current certificate and the start of its lifetime (see [`lifetime_start`]).
fn current(cfg: &AgentConfig) -> Result<(CertInfo, DateTime<Utc>), CertError> {
    let path = cfg.cert_path();
    let info = files::read_cert_info(&path)?;
    let written = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t: SystemTime| DateTime::<Utc>::from(t));
    let start = lifetime_start(&info, written);
    Ok((info, start))
}

fn secs(d: chrono::TimeDelta) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

/// Sleeps `d`; `false` when `shutdown` came first.
async fn sleep(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.cancelled() => false,
    }
}

/// How often a long wait (expired or revoked certificate) checks whether the certificate file
/// was replaced, e.g. by a re-enrollment while the agent runs.
const FILE_POLL: Duration = Duration::from_secs(2);

fn modified(cfg: &AgentConfig) -> Option<SystemTime> {
    std::fs::metadata(cfg.cert_path())
        .and_then(|m| m.modified())
        .ok()
}

/// Sleeps `d`, or less when the certificate file changes; `false` when `shutdown` came first.
async fn sleep_until_replaced(
    d: Duration,
    cfg: &AgentConfig,
    shutdown: &CancellationToken,
) -> bool {
    let before = modified(cfg);
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return true;
        }
        if !sleep(FILE_POLL.min(deadline - now), shutdown).await {
            return false;
        }
        if modified(cfg) != before {
            return true;
        }
    }
}

/// Keeps the agent's certificate renewed until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken, live: LiveChannel) {
    let mut failures: u32 = 0;
    // Set after a refusal no retry can fix (revoked): wait the longest before asking again.
    let mut refused = false;
    while !shutdown.is_cancelled() {
        let now = Utc::now();
        let (info, start) = match current(&cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent certificate to schedule its renewal");
                if !sleep(MAX_BACKOFF, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if let Some(msg) = files::expiry_message(&cfg.cert_path(), &info, now, &cfg) {
            // Renewal needs a valid certificate; wait for a re-enrollment (or a fixed clock).
            tracing::error!(
                event_id = crate::event_ids::EventId::CertificateNearExpiry.code(),
                "{msg}"
            );
            failures = 0;
            refused = false;
            if !sleep_until_replaced(MAX_BACKOFF, &cfg, &shutdown).await {
                return;
            }
            continue;
        }
        let left = secs(info.not_after - now);
        let wait = if refused {
            MAX_BACKOFF
        } else if failures == 0 {
            let jitter = rand::rng().random_range(-1.0..=1.0);
            let d = renew_delay(start, info.not_after, now, jitter);
            tracing::debug!(
                in_secs = d.as_secs(),
                not_after = %files::rfc3339(info.not_after),
                "next certificate renewal scheduled"
            );
            d
        } else {
            retry_delay(failures, left)
        };
        let slept = if refused {
            sleep_until_replaced(wait, &cfg, &shutdown).await
        } else {
            sleep(wait, &shutdown).await
        };
        if !slept {
            return;
        }
        if refused && current(&cfg).is_ok_and(|(c, _)| c != info) {
            // Replaced while waiting (re-enrolled): schedule from the new certificate.
            refused = false;
            continue;
        }
        let result = tokio::select! {
            r = renew_once(&cfg, &live) => r,
            () = shutdown.cancelled() => return,
        };
        match result {
            Ok(new) => {
                failures = 0;
                refused = false;
                tracing::info!(
                    identity = new.identity.as_deref().unwrap_or(""),
                    not_after = %files::rfc3339(new.not_after),
                    cert = %cfg.cert_path().display(),
                    "agent certificate renewed with a fresh key"
                );
            }
            Err(RenewError::Refused(s)) if files::is_revoked_status(&s) => {
                tracing::error!("{}", files::revoked_line(&status_line(&s), &cfg));
                refused = true;
            }
            Err(e) => {
                refused = false;
                failures = failures.saturating_add(1);
                let now = Utc::now();
                let lifetime = (info.not_after - start).as_seconds_f64();
                let left = (info.not_after - now).as_seconds_f64();
                let next = retry_delay(failures, secs(info.not_after - now));
                if left < LOUD * lifetime {
                    tracing::error!(
                        event_id = crate::event_ids::EventId::CertificateNearExpiry.code(),
                        error = %e,
                        attempts = failures,
                        retry_in_secs = next.as_secs(),
                        "agent certificate expires at {} (in {}s) and its renewal keeps failing; once it expires this agent cannot reconnect and must be re-enrolled with a new token",
                        files::rfc3339(info.not_after),
                        left.max(0.0).round()
                    );
                } else {
                    tracing::warn!(
                        error = %e,
                        attempts = failures,
                        retry_in_secs = next.as_secs(),
                        expires = %files::rfc3339(info.not_after),
                        "agent certificate renewal failed; retrying"
                    );
                }
            }
        }
    }
}

/// The renewal task of a running agent; aborted when dropped.
#[derive(Debug)]
pub struct RenewalTask(tokio::task::JoinHandle<()>);

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Recovers an interrupted renewal, then spawns [`run`]; keep the handle alive while the agent
/// runs.
pub fn spawn(cfg: &AgentConfig, shutdown: &CancellationToken, live: &LiveChannel) -> RenewalTask {
    prepare(cfg);
    RenewalTask(tokio::spawn(tracing::Instrument::in_current_span(run(
        cfg.clone(),
        shutdown.clone(),
        Arc::clone(live),
    ))))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn renews_at_seventy_percent_with_bounded_jitter() {
        let start = t0();
        let end = start + TimeDelta::hours(24);
        let h = |x: f64| Duration::from_secs_f64(x * 3600.0);
        assert_eq!(renew_delay(start, end, start, 0.0), h(24.0 * 0.7));
        assert_eq!(renew_delay(start, end, start, 1.0), h(24.0 * 0.8));
        assert_eq!(renew_delay(start, end, start, -1.0), h(24.0 * 0.6));
        // Out-of-range jitter is clamped.
        assert_eq!(renew_delay(start, end, start, 7.0), h(24.0 * 0.8));
        // Later in the lifetime the delay shrinks by the time already gone.
        let now = start + TimeDelta::hours(10);
        assert_eq!(renew_delay(start, end, now, 0.0), h(24.0 * 0.7 - 10.0));
        for j in [-1.0, -0.5, 0.0, 0.3, 1.0] {
            let d = renew_delay(start, end, start, j).as_secs_f64() / 3600.0;
            assert!((24.0 * 0.6..=24.0 * 0.8).contains(&d), "{j}: {d}");
        }
    }

    #[test]
    fn renews_at_once_when_late_or_past_the_target() {
        let start = t0();
        let end = start + TimeDelta::seconds(100);
        // 25 s left of 100: less than 30 %.
        assert_eq!(
            renew_delay(start, end, start + TimeDelta::seconds(75), -1.0),
            Duration::ZERO
        );
        // 35 s left but the jittered target (60 %) has passed.
        assert_eq!(
            renew_delay(start, end, start + TimeDelta::seconds(65), -1.0),
            Duration::ZERO
        );
        // Expired or zero lifetime.
        assert_eq!(
            renew_delay(start, end, end + TimeDelta::seconds(1), 0.0),
            Duration::ZERO
        );
        assert_eq!(renew_delay(end, end, start, 0.0), Duration::ZERO);
        // A 10-second certificate: renewed after 6-8 s.
        let end = start + TimeDelta::seconds(10);
        let d = renew_delay(start, end, start, 0.0);
        assert_eq!(d, Duration::from_secs(7));
    }

    #[test]
    fn lifetime_starts_when_the_certificate_was_obtained() {
        // Backdated by 5 minutes, valid for 10 s after issue: scheduling uses the issue time,
        // otherwise every renewal would be "late" and immediate.
        let issued = t0();
        let info = CertInfo {
            not_before: issued - TimeDelta::minutes(5),
            not_after: issued + TimeDelta::seconds(10),
            identity: None,
            public_key: Vec::new(),
        };
        let start = lifetime_start(&info, Some(issued));
        assert_eq!(start, issued);
        assert_eq!(
            renew_delay(start, info.not_after, issued, 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(lifetime_start(&info, None), info.not_before);
        assert_eq!(
            lifetime_start(&info, Some(issued - TimeDelta::hours(1))),
            info.not_before
        );
        assert_eq!(
            lifetime_start(&info, Some(issued + TimeDelta::hours(1))),
            info.not_after
        );
    }

    #[test]
    fn retries_back_off_within_the_remaining_lifetime() {
        let long = Duration::from_secs(86_400);
        assert_eq!(retry_delay(1, long), Duration::from_secs(1));
        assert_eq!(retry_delay(2, long), Duration::from_secs(2));
        assert_eq!(retry_delay(5, long), Duration::from_secs(16));
        assert_eq!(retry_delay(9, long), Duration::from_secs(256));
        assert_eq!(retry_delay(10, long), MAX_BACKOFF);
        assert_eq!(retry_delay(40, long), MAX_BACKOFF);
        // Close to expiry: at most half of what is left, at least a second.
        assert_eq!(
            retry_delay(10, Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(retry_delay(10, Duration::ZERO), MIN_BACKOFF);
    }

    mod fake {
        use std::sync::Mutex;

        use syncfleet_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
        use syncfleet_proto::v1::{AgentMessage, CertificateResponse, ControllerMessage};

        use super::*;
        use crate::identity::files::tests::{TestCa, server_cert, sign_agent};

        pub struct Svc {
            pub ca: TestCa,
            pub revoked: bool,
            pub renewals: Mutex<u32>,
        }

        #[tonic::async_trait]
        impl AgentService for Svc {
            type SessionStream = tokio_stream::Empty<Result<ControllerMessage, tonic::Status>>;

            async fn session(
                &self,
                _: tonic::Request<tonic::Streaming<AgentMessage>>,
            ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
                Err(tonic::Status::unimplemented("not in this test"))
            }

            async fn renew(
                &self,
                req: tonic::Request<RenewRequest>,
            ) -> Result<tonic::Response<CertificateResponse>, tonic::Status> {
                // mTLS: the caller presented its current certificate.
                let presented = req.peer_certs().map(|c| c.len()).unwrap_or(0);
                assert_eq!(presented, 1, "renewal must use the agent's certificate");
                if self.revoked {
                    return Err(tonic::Status::permission_denied("agent sync-01 is revoked"));
                }
                *self.renewals.lock().unwrap() += 1;
                let csr = req.into_inner().csr_pem;
                let cert = sign_agent(
                    &self.ca,
                    &csr,
                    "sync-01",
                    time::OffsetDateTime::now_utc(),
                    10,
                );
                Ok(tonic::Response::new(CertificateResponse {
                    cert_pem: cert,
                    ca_pem: self.ca.pem.clone(),
                    ..Default::default()
                }))
            }
        }

        /// An mTLS controller on 127.0.0.1 (client certificates of `ca` required).
        pub async fn serve(ca: TestCa, revoked: bool) -> u16 {
            let (leaf_pem, _, key_pem) = server_cert(&ca);
            let tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    format!("{leaf_pem}{}", ca.pem),
                    key_pem,
                ))
                .client_ca_root(tonic::transport::Certificate::from_pem(ca.pem.clone()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let svc = AgentServiceServer::new(Svc {
                ca,
                revoked,
                renewals: Mutex::new(0),
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    .tls_config(tls)
                    .unwrap()
                    .add_service(svc)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            port
        }
    }

    /// An agent configuration in `dir` with a fresh 10-second certificate from `ca`.
    fn enrolled_agent(dir: &std::path::Path, ca: &files::tests::TestCa, port: u16) -> AgentConfig {
        let cfg = AgentConfig {
            name: "sync-01".into(),
            controller: format!("https://127.0.0.1:{port}"),
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let key = NewKey::generate("sync-01").unwrap();
        let cert = files::tests::sign_agent(
            ca,
            &key.csr_pem,
            "sync-01",
            time::OffsetDateTime::now_utc(),
            10,
        );
        files::install_pair(&cfg.cert_path(), &cfg.key_path(), &cert, &key.key_pem()).unwrap();
        std::fs::write(cfg.ca_cert_path(), &ca.pem).unwrap();
        cfg
    }

    #[tokio::test]
    async fn renewal_installs_a_fresh_key_and_certificate() {
        let ca = files::tests::test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let cfg = enrolled_agent(dir.path(), &ca, 0);
        let port = fake::serve(ca, false).await;
        let cfg = AgentConfig {
            controller: format!("https://127.0.0.1:{port}"),
            ..cfg
        };
        let old_cert = std::fs::read_to_string(cfg.cert_path()).unwrap();
        let old_key = std::fs::read_to_string(cfg.key_path()).unwrap();
        let info = renew_once(&cfg, &LiveChannel::default()).await.unwrap();
        assert_eq!(
            info.identity.as_deref(),
            Some("spiffe://test/agent/sync-01")
        );
        let new_cert = std::fs::read_to_string(cfg.cert_path()).unwrap();
        let new_key = std::fs::read_to_string(cfg.key_path()).unwrap();
        assert_ne!(new_cert, old_cert);
        assert_ne!(new_key, old_key, "every renewal uses a fresh key");
        assert!(files::key_matches_cert(&new_key, new_cert.as_bytes()));
        // The new pair works for the next renewal (and the next session).
        renew_once(&cfg, &LiveChannel::default()).await.unwrap();
    }

    #[tokio::test]
    async fn a_revoked_agent_is_told_so() {
        let ca = files::tests::test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let cfg = enrolled_agent(dir.path(), &ca, 0);
        let port = fake::serve(ca, true).await;
        let cfg = AgentConfig {
            controller: format!("https://127.0.0.1:{port}"),
            ..cfg
        };
        let before = std::fs::read_to_string(cfg.cert_path()).unwrap();
        match renew_once(&cfg, &LiveChannel::default()).await {
            Err(RenewError::Refused(s)) => {
                assert!(files::is_revoked_status(&s));
                let line = files::revoked_line(&status_line(&s), &cfg);
                assert!(line.contains("re-enroll"), "{line}");
            }
            other => panic!("expected a revoked refusal, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(cfg.cert_path()).unwrap(), before);
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_certificate_near_expiry_whose_renewal_fails_is_logged_with_its_event_id() {
        use crate::event_ids::{EventId, capture};
        let (events, _guard) = capture::start();
        let ca = files::tests::test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            name: "sync-01".into(),
            controller: format!("https://127.0.0.1:{}", closed_port()),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        // Obtained 940 s ago and valid for 1000 s: 6 % of its lifetime is left.
        let key = NewKey::generate("sync-01").unwrap();
        let from = time::OffsetDateTime::now_utc() - time::Duration::seconds(940);
        let cert = files::tests::sign_agent(&ca, &key.csr_pem, "sync-01", from, 1000);
        files::install_pair(&cfg.cert_path(), &cfg.key_path(), &cert, &key.key_pem()).unwrap();
        std::fs::write(cfg.ca_cert_path(), &ca.pem).unwrap();
        std::fs::File::options()
            .write(true)
            .open(cfg.cert_path())
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(940))
            .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(cfg, shutdown.clone(), LiveChannel::default()));
        for _ in 0..1000 {
            if !events.with_id(EventId::CertificateNearExpiry).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let seen = events.with_id(EventId::CertificateNearExpiry);
        assert!(!seen.is_empty(), "{:?}", events.all());
        assert_eq!(seen[0].level, tracing::Level::ERROR);
        assert!(
            seen[0].message.contains("renewal keeps failing"),
            "{}",
            seen[0].message
        );
    }

    #[test]
    fn request_ids_are_shown() {
        let mut s = tonic::Status::permission_denied("agent sync-01 is revoked");
        assert_eq!(
            status_line(&s),
            "agent sync-01 is revoked (PermissionDenied)"
        );
        s.metadata_mut()
            .insert("x-request-id", "r-123".parse().unwrap());
        assert_eq!(
            status_line(&s),
            "agent sync-01 is revoked (PermissionDenied) (request r-123)"
        );
    }
}
