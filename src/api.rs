//! `[api]`: a plain HTTP server on the configured address, for supervisors and Prometheus.
//!
//! - `GET /health`: 200 and `{"status":"ok"}` while every pipeline runs; 503 while starting
//!   or stopping, or while a sink has failed every request for longer than
//!   `unhealthy_after`, naming the sink and its last failure (see `telemetry::Health`).
//! - `GET /metrics`: the Prometheus text exposition (format 0.0.4).
//!
//! Off unless `[api]` sets `address`. It serves a handful of connections at once, each
//! with a header timeout, so a stuck scraper cannot hold it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{check_duration, socket_addr, HumanDuration};
use crate::telemetry::{Health, Telemetry};

fn default_unhealthy_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to serve `/health` and `/metrics` on, e.g. "127.0.0.1:8686". Required.
    pub address: String,
    /// A sink that has failed every request for this long makes `/health` answer 503.
    /// Default "5m".
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: HumanDuration,
}

/// `[api]`, parsed: the address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSpec {
    pub address: SocketAddr,
    pub unhealthy_after: Duration,
}

/// The longest `unhealthy_after`.
const MAX_UNHEALTHY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

impl ApiConfig {
    /// Checks every key (at `key`, `api`) and resolves the address.
    pub fn build(self, key: &str) -> Result<ApiSpec> {
        check_duration(
            &format!("{key}.unhealthy_after"),
            self.unhealthy_after.0,
            MAX_UNHEALTHY_AFTER,
            "unhealthy_after = \"5m\"",
        )?;
        Ok(ApiSpec {
            address: socket_addr(&format!("{key}.address"), &self.address)?,
            unhealthy_after: self.unhealthy_after.0,
        })
    }
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the API's address (before anything runs, so a taken port fails start-up).
pub async fn bind(spec: &ApiSpec) -> Result<TcpListener> {
    TcpListener::bind(spec.address)
        .await
        .with_context(|| format!("`api.address`: cannot listen on {}", spec.address))
}

/// Serves `/health` and `/metrics` until `stop`.
pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    unhealthy_after: Duration,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, or a connection reset before it was accepted.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let telemetry = telemetry.clone();
                async move { Ok::<_, Infallible>(answer(request, &telemetry, unhealthy_after).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    telemetry: &Arc<Telemetry>,
    unhealthy_after: Duration,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/health" => {
            let health = Health::of(telemetry, unhealthy_after);
            let status = if health.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&health).expect("serializable") + "\n";
            reply(status, "application/json", body)
        }
        "/metrics" => {
            // A file source's lag looks at its files: not on an async worker.
            let telemetry = telemetry.clone();
            match tokio::task::spawn_blocking(move || telemetry.render()).await {
                Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "the metrics could not be gathered\n".into(),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /health or /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
