//! The metrics' HTTP routes: `GET /metrics` (Prometheus text format 0.0.4) and `GET /readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Metrics;

/// `GET /metrics` and `GET /readyz` for the controller's HTTP router.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route("/readyz", axum::routing::get(ready))
        .with_state(metrics)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    if !m.loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "run metrics are being loaded from the store; retry shortly\n",
        )
            .into_response();
    }
    match m.render().await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Ready when the store answers a read, leader or follower alike (a follower serves the
/// operator API); the body names the role and the lease epoch: `ready\nrole: leader\nepoch: 3\n`.
async fn ready(State(m): State<Arc<Metrics>>) -> Response {
    match m
        .inner
        .fleet
        .store
        .get_state(crate::store::keys::READYZ_PROBE)
        .await
    {
        Ok(_) => {
            let s = m.leadership.state();
            format!("ready\nrole: {}\nepoch: {}\n", s.role(), s.epoch).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store does not answer: {e}\n"),
        )
            .into_response(),
    }
}
