//! Waking the asyncio event loop from the SDK's threads without the GIL.
//!
//! The Rust SDK's futures are polled on the Python thread (the one running the event loop),
//! with wakers made here. A waker never touches Python: it files its token and, if the
//! loop has not been told yet, writes one byte to a socket pair whose other end the loop
//! watches (`loop.add_reader`). The loop's reader callback ([`crate::core::Core::drain`])
//! then takes every token filed since and polls those futures again, so one wake-up of the
//! loop serves any number of completions.
//!
//! Why not `pyo3-async-runtimes`: it completes each future from a tokio thread by taking
//! the GIL and calling `call_soon_threadsafe`. Under load the Python thread holds the GIL,
//! so every completion would wait for the interpreter to hand it over (the switch
//! interval is 5 ms), and one thread-safe call per message is what this batching saves.
//!
//! Invariant: a token filed after the loop drained is followed by a byte written after
//! that drain, so no wake is lost: [`Notifier::take`] empties the socket before it clears
//! `signalled`, and a waker files its token before it reads `signalled`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// Tokens woken since the loop last looked, and the socket pair that tells it.
pub(crate) struct Notifier {
    woken: Mutex<Vec<u64>>,
    /// A byte is (or is about to be) in the socket: later wakes need not write.
    signalled: AtomicBool,
    read: UnixStream,
    write: UnixStream,
}

impl Notifier {
    pub(crate) fn new() -> std::io::Result<Arc<Notifier>> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        Ok(Arc::new(Notifier { woken: Mutex::new(Vec::new()), signalled: AtomicBool::new(false), read, write }))
    }

    /// The descriptor the event loop watches for reading.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// A waker that files `token`.
    pub(crate) fn waker(self: &Arc<Self>, token: u64) -> Waker {
        Waker::from(Arc::new(TokenWaker { notifier: self.clone(), token }))
    }

    fn wake(&self, token: u64) {
        self.woken.lock().unwrap_or_else(PoisonError::into_inner).push(token);
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full socket (WouldBlock) already holds a byte the loop has not read: it
            // will look. Any other failure means the loop's end is gone with the client.
            let _ = (&self.write).write(&[1]);
        }
    }

    /// Every token filed since the last call (possibly repeated), in the order filed.
    pub(crate) fn take(&self) -> Vec<u64> {
        let mut sink = [0u8; 64];
        while matches!((&self.read).read(&mut sink), Ok(n) if n > 0) {}
        self.signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

struct TokenWaker {
    notifier: Arc<Notifier>,
    token: u64,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.notifier.wake(self.token);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notifier.wake(self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a byte was waiting for the loop (consumes it, as the loop's wake-up does).
    fn told(n: &Notifier) -> bool {
        let mut b = [0u8; 8];
        matches!((&n.read).read(&mut b), Ok(k) if k > 0)
    }

    #[test]
    fn wakes_are_filed_once_signalled_and_none_is_lost() {
        let n = Notifier::new().unwrap();
        let (a, b) = (n.waker(1), n.waker(2));
        assert!(n.take().is_empty());
        a.wake_by_ref();
        b.wake_by_ref();
        a.wake_by_ref();
        assert!(told(&n), "the loop is told");
        assert_eq!(n.take(), [1, 2, 1]);
        assert!(!told(&n), "nothing more to tell");
        // A wake after a take is signalled again.
        b.wake();
        assert!(told(&n));
        assert_eq!(n.take(), [2]);
    }

    #[test]
    fn wakes_from_other_threads_all_arrive() {
        let n = Notifier::new().unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let w = n.waker(t);
                std::thread::spawn(move || (0..1000).for_each(|_| w.wake_by_ref()))
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 4000 {
            seen.extend(n.take());
            if threads.iter().all(|t| t.is_finished()) {
                seen.extend(n.take());
                break;
            }
        }
        assert_eq!(seen.len(), 4000);
    }
}
