//! Idle spinning: a runtime worker about to sleep first watches the process's QUIC sockets
//! (a fovea node's, or the SDK clients' of a process that opts in) for a short, adaptive
//! window.
//!
//! Use: [`install`] on the tokio runtime builder with the longest window; sockets register
//! with [`Watch::new`] (the node and, when spinning is on as it connects, the SDK do so
//! themselves). Without [`install`], or with a zero window, nothing spins and watching a
//! socket costs nothing.
//!
//! Why: on a quiet node most of an RPC's latency is not work but waking up. A worker that
//! sleeps in `epoll_wait` is woken by the kernel when a datagram lands, and on a virtual
//! machine that wake (halt, then an inter-processor interrupt through the hypervisor)
//! costs 30–40 µs, once per hop. A bare UDP ping-pong here takes 71 µs with sleeping
//! receivers and 9.6 µs with spinning ones (BENCHMARKS.md, "Idle spinning"). Go's
//! scheduler, and so NATS, spins before it parks for the same reason.
//!
//! How: tokio calls [`on_park`] before a worker sleeps and [`on_unpark`] when it wakes.
//! `on_park` polls the watched sockets (zero-timeout `poll(2)`) until one is readable or
//! the window ends; a readable socket means the `epoll_wait` of the worker that takes
//! tokio's I/O driver (the first to park) returns at once, hence [`MAX_SPINNERS`].
//! The window adapts per worker like the kernel's guest halt-polling: an idle spell longer
//! than the window but within the maximum grows it (×2, from 10 µs), a spell past the
//! maximum halves it (below 10 µs: off). So a node spins only while its traffic comes in
//! gaps shorter than the maximum — where a spin replaces a sleep that would have been
//! short anyway — and a node idle or under steady light load does not spin at all. The
//! cost: workers whose gaps stay just under the maximum keep up to [`MAX_SPINNERS`] cores
//! busy. A window of zero (the node's `--idle-spin 0`) turns it off (laptops, hosts shared
//! with latency-insensitive work).
//!
//! Bounds: at most [`MAX_WATCHED`] sockets are watched (a process running more nodes than
//! that, as tests do, or many SDK clients each with its own socket, spins on the first
//! ones only); the window never exceeds the maximum set by [`set_max`] (at most
//! [`MAX_WINDOW`]); at most [`MAX_SPINNERS`] workers spin at once.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sockets watched at most.
pub const MAX_WATCHED: usize = 8;
/// Workers that may spin at once. Not one: a spin only saves a wake-up in the worker that
/// then takes tokio's I/O driver, and that is the first worker to park. With one spinner,
/// a second worker going idle parked at once, took the driver and slept in `epoll_wait`
/// while the spinner watched a socket whose datagrams it could not read. Letting two spin
/// took `fovea bench rpc --callers 1` p50 from a median of 150 to 120 µs over five runs,
/// throughput unchanged (BENCHMARKS.md, "Idle spinning"). At most two cores spin, and
/// each yields its core to any runnable thread.
pub const MAX_SPINNERS: usize = 2;
/// The largest maximum window accepted.
pub const MAX_WINDOW: Duration = Duration::from_millis(1);
/// The window a worker starts from when its gaps become short.
const GROW_START_NS: u64 = 10_000;

static WATCHED: [AtomicI32; MAX_WATCHED] = [const { AtomicI32::new(-1) }; MAX_WATCHED];
static MAX_NS: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static SPUN_NS: AtomicU64 = AtomicU64::new(0);
/// Workers spinning now, at most [`MAX_SPINNERS`].
static SPINNING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This worker's window, ns (0: not spinning).
    static WINDOW_NS: Cell<u64> = const { Cell::new(0) };
    /// When this worker last went idle.
    static IDLE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Hooks [`on_park`] and [`on_unpark`] into a runtime being built (replacing park hooks set
/// on it before), and sets the longest window (see [`set_max`]). The setting is per
/// process: every runtime with the hooks shares it.
pub fn install(builder: &mut tokio::runtime::Builder, max: Duration) {
    set_max(max);
    builder.on_thread_park(on_park).on_thread_unpark(on_unpark);
}

/// Sockets watched now.
pub fn watched() -> usize {
    WATCHED.iter().filter(|w| w.load(Ordering::Relaxed) >= 0).count()
}

/// Whether spinning is on: a window is set (the hooks may still be missing).
pub fn enabled() -> bool {
    MAX_NS.load(Ordering::Relaxed) > 0
}

/// Sets the longest window (0 turns spinning off); clamped to [`MAX_WINDOW`].
pub fn set_max(max: Duration) {
    let ns = u64::try_from(max.min(MAX_WINDOW).as_nanos()).unwrap_or(0);
    MAX_NS.store(ns, Ordering::Relaxed);
}

/// The longest window now in force.
pub fn max() -> Duration {
    Duration::from_nanos(MAX_NS.load(Ordering::Relaxed))
}

/// Counters: spins ended by a readable socket, spins that ran out, and time spent spinning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpinStats {
    pub hits: u64,
    pub misses: u64,
    pub spun: Duration,
}

/// The process-wide counters.
pub fn stats() -> SpinStats {
    SpinStats {
        hits: HITS.load(Ordering::Relaxed),
        misses: MISSES.load(Ordering::Relaxed),
        spun: Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed)),
    }
}

/// A watched socket; dropping it stops the watch. Holds the raw descriptor only (a
/// duplicate would keep the socket, and its port, alive after its owner closes it), so it
/// must be dropped before the socket is closed.
#[derive(Debug)]
pub struct Watch(Option<usize>);

impl Watch {
    /// Watches `fd` if one of the [`MAX_WATCHED`] places is free; otherwise the watch does
    /// nothing (see [`Watch::is_active`]).
    pub fn new(fd: RawFd) -> Watch {
        let slot = WATCHED.iter().position(|w| w.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        Watch(slot)
    }

    /// Whether the socket got a place (idle workers poll it).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            WATCHED[slot].store(-1, Ordering::Release);
        }
    }
}

/// For tokio's `on_thread_park`: spin while this worker's window lasts or until a watched
/// socket is readable.
pub fn on_park() {
    let now = Instant::now();
    IDLE_SINCE.set(Some(now));
    let window = WINDOW_NS.get().min(MAX_NS.load(Ordering::Relaxed));
    if window == 0 {
        return;
    }
    let mut fds = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; MAX_WATCHED];
    let mut n = 0;
    for w in &WATCHED {
        let fd = w.load(Ordering::Acquire);
        if fd >= 0 {
            fds[n].fd = fd;
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    // Take a place, or give back the one just taken: the count never goes below zero.
    if SPINNING.fetch_add(1, Ordering::Acquire) >= MAX_SPINNERS {
        SPINNING.fetch_sub(1, Ordering::Release);
        return;
    }
    let _done = SpinToken;
    loop {
        // SAFETY: `fds[..n]` are initialised pollfds; a zero timeout never blocks. A closed
        // descriptor yields POLLNVAL, which ends the spin like readiness: harmless.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, 0) };
        let spun = u64::try_from(now.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if ready != 0 {
            HITS.fetch_add(1, Ordering::Relaxed);
            SPUN_NS.fetch_add(spun, Ordering::Relaxed);
            return;
        }
        if spun >= window {
            MISSES.fetch_add(1, Ordering::Relaxed);
            SPUN_NS.fetch_add(spun, Ordering::Relaxed);
            return;
        }
        // Polite: a thread of another process waiting for this core (a client on the same
        // host) gets it; with nothing else runnable this returns at once.
        std::thread::yield_now();
    }
}

/// Releases a place in [`SPINNING`] however the spin ends.
struct SpinToken;

impl Drop for SpinToken {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Release);
    }
}

/// For tokio's `on_thread_unpark`: adapt this worker's window to the idle spell that ended.
pub fn on_unpark() {
    let Some(since) = IDLE_SINCE.take() else { return };
    let idle = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    WINDOW_NS.set(next_window(WINDOW_NS.get(), idle, MAX_NS.load(Ordering::Relaxed)));
}

/// The window after an idle spell of `idle` ns with window `window` and maximum `max`.
fn next_window(window: u64, idle: u64, max: u64) -> u64 {
    if max == 0 {
        0
    } else if idle <= window {
        // Caught (or woken within the window anyway): keep it.
        window
    } else if idle <= max {
        // A longer window would have caught it.
        (window * 2).clamp(GROW_START_NS.min(max), max)
    } else {
        // A long spell: spinning was wasted.
        let half = window / 2;
        if half < GROW_START_NS {
            0
        } else {
            half
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_grows_for_short_gaps_and_shrinks_for_long_ones() {
        let max = 100_000;
        // Off; a short gap starts it.
        assert_eq!(next_window(0, 50_000, max), GROW_START_NS);
        // Grows while gaps are within the maximum but past the window, never beyond it.
        assert_eq!(next_window(10_000, 50_000, max), 20_000);
        assert_eq!(next_window(80_000, 90_000, max), max);
        // A gap it caught leaves it alone.
        assert_eq!(next_window(40_000, 30_000, max), 40_000);
        // Long gaps halve it, then turn it off.
        assert_eq!(next_window(max, 5_000_000, max), 50_000);
        assert_eq!(next_window(15_000, 5_000_000, max), 0);
        assert_eq!(next_window(0, 5_000_000, max), 0);
        // Spinning off: always 0.
        assert_eq!(next_window(40_000, 30_000, 0), 0);
    }

    #[test]
    fn a_worker_with_nothing_to_watch_takes_no_spinner_place() {
        set_max(Duration::from_micros(100));
        // A short idle spell opens this thread's window.
        on_park();
        on_unpark();
        assert!(WINDOW_NS.get() > 0);
        // Whatever other tests watch meanwhile, every spin gives its place back: the count
        // must neither leak nor wrap below zero (which would stop all spinning for good).
        for _ in 0..3 {
            on_park();
            on_unpark();
        }
        assert_eq!(SPINNING.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_watch_frees_its_slot() {
        // Other tests bind nodes (and watches) concurrently: look at this watch's slot only.
        let fd = 1_000_000;
        let w = Watch::new(fd);
        let slot = w.0.expect("a free slot");
        assert_eq!(WATCHED[slot].load(Ordering::Relaxed), fd);
        drop(w);
        assert_ne!(WATCHED[slot].load(Ordering::Relaxed), fd);
    }
}
