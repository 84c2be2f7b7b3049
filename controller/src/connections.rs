//! Admission of gRPC connections: what a client may hold open.
//!
//! - **Caps**: at most `max_connections` connections at once, and `max_connections_per_address`
//!   from one IP address. A connection over a cap is closed as soon as it is accepted, before
//!   any TLS work ([`Admission`]).
//! - **Handshake deadline**: TLS must complete within `tls_handshake_timeout` (applied by the
//!   accept loop in [`crate::server`]).
//! - **Idle limit without a certificate**: a client without a client certificate of the fleet
//!   CA can only check health and enrol, each a short request. Its connection is closed once it
//!   has had no request in progress for `unauthenticated_idle_timeout` ([`GuardedConn`],
//!   [`ActivityLayer`]). Connections with a fleet certificate (agents' sessions, operators)
//!   are not limited this way.
//!
//! Refusals and closes are logged at most [`LOG_LINES_PER_MINUTE`] times a minute per kind,
//! with the number of lines left out, so a flood cannot flood the log.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::config::ControllerConfig;

/// Log lines of one kind (refused, closed idle, handshake timeout) written per minute at most.
pub const LOG_LINES_PER_MINUTE: u32 = 10;

/// Connection limits of the gRPC listener (from [`ControllerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    pub tls_handshake_timeout: Duration,
    pub unauthenticated_idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(cfg: &ControllerConfig) -> Self {
        Self {
            max_connections: cfg.max_connections,
            max_connections_per_address: cfg.max_connections_per_address,
            tls_handshake_timeout: cfg.tls_handshake_timeout,
            unauthenticated_idle_timeout: cfg.unauthenticated_idle_timeout,
        }
    }
}

/// Why a connection was not admitted; the text names the setting that caps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{open} connections are open in total (max_connections = {max})")]
    Total { open: u32, max: u32 },
    #[error("{open} connections from this address are open (max_connections_per_address = {max})")]
    PerAddress { open: u32, max: u32 },
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// Counts open connections, in total and per source address, against [`Limits`].
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counters stay consistent even if a holder panicked: every update is one statement.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a place for a connection from `ip`, or say which cap it hits.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut c = self.counts();
        if c.total >= self.limits.max_connections {
            return Err(Refused::Total {
                open: c.total,
                max: self.limits.max_connections,
            });
        }
        let from_ip = c.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_connections_per_address {
            return Err(Refused::PerAddress {
                open: from_ip,
                max: self.limits.max_connections_per_address,
            });
        }
        c.total += 1;
        c.per_address.insert(ip, from_ip + 1);
        Ok(Slot {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now (in total).
    pub fn open(&self) -> u32 {
        self.counts().total
    }
}

/// The place of one admitted connection; freed when dropped (the connection ended).
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.ip);
            }
        }
    }
}

/// Lets at most `per_minute` log lines of one kind through per minute.
#[derive(Debug)]
pub struct LogLimiter {
    per_minute: u32,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(left_out)` when a line may be logged now, with the number of lines left out since
    /// the previous one; `None` when this line must be left out.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(s.0) >= Duration::from_secs(60) {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 >= self.per_minute {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

/// Requests on one connection: how many are in progress, and when the last one started or
/// ended.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<(u32, Instant)>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, Instant::now())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a request until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.lock();
        s.0 += 1;
        s.1 = Instant::now();
        RequestGuard(Arc::clone(self))
    }

    /// Since when the connection has had no request in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let s = self.lock();
        (s.0 == 0).then_some(s.1)
    }
}

/// A request in progress (until its response body is done or dropped).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.0 = s.0.saturating_sub(1);
        s.1 = Instant::now();
    }
}

/// The idle limit of one connection without a client certificate.
struct IdleWatch {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    peer: SocketAddr,
    log: Arc<LogLimiter>,
    expired: bool,
}

impl IdleWatch {
    /// Ready once the connection has been idle for `timeout`. Registers a timer wake-up
    /// otherwise: the server polls reads on every connection all the time, so the check runs
    /// when the timer fires.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.expired {
            return Poll::Ready(());
        }
        loop {
            let deadline = match self.activity.idle_since() {
                Some(since) => since + self.timeout,
                // Busy: look again one timeout from now.
                None => Instant::now() + self.timeout,
            };
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self
                .activity
                .idle_since()
                .is_some_and(|since| since + self.timeout <= Instant::now())
            {
                self.expired = true;
                if let Some(left_out) = self.log.admit() {
                    tracing::info!(
                        peer = %self.peer,
                        left_out,
                        "closed an idle connection without a client certificate from {} after {} without a request (unauthenticated_idle_timeout)",
                        self.peer,
                        humantime::format_duration(self.timeout)
                    );
                }
                return Poll::Ready(());
            }
        }
    }
}

fn idle_closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "idle connection without a client certificate closed",
    )
}

/// An admitted TLS connection: holds its [`Slot`] and, without a client certificate, enforces
/// the idle limit (reads and writes fail once it passed, which ends the connection).
pub struct GuardedConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    idle: Option<IdleWatch>,
    _slot: Slot,
}

impl std::fmt::Debug for GuardedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedConn")
            .field("authenticated", &self.idle.is_none())
            .finish_non_exhaustive()
    }
}

impl GuardedConn {
    /// Wrap a completed handshake. Connections that presented no client certificate get the
    /// idle limit of `limits`.
    pub fn new(
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        slot: Slot,
        limits: Limits,
        peer: SocketAddr,
        idle_log: Arc<LogLimiter>,
    ) -> Self {
        let authenticated = tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        let idle = (!authenticated).then(|| {
            let timeout = limits.unauthenticated_idle_timeout;
            IdleWatch {
                activity: Activity::new(),
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                peer,
                log: idle_log,
                expired: false,
            }
        });
        Self {
            inner: tls,
            idle,
            _slot: slot,
        }
    }

    fn expired(&self) -> bool {
        self.idle.as_ref().is_some_and(|w| w.expired)
    }
}

impl AsyncRead for GuardedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(w) = this.idle.as_mut()
            && w.poll_expired(cx).is_ready()
        {
            return Poll::Ready(Err(idle_closed()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired() {
            return Poll::Ready(Err(idle_closed()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired() {
            return Poll::Ready(Err(idle_closed()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What tonic attaches to every request of a [`GuardedConn`]. [`ActivityLayer`] turns it back
/// into the [`TlsConnectInfo`] that `Request::remote_addr` and `Request::peer_certs` read.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tls: TlsConnectInfo<TcpConnectInfo>,
    activity: Option<Arc<Activity>>,
}

impl Connected for GuardedConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tls: self.inner.connect_info(),
            activity: self.idle.as_ref().map(|w| Arc::clone(&w.activity)),
        }
    }
}

/// Tower layer of the gRPC server: exposes the TLS connection info to handlers and counts the
/// requests in progress on connections with an idle limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for ActivityService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let guard = match req.extensions().get::<ConnInfo>().cloned() {
            Some(info) => {
                let guard = info.activity.as_ref().map(Activity::begin);
                req.extensions_mut().insert(info.tls);
                guard
            }
            None => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in progress until it is done or dropped
/// (a streaming response is a request in progress).
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: Option<RequestGuard>,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_address: per,
            tls_handshake_timeout: Duration::from_secs(10),
            unauthenticated_idle_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn caps_count_open_connections_and_free_them_on_drop() {
        let a = Admission::new(limits(3, 2));
        let ip1: IpAddr = [10, 0, 0, 1].into();
        let ip2: IpAddr = [10, 0, 0, 2].into();
        let s1 = a.admit(ip1).unwrap();
        let _s2 = a.admit(ip1).unwrap();
        assert_eq!(
            a.admit(ip1).unwrap_err(),
            Refused::PerAddress { open: 2, max: 2 }
        );
        let _s3 = a.admit(ip2).unwrap();
        assert_eq!(
            a.admit(ip2).unwrap_err(),
            Refused::Total { open: 3, max: 3 }
        );
        drop(s1);
        assert_eq!(a.open(), 2);
        let _s4 = a.admit(ip1).unwrap();
        assert_eq!(a.open(), 3);
        let msg = Refused::PerAddress { open: 2, max: 2 }.to_string();
        assert!(msg.contains("max_connections_per_address = 2"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn log_limiter_counts_what_it_leaves_out() {
        let l = LogLimiter::new(2);
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(l.admit(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_is_measured_from_the_last_request_and_not_while_one_runs() {
        let a = Activity::new();
        let start = Instant::now();
        assert_eq!(a.idle_since(), Some(start));
        tokio::time::advance(Duration::from_secs(5)).await;
        let g = a.begin();
        assert_eq!(a.idle_since(), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(g);
        assert_eq!(a.idle_since(), Some(start + Duration::from_secs(35)));
    }
}
