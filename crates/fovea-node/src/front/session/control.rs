//! Every frame a client sends but `PUB`: subscriptions, registrations, calls, answers,
//! the tool catalog.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use fovea_core::frame::{
    data_flags, Call, PubStream, Register, Subscribe, ToolList, ToolsQuery, VERSION_MCP_KINDS, VERSION_MESSAGE_STREAMS,
    VERSION_RPC, VERSION_STREAMS, VERSION_TOOLS,
};
use fovea_core::tool::{Descriptor, Kind};
use fovea_core::{ErrorCode, Frame, Pattern, Procedure};
use std::sync::Arc;

use super::{Close, Session};
use crate::handle::{Answer, Flow, ProviderRef};
use crate::routing::calls::{route_call, Origin};
use crate::routing::catalog::{TOOL_PAGE_BYTES, TOOL_PAGE_ITEMS};
use crate::routing::{check_limits, GroupKey, SubRef};

impl Session {
    pub(super) fn control(&mut self, frame: Frame) -> Result<(), Close> {
        let needs = match &frame {
            // A tool descriptor is a version 4 field. Not ignored as trailing bytes: a client
            // that sends one wants a tool, and dropping it silently would hide its bug.
            Frame::Reg(r) if !r.tool.is_empty() => VERSION_TOOLS,
            Frame::Reg(_) | Frame::Unreg(_) | Frame::Call(_) | Frame::Respond(_) | Frame::Cancel(_) => VERSION_RPC,
            Frame::Notice(_) | Frame::Tools(_) => VERSION_TOOLS,
            Frame::Data(_) | Frame::Credit(_) => VERSION_STREAMS,
            Frame::PubStream(_) => VERSION_MESSAGE_STREAMS,
            _ => 0,
        };
        if self.version < needs {
            self.shared.router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            let what = match &frame {
                Frame::Reg(r) if !r.tool.is_empty() => "a REG with a tool descriptor".to_owned(),
                f => format!("frame type 0x{:x}", f.kind()),
            };
            let msg = format!("{what} needs protocol version {needs}; this session speaks {}", self.version);
            return Err(Close::new(ErrorCode::ProtocolError, msg));
        }
        match frame {
            Frame::Sub(s) => self.subscribe(s),
            Frame::Unsub(sid) => {
                if let Some((p, group)) = self.subs.remove(&sid) {
                    self.realm.unsubscribe([(&p, SubRef { handle: self.handle.clone(), sid, group })]);
                    self.info.subscriptions.store(self.subs.len(), Ordering::Relaxed);
                    // Streamed messages under way to it end here: their publishers go on
                    // with the other receivers.
                    self.handle.cut_receiving(sid);
                }
            }
            Frame::Ping(token) => self.handle.out.send(&Frame::Pong(token)),
            Frame::Pong(_) => {}
            Frame::Reg(r) => self.register(r),
            Frame::Unreg(rid) => {
                if let Some((p, key)) = self.regs.remove(&rid) {
                    self.realm.unregister([(&p, ProviderRef { handle: self.handle.clone(), rid }, key)]);
                    self.info.registrations.store(self.regs.len(), Ordering::Relaxed);
                }
            }
            Frame::Call(c) => self.call(c),
            Frame::Respond(r) => {
                self.shared.router.stats.responses.fetch_add(1, Ordering::Relaxed);
                let now = self.read_at();
                match self.handle.finish_request(r.req_id, r.code, r.headers, r.payload, now) {
                    Answer::Relayed(took) => self.shared.router.stats.call_latency.record(took),
                    Answer::Late => {
                        self.shared.router.stats.late_responses.fetch_add(1, Ordering::Relaxed);
                    }
                    // Reference 0: a req_id is the node's number, and as a reference it
                    // could be taken for one of the client's own sids, rids or call ids.
                    Answer::TooLarge(len, max) => self.reject(
                        ErrorCode::PayloadTooLarge,
                        0,
                        format!(
                            "the answer to request {} is {len} bytes, over max_payload {max}; \
                             its caller got PAYLOAD_TOO_LARGE",
                            r.req_id
                        ),
                    ),
                }
            }
            Frame::Cancel(call_id) => self.handle.cancel_call(call_id),
            // An answer to a provider's question comes from the call's caller (a call id);
            // every other notice from a provider (a request id).
            Frame::Notice(n) if n.kind == fovea_core::frame::notice::REPLY => {
                if !self.handle.notify_provider(n.id, n.kind, n.body) {
                    self.shared.router.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Notice(n) => {
                if !self.handle.forward_notice(n.id, n.kind, n.body) {
                    self.shared.router.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Tools(q) => self.list_tools(q),
            // A chunk of the answer comes from the call's provider (a request id), a chunk
            // of the request from its caller (a call id); credit goes the other way.
            Frame::PubStream(p) => self.publish_stream(p),
            Frame::Data(d) => {
                let stats = &self.shared.router.stats;
                stats.stream_chunks.fetch_add(1, Ordering::Relaxed);
                stats.stream_bytes.fetch_add(d.chunk.len() as u64, Ordering::Relaxed);
                let flow = if d.flags & data_flags::MESSAGE != 0 {
                    let limits = &self.shared.config.limits;
                    let flow = self.handle.publish_data(d.id, d.flags, &d.chunk, limits.max_payload);
                    if flow == Flow::Broken || flow == Flow::TooLarge {
                        let (code, why) = if flow == Flow::TooLarge {
                            let max = limits.max_stream_bytes;
                            (
                                ErrorCode::PayloadTooLarge,
                                format!("the message is over the node's max_stream_bytes of {max}"),
                            )
                        } else {
                            let why = "a chunk beyond the credit the node granted, or larger than max_payload";
                            (ErrorCode::FlowControlError, why.to_owned())
                        };
                        self.reject(code, d.id, format!("message stream {}: {why}", d.id));
                        let cut = fovea_core::frame::Credit {
                            id: d.id,
                            flags: data_flags::MESSAGE | data_flags::CUT,
                            bytes: 0,
                        };
                        self.handle.out.send(&Frame::Credit(cut));
                        return Ok(());
                    }
                    flow
                } else if d.flags & data_flags::ANSWER != 0 {
                    self.handle.answer_data(d.id, &d.chunk)
                } else {
                    self.handle.request_data(d.id, d.flags, &d.chunk)
                };
                self.count_flow(flow);
            }
            Frame::Credit(c) => {
                let flow = if c.flags & data_flags::MESSAGE != 0 {
                    let flow = self.handle.message_credit(c.id, c.flags, c.bytes);
                    if flow == Flow::Broken {
                        self.shared.router.stats.messages_cut.fetch_add(1, Ordering::Relaxed);
                    }
                    flow
                } else if c.flags & data_flags::ANSWER != 0 {
                    self.handle.answer_credit(c.id, c.bytes)
                } else {
                    self.handle.request_credit(c.id, c.bytes)
                };
                self.count_flow(flow);
            }
            other => {
                self.shared.router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Err(Close::new(
                    ErrorCode::ProtocolError,
                    format!("frame type 0x{:x} is not allowed from a client here", other.kind()),
                ));
            }
        }
        Ok(())
    }

    fn count_flow(&self, flow: Flow) {
        let stats = &self.shared.router.stats;
        match flow {
            Flow::Passed => {}
            Flow::Late => {
                stats.late_stream_frames.fetch_add(1, Ordering::Relaxed);
            }
            Flow::Broken => stats.count_rejection(ErrorCode::FlowControlError),
            Flow::TooLarge => stats.count_rejection(ErrorCode::PayloadTooLarge),
        }
    }

    fn subscribe(&mut self, s: Subscribe) {
        let limits = &self.shared.config.limits;
        if s.sid == 0 {
            return self.reject(ErrorCode::InvalidPattern, 0, "subscription id 0 is reserved; use ids from 1");
        }
        if self.subs.contains_key(&s.sid) {
            return self.reject(ErrorCode::DuplicateId, s.sid, format!("subscription id {} is already active", s.sid));
        }
        if self.subs.len() >= limits.max_subscriptions {
            let msg = format!("this connection already has {} subscriptions, the node's limit", self.subs.len());
            return self.reject(ErrorCode::TooManySubscriptions, s.sid, msg);
        }
        let limits = &self.shared.config.limits;
        let pattern = match Pattern::from_bytes(Bytes::copy_from_slice(&s.pattern))
            .and_then(|p| check_limits(p.as_bytes(), limits.max_topic_len, limits.max_topic_depth).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let text = shown(&s.pattern);
                return self.reject(ErrorCode::InvalidPattern, s.sid, format!("pattern {text:?} {e}"));
            }
        };
        if !self.perms.subscribe.pattern(&pattern) {
            return self.reject(ErrorCode::PermissionDenied, s.sid, format!("not allowed to subscribe to {pattern:?}"));
        }
        // Before version 2 the group field did not exist: a v1 peer's trailing bytes are
        // ignored, as the protocol's extension rule says.
        let group = if s.group.is_empty() || self.version < VERSION_RPC {
            None
        } else {
            match Procedure::from_bytes(Bytes::copy_from_slice(&s.group)) {
                Ok(_) => Some(Arc::new(GroupKey { pattern: pattern.clone(), name: Bytes::copy_from_slice(&s.group) })),
                Err(e) => {
                    let text = shown(&s.group);
                    return self.reject(ErrorCode::InvalidPattern, s.sid, format!("queue group {text:?} {e}"));
                }
            }
        };
        self.realm.subscribe(&pattern, SubRef { handle: self.handle.clone(), sid: s.sid, group: group.clone() });
        self.subs.insert(s.sid, (pattern, group));
        self.info.subscriptions.store(self.subs.len(), Ordering::Relaxed);
        self.handle.out.send(&Frame::SubAck(s.sid));
    }

    fn register(&mut self, r: Register) {
        let limits = &self.shared.config.limits;
        if r.rid == 0 {
            return self.reject(ErrorCode::InvalidProcedure, 0, "registration id 0 is reserved; use ids from 1");
        }
        if self.regs.contains_key(&r.rid) {
            return self.reject(ErrorCode::DuplicateId, r.rid, format!("registration id {} is already active", r.rid));
        }
        if self.regs.len() >= limits.max_registrations {
            let msg = format!("this connection already has {} registrations, the node's limit", self.regs.len());
            return self.reject(ErrorCode::TooManyRegistrations, r.rid, msg);
        }
        let procedure = match Procedure::from_bytes(Bytes::copy_from_slice(&r.procedure))
            .and_then(|p| check_limits(p.as_bytes(), limits.max_topic_len, limits.max_topic_depth).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let text = shown(&r.procedure);
                return self.reject(ErrorCode::InvalidProcedure, r.rid, format!("procedure {text:?} {e}"));
            }
        };
        if !self.perms.register.name(procedure.as_bytes()) {
            return self.reject(ErrorCode::PermissionDenied, r.rid, format!("not allowed to register {procedure:?}"));
        }
        // A tool on a session below version 4 was refused in `control`.
        let tool = if r.tool.is_empty() {
            None
        } else {
            match Descriptor::parse(&r.tool) {
                Ok(t) if t.kind() != Kind::Tool && self.version < VERSION_MCP_KINDS => {
                    let msg = format!(
                        "{procedure:?} is a {}: resources, templates and prompts need protocol version {VERSION_MCP_KINDS}",
                        t.kind().as_str()
                    );
                    return self.reject(ErrorCode::InvalidProcedure, r.rid, msg);
                }
                Ok(t) => Some((self.shared.router.next_tool_key.fetch_add(1, Ordering::Relaxed), t)),
                Err(e) => {
                    let msg = format!("the tool descriptor of {procedure:?} {e}");
                    return self.reject(ErrorCode::InvalidProcedure, r.rid, msg);
                }
            }
        };
        let key = tool.as_ref().map_or(0, |(k, _)| *k);
        self.realm.register(&procedure, ProviderRef { handle: self.handle.clone(), rid: r.rid }, tool);
        self.regs.insert(r.rid, (procedure, key));
        self.info.registrations.store(self.regs.len(), Ordering::Relaxed);
        self.handle.out.send(&Frame::RegAck(r.rid));
    }

    fn call(&mut self, mut c: Call) {
        let limits = &self.shared.config.limits;
        // Bytes after a v4 `CALL`'s payload are a later version's field, ignored.
        if self.version < VERSION_STREAMS {
            c.flags = 0;
        }
        self.shared.router.stats.calls.fetch_add(1, Ordering::Relaxed);
        let call_id = c.call_id;
        let fail = |this: &Self, code: ErrorCode, message: String| {
            crate::routing::calls::fail(&this.shared.router, &this.handle, call_id, code, message);
        };
        if c.call_id == 0 {
            return self.reject(ErrorCode::InvalidProcedure, 0, "call id 0 is reserved; use ids from 1");
        }
        if c.payload.len() > limits.max_payload {
            let msg = format!(
                "payload of {} bytes exceeds this node's max_payload of {}",
                c.payload.len(),
                limits.max_payload
            );
            return fail(self, ErrorCode::PayloadTooLarge, msg);
        }
        if self.last_procedure.as_ref() != Some(&c.procedure) {
            if let Err(e) = Procedure::from_bytes(c.procedure.clone())
                .and_then(|_| check_limits(&c.procedure, limits.max_topic_len, limits.max_topic_depth))
            {
                let text = shown(&c.procedure);
                return fail(self, ErrorCode::InvalidProcedure, format!("procedure {text:?} {e}"));
            }
            // A copy: a slice would keep the whole read buffer it came in alive.
            self.last_procedure = Some(Bytes::copy_from_slice(&c.procedure));
        }
        if !self.perms.call.name(&c.procedure) {
            let text = shown(&c.procedure);
            return fail(self, ErrorCode::PermissionDenied, format!("not allowed to call {text:?}"));
        }
        let now = self.read_at();
        let router = &self.shared.router;
        route_call(router, &self.realm, &self.handle, &mut self.rng, c, now, Origin::Here);
    }

    /// `PUB_STREAM`: a message whose payload continues in `DATA` frames. Checked as a
    /// `PUB` is; refused with `ERROR` (reference: the stream's id) and a `CREDIT` with
    /// `CUT`, so the publisher stops.
    fn publish_stream(&mut self, p: PubStream) {
        let PubStream { id, msg } = p;
        let limits = &self.shared.config.limits;
        let mut subs = None;
        let refused = if id == 0 {
            Some((ErrorCode::InvalidTopic, "message stream id 0 is reserved; use ids from 1".to_owned()))
        } else if msg.payload.len() > limits.max_payload {
            let (len, max) = (msg.payload.len(), limits.max_payload);
            Some((ErrorCode::PayloadTooLarge, format!("a first part of {len} bytes exceeds max_payload {max}")))
        } else if msg.headers.encoded_len() > limits.max_headers_len {
            let max = limits.max_headers_len;
            Some((ErrorCode::PayloadTooLarge, format!("headers exceed this node's max_headers_len of {max}")))
        } else {
            match self.cache.lookup(&self.realm, &msg.topic, &self.perms.publish) {
                Ok((found, true)) => {
                    subs = Some(found.clone());
                    None
                }
                Ok((_, false)) => {
                    Some((ErrorCode::PermissionDenied, format!("not allowed to publish to {:?}", shown(&msg.topic))))
                }
                Err(e) => Some((ErrorCode::InvalidTopic, format!("topic {:?} {e}", shown(&msg.topic)))),
            }
        };
        let refused = refused.or_else(|| match self.handle.reserve_stream(id, 0) {
            Ok(()) => None,
            Err(crate::handle::fanout::Refused::DuplicateId) => {
                Some((ErrorCode::DuplicateId, format!("message stream {id} is already open")))
            }
            Err(crate::handle::fanout::Refused::TooMany) => Some((
                ErrorCode::Busy,
                format!(
                    "{} message streams are open, the most one connection may publish",
                    crate::handle::fanout::MAX_PUBLISHING
                ),
            )),
        });
        if let Some((code, why)) = refused {
            self.reject(code, id, why);
            let cut = data_flags::MESSAGE | data_flags::CUT;
            self.handle.out.send(&Frame::Credit(fovea_core::frame::Credit { id, flags: cut, bytes: 0 }));
            return;
        }
        // Set whenever nothing was refused: the topic passed the lookup.
        let Some(subs) = subs else { return };
        let msg = fovea_core::frame::Publish {
            topic: Bytes::copy_from_slice(&msg.topic),
            headers: msg.headers,
            payload: msg.payload,
        };
        crate::routing::messages::open(&self.shared.router, &self.realm, &self.handle, id, msg, &subs, &mut self.rng);
    }

    /// `TOOLS`: one page of the realm's tools this connection may call, and (with `watch`)
    /// a `TOOLS_CHANGED` whenever the catalog changes.
    fn list_tools(&mut self, q: ToolsQuery) {
        self.tools_watch = match (q.watch, self.tools_watch) {
            (0, Some(id)) if id == q.id => None,
            (0, w) => w,
            _ => Some(q.id),
        };
        let cursor = String::from_utf8_lossy(&q.cursor);
        let (perms, version) = (&self.perms, self.version);
        let (tools, next) = self.realm.with_tools(|c| {
            // Below version 7 a client knows only tools, and would take any entry for one.
            let known = |d: &Descriptor| d.kind() == Kind::Tool || version >= VERSION_MCP_KINDS;
            let (page, next) =
                c.page(&cursor, TOOL_PAGE_ITEMS, TOOL_PAGE_BYTES, |p, d| known(d) && perms.call.name(p.as_bytes()));
            (crate::routing::catalog::list_json(&page), next)
        });
        let next = next.map(|n| Bytes::from(n.into_bytes())).unwrap_or_default();
        self.handle.out.send(&Frame::ToolList(ToolList { id: q.id, next, tools }));
    }
}

/// Longest part of a client's name (topic, pattern, procedure) quoted in an error message.
const SHOWN_NAME: usize = 100;

/// A name from the client, for an error message: lossy UTF-8, cut to [`SHOWN_NAME`]
/// characters (a name may be as long as a frame, and an `ERROR`'s message is bounded).
pub(super) fn shown(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    match text.char_indices().nth(SHOWN_NAME) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// `text` cut to at most `max` bytes at a character boundary: an `ERROR`'s message over
/// the protocol's text limit would be a frame the client cannot decode.
pub(super) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_messages_are_cut_and_messages_fit_the_text_limit() {
        assert_eq!(shown(b"a.b"), "a.b");
        let long = shown(&[b'x'; 5000]);
        assert_eq!(long.chars().count(), SHOWN_NAME + 1, "cut, with an ellipsis");
        assert!(long.ends_with('…'));
        assert_eq!(shown(b"bad.\xff"), "bad.\u{fffd}", "invalid UTF-8 is shown, not refused");
        let max = fovea_core::limits::MAX_TEXT_LEN;
        let clipped = clip("é".repeat(max), max);
        assert!(clipped.len() <= max && clipped.len() >= max - 1, "{}", clipped.len());
        assert_eq!(clip("short".into(), max), "short");
    }
}
