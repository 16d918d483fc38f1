//! Legacy (2025-11-25) sessions: whose they are, whether a request of theirs is open, and
//! hibernation.
//!
//! A live rmcp session holds a worker task, a service loop and about seven tokio channels
//! whose first blocks are sized for 32 of rmcp's ~370-byte messages: tens of KiB per
//! session whether or not the agent ever calls again (BENCHMARKS.md, "Memory of an idle
//! MCP session"). Most sessions are idle most of the time, so a session with no request
//! open for `hibernate_after` is *hibernated*: its worker is closed and only what brings it
//! back is kept, the `initialize` parameters (as JSON) and its entry here. Its next request
//! restores it through rmcp's own restore path ([`SessionStore`] + `restore_session`),
//! which replays `initialize` and `notifications/initialized` before the request, so the
//! agent sees the same session.
//!
//! What a worker holds only in memory is not lost that way:
//! - a session with resource subscriptions or a chosen logging level is *held*: it never
//!   hibernates (it has state that a replay of `initialize` would not bring back);
//! - a session with any HTTP request or stream open (a `GET` stream included) is not idle;
//! - list changes: a live session's worker keeps the notifications it could not deliver
//!   (no stream open) and replays them on its next `GET`. A restored session announces
//!   every list that changed since the session was opened ([`Sessions::opened_versions`]),
//!   so an agent that opens its stream later learns the same.
//!
//! Hibernation and a request for the same session are kept apart: a request waits while
//! its session is being hibernated, and hibernation waits until rmcp has finished with the
//! old worker (rmcp closes a session when its worker ends, and that must not close the
//! restored one).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, InitializeRequestParams, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId, SessionManager, SessionState, SessionStore, SessionStoreError,
};
use tokio::sync::oneshot;

use crate::config::McpConfig;
use crate::sync::lock;

/// How long a request waits for its session's hibernation to finish, and hibernation for
/// rmcp to let go of the old worker, before going on regardless.
const SETTLE: Duration = Duration::from_secs(5);

/// Hibernations run at once by one sweep.
const HIBERNATING_AT_ONCE: usize = 64;

/// A sweep that hibernates at least this many sessions (~14 MiB of workers) hands the
/// freed memory back to the system ([`release_freed_memory`]).
const RELEASE_AFTER: usize = 256;

/// The endpoint's legacy sessions: rmcp's [`LocalSessionManager`] for the live ones, and
/// the book of every session, live or hibernated. Serves rmcp as both its
/// [`SessionManager`] and its [`SessionStore`].
pub(crate) struct Sessions {
    local: LocalSessionManager,
    book: Mutex<Book>,
    /// Close an idle session's worker after this long without a request; `None`: never.
    hibernate_after: Option<Duration>,
    /// A session without a request for this long ends (live or hibernated).
    session_idle: Duration,
    /// Most sessions on the node, and per user.
    max_sessions: usize,
    max_sessions_per_user: usize,
    /// Sessions hibernated, and woken again, since the start.
    pub hibernations: AtomicU64,
    pub wakes: AtomicU64,
}

#[derive(Default)]
struct Book {
    entries: HashMap<String, Entry>,
    /// Each session's `initialize` parameters as JSON, from rmcp's handshake until the
    /// session ends (a live session needs them only if it hibernates; rmcp hands them
    /// over before the endpoint knows the session is admitted).
    inits: HashMap<String, Box<[u8]>>,
    /// Sessions being hibernated: told when rmcp has closed the old worker's session.
    exits: HashMap<String, oneshot::Sender<()>>,
}

struct Entry {
    /// (realm, user): a session exists only for its owner.
    owner: (String, String),
    /// HTTP requests and streams of the session not yet finished.
    open: u32,
    /// When the last request began or ended.
    last: Instant,
    /// Has state only its worker holds (subscriptions, logging level): never hibernates.
    held: bool,
    phase: Phase,
    /// The catalog's versions by kind when the session was opened, for what a restored
    /// session announces.
    opened: Option<[u64; 4]>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Live,
    Hibernating,
    Hibernated,
}

/// What became of a request that names a session ([`Sessions::enter`]).
pub(crate) enum Entered {
    /// Not a session of this endpoint (never was, or ended).
    Unknown,
    /// Another user's session: to this one it does not exist.
    Foreign,
    /// Counted open until the guard is dropped (when the response ends).
    Open(OpenGuard),
}

/// A request of a session in progress; dropping it ends the request.
pub(crate) struct OpenGuard {
    sessions: Arc<Sessions>,
    id: String,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(e) = lock(&self.sessions.book).entries.get_mut(&self.id) {
            e.open = e.open.saturating_sub(1);
            e.last = Instant::now();
        }
    }
}

/// A response body that keeps its session's request open until the body is done with
/// (sent to the end, or dropped when the agent goes away).
pub(crate) struct Tracked {
    body: axum::body::Body,
    _open: OpenGuard,
}

impl Tracked {
    pub(crate) fn new(body: axum::body::Body, open: OpenGuard) -> Tracked {
        Tracked { body, _open: open }
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Sessions {
    pub(crate) fn new(config: &McpConfig) -> Sessions {
        let mut local = LocalSessionManager::default();
        local.session_config.keep_alive = Some(config.session_idle);
        Sessions {
            local,
            book: Mutex::default(),
            hibernate_after: config.hibernate_after,
            session_idle: config.session_idle,
            max_sessions: config.max_sessions,
            max_sessions_per_user: config.max_sessions_per_user,
            hibernations: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
        }
    }

    /// Sessions open (live or hibernated).
    pub(crate) fn len(&self) -> usize {
        lock(&self.book).entries.len()
    }

    /// Sessions hibernated now.
    pub(crate) fn hibernated(&self) -> usize {
        lock(&self.book).entries.values().filter(|e| e.phase == Phase::Hibernated).count()
    }

    /// A request naming session `id` from `owner` begins: counted open until the returned
    /// guard drops. Waits while the session is being hibernated.
    pub(crate) async fn enter(self: &Arc<Self>, id: &str, owner: &(String, String)) -> Entered {
        let deadline = Instant::now() + SETTLE;
        loop {
            {
                let mut book = lock(&self.book);
                match book.entries.get_mut(id) {
                    None => return Entered::Unknown,
                    Some(e) if e.owner != *owner => return Entered::Foreign,
                    Some(e) if e.phase != Phase::Hibernating || Instant::now() >= deadline => {
                        e.open += 1;
                        e.last = Instant::now();
                        return Entered::Open(OpenGuard { sessions: self.clone(), id: id.to_owned() });
                    }
                    Some(_) => {}
                }
            }
            // Hibernation takes a few milliseconds (closing one worker).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Session `id` was just opened by `owner`: admits it unless a limit is reached, in
    /// which case the session is closed and the answer to give is returned.
    pub(crate) async fn admit(
        &self,
        id: &str,
        owner: (String, String),
        opened: Option<[u64; 4]>,
    ) -> Result<(), (axum::http::StatusCode, &'static str)> {
        use axum::http::StatusCode;
        let refused = {
            let mut book = lock(&self.book);
            let mine = book.entries.values().filter(|e| e.owner == owner).count();
            if book.entries.len() >= self.max_sessions {
                Some((StatusCode::SERVICE_UNAVAILABLE, "this node has its maximum of MCP sessions open: retry later"))
            } else if mine >= self.max_sessions_per_user {
                Some((
                    StatusCode::TOO_MANY_REQUESTS,
                    "this user has its maximum of MCP sessions open: close some (DELETE) or wait for idle ones to expire",
                ))
            } else {
                let entry = Entry { owner, open: 0, last: Instant::now(), held: false, phase: Phase::Live, opened };
                book.entries.insert(id.to_owned(), entry);
                None
            }
        };
        match refused {
            None => Ok(()),
            Some(answer) => {
                lock(&self.book).inits.remove(id);
                let _ = self.local.close_session(&SessionId::from(id)).await;
                Err(answer)
            }
        }
    }

    /// Session `id` was deleted by its agent; whether it was one of ours.
    pub(crate) fn forget(&self, id: &str) -> bool {
        let mut book = lock(&self.book);
        book.inits.remove(id);
        book.entries.remove(id).is_some()
    }

    /// Session `id` now has state only its worker holds: it never hibernates.
    pub(crate) fn hold(&self, id: &str) {
        if let Some(e) = lock(&self.book).entries.get_mut(id) {
            e.held = true;
        }
    }

    /// The catalog versions session `id` was opened with.
    pub(crate) fn opened_versions(&self, id: &str) -> Option<[u64; 4]> {
        lock(&self.book).entries.get(id).and_then(|e| e.opened)
    }

    /// One pass over the book: forgets sessions that ended (rmcp closed them, or they
    /// stayed hibernated past `session_idle`) and hibernates the idle ones. Returns how
    /// many ended.
    pub(crate) async fn sweep(&self) -> u64 {
        let began = Instant::now();
        let live: HashSet<SessionId> = self.local.sessions.read().await.keys().cloned().collect();
        let mut sleepy = Vec::new();
        let mut ended = 0;
        {
            let mut book = lock(&self.book);
            let Book { entries, inits, .. } = &mut *book;
            let now = Instant::now();
            entries.retain(|id, e| {
                // Busy, or active since `live` was read (a restore may have just begun).
                if e.open > 0 || e.last >= began {
                    return true;
                }
                let idle = now.saturating_duration_since(e.last);
                match e.phase {
                    Phase::Live if !live.contains(id.as_str()) => {
                        ended += 1;
                        false
                    }
                    Phase::Live => {
                        if !e.held && self.hibernate_after.is_some_and(|after| idle >= after) {
                            e.phase = Phase::Hibernating;
                            sleepy.push(id.clone());
                        }
                        true
                    }
                    Phase::Hibernated if idle >= self.session_idle => {
                        ended += 1;
                        false
                    }
                    Phase::Hibernated | Phase::Hibernating => true,
                }
            });
            // Handshakes in progress are live before they have an entry.
            inits.retain(|id, _| entries.contains_key(id) || live.contains(id.as_str()));
        }
        let hibernated = sleepy.len();
        futures_util::stream::iter(sleepy)
            .for_each_concurrent(HIBERNATING_AT_ONCE, |id| async move { self.hibernate(&id).await })
            .await;
        if hibernated >= RELEASE_AFTER {
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
        }
        ended
    }

    /// Closes session `id`'s worker, keeping its entry and `initialize` parameters.
    async fn hibernate(&self, id: &str) {
        let (told, exited) = oneshot::channel();
        lock(&self.book).exits.insert(id.to_owned(), told);
        let _ = self.local.close_session(&SessionId::from(id)).await;
        let _ = tokio::time::timeout(SETTLE, exited).await;
        let mut book = lock(&self.book);
        book.exits.remove(id);
        if let Some(e) = book.entries.get_mut(id) {
            e.phase = Phase::Hibernated;
            self.hibernations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Returns the heap's free pages to the system. glibc's malloc keeps what was freed for
/// reuse, so without this a burst of sessions that then hibernate leaves the node's
/// resident memory at the burst's peak; `malloc_trim` releases every whole free page of
/// every arena. Elsewhere (another libc, or the `mimalloc` build, which returns memory on
/// its own) there is nothing to do.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks; it
    // takes no pointers from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl SessionManager for Sessions {
    type Error = <LocalSessionManager as SessionManager>::Error;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.local.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.local.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.local.has_session(id).await
    }

    /// rmcp calls this on `DELETE` and when a session's worker has ended; the latter is
    /// what a hibernation waits for.
    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let closed = self.local.close_session(id).await;
        if let Some(told) = lock(&self.book).exits.remove(id.as_ref()) {
            let _ = told.send(());
        }
        closed
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.create_stream(id, message).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.local.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.local.resume(id, last_event_id).await
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        let restored = self.local.restore_session(id).await;
        if matches!(restored, Ok(RestoreOutcome::Restored(_))) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
        restored
    }
}

/// rmcp's store of what restores a session: here, only hibernated sessions' `initialize`
/// parameters, in memory (a node's sessions do not outlive it).
#[async_trait::async_trait]
impl SessionStore for Sessions {
    /// A hibernated session's parameters, once: the session is live again from here (the
    /// request restoring it is open, so no sweep touches it meanwhile).
    async fn load(&self, id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let mut book = lock(&self.book);
        let Book { entries, inits, .. } = &mut *book;
        let Some(e) = entries.get_mut(id).filter(|e| e.phase == Phase::Hibernated) else {
            return Ok(None);
        };
        let Some(json) = inits.get(id) else { return Ok(None) };
        let params: InitializeRequestParams = serde_json::from_slice(json)?;
        e.phase = Phase::Live;
        Ok(Some(SessionState::new(params)))
    }

    async fn store(&self, id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let json = serde_json::to_vec(&state.initialize_params)?.into_boxed_slice();
        lock(&self.book).inits.insert(id.to_owned(), json);
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), SessionStoreError> {
        lock(&self.book).inits.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(hibernate_after: Option<Duration>, session_idle: Duration) -> Arc<Sessions> {
        let mut config = McpConfig::new("127.0.0.1:0".parse().unwrap());
        config.hibernate_after = hibernate_after;
        config.session_idle = session_idle;
        Arc::new(Sessions::new(&config))
    }

    fn user(name: &str) -> (String, String) {
        ("default".to_owned(), name.to_owned())
    }

    fn set_phase(s: &Sessions, id: &str, phase: Phase) {
        lock(&s.book).entries.get_mut(id).unwrap().phase = phase;
    }

    #[tokio::test]
    async fn sessions_are_admitted_up_to_the_limits_and_exist_only_for_their_owner() {
        let mut config = McpConfig::new("127.0.0.1:0".parse().unwrap());
        config.max_sessions = 3;
        config.max_sessions_per_user = 2;
        let s = Arc::new(Sessions::new(&config));
        assert!(s.admit("a1", user("a"), None).await.is_ok());
        assert!(s.admit("a2", user("a"), None).await.is_ok());
        let (status, _) = s.admit("a3", user("a"), None).await.unwrap_err();
        assert_eq!(status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(s.admit("b1", user("b"), None).await.is_ok());
        let (status, _) = s.admit("c1", user("c"), None).await.unwrap_err();
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s.len(), 3);

        assert!(matches!(s.enter("a1", &user("b")).await, Entered::Foreign));
        assert!(matches!(s.enter("zz", &user("a")).await, Entered::Unknown));
        let open = s.enter("a1", &user("a")).await;
        assert!(matches!(open, Entered::Open(_)));
        assert_eq!(lock(&s.book).entries["a1"].open, 1);
        drop(open);
        assert_eq!(lock(&s.book).entries["a1"].open, 0, "the request ends with its guard");

        assert!(s.forget("a1"));
        assert!(!s.forget("a1"));
        assert_eq!(s.len(), 2);
    }

    #[tokio::test]
    async fn only_a_hibernated_session_is_restored_and_only_once() {
        let s = sessions(Some(Duration::ZERO), Duration::from_secs(60));
        s.admit("x", user("a"), Some([1, 2, 3, 4])).await.unwrap();
        let params: InitializeRequestParams = serde_json::from_value(serde_json::json!({
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}
        }))
        .unwrap();
        s.store("x", &SessionState::new(params)).await.unwrap();
        assert!(s.load("x").await.unwrap().is_none(), "a live session is not restored");
        set_phase(&s, "x", Phase::Hibernated);
        let state = s.load("x").await.unwrap().expect("a hibernated session is restored");
        assert_eq!(state.initialize_params.client_info.name, "t");
        assert!(s.load("x").await.unwrap().is_none(), "and then it is live");
        assert_eq!(s.opened_versions("x"), Some([1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn a_sweep_ends_closed_and_expired_sessions_and_keeps_held_and_busy_ones() {
        let s = sessions(Some(Duration::ZERO), Duration::from_millis(50));
        for id in ["closed", "asleep", "held", "busy"] {
            s.admit(id, user("a"), None).await.unwrap();
        }
        // None of them has a worker here: "closed" is a live one rmcp has closed.
        set_phase(&s, "asleep", Phase::Hibernated);
        set_phase(&s, "held", Phase::Hibernated);
        s.hold("held");
        let _busy = s.enter("busy", &user("a")).await;
        set_phase(&s, "busy", Phase::Hibernated);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.sweep().await, 1, "the closed session ends");
        assert_eq!(s.hibernated(), 3);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(s.sweep().await, 2, "hibernated past session_idle: ended, held or not");
        assert_eq!(s.len(), 1, "a session with a request open stays");
    }
}
