//! What arrives from the node: messages of a subscription, requests of a registration
//! (both through a [`Feed`]), and call answers.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fovea_client::{Headers, Notice, Registration, Subscription, Topic, LOG_LEVELS};
use futures_core::Stream;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use tokio_util::sync::CancellationToken;

use crate::core::{Done, Shared};
use crate::{headers_dict, headers_of, payload_of};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most items one [`Feed::take`] hands over: enough that a busy feed crosses into Rust
/// once per batch, few enough that one batch's objects stay small.
pub(crate) const TAKE_MAX: usize = 256;

enum Source {
    Subscription(Subscription),
    Registration(Registration),
}

/// The items of a subscription (messages) or of a registration (requests), taken in
/// batches by the package's `Subscription` and `Registration`.
#[pyclass(frozen, module = "fovea._fovea")]
pub struct Feed {
    /// `None` once closed or ended.
    source: Mutex<Option<Source>>,
    /// The pattern or the procedure.
    name: String,
    key: u64,
    waker: Waker,
    /// Messages the node dropped for the subscription, as last seen.
    dropped: AtomicU64,
    shared: Arc<Shared>,
}

impl Feed {
    fn new(source: Source, name: String, shared: Arc<Shared>) -> Feed {
        let key = shared.feed_key();
        let waker = shared.notifier.waker(key);
        Feed { source: Mutex::new(Some(source)), name, key, waker, dropped: AtomicU64::new(0), shared }
    }

    pub(crate) fn subscription(s: Subscription, shared: Arc<Shared>) -> Feed {
        let name = s.pattern().to_string();
        Feed::new(Source::Subscription(s), name, shared)
    }

    pub(crate) fn registration(r: Registration, shared: Arc<Shared>) -> Feed {
        let name = r.procedure().to_string();
        Feed::new(Source::Registration(r), name, shared)
    }
}

impl Drop for Feed {
    /// A wait the application gave up on (a cancelled `async for`) must not outlive the feed.
    fn drop(&mut self) {
        self.shared.forget(self.key);
    }
}

#[pymethods]
impl Feed {
    /// Up to `max` items that are ready, as a list **newest first** (`pop()` hands them out
    /// in order); `None` when the feed has ended; or, when nothing is ready, a future that
    /// resolves once something may be.
    #[pyo3(signature = (max=TAKE_MAX))]
    fn take(&self, py: Python<'_>, max: usize) -> PyResult<Py<PyAny>> {
        let mut source = lock(&self.source);
        let mut cx = Context::from_waker(&self.waker);
        let max = max.clamp(1, TAKE_MAX);
        let list = PyList::empty(py);
        let ended = loop {
            if list.len() >= max {
                break false;
            }
            let polled = match source.as_mut() {
                None => Poll::Ready(None),
                Some(Source::Subscription(s)) => match Pin::new(&mut *s).poll_next(&mut cx) {
                    Poll::Ready(Some(m)) => Poll::Ready(Some(
                        Py::new(py, Message { topic: m.topic, headers: m.headers, payload: m.payload })?.into_any(),
                    )),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                },
                Some(Source::Registration(r)) => match Pin::new(&mut *r).poll_next(&mut cx) {
                    Poll::Ready(Some(req)) => {
                        Poll::Ready(Some(Py::new(py, Request::new(req, self.shared.clone()))?.into_any()))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                },
            };
            match polled {
                Poll::Ready(Some(item)) => list.append(item)?,
                Poll::Ready(None) => break true,
                Poll::Pending => break false,
            }
        };
        if let Some(Source::Subscription(s)) = source.as_ref() {
            self.dropped.store(s.dropped(), Ordering::Relaxed);
        }
        if !list.is_empty() {
            list.reverse()?;
            return Ok(list.into_any().unbind());
        }
        if ended {
            *source = None;
            return Ok(py.None());
        }
        // The poll above left the waker with the SDK: a wake from now on settles this.
        self.shared.wait(py, self.key)
    }

    /// Forgets the wait `take` returned, whose awaiting task was cancelled. Needed, not
    /// tidy: the cancelled future keeps its exception, whose traceback holds the frames that
    /// hold this feed, and a cycle through Rust is one Python's collector cannot see.
    fn abandon(&self) {
        self.shared.forget(self.key);
    }

    /// Ends the feed: unsubscribes or unregisters. Items not taken yet are dropped
    /// (requests among them fail at their callers). Idempotent.
    fn close(&self) {
        let source = lock(&self.source).take();
        drop(source);
    }

    /// The pattern or procedure.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Messages the node dropped for this subscription because it was read too slowly.
    #[getter]
    fn dropped(&self) -> u64 {
        if let Some(Source::Subscription(s)) = lock(&self.source).as_ref() {
            self.dropped.store(s.dropped(), Ordering::Relaxed);
        }
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A message received on a subscription.
#[pyclass(frozen, module = "fovea._fovea")]
pub struct Message {
    topic: Topic,
    headers: Headers,
    payload: Bytes,
}

#[pymethods]
impl Message {
    /// The topic it was published to.
    #[getter]
    fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// Its payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload)
    }

    /// Its headers, a new dict each time (empty when it has none).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_dict(py, &self.headers)
    }

    fn __repr__(&self) -> String {
        format!("Message(topic={:?}, payload=<{} bytes>)", self.topic.as_str(), self.payload.len())
    }
}

/// A call's answer with its headers (`Client.request`).
#[pyclass(frozen, module = "fovea._fovea")]
pub struct Response {
    headers: Headers,
    payload: Bytes,
}

impl From<fovea_client::Response> for Response {
    fn from(r: fovea_client::Response) -> Response {
        Response { headers: r.headers, payload: r.payload }
    }
}

#[pymethods]
impl Response {
    /// The provider's answer.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload)
    }

    /// Headers the provider set (a new dict each time).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_dict(py, &self.headers)
    }

    fn __repr__(&self) -> String {
        format!("Response(payload=<{} bytes>)", self.payload.len())
    }
}

/// One call to a procedure this client provides. Answer it once with `respond` or `fail`;
/// one dropped unanswered fails at its caller ("dropped without an answer").
#[pyclass(frozen, module = "fovea._fovea")]
pub struct Request {
    procedure: String,
    headers: Headers,
    payload: Bytes,
    deadline: tokio::time::Instant,
    /// `None` once answered, and while a `send` or `next_chunk` has it.
    inner: Arc<Mutex<Option<fovea_client::Request>>>,
    /// Which directions of the call stream (see the SDK's `Request::answer_streams`).
    answer_streams: bool,
    request_streams: bool,
    /// Cancelled once answered (or dropped): ends waits for cancellation.
    done: CancellationToken,
    shared: Arc<Shared>,
}

impl Request {
    fn new(req: fovea_client::Request, shared: Arc<Shared>) -> Request {
        Request {
            procedure: req.procedure.to_string(),
            headers: req.headers.clone(),
            payload: req.payload.clone(),
            deadline: req.deadline(),
            answer_streams: req.answer_streams(),
            request_streams: req.request_streams(),
            inner: Arc::new(Mutex::new(Some(req))),
            done: CancellationToken::new(),
            shared,
        }
    }

    /// Takes the SDK request to answer it.
    fn answer(&self) -> PyResult<fovea_client::Request> {
        let req = lock(&self.inner).take().ok_or_else(|| {
            PyRuntimeError::new_err("this request was already answered, or a send or next_chunk on it is not finished")
        })?;
        self.done.cancel();
        Ok(req)
    }

    fn with_open(&self, f: impl FnOnce(&fovea_client::Request)) {
        if let Some(req) = lock(&self.inner).as_ref() {
            f(req)
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

#[pymethods]
impl Request {
    /// The procedure called.
    #[getter]
    fn procedure(&self) -> &str {
        &self.procedure
    }

    /// The caller's payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload)
    }

    /// The caller's headers (a new dict each time).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_dict(py, &self.headers)
    }

    /// The MCP method this request serves for a resource, template or prompt
    /// (`resources/read`, `prompts/get`, `completion/complete`), or None.
    #[getter]
    fn mcp_method(&self) -> Option<&'static str> {
        self.headers.get(fovea_client::METHOD_HEADER).and_then(fovea_client::McpMethod::parse).map(|m| m.as_str())
    }

    /// Seconds left until the caller's deadline (0 once it passed).
    #[getter]
    fn remaining(&self) -> f64 {
        self.deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs_f64()
    }

    /// Whether the caller cancelled, its deadline passed or the connection was lost: an
    /// answer now is discarded. False once answered.
    #[getter]
    fn is_cancelled(&self) -> bool {
        lock(&self.inner).as_ref().is_some_and(fovea_client::Request::is_cancelled)
    }

    /// A future that resolves with `True` when the call is abandoned (see `is_cancelled`),
    /// or `False` once it is answered.
    fn cancelled(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let cancel = lock(&self.inner).as_ref().map(fovea_client::Request::cancellation);
        let done = self.done.clone();
        self.shared.start_owned(py, async move {
            let Some(cancel) = cancel else { return Ok(Done::Flag(false)) };
            tokio::select! {
                biased;
                () = cancel => Ok(Done::Flag(true)),
                () = done.cancelled_owned() => Ok(Done::Flag(false)),
            }
        })
    }

    /// Whether the caller takes its answer as a stream: `send` parts before `respond`
    /// (and `respond` may be given more than the node's `max_payload`).
    #[getter]
    fn answer_streams(&self) -> bool {
        self.answer_streams
    }

    /// Whether the caller streams its request: read the rest after `payload` with
    /// `next_chunk`.
    #[getter]
    fn request_streams(&self) -> bool {
        self.request_streams
    }

    /// A future that resolves once `payload` is sent as the next part of a streamed
    /// answer (it waits while the caller has no room: a slow reader slows this down).
    fn send(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let payload = payload_of(payload)?;
        let slot = self.inner.clone();
        let mut req = lock(&slot).take().ok_or_else(|| {
            PyRuntimeError::new_err("this request was already answered, or a send or next_chunk on it is not finished")
        })?;
        self.shared.start_owned(py, async move {
            let sent = req.send(payload).await;
            *lock(&slot) = Some(req);
            sent.map(|()| Done::Unit)
        })
    }

    /// A future that resolves with the agent's answer (the MCP result, as a dict) to a
    /// question asked while handling this request: `method` is `elicitation/create`,
    /// `sampling/createMessage` or `roots/list`, `params` its MCP params as JSON text;
    /// `key` names the question the same way on every run of the call (`Request::ask_keyed`).
    #[pyo3(signature = (method, params, key=None))]
    fn ask(&self, py: Python<'_>, method: String, params: &str, key: Option<String>) -> PyResult<Py<PyAny>> {
        let params: serde_json::Value = serde_json::from_str(params)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("params are not JSON: {e}")))?;
        let slot = self.inner.clone();
        let req = lock(&slot).take().ok_or_else(|| {
            PyRuntimeError::new_err("this request was already answered, or a send or next_chunk on it is not finished")
        })?;
        self.shared.start_owned(py, async move {
            let answer = match &key {
                Some(key) => req.ask_keyed(key, &method, params).await,
                None => req.ask(&method, params).await,
            };
            *lock(&slot) = Some(req);
            answer.map(|v| Done::Json(v.to_string()))
        })
    }

    /// A future that resolves with the next chunk of a streamed request (after
    /// `payload`), or `None` at its end.
    fn next_chunk(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let slot = self.inner.clone();
        let mut req = lock(&slot).take().ok_or_else(|| {
            PyRuntimeError::new_err("this request was already answered, or a send or next_chunk on it is not finished")
        })?;
        self.shared.start_owned(py, async move {
            let chunk = req.next_chunk().await;
            *lock(&slot) = Some(req);
            chunk.transpose().map(Done::Chunk)
        })
    }

    /// Answers with `payload` (bytes or str) and optional headers.
    #[pyo3(signature = (payload=None, headers=None))]
    fn respond(
        &self,
        py: Python<'_>,
        payload: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let payload = payload.map(payload_of).transpose()?.unwrap_or_default();
        let headers = headers_of(py, headers)?;
        self.answer()?.respond_with_headers(headers, payload);
        Ok(())
    }

    /// Fails the call with `message`, and an application code from 0x1000 up (default
    /// 0x1000); the caller gets `RemoteError` with that `code`.
    #[pyo3(signature = (message, code=None))]
    fn fail(&self, message: &str, code: Option<u64>) -> PyResult<()> {
        let req = self.answer()?;
        match code {
            Some(c) => req.fail_with_code(c, message),
            None => req.fail(message),
        }
        Ok(())
    }

    /// Reports progress to the caller (an MCP agent sees `notifications/progress`).
    /// Ignored once answered or abandoned.
    #[pyo3(signature = (progress, total=None, message=None))]
    fn notify(&self, progress: f64, total: Option<f64>, message: Option<String>) -> PyResult<()> {
        if !progress.is_finite() || total.is_some_and(|t| !t.is_finite()) {
            return Err(PyValueError::new_err("progress and total must be finite numbers"));
        }
        self.with_open(|req| req.notify(&Notice::Progress { progress, total, message }));
        Ok(())
    }

    /// Sends a log line to the caller (an MCP agent sees `notifications/message`): `level`
    /// is one of the MCP levels ("debug" … "emergency"), `data` anything `json.dumps`
    /// accepts.
    #[pyo3(signature = (level, data, logger=None))]
    fn log(&self, py: Python<'_>, level: &str, data: &Bound<'_, PyAny>, logger: Option<String>) -> PyResult<()> {
        if !LOG_LEVELS.contains(&level) {
            return Err(PyValueError::new_err(format!(
                "level must be one of {}, not {level:?}",
                LOG_LEVELS.join(", ")
            )));
        }
        let text: String = py.import("json")?.call_method1("dumps", (data,))?.extract()?;
        let data = serde_json::from_str(&text).map_err(|e| PyValueError::new_err(format!("data is not JSON: {e}")))?;
        self.with_open(|req| req.notify(&Notice::Log { level: level.to_owned(), logger, data }));
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("Request(procedure={:?}, payload=<{} bytes>)", self.procedure, self.payload.len())
    }
}

/// A call whose answer streams (`Core::call_stream`): its chunks one `next` at a time.
#[pyclass(frozen, module = "fovea._fovea")]
pub struct CallStream {
    /// `None` once the answer ended or the call was cancelled (dropping it cancels).
    inner: Arc<tokio::sync::Mutex<Option<fovea_client::CallStream>>>,
    /// The request's sending half, apart so that sending never waits for a `next`; `None`
    /// when the request does not stream or once finished.
    sender: Arc<tokio::sync::Mutex<Option<fovea_client::CallSender>>>,
    headers: Arc<Mutex<Headers>>,
    shared: Arc<Shared>,
}

impl CallStream {
    pub(crate) fn new(mut stream: fovea_client::CallStream, shared: Arc<Shared>) -> CallStream {
        let sender = stream.take_sender();
        CallStream {
            inner: Arc::new(tokio::sync::Mutex::new(Some(stream))),
            sender: Arc::new(tokio::sync::Mutex::new(sender)),
            headers: Arc::default(),
            shared,
        }
    }
}

#[pymethods]
impl CallStream {
    /// A future that resolves with the next chunk of the answer, or `None` at its end
    /// (then `headers` holds the answer's headers); a failed call raises its error once.
    fn next(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (inner, headers) = (self.inner.clone(), self.headers.clone());
        self.shared.start_owned(py, async move {
            let mut slot = inner.lock().await;
            let Some(stream) = slot.as_mut() else { return Ok(Done::Chunk(None)) };
            match stream.next().await {
                Some(Ok(chunk)) => Ok(Done::Chunk(Some(chunk))),
                Some(Err(e)) => {
                    *slot = None;
                    Err(e)
                }
                None => {
                    *lock(&headers) = stream.headers().clone();
                    *slot = None;
                    Ok(Done::Chunk(None))
                }
            }
        })
    }

    /// A future that resolves once `payload` is sent as the next part of the request
    /// (opened with `open_call`), as the provider makes room for it.
    fn send(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let payload = payload_of(payload)?;
        let sender = self.sender.clone();
        self.shared.start_owned(py, async move {
            let mut slot = sender.lock().await;
            let Some(s) = slot.as_mut() else { return Err(fovea_client::ClientError::StreamEnded) };
            s.send(payload).await.map(|()| Done::Unit)
        })
    }

    /// Ends the request (opened with `open_call`).
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.sender.try_lock().ok().and_then(|mut s| s.take());
        let Some(sender) = taken else {
            return Err(PyRuntimeError::new_err("the request was finished already, or a send is not finished"));
        };
        sender.finish().map_err(|e| crate::to_py_err(py, e))
    }

    /// The answer's headers, once `next` has returned `None` (empty before).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_dict(py, &lock(&self.headers))
    }

    /// Abandons the call (the provider is told), unless a `next` is waiting.
    fn cancel(&self) {
        if let Ok(mut slot) = self.inner.try_lock() {
            *slot = None;
        }
    }
}
