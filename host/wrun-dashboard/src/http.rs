//! The HTTP side: routes, who is asking, the live stream, and the accept
//! loop (bounded in connections and in time, TLS off loopback).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::hub::{Hub, View, Viewer};

/// Open connections at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The live stream sends at most this often.
const STREAM_INTERVAL: Duration = Duration::from_millis(500);
/// Task runs in one message of the live stream, at most (the newest).
const STREAM_RECORDS: usize = crate::hub::PAGE_RECORDS;
/// How long a scrape or a snapshot waits for the scheduler's fresh figures.
const SCRAPE_WAIT: Duration = Duration::from_millis(300);

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const COOKIE: &str = "wrun_token";

#[derive(Clone)]
struct App {
    hub: Arc<Hub>,
    loopback: bool,
}

#[derive(Deserialize, Default)]
struct TokenQuery {
    token: Option<String>,
}

pub(crate) fn run(
    listener: std::net::TcpListener,
    hub: Arc<Hub>,
    loopback: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            warn!("the dashboard cannot start its runtime: {error}");
            return;
        }
    };
    let router = Router::new()
        .route("/", get(index))
        .route(
            "/dashboard.js",
            get(|| async { asset(DASHBOARD_JS, "text/javascript") }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset(DASHBOARD_CSS, "text/css") }),
        )
        .route("/api/snapshot", get(snapshot))
        .route("/api/stream", get(stream))
        .route("/api/graph.svg", get(graph))
        .route("/metrics", get(metrics))
        .with_state(App { hub, loopback });
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                warn!("the dashboard cannot listen: {error}");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let accepting = async {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: back off instead of spinning.
                        debug!("dashboard accept: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let router = router.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT);
                    let served = match tls {
                        None => http.serve_connection(TokioIo::new(socket), service).await,
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await
                            {
                                Ok(Ok(stream)) => {
                                    http.serve_connection(TokioIo::new(stream), service).await
                                }
                                Ok(Err(error)) => {
                                    debug!(%peer, "dashboard TLS handshake failed: {error}");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    if let Err(error) = served {
                        debug!(%peer, "dashboard connection: {error}");
                    }
                });
            }
        };
        tokio::select! {
            () = accepting => {}
            _ = stopped => {}
        }
    });
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The token a request carries: `Authorization: Bearer`, `?token=`, or the
/// cookie the page set.
fn presented(headers: &HeaderMap, query: &TokenQuery) -> Option<String> {
    if let Some(token) = &query.token {
        return Some(token.clone());
    }
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Why someone may not look: answered with the token page.
struct Refusal(&'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            LOGIN_HTML.replace("{{message}}", self.0),
        )
            .into_response()
    }
}

/// Who is asking.
fn viewer(app: &App, headers: &HeaderMap, query: &TokenQuery) -> Result<Viewer, Refusal> {
    let access = app
        .hub
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .access
        .clone();
    match presented(headers, query) {
        Some(token) => access
            .viewer(&token)
            .ok_or(Refusal("That token is not one of this cluster's.")),
        None if app.loopback && access.open_on_loopback => Ok(Viewer::All),
        None => Err(Refusal(
            "This dashboard asks for a token: a tenant's token, or the cluster secret.",
        )),
    }
}

/// Who is asking, as a handler's argument; the token page answers for
/// whoever may not look.
struct Looking(Viewer);

impl axum::extract::FromRequestParts<App> for Looking {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &App,
    ) -> Result<Looking, Refusal> {
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        viewer(app, &parts.headers, &query).map(Looking)
    }
}

async fn index(State(app): State<App>, _: Looking, Query(query): Query<TokenQuery>) -> Response {
    if let Some(token) = &query.token {
        // Into a cookie, and out of the address bar and the history.
        let cookie = format!(
            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{}",
            if app.loopback { "" } else { "; Secure" }
        );
        let mut response = Redirect::to("/").into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// What one viewer sees now, and the task runs after `since`.
fn message(hub: &Hub, viewer: &Viewer, since: u64, limit: usize) -> (serde_json::Value, u64) {
    let published = hub.published.lock().unwrap_or_else(|e| e.into_inner());
    let empty = View::default();
    let view = published.views.get(viewer).unwrap_or(&empty);
    let mine = |tenant: &str| match viewer {
        Viewer::All => true,
        Viewer::Tenant(name) => name == tenant,
    };
    let fresh: Vec<&wrun_proto::stream::TaskRecord> = published
        .records
        .iter()
        .filter(|(seq, tenant, _)| *seq >= since && mine(tenant))
        .map(|(_, _, record)| record)
        .collect();
    let skipped = fresh.len().saturating_sub(limit);
    let next = published.next_seq;
    (
        json!({
            "view": view,
            "records": &fresh[skipped..],
            "skipped": skipped,
            "seq": next,
        }),
        next,
    )
}

/// Asks the scheduler for a fresh publication and waits (bounded) for it:
/// views are made only when someone looks.
async fn fresh(hub: &Hub) {
    let mut version = hub.version.subscribe();
    version.mark_unchanged();
    hub.ask_refresh();
    let _ = tokio::time::timeout(SCRAPE_WAIT, version.changed()).await;
}

async fn snapshot(State(app): State<App>, Looking(viewer): Looking) -> Response {
    fresh(&app.hub).await;
    let (body, _) = message(&app.hub, &viewer, 0, STREAM_RECORDS);
    axum::Json(body).into_response()
}

async fn stream(State(app): State<App>, Looking(viewer): Looking) -> Response {
    let guard = app.hub.viewer_joined();
    let version = app.hub.version.subscribe();
    let since = app
        .hub
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .next_seq;
    Sse::new(updates(app.hub.clone(), viewer, version, since, guard))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One `update` event per publication, at most every [`STREAM_INTERVAL`].
fn updates(
    hub: Arc<Hub>,
    viewer: Viewer,
    version: tokio::sync::watch::Receiver<u64>,
    since: u64,
    guard: crate::hub::ViewerGuard,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (hub, viewer, version, since, guard, None::<Instant>);
    futures::stream::unfold(
        start,
        |(hub, viewer, mut version, since, guard, last)| async move {
            if let Some(last) = last {
                tokio::time::sleep_until((last + STREAM_INTERVAL).into()).await;
            }
            version.changed().await.ok()?;
            let (body, next) = message(&hub, &viewer, since, STREAM_RECORDS);
            let event = Event::default().event("update").data(body.to_string());
            Some((
                Ok(event),
                (hub, viewer, version, next, guard, Some(Instant::now())),
            ))
        },
    )
}

async fn graph(State(app): State<App>, Looking(viewer): Looking) -> Response {
    let svg = app
        .hub
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .views
        .get(&viewer)
        .and_then(|v| v.graph_svg.clone());
    match svg {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no graph small enough to draw right now",
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<App>, Looking(viewer): Looking) -> Response {
    if let Viewer::Tenant(_) = viewer {
        return (
            StatusCode::FORBIDDEN,
            "/metrics shows the whole cluster: it needs the cluster secret",
        )
            .into_response();
    }
    fresh(&app.hub).await;
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        app.hub.metrics.encode(),
    )
        .into_response()
}
