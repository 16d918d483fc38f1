//! One client's bridge to asyncio: the operations in flight, each an SDK future and the
//! asyncio future it settles.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fovea_client::{Client, ClientError, ConnectOptions, Headers, Registration, Response, Subscription, Trust};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::feed::{self, Feed};
use crate::wake::Notifier;
use crate::{duration_of, headers_of, payload_of, runtime, to_py_err};

/// What an operation yields, turned into a Python value on the loop's thread.
pub(crate) enum Done {
    Unit,
    /// A call's answer: the whole [`Response`] (`full`) or its payload.
    Response {
        response: Response,
        full: bool,
    },
    Subscription(Subscription),
    Registration(Registration),
    /// Whether a request was abandoned (true) or answered (false).
    Flag(bool),
    /// A chunk of a stream, or its end (`None`).
    Chunk(Option<Bytes>),
    /// A call whose answer streams (boxed: it is several times the other variants).
    Stream(Box<fovea_client::CallStream>),
    /// A JSON value, given to Python as `json.loads` makes it.
    Json(String),
}

pub(crate) type Op = Pin<Box<dyn Future<Output = Result<Done, ClientError>> + Send>>;

/// An operation in flight.
enum Entry {
    /// An SDK future, polled again when its waker files the key.
    Task { op: Op, waker: Waker, settle: Py<PyAny> },
    /// A feed waiting for its next item: settled with `None` at the first wake.
    Wait { settle: Py<PyAny> },
}

/// What the client's feeds and requests share with it.
pub(crate) struct Shared {
    pub notifier: Arc<Notifier>,
    /// The loop's `create_future`.
    create_future: Py<PyAny>,
    /// Keyed by the address of the asyncio future for a task (unique while it is held
    /// here), by an odd number for a feed's wait (never an object's address).
    entries: Mutex<HashMap<u64, Entry>>,
    next_feed: AtomicU64,
    /// Reader callbacks that found work, and the operations they settled: how many
    /// completions one wake-up of the loop serves.
    wakes: AtomicU64,
    settled: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// A key for a feed's waits.
    pub(crate) fn feed_key(&self) -> u64 {
        (self.next_feed.fetch_add(1, Ordering::Relaxed) << 1) | 1
    }

    fn future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.create_future.bind(py).call0()
    }

    /// Starts `op`: polls it once now, and returns the asyncio future it settles.
    pub(crate) fn start(
        self: &Arc<Self>,
        py: Python<'_>,
        op: impl Future<Output = Result<Done, ClientError>> + Send + 'static,
    ) -> PyResult<Py<PyAny>> {
        let settle = self.future(py)?;
        let key = settle.as_ptr() as u64;
        let waker = self.notifier.waker(key);
        let mut op: Op = Box::pin(op);
        let polled = {
            let _rt = runtime()?.enter();
            op.as_mut().poll(&mut Context::from_waker(&waker))
        };
        match polled {
            Poll::Ready(result) => self.settle(py, &settle, result),
            Poll::Pending => {
                lock(&self.entries).insert(key, Entry::Task { op, waker, settle: settle.clone().unbind() });
            }
        }
        Ok(settle.unbind())
    }

    /// A future that resolves (with `None`) when `key` is next woken: a feed's wait.
    pub(crate) fn wait(&self, py: Python<'_>, key: u64) -> PyResult<Py<PyAny>> {
        let settle = self.future(py)?.unbind();
        lock(&self.entries).insert(key, Entry::Wait { settle: settle.clone_ref(py) });
        Ok(settle)
    }

    /// Drops the entry under `key`, if any.
    pub(crate) fn forget(&self, key: u64) {
        let entry = lock(&self.entries).remove(&key);
        drop(entry);
    }

    /// Settles an asyncio future with an operation's result, unless it was cancelled.
    fn settle(self: &Arc<Self>, py: Python<'_>, fut: &Bound<'_, PyAny>, result: Result<Done, ClientError>) {
        let value = match result {
            Ok(done) => self.to_python(py, done),
            Err(e) => Err(to_py_err(py, e)),
        };
        let settled = fut.call_method0("done").and_then(|done| {
            if done.is_truthy()? {
                return Ok(());
            }
            match value {
                Ok(v) => fut.call_method1("set_result", (v,)).map(drop),
                Err(e) => fut.call_method1("set_exception", (e.into_value(py),)).map(drop),
            }
        });
        if let Err(e) = settled {
            // Only a closed or broken loop gets here: reported as Python reports errors it
            // cannot raise (`sys.unraisablehook`).
            e.write_unraisable(py, Some(fut));
        }
    }

    fn to_python(self: &Arc<Self>, py: Python<'_>, done: Done) -> PyResult<Py<PyAny>> {
        Ok(match done {
            Done::Unit => py.None(),
            Done::Response { response, full: false } => PyBytes::new(py, &response.payload).into_any().unbind(),
            Done::Response { response, full: true } => Py::new(py, feed::Response::from(response))?.into_any(),
            Done::Subscription(s) => Py::new(py, Feed::subscription(s, self.clone()))?.into_any(),
            Done::Registration(r) => Py::new(py, Feed::registration(r, self.clone()))?.into_any(),
            Done::Flag(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
            Done::Chunk(Some(b)) => PyBytes::new(py, &b).into_any().unbind(),
            Done::Chunk(None) => py.None(),
            Done::Stream(s) => Py::new(py, feed::CallStream::new(*s, self.clone()))?.into_any(),
            Done::Json(text) => py.import("json")?.call_method1("loads", (text,))?.unbind(),
        })
    }

    /// Starts `op` for a future handed to the application itself (not through a wrapper
    /// that forgets it when its task is cancelled; see `Feed::abandon` for why that
    /// matters): it forgets itself when done. Settled by us, it is already forgotten.
    pub(crate) fn start_owned(
        self: &Arc<Self>,
        py: Python<'_>,
        op: impl Future<Output = Result<Done, ClientError>> + Send + 'static,
    ) -> PyResult<Py<PyAny>> {
        let fut = self.start(py, op)?;
        let shared = self.clone();
        let forget = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
            if let Ok(f) = args.get_item(0) {
                shared.forget(f.as_ptr() as u64);
            }
        })?;
        fut.bind(py).call_method1("add_done_callback", (forget,))?;
        Ok(fut)
    }
}

/// One client: its connection (once connected) and its operations in flight.
///
/// Made by `fovea.connect`, which watches [`Core::fileno`] with the loop's `add_reader`
/// and [`Core::drain`] as the callback. Every method runs on the loop's thread.
#[pyclass(frozen, module = "fovea._fovea")]
pub struct Core {
    shared: Arc<Shared>,
    client: Arc<OnceLock<Client>>,
}

impl Core {
    fn client(&self, py: Python<'_>) -> PyResult<&Client> {
        self.client.get().ok_or_else(|| to_py_err(py, ClientError::ClientClosed))
    }

    /// A call's arguments from Python, checked, with the client to call through.
    fn call_args(
        &self,
        py: Python<'_>,
        payload: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
        timeout: f64,
    ) -> PyResult<(Client, Bytes, Headers, std::time::Duration)> {
        let client = self.client(py)?.clone();
        Ok((client, payload_of(payload)?, headers_of(py, headers)?, duration_of(timeout, "timeout")?))
    }
}

#[pymethods]
impl Core {
    /// A client bound to `event_loop` (the running asyncio loop), not yet connected.
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Core> {
        let notifier = Notifier::new()
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot make the loop's wake-up socket: {e}")))?;
        let shared = Arc::new(Shared {
            notifier,
            create_future: event_loop.getattr("create_future")?.unbind(),
            entries: Mutex::new(HashMap::new()),
            next_feed: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        });
        Ok(Core { shared, client: Arc::new(OnceLock::new()) })
    }

    /// The descriptor to watch for reading.
    fn fileno(&self) -> i32 {
        self.shared.notifier.fd()
    }

    /// Connects; the future resolves with `None` once a session is open.
    #[pyo3(signature = (url, realm, token, name, ca, insecure, reconnect, connect_timeout, max_buffered, subscription_capacity, max_reconnect_delay=None))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &self,
        py: Python<'_>,
        url: String,
        realm: Option<String>,
        token: Option<&Bound<'_, PyAny>>,
        name: Option<String>,
        ca: Option<Vec<std::path::PathBuf>>,
        insecure: bool,
        reconnect: bool,
        connect_timeout: f64,
        max_buffered: Option<usize>,
        subscription_capacity: Option<usize>,
        max_reconnect_delay: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        if self.client.get().is_some() {
            return Err(PyValueError::new_err("this client is already connected"));
        }
        let mut opts = ConnectOptions::new()
            .reconnect(reconnect)
            .connect_timeout(duration_of(connect_timeout, "connect_timeout")?)
            .name(name.unwrap_or_else(|| "python".into()));
        if let Some(realm) = realm {
            opts = opts.realm(realm);
        }
        if let Some(token) = token.filter(|t| !t.is_none()) {
            opts = opts.token(payload_of(token)?);
        }
        if insecure {
            opts = opts.trust(Trust::Insecure);
        } else if let Some(files) = ca.filter(|f| !f.is_empty()) {
            opts = opts.trust(Trust::CaFiles(files));
        }
        if let Some(n) = max_buffered {
            opts = opts.max_buffered(n);
        }
        if let Some(n) = subscription_capacity {
            opts = opts.subscription_capacity(n);
        }
        if let Some(d) = max_reconnect_delay {
            opts = opts.max_reconnect_delay(duration_of(d, "max_reconnect_delay")?);
        }
        let slot = self.client.clone();
        // On the runtime: the handshake's crypto is not the loop's work.
        let handshake = runtime()?.spawn(async move { Client::connect(&url, opts).await });
        self.shared.start(py, async move {
            let client = handshake.await.map_err(|e| ClientError::Connection(e.to_string()))??;
            let _ = slot.set(client);
            Ok(Done::Unit)
        })
    }

    /// Publishes; `None` when queued at once, else a future that resolves once it is
    /// (the SDK's buffer for the node is full).
    #[pyo3(signature = (topic, payload, headers=None))]
    fn publish(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let client = self.client(py)?;
        let payload = payload_of(payload)?;
        let headers = headers_of(py, headers)?;
        {
            // The usual case, without a copy of the topic or a waker: queued at once.
            let publish = std::pin::pin!(client.publish_with_headers(topic, &headers, payload.clone()));
            if let Poll::Ready(r) = publish.poll(&mut Context::from_waker(Waker::noop())) {
                return r.map(|()| None).map_err(|e| to_py_err(py, e));
            }
            // Dropped before it completed: nothing was queued (cancel safe).
        }
        let client = client.clone();
        let topic = topic.to_owned();
        let op = async move { client.publish_with_headers(&topic, &headers, payload).await.map(|()| Done::Unit) };
        self.shared.start(py, op).map(Some)
    }

    /// Subscribes; the future resolves with a feed of messages.
    #[pyo3(signature = (pattern, group=None))]
    fn subscribe(&self, py: Python<'_>, pattern: String, group: Option<String>) -> PyResult<Py<PyAny>> {
        let client = self.client(py)?.clone();
        self.shared.start(py, async move {
            let sub = match group {
                Some(g) => client.subscribe_group(&pattern, &g).await?,
                None => client.subscribe(&pattern).await?,
            };
            Ok(Done::Subscription(sub))
        })
    }

    /// Provides a procedure (a tool when `tool` is a JSON descriptor); the future resolves
    /// with a feed of requests.
    #[pyo3(signature = (procedure, tool=None))]
    fn register(&self, py: Python<'_>, procedure: String, tool: Option<String>) -> PyResult<Py<PyAny>> {
        let client = self.client(py)?.clone();
        let descriptor = match tool {
            None => None,
            Some(json) => Some(serde_json::from_str::<serde_json::Value>(&json).map_err(|e| {
                to_py_err(py, ClientError::InvalidTool { procedure: procedure.clone(), reason: e.to_string() })
            })?),
        };
        self.shared.start(py, async move {
            let reg = match descriptor {
                Some(d) => client.register_described(&procedure, &d).await?,
                None => client.register(&procedure).await?,
            };
            Ok(Done::Registration(reg))
        })
    }

    /// Calls a procedure; the future resolves with the payload, or the whole `Response`
    /// when `full`.
    #[pyo3(signature = (procedure, payload, timeout, headers=None, full=false))]
    fn call(
        &self,
        py: Python<'_>,
        procedure: String,
        payload: &Bound<'_, PyAny>,
        timeout: f64,
        headers: Option<&Bound<'_, PyAny>>,
        full: bool,
    ) -> PyResult<Py<PyAny>> {
        let (client, payload, headers, timeout) = self.call_args(py, payload, headers, timeout)?;
        self.shared.start(py, async move {
            let response = client.call_with_headers(&procedure, &headers, payload, timeout).await?;
            Ok(Done::Response { response, full })
        })
    }

    /// Calls a procedure whose answer streams; the future resolves with a `CallStream`.
    /// A payload over the node's `max_payload` is streamed first.
    #[pyo3(signature = (procedure, payload, timeout, headers=None))]
    fn call_stream(
        &self,
        py: Python<'_>,
        procedure: String,
        payload: &Bound<'_, PyAny>,
        timeout: f64,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (client, payload, headers, timeout) = self.call_args(py, payload, headers, timeout)?;
        self.shared.start(py, async move {
            let stream = client.call_stream_with_headers(&procedure, &headers, payload, timeout).await?;
            Ok(Done::Stream(Box::new(stream)))
        })
    }

    /// Opens a call whose request and answer both stream (at once, not a future).
    #[pyo3(signature = (procedure, timeout, headers=None))]
    fn open_call(
        &self,
        py: Python<'_>,
        procedure: &str,
        timeout: f64,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<feed::CallStream>> {
        let client = self.client(py)?;
        let headers: Headers = headers_of(py, headers)?;
        let timeout = duration_of(timeout, "timeout")?;
        let stream = {
            let _rt = runtime()?.enter();
            client.open_call(procedure, &headers, timeout).map_err(|e| to_py_err(py, e))?
        };
        Py::new(py, feed::CallStream::new(stream, self.shared.clone()))
    }

    /// Resolves once the node has handled everything sent before.
    fn flush(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.client(py)?.clone();
        self.shared.start(py, async move { client.flush().await.map(|()| Done::Unit) })
    }

    /// Flushes, then closes the connection; resolves when it is closed. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let client = self.client.get().cloned();
        let closing = runtime()?.spawn(async move {
            if let Some(c) = client {
                c.close().await;
            }
        });
        self.shared.start(py, async move {
            let _ = closing.await;
            Ok(Done::Unit)
        })
    }

    /// Settles every operation still in flight with `ClientClosed` (after `close`).
    fn abandon_all(&self, py: Python<'_>) {
        let entries: Vec<Entry> = lock(&self.shared.entries).drain().map(|(_, e)| e).collect();
        for entry in entries {
            match entry {
                Entry::Task { settle, op, .. } => {
                    drop(op);
                    self.shared.settle(py, settle.bind(py), Err(ClientError::ClientClosed));
                }
                Entry::Wait { settle } => self.shared.settle(py, settle.bind(py), Ok(Done::Unit)),
            }
        }
    }

    /// Stops an operation whose awaiting task was cancelled: dropping its SDK future
    /// cancels a call at the node and its provider.
    fn forget(&self, fut: &Bound<'_, PyAny>) {
        self.shared.forget(fut.as_ptr() as u64);
    }

    /// The loop's reader callback: polls every operation woken since the last call and
    /// settles those that are done.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let keys = self.shared.notifier.take();
        if keys.is_empty() {
            return Ok(());
        }
        let mut ready = Vec::new();
        {
            let _rt = runtime()?.enter();
            let mut entries = lock(&self.shared.entries);
            for key in keys {
                let finished = match entries.get_mut(&key) {
                    Some(Entry::Task { op, waker, .. }) => match op.as_mut().poll(&mut Context::from_waker(waker)) {
                        Poll::Ready(result) => Some(result),
                        Poll::Pending => None,
                    },
                    Some(Entry::Wait { .. }) => Some(Ok(Done::Unit)),
                    None => None,
                };
                if let Some(result) = finished {
                    match entries.remove(&key) {
                        Some(Entry::Task { settle, .. } | Entry::Wait { settle }) => ready.push((settle, result)),
                        None => {}
                    }
                }
            }
        }
        self.shared.wakes.fetch_add(1, Ordering::Relaxed);
        self.shared.settled.fetch_add(ready.len() as u64, Ordering::Relaxed);
        // Settled with the table unlocked: Python code may run (a finaliser) meanwhile.
        for (settle, result) in ready {
            self.shared.settle(py, settle.bind(py), result);
        }
        Ok(())
    }

    /// Operations in flight (for tests of cleanup).
    fn pending(&self) -> usize {
        lock(&self.shared.entries).len()
    }

    /// `(wakes, settled)`: reader callbacks that found work, and the operations and feed
    /// waits they settled (for the benchmark's completions per wake-up).
    fn counters(&self) -> (u64, u64) {
        (self.shared.wakes.load(Ordering::Relaxed), self.shared.settled.load(Ordering::Relaxed))
    }

    /// The connection's state: `"connected"`, `"reconnecting"` or `"closed"`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.client.get().map(|c| *c.state().borrow()) {
            Some(fovea_client::ConnectionState::Connected) => "connected",
            Some(fovea_client::ConnectionState::Reconnecting) => "reconnecting",
            Some(fovea_client::ConnectionState::Closed) | None => "closed",
        }
    }

    /// The node's name, protocol version and payload limit from its last `WELCOME`.
    #[getter]
    fn server_info(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(info) = self.client.get().and_then(Client::server_info) else { return Ok(None) };
        let d = pyo3::types::PyDict::new(py);
        d.set_item("node", info.node)?;
        d.set_item("version", info.version)?;
        d.set_item("connection_id", info.connection_id)?;
        d.set_item("max_payload", info.max_payload)?;
        Ok(Some(d.into_any().unbind()))
    }
}
