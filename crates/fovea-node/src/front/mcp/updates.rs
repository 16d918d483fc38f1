//! Resource updates for agents: MCP's `resources/subscribe` (and 2026-07-28's
//! `subscriptions/listen` with resource URIs) mapped onto the mesh's pub/sub.
//!
//! Whoever may publish in the realm announces that a resource changed by publishing its
//! URI to `$mcp.updated.<procedure>` (the procedure that serves it; the SDK's
//! `Client::resource_updated`, or `fovea pub` from a shell). This module is an in-process
//! subscriber, like the MCP caller: one [`Handle`] whose queue it decodes itself, one
//! subscription per watching agent, each feeding the URIs published there to that agent's
//! task. So an update published on any node reaches agents on every node, as any message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fovea_core::{Deframer, Frame, Pattern};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handle::outbound::Outbound;
use crate::handle::Handle;
use crate::routing::{Realm, SubRef};
use crate::sync::lock;

use fovea_core::tool::answers::RESOURCE_UPDATED_PREFIX;

/// URIs queued for one watcher before later ones are dropped (an agent that is told a
/// resource changed reads it again; it needs one notice, not every one).
const FEED_DEPTH: usize = 16;

/// How often watchers whose agent went away are unsubscribed, when no new watch does it.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Watcher {
    realm: Arc<Realm>,
    pattern: Pattern,
    feed: mpsc::Sender<String>,
}

/// The node's in-process subscriber of resource updates.
pub(crate) struct Updates {
    handle: Arc<Handle>,
    next_sid: AtomicU64,
    watchers: Mutex<HashMap<u64, Watcher>>,
}

impl Updates {
    /// A hub whose queue holds at most `max_pending` bytes.
    pub fn new(max_pending: usize, slow_after: Duration, max_answer: usize) -> Arc<Updates> {
        let out = Outbound::new(max_pending, slow_after, false);
        Arc::new(Updates {
            handle: Arc::new(Handle::new(out, max_answer)),
            next_sid: AtomicU64::new(1),
            watchers: Mutex::new(HashMap::new()),
        })
    }

    /// Watchers now (each an agent's subscription to one procedure's updates).
    pub fn watching(&self) -> usize {
        lock(&self.watchers).len()
    }

    /// A feed of the URIs published as updated under `procedure` in `realm`, until the
    /// receiver is dropped; `None` when the procedure makes no valid topic.
    pub fn watch(&self, realm: &Arc<Realm>, procedure: &str) -> Option<mpsc::Receiver<String>> {
        let pattern = Pattern::new(&format!("{RESOURCE_UPDATED_PREFIX}{procedure}")).ok()?;
        self.sweep();
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let (feed, rx) = mpsc::channel(FEED_DEPTH);
        realm.subscribe(&pattern, SubRef { handle: self.handle.clone(), sid, group: None });
        lock(&self.watchers).insert(sid, Watcher { realm: realm.clone(), pattern, feed });
        Some(rx)
    }

    /// Unsubscribes the watchers whose receiver was dropped.
    fn sweep(&self) {
        let gone: Vec<(u64, Watcher)> = {
            let mut watchers = lock(&self.watchers);
            let ids: Vec<u64> = watchers.iter().filter(|(_, w)| w.feed.is_closed()).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| watchers.remove(&id).map(|w| (id, w))).collect()
        };
        for (sid, w) in gone {
            w.realm.unsubscribe([(&w.pattern, SubRef { handle: self.handle.clone(), sid, group: None })]);
        }
    }

    /// Decodes what reaches the hub's queue and feeds each watcher, until `stop`.
    pub async fn drive(self: Arc<Self>, stop: CancellationToken) {
        let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
        let mut taken = Vec::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = self.handle.out.wait() => {}
                _ = sweep.tick() => {
                    self.sweep();
                    continue;
                }
                () = stop.cancelled() => break,
            }
            taken.clear();
            // The queue refuses more while full rather than growing; it is never too slow
            // for itself, so the error cannot happen here.
            let _ = self.handle.out.take_into(&mut taken);
            for chunk in taken.drain(..) {
                deframer.push(chunk);
            }
            while let Ok(Some(frame)) = deframer.next_frame() {
                let Frame::Msg(m) = frame else { continue };
                let Ok(uri) = String::from_utf8(m.payload.to_vec()) else { continue };
                if let Some(w) = lock(&self.watchers).get(&m.sid) {
                    // A full feed: the agent has notices it has not taken; dropping one
                    // more loses nothing it needs.
                    let _ = w.feed.try_send(uri);
                }
            }
        }
        self.handle.out.close();
        let all: Vec<(u64, Watcher)> = lock(&self.watchers).drain().collect();
        for (sid, w) in all {
            w.realm.unsubscribe([(&w.pattern, SubRef { handle: self.handle.clone(), sid, group: None })]);
        }
    }
}
