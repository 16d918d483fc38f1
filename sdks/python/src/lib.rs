//! `fovea._fovea`: the native part of the Python SDK (`sdks/python`).
//!
//! The Rust SDK (`fovea-client`) does the work: QUIC, TLS/TCP and WebSocket, reconnection,
//! flow control. This module only carries values across: it polls the SDK's futures on
//! the thread running the asyncio loop, with wakers that need no GIL (the `wake` module), and
//! settles an asyncio future per operation. The Python package (`python/fovea`) wraps it
//! in the documented API; nothing here is meant to be called directly.
//!
//! Threads: one tokio runtime per process (`runtime()`) runs the connections; it never
//! takes the GIL. Everything that touches Python runs on the loop's thread.

mod core;
mod feed;
mod wake;

use std::sync::OnceLock;

use bytes::Bytes;
use fovea_client::{ClientError, ErrorCode, Headers};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

/// The process's tokio runtime: a few worker threads (at most four; a client needs little)
/// that run every connection of every client. Made on first use.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("fovea-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    rt.as_ref().map_err(|e| PyRuntimeError::new_err(format!("cannot start the SDK's runtime: {e}")))
}

/// The exception classes, defined in Python (`fovea/_errors.py`) so they can derive from
/// the built-in ones too (`fovea.Timeout` is a `TimeoutError`).
fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = ERRORS.get_or_try_init(py, || py.import("fovea._errors").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// An exception of class `name` from `fovea._errors` with `message`, and `code` set when
/// given. Falls back to the import failure itself if the package is broken.
pub(crate) fn fovea_error(py: Python<'_>, name: &str, message: String, code: Option<u64>) -> PyErr {
    let made = error_class(py, name).and_then(|class| {
        let exc = class.call1((message,))?;
        if let Some(code) = code {
            exc.setattr("code", code)?;
        }
        Ok(PyErr::from_value(exc))
    });
    made.unwrap_or_else(|e| e)
}

/// The Python exception for an SDK error (the classes are documented in the package).
pub(crate) fn to_py_err(py: Python<'_>, e: ClientError) -> PyErr {
    let message = e.to_string();
    let (class, code) = match &e {
        ClientError::InvalidUrl { .. }
        | ClientError::InvalidTopic { .. }
        | ClientError::InvalidPattern { .. }
        | ClientError::InvalidHeaders(_)
        | ClientError::InvalidProcedure { .. }
        | ClientError::InvalidTool { .. }
        | ClientError::InvalidQuestionKey(_) => ("InvalidArgument", None),
        ClientError::PayloadTooLarge { .. } => ("PayloadTooLarge", None),
        ClientError::AuthFailed => ("AuthError", None),
        ClientError::Closed { code, .. } => ("ConnectError", Some(code.to_u64())),
        ClientError::Resolve { .. }
        | ClientError::NoNode { .. }
        | ClientError::Tls(_)
        | ClientError::Untrusted { .. }
        | ClientError::Connection(_) => ("ConnectError", None),
        ClientError::Disconnected => ("Disconnected", None),
        ClientError::BufferFull(_) => ("BufferFull", None),
        ClientError::ClientClosed => ("ClientClosed", None),
        ClientError::Refused { code, .. } => ("Refused", Some(code.to_u64())),
        ClientError::NoProvider(_) => ("NoProvider", Some(ErrorCode::NoProvider.to_u64())),
        ClientError::Timeout(_) => ("Timeout", Some(ErrorCode::Timeout.to_u64())),
        ClientError::Remote { code, .. } => ("RemoteError", Some(*code)),
        ClientError::ProviderDisconnected => ("ProviderDisconnected", Some(ErrorCode::ProviderDisconnected.to_u64())),
        ClientError::Busy(_) => ("Busy", Some(ErrorCode::Busy.to_u64())),
        ClientError::Unsupported { .. } => ("Unsupported", None),
        ClientError::Cancelled => ("Cancelled", None),
        ClientError::StreamEnded => ("StreamEnded", None),
        ClientError::NotAnswered { .. } if e.is_input_required() => ("InputRequired", None),
        ClientError::NotAnswered { .. } => ("NotAnswered", None),
        _ => ("FoveaError", None),
    };
    fovea_error(py, class, message, code)
}

/// A payload from Python: `bytes`, `bytearray`, `memoryview` (or any contiguous buffer) or
/// `str` (sent as UTF-8). Copied: the SDK owns its buffers past this call.
pub(crate) fn payload_of(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_str()?.as_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Bytes::from(b.to_vec()));
    }
    if let Ok(buf) = pyo3::buffer::PyBuffer::<u8>::get(obj) {
        return Ok(Bytes::from(buf.to_vec(obj.py())?));
    }
    Err(PyTypeError::new_err(format!(
        "a payload must be bytes, bytearray, memoryview or str, not {}",
        obj.get_type().name()?
    )))
}

/// Headers from Python: `None` or a mapping of `str` to `str`.
pub(crate) fn headers_of(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Headers> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Headers::new()) };
    let items = obj
        .call_method0("items")
        .map_err(|_| PyTypeError::new_err("headers must be a mapping of str to str (a dict)"))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in items.try_iter()? {
        let (k, v): (String, String) =
            item?.extract().map_err(|_| PyTypeError::new_err("header names and values must be str"))?;
        pairs.push((k, v));
    }
    Headers::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| to_py_err(py, ClientError::InvalidHeaders(e)))
}

/// Headers as a new `dict` of `str` to `str`.
pub(crate) fn headers_dict<'py>(py: Python<'py>, headers: &Headers) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in headers.iter() {
        dict.set_item(k, v)?;
    }
    Ok(dict)
}

/// A timeout in seconds from Python: finite and not negative.
pub(crate) fn duration_of(seconds: f64, what: &str) -> PyResult<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a finite number of seconds ≥ 0, not {seconds}")))
}

#[pymodule]
fn _fovea(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
    m.add_class::<feed::Message>()?;
    m.add_class::<feed::Response>()?;
    m.add_class::<feed::Request>()?;
    m.add_class::<feed::Feed>()?;
    m.add_class::<feed::CallStream>()?;
    m.add("DEFAULT_URL", fovea_client::DEFAULT_URL)?;
    Ok(())
}
