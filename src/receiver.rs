//! A webhook receiver for trying a setup (`flaghook receive`) and for the quick start
//! (`flaghook demo`): it verifies each request's signature and reports what it got.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::sink::webhook::Secret;

/// What one request carried.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub events: usize,
    pub meta: serde_json::Value,
    /// "verified", "invalid", "missing" (no header), or "unchecked" (no secret given).
    pub signature: &'static str,
    pub bytes: usize,
    pub first_event: Option<serde_json::Value>,
}

/// Reads a request body and checks it.
pub fn inspect(body: &[u8], signature: Option<&str>, secret: Option<&Secret>) -> Received {
    let signature = match (secret, signature) {
        (None, _) => "unchecked",
        (Some(_), None) => "missing",
        (Some(s), Some(sig)) if crate::sign::verify(s.expose(), body, sig) => "verified",
        (Some(_), Some(_)) => "invalid",
    };
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let events = parsed.get("events").and_then(|e| e.as_array());
    Received {
        events: events.map_or(0, Vec::len),
        meta: parsed.get("meta").cloned().unwrap_or_default(),
        signature,
        bytes: body.len(),
        first_event: events.and_then(|e| e.first().cloned()),
    }
}

/// Serves until `shutdown`, calling `on_request` for every request; answers 200.
pub async fn serve(
    listener: TcpListener,
    secret: Option<Secret>,
    on_request: Arc<dyn Fn(Received) + Send + Sync>,
    shutdown: CancellationToken,
) {
    let secret = Arc::new(secret);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (secret, on_request) = (secret.clone(), on_request.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (secret, on_request) = (secret.clone(), on_request.clone());
                async move {
                    let signature = request
                        .headers()
                        .get("x-hub-signature-256")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    on_request(inspect(
                        &body,
                        signature.as_deref(),
                        secret.as_ref().as_ref(),
                    ));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::OK)
                            .body(Full::new(Bytes::new()))
                            .expect("valid"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
