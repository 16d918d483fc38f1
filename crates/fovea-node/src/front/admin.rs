//! The admin HTTP endpoint (axum): `/health`, `/ready`, `/info`, `/connections` (JSON) and
//! `/metrics` (Prometheus text), registered in one place, `router`.
//!
//! Nothing here touches the message path: every answer is built from the node's counters
//! and its table of live connections when it is asked for.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::StatsHandle;

/// One live client connection, as the admin endpoint shows it.
pub(crate) struct ConnInfo {
    pub id: u64,
    pub realm: String,
    pub user: String,
    pub client: String,
    pub remote: SocketAddr,
    /// How the client reached the node.
    pub transport: crate::transport::stream::Transport,
    /// The QUIC connection, for its path figures (round-trip time, datagram size); `None`
    /// on the stream transports, whose figures the kernel keeps.
    pub(crate) quic: Option<crate::transport::quic::Connection>,
    pub started: Instant,
    pub handle: Arc<crate::handle::Handle>,
    pub subscriptions: std::sync::atomic::AtomicUsize,
    pub registrations: std::sync::atomic::AtomicUsize,
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = router(shared);
    let result = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "the admin endpoint stopped");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let token = shared.config.admin_token.clone();
    Router::new()
        .route("/", get(dashboard))
        .route("/realms", get(realms))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/connections", get(connections))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                // `/health` stays open, for probes; everything else needs the token when
                // one is configured.
                // The dashboard's page is open too: it holds no data, and asks for the
                // token to fetch the rest.
                let open = matches!(req.uri().path(), "/health" | "/");
                let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                match &token {
                    Some(t) if !open && given.and_then(|g| g.strip_prefix("Bearer ")).is_none_or(|g| !ct_eq(g, t)) => {
                        let body = Json(serde_json::json!({ "error": "send Authorization: Bearer <admin token>" }));
                        (StatusCode::UNAUTHORIZED, body).into_response()
                    }
                    _ => next.run(req).await,
                }
            }
        }))
        .with_state(shared)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    // Ready while accepting clients; a draining node says so, so a load balancer stops
    // sending new clients its way.
    if shared.draining.load(Ordering::Relaxed) {
        let body = Json(serde_json::json!({ "status": "draining" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    Json(serde_json::json!({ "status": "ready" })).into_response()
}

/// The live dashboard: one self-contained page (no CDN), which reads this endpoint and
/// taps messages through the node's WebSocket transport.
async fn dashboard() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // Only this endpoint and a WebSocket (the tap) may be reached from the page.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src data:",
        ),
    ];
    (headers, include_str!("dashboard.html")).into_response()
}

/// Most procedures and tools listed per realm by `/realms`.
const MAX_LISTED: usize = 500;

#[derive(Serialize)]
struct RealmRow {
    name: String,
    subscriptions: usize,
    registrations: usize,
    /// Procedures provided on this node, with their provider counts (at most 500).
    procedures: Vec<(String, usize)>,
    /// The realm's MCP catalog, mesh-wide (at most 500): procedure, what agents read of it
    /// (its description; a resource's URI or template first), and its kind (`tool`,
    /// `resource`, `resourceTemplate`, `prompt`).
    tools: Vec<(String, String, &'static str)>,
}

/// The realms, with what is subscribed and provided in each.
async fn realms(State(shared): State<Arc<Shared>>) -> Json<Vec<RealmRow>> {
    let mut rows: Vec<RealmRow> = shared
        .router
        .realms()
        .values()
        .map(|r| RealmRow {
            name: r.name.clone(),
            subscriptions: r.subscription_count(),
            registrations: r.registration_count(),
            procedures: r.procedure_list(MAX_LISTED),
            tools: r.with_tools(|c| {
                c.entries_where(|_| true)
                    .into_iter()
                    .take(MAX_LISTED)
                    .map(|(name, d)| {
                        let text = match d.uri().or(d.uri_template()) {
                            Some(uri) if d.description().is_empty() => uri.to_owned(),
                            Some(uri) => format!("{uri}: {}", d.description()),
                            None => d.description().to_owned(),
                        };
                        (name.to_owned(), text, d.kind().as_str())
                    })
                    .collect()
            }),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Json(rows)
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    name: String,
    uptime_s: u64,
    listen: String,
    /// The runtime's worker threads, and the cores the host offers (`--workers`).
    workers: usize,
    cores: usize,
    realms: Vec<String>,
    /// The stream transports' URLs (`tls://…`, `ws://…`, `wss://…`).
    transports: Vec<String>,
    limits: crate::config::Limits,
    stats: crate::stats::StatsSnapshot,
    /// The node's view of its mesh; absent for a standalone node.
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<crate::mesh::MeshSnapshot>,
}

async fn info(State(shared): State<Arc<Shared>>) -> Json<Info> {
    let realms = shared.router.realms().keys().cloned().collect();
    Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        name: shared.config.name.clone(),
        uptime_s: shared.started.elapsed().as_secs(),
        listen: shared.listen.to_string(),
        workers: tokio::runtime::Handle::current().metrics().num_workers(),
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        realms,
        transports: shared.stream_urls.clone(),
        limits: shared.config.limits.clone(),
        stats: StatsHandle(shared.clone()).snapshot(),
        mesh: match shared.router.mesh.as_ref().map(|m| &m.mesh) {
            Some(m) => Some(m.snapshot().await),
            None => None,
        },
    })
}

#[derive(Deserialize)]
struct ConnQuery {
    /// `id` (default), `dropped`, `pending`, `uptime` or `subscriptions`; largest first
    /// except for `id`.
    sort: Option<String>,
    realm: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ConnRow {
    id: u64,
    realm: String,
    user: String,
    client: String,
    remote: String,
    /// `quic`, `tls`, `ws` or `wss`.
    transport: &'static str,
    uptime_s: u64,
    subscriptions: usize,
    registrations: usize,
    pending_bytes: usize,
    dropped: u64,
    calls_served_in_flight: usize,
    /// QUIC's smoothed round-trip time to the client (0 on the stream transports).
    rtt_us: u64,
    /// The largest UDP payload the node sends on this path (MTU discovery's current
    /// figure: ≤ 1 452 over a network, up to 6 500 on loopback).
    datagram_bytes: u16,
}

#[derive(Serialize)]
struct ConnPage {
    total: usize,
    offset: usize,
    connections: Vec<ConnRow>,
}

/// Most rows one page returns, whatever `limit` asks for.
const MAX_PAGE: usize = 1000;

/// `/connections` listings built at once (process-wide): each holds a blocking thread while
/// it sorts, so a burst of requests waits its turn here instead of filling tokio's pool.
static LISTINGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn connections(State(shared): State<Arc<Shared>>, Query(q): Query<ConnQuery>) -> Response {
    let Ok(_turn) = LISTINGS.acquire().await else {
        // Never closed; answered rather than assumed.
        let msg = "the connection listing is unavailable";
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": msg }))).into_response();
    };
    // Under the lock, which every connection's start and end take, only the handles are
    // copied; the rows (four strings each) and the sort run on a blocking thread, so that a
    // listing of 100 000 connections holds up neither the lock nor a worker — on a host
    // where the node runs one worker (`--workers`), that worker is all its traffic.
    let infos: Vec<Arc<ConnInfo>> = {
        let conns = crate::sync::lock(&shared.conns);
        conns.values().filter(|c| q.realm.as_ref().is_none_or(|r| *r == c.realm)).cloned().collect()
    };
    match tokio::task::spawn_blocking(move || connection_page(infos, &q)).await {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(msg)) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": msg }))).into_response(),
        Err(e) => {
            let msg = format!("listing the connections failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": msg }))).into_response()
        }
    }
}

/// One page of `/connections` from the connections' handles; `Err` for an unknown sort.
fn connection_page(infos: Vec<Arc<ConnInfo>>, q: &ConnQuery) -> Result<ConnPage, String> {
    let mut rows: Vec<(ConnRow, Arc<ConnInfo>)> = infos
        .into_iter()
        .map(|c| {
            let row = ConnRow {
                id: c.id,
                realm: c.realm.clone(),
                user: c.user.clone(),
                client: c.client.clone(),
                remote: c.remote.to_string(),
                transport: c.transport.name(),
                uptime_s: c.started.elapsed().as_secs(),
                subscriptions: c.subscriptions.load(Ordering::Relaxed),
                registrations: c.registrations.load(Ordering::Relaxed),
                pending_bytes: c.handle.out.pending(),
                dropped: c.handle.out.dropped.load(Ordering::Relaxed),
                calls_served_in_flight: c.handle.requests_in_flight(),
                // Path figures lock each QUIC connection: filled in for the page only, below.
                rtt_us: 0,
                datagram_bytes: 0,
            };
            (row, c)
        })
        .collect();
    match q.sort.as_deref().unwrap_or("id") {
        "id" => rows.sort_by_key(|(r, _)| r.id),
        "dropped" => rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.dropped)),
        "pending" => rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.pending_bytes)),
        "uptime" => rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.uptime_s)),
        "subscriptions" => rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.subscriptions)),
        other => return Err(format!("unknown sort {other:?}: use id, dropped, pending, uptime or subscriptions")),
    }
    let total = rows.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let connections = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(mut row, info)| {
            if let Some(conn) = &info.quic {
                let path = conn.stats().path;
                row.rtt_us = u64::try_from(path.rtt.as_micros()).unwrap_or(u64::MAX);
                row.datagram_bytes = path.current_mtu;
            }
            row
        })
        .collect();
    Ok(ConnPage { total, offset, connections })
}

/// A counter with its help text, set to `value` (the node's counters are its own atomics;
/// this only exposes them).
fn count(name: &'static str, help: &'static str, value: u64) {
    metrics::describe_counter!(name, help);
    metrics::counter!(name).absolute(value);
}

/// A gauge with its help text, set to `value`.
fn level(name: &'static str, help: &'static str, value: f64) {
    metrics::describe_gauge!(name, help);
    metrics::gauge!(name).set(value);
}

/// Prometheus text exposition of the node's counters, rendered by
/// `metrics-exporter-prometheus` from a snapshot taken now. The counters themselves are the
/// node's own batched atomics: the message path never calls into a metrics registry.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let s = StatsHandle(shared.clone()).snapshot();
    let mesh = match shared.router.mesh.as_ref().map(|m| &m.mesh) {
        Some(m) => Some((m.snapshot().await, m.clone())),
        None => None,
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        use metrics::{counter, describe_counter, describe_gauge, gauge};
        level("fovea_connections", "Open client sessions.", s.connections as f64);
        describe_gauge!("fovea_connections_by_transport", "Open client sessions by transport (quic, tls, ws, wss).");
        for (transport, n) in &s.transports {
            gauge!("fovea_connections_by_transport", "transport" => *transport).set(*n as f64);
        }
        count("fovea_connections_accepted_total", "Connections accepted, every transport.", s.accepted);
        describe_counter!("fovea_connections_closed_total", "Connections the node closed, by close code.");
        for (code, n) in &s.closes {
            counter!("fovea_connections_closed_total", "reason" => code.name().to_ascii_lowercase()).absolute(*n);
        }
        count("fovea_messages_in_total", "Messages published by clients.", s.msgs_in);
        count("fovea_bytes_in_total", "Bytes read from client streams.", s.bytes_in);
        count("fovea_deliveries_total", "Messages queued for subscribers.", s.deliveries);
        count("fovea_bytes_out_total", "Bytes written to client streams.", s.bytes_out);
        describe_counter!("fovea_messages_dropped_total", "Messages dropped, by reason.");
        counter!("fovea_messages_dropped_total", "reason" => "slow_consumer").absolute(s.dropped);
        count("fovea_producer_stalls_total", "Reads of a publishing connection held back (at most producer_stall) for a subscriber's or a mesh link's queue more than an eighth full.", s.stalls);
        count("fovea_producer_stall_timeouts_total", "Hold-backs that ran out (producer_stall) before the subscriber's queue was taken; its publishers then run free until it takes again.", s.stall_timeouts);
        count(
            "fovea_protocol_errors_total",
            "Connections closed for malformed or unexpected frames.",
            s.protocol_errors,
        );
        count("fovea_auth_failures_total", "Refused handshakes (realm or credential).", s.auth_failures);
        count(
            "fovea_auth_rate_limited_total",
            "Handshakes refused unchecked after repeated failures.",
            s.auth_rate_limited,
        );
        count("fovea_calls_total", "RPC calls received.", s.calls);
        count("fovea_responses_total", "RPC responses received from providers.", s.responses);
        count("fovea_late_responses_total", "Responses that arrived after their call ended.", s.late_responses);
        count(
            "fovea_calls_retried_total",
            "Idempotent calls sent to another provider after theirs disconnected before answering.",
            s.calls_retried,
        );
        // Streams' frames from clients and from other nodes, together.
        let mesh_stats = shared.router.mesh.as_ref().map(|m| &m.mesh.stats);
        let from_mesh = |pick: fn(&crate::mesh::MeshStats) -> &std::sync::atomic::AtomicU64| {
            mesh_stats.map_or(0, |m| pick(m).load(Ordering::Relaxed))
        };
        count(
            "fovea_stream_chunks_total",
            "Stream chunks (DATA) passed on.",
            s.stream_chunks + from_mesh(|m| &m.stream_chunks),
        );
        count(
            "fovea_stream_bytes_total",
            "Bytes of stream chunks passed on.",
            s.stream_bytes + from_mesh(|m| &m.stream_bytes),
        );
        count(
            "fovea_late_stream_frames_total",
            "DATA and CREDIT frames for calls that had ended, ignored.",
            s.late_stream_frames + from_mesh(|m| &m.late_stream_frames),
        );
        count("fovea_message_streams_total", "Streamed messages opened (PUB_STREAM, FWD_STREAM).", s.message_streams);
        count(
            "fovea_messages_cut_total",
            "Receivers cut from a streamed message: stalled for slow_consumer_timeout, or broke its credit.",
            s.messages_cut,
        );
        count(
            "fovea_streams_broken_total",
            "Calls ended with FLOW_CONTROL_ERROR because another node's DATA or CREDIT broke the stream's rules \
             (clients' count as rejections).",
            from_mesh(|m| &m.streams_broken),
        );
        describe_counter!(
            "fovea_notices_dropped_total",
            "Progress and log notices not passed on: late, over the per-call cap, or the caller's queue full."
        );
        let mesh_notices =
            shared.router.mesh.as_ref().map_or(0, |m| m.mesh.stats.notices_dropped.load(Ordering::Relaxed));
        counter!("fovea_notices_dropped_total").absolute(s.notices_dropped + mesh_notices);
        let q = &shared.quic;
        level(
            "fovea_quic_connections",
            "QUIC connections the client endpoint holds (handshaking, open or draining).",
            q.connections.load(Ordering::Relaxed) as f64,
        );
        level(
            "fovea_quic_incoming_queued",
            "New connections waiting for the accept loop.",
            q.incoming_queued.load(Ordering::Relaxed) as f64,
        );
        count(
            "fovea_quic_incoming_refused_total",
            "New connections refused because the accept queue was full (quic::INCOMING_QUEUE).",
            q.incoming_refused.load(Ordering::Relaxed),
        );
        count(
            "fovea_quic_send_blocked_total",
            "Datagrams the UDP socket refused for a moment (send buffer full); each was sent once it had room.",
            q.send_blocked.load(Ordering::Relaxed),
        );
        level(
            "fovea_quic_timer_entries",
            "Deadlines in the client endpoint's timer heap, stale ones included.",
            q.timer_entries.load(Ordering::Relaxed) as f64,
        );
        let spin = fovea_spin::stats();
        count("fovea_idle_spin_hits_total", "Idle spins that ended with a datagram (a sleep avoided).", spin.hits);
        count("fovea_idle_spin_misses_total", "Idle spins that ran out; the worker then slept.", spin.misses);
        // Seconds as a float, so a gauge: the `metrics` counter API takes integers only, and
        // Prometheus wants base units. It only grows, like a counter.
        level(
            "fovea_idle_spin_seconds",
            "CPU time idle workers spent spinning since the node started.",
            spin.spun.as_secs_f64(),
        );
        describe_counter!("fovea_call_results_total", "Calls by outcome: answered by a provider, or the node's code.");
        counter!("fovea_call_results_total", "outcome" => "answered")
            .absolute(s.responses.saturating_sub(s.late_responses));
        for (code, n) in &s.rejections {
            use fovea_core::ErrorCode as C;
            let call_outcome =
                matches!(code, C::NoProvider | C::Timeout | C::Busy | C::ProviderDisconnected | C::InvalidProcedure);
            if call_outcome {
                counter!("fovea_call_results_total", "outcome" => code.name().to_ascii_lowercase()).absolute(*n);
            }
        }
        describe_counter!("fovea_rejections_total", "Operations refused or failed by the node, by code.");
        for (code, n) in &s.rejections {
            counter!("fovea_rejections_total", "code" => code.name().to_ascii_lowercase()).absolute(*n);
        }
        level("fovea_subscriptions", "Active subscriptions.", s.subscriptions as f64);
        level("fovea_registrations", "Active procedure registrations.", s.registrations as f64);
        let (total, max) = {
            let conns = crate::sync::lock(&shared.conns);
            conns.values().map(|c| c.handle.out.pending()).fold((0usize, 0usize), |(t, m), p| (t + p, m.max(p)))
        };
        level("fovea_queued_bytes", "Bytes queued at the node for all clients.", total as f64);
        level("fovea_queued_bytes_max", "Bytes queued for the most backed-up client.", max as f64);
        if let Some((snap, m)) = &mesh {
            use std::sync::atomic::Ordering::Relaxed;
            level("fovea_mesh_links", "Open links to other nodes.", snap.links.len() as f64);
            level("fovea_dht_contacts", "Nodes in the DHT routing table.", snap.dht_contacts as f64);
            level("fovea_dht_records", "DHT records held for other nodes.", snap.dht_records as f64);
            count("fovea_dht_lookups_total", "DHT lookups started.", snap.dht_lookups);
            count(
                "fovea_dht_requests_timed_out_total",
                "DHT requests that got no answer in time.",
                snap.dht_requests_timed_out,
            );
            count(
                "fovea_mesh_peers_refused_total",
                "Mesh handshakes refused (wrong secret, malformed, over the link limit).",
                snap.peers_refused,
            );
            count("fovea_mesh_frames_dropped_total", "Frames for other nodes (DHT messages, forwarded messages, calls) dropped at a full link or dial queue.", snap.frames_dropped);
            count(
                "fovea_dht_dropped_total",
                "DHT messages from other nodes dropped at the DHT's full input queue.",
                snap.dht_dropped,
            );
            count(
                "fovea_mesh_incoming_refused_total",
                "New links refused by the mesh endpoint because its accept queue was full (quic::INCOMING_QUEUE).",
                m.endpoint_stats.incoming_refused.load(Relaxed),
            );
            count(
                "fovea_mesh_send_blocked_total",
                "Datagrams the mesh's UDP socket refused for a moment (send buffer full); each was sent once it had room.",
                m.endpoint_stats.send_blocked.load(Relaxed),
            );
            count(
                "fovea_mesh_dials_failed_total",
                "Links to other nodes that could not be opened.",
                m.stats.dials_failed.load(Relaxed),
            );
            count(
                "fovea_mesh_links_evicted_total",
                "Links closed idle or to make room (their nodes stay known).",
                m.stats.links_evicted.load(Relaxed),
            );
            count(
                "fovea_mesh_calls_redirected_total",
                "Calls sent to another node that had no provider for them any more (restarted, or its provider just left), sent on to another provider.",
                m.stats.calls_redirected.load(Relaxed),
            );
            count(
                "fovea_mesh_peers_dead_total",
                "Linked nodes that answered no probe in time (the failure detector): their links closed and they left the DHT and every cache.",
                m.stats.peers_dead.load(Relaxed),
            );
            count(
                "fovea_mesh_answers_too_large_total",
                "Answers from other nodes over a local caller's max_payload (the caller got PAYLOAD_TOO_LARGE).",
                m.stats.answers_too_large.load(Relaxed),
            );
        }
        if let Some(m) = shared.mcp.get() {
            use fovea_core::tool::answers::Method;
            use std::sync::atomic::Ordering::Relaxed;
            let st = &m.stats;
            count("fovea_mcp_requests_total", "HTTP requests to the MCP endpoint.", st.requests.load(Relaxed));
            count("fovea_mcp_unauthorized_total", "MCP requests refused with 401.", st.unauthorized.load(Relaxed));
            describe_counter!("fovea_mcp_sessions_total", "MCP sessions by how they ended (opened counts all).");
            counter!("fovea_mcp_sessions_total", "event" => "opened").absolute(st.sessions_opened.load(Relaxed));
            counter!("fovea_mcp_sessions_total", "event" => "deleted").absolute(st.sessions_deleted.load(Relaxed));
            counter!("fovea_mcp_sessions_total", "event" => "reaped").absolute(st.sessions_reaped.load(Relaxed));
            counter!("fovea_mcp_sessions_total", "event" => "refused").absolute(st.sessions_refused.load(Relaxed));
            level("fovea_mcp_sessions", "MCP (2025-11-25) sessions open.", m.open_sessions() as f64);
            level(
                "fovea_mcp_sessions_hibernated",
                "MCP sessions hibernated now (worker closed until their next request; counted in fovea_mcp_sessions).",
                m.hibernated_sessions() as f64,
            );
            let (hibernations, wakes) = m.hibernations();
            count("fovea_mcp_hibernations_total", "MCP sessions hibernated after idling.", hibernations);
            count("fovea_mcp_wakes_total", "Hibernated MCP sessions restored by a request.", wakes);
            level(
                "fovea_mcp_resource_watches",
                "Agents' subscriptions to resource updates (per resource and session or listen stream).",
                m.resource_watches() as f64,
            );
            level(
                "fovea_mcp_tasks",
                "Tool calls kept as tasks (the tasks extension), running or finished, until they expire.",
                m.tasks() as f64,
            );
            count(
                "fovea_mcp_tool_calls_total",
                "MCP tool calls made (to an existing tool, with valid arguments).",
                st.tool_calls.load(Relaxed),
            );
            count(
                "fovea_mcp_tool_errors_total",
                "MCP tool calls answered with an error result.",
                st.tool_errors.load(Relaxed),
            );
            describe_counter!(
                "fovea_mcp_questions_total",
                "Providers' questions to agents: asked during the call, deferred to an input-required result, \
                 answered from a retry, or declined."
            );
            for q in crate::front::mcp::QuestionOutcome::ALL {
                counter!("fovea_mcp_questions_total", "outcome" => q.as_str())
                    .absolute(st.questions[q as usize].load(Relaxed));
            }
            describe_counter!(
                "fovea_mcp_method_calls_total",
                "MCP resources/read, prompts/get and completion/complete calls, by outcome."
            );
            for m in [Method::ReadResource, Method::GetPrompt, Method::Complete] {
                let (calls, errors) =
                    (st.method_calls[m as usize].load(Relaxed), st.method_errors[m as usize].load(Relaxed));
                counter!("fovea_mcp_method_calls_total", "method" => m.as_str(), "outcome" => "ok")
                    .absolute(calls.saturating_sub(errors));
                counter!("fovea_mcp_method_calls_total", "method" => m.as_str(), "outcome" => "error").absolute(errors);
            }
        }
        if let Some(i) = shared.router.mesh.as_ref().map(|m| &m.interest) {
            use std::sync::atomic::Ordering::Relaxed;
            count(
                "fovea_mesh_forwarded_total",
                "Messages sent to other nodes' subscribers.",
                i.stats.forwarded.load(Relaxed),
            );
            count(
                "fovea_mesh_received_total",
                "Messages from other nodes delivered to local subscribers.",
                i.stats.received.load(Relaxed),
            );
            count(
                "fovea_mesh_forward_dropped_total",
                "Messages for other nodes dropped because a link's queue was full.",
                i.stats.dropped.load(Relaxed),
            );
            let (d, held, prefixes) = i.discovery_stats();
            count("fovea_discovery_lookups_total", "DHT lookups for subscribers and providers.", d.lookups);
            count(
                "fovea_discovery_held_dropped_total",
                "Messages dropped because the wait list for running lookups was full.",
                d.held_dropped,
            );
            count(
                "fovea_discovery_evicted_total",
                "Topic segments or procedures forgotten at their cap (looked up again when needed).",
                d.evicted,
            );
            level("fovea_discovery_held_bytes", "Bytes of messages waiting for their lookups.", held as f64);
            level(
                "fovea_discovery_prefixes",
                "Topic segments whose subscribers elsewhere are tracked.",
                prefixes as f64,
            );
        }
    });
    let mut text = handle.render();
    text += &shared
        .router
        .stats
        .call_latency
        .render("fovea_call_duration_seconds", "Time from a call reaching the node to its answer leaving it.");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}
