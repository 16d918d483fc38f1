//! Tasks (the MCP tasks extension, SEP-2663): a tool call the endpoint keeps past the
//! request that started it, which the agent polls (`tasks/get`), answers (`tasks/update`)
//! and cancels (`tasks/cancel`) by id.
//!
//! A task-supporting tool (descriptor `execution.taskSupport` `optional` or `required`)
//! called by a 2026-07-28 agent that declared the extension runs as usual for up to
//! [`TASK_AFTER`]: a call that answers in that time is answered at once (the spec's
//! immediate-result shortcut), one that asks the agent first goes through input-required
//! rounds ([`super::rounds`]), and one still running then becomes a task. From then on the
//! provider's questions park the task in `input_required`, and the agent's `tasks/update`
//! answers them while the call runs (no rounds: the call is live).
//!
//! Tasks live on the agent's node, at most [`MAX_TASKS`] of them, each for [`TASK_TTL`]
//! from its creation (then it is forgotten, and cancelled if still running). At the limit a
//! call that would become a task runs to its result instead, so nothing is refused. A task
//! id is 128 random bits, and a task is visible only in the realm that started it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmcp::model::{
    CreateTaskResult, DetailedTask, GetTaskResult, InputRequest, InputRequests, InputResponses, JsonObject, Task,
    TaskPayload, TaskStatus,
};
use rmcp::ErrorData as McpError;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::rounds::Round;
use super::service::{QuestionOutcome, MAX_QUESTIONS_PER_CALL};
use crate::sync::lock;
use fovea_core::tool::Notice;

/// How long a call runs as a plain request before it becomes a task.
pub const TASK_AFTER: Duration = Duration::from_millis(500);
/// How long a task is kept after its creation.
pub const TASK_TTL: Duration = Duration::from_secs(600);
/// Most tasks one node keeps.
pub const MAX_TASKS: usize = 1024;
/// How often an agent should poll, as the node suggests.
const POLL_INTERVAL_MS: u64 = 500;

/// The tasks of one endpoint.
#[derive(Default)]
pub struct Tasks {
    cells: Mutex<HashMap<String, Arc<TaskCell>>>,
}

/// One call that may become a task: its state, shared by the request that started it,
/// the run that drives the call, and (once it is a task) the agent's task requests.
pub struct TaskCell {
    realm: String,
    created: SystemTime,
    started: Instant,
    /// Cancels the call (dropping it at the node and the provider).
    pub cancel: CancellationToken,
    /// Told whenever the state changes (a question parked, the call ended).
    pub changed: Notify,
    state: Mutex<TaskState>,
}

struct TaskState {
    updated: SystemTime,
    /// A task (`Some(id)`) rather than a request still waiting for its call.
    id: Option<String>,
    /// The agent's answers from input-required rounds, and the questions the request
    /// deferred before it became a task.
    round: Round,
    /// Questions waiting for `tasks/update`, by key: the provider's question id and the
    /// question.
    parked: BTreeMap<String, (u64, InputRequest, String)>,
    /// Where answers to the provider's questions go.
    reply: Option<mpsc::Sender<Notice>>,
    progress: Option<String>,
    end: Option<End>,
    /// The call's outcome, for a request that ends before its call becomes a task.
    outcome: Option<super::CallOutcome>,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The tool's result (an error result too: the tool ran).
    Completed(JsonObject),
    /// A JSON-RPC error: the call could not be made or finish.
    Failed(JsonObject),
    Cancelled,
}

impl TaskCell {
    pub fn new(realm: String, round: Round) -> Arc<TaskCell> {
        let now = SystemTime::now();
        Arc::new(TaskCell {
            realm,
            created: now,
            started: Instant::now(),
            cancel: CancellationToken::new(),
            changed: Notify::new(),
            state: Mutex::new(TaskState {
                updated: now,
                id: None,
                round,
                parked: BTreeMap::new(),
                reply: None,
                progress: None,
                end: None,
                outcome: None,
            }),
        })
    }

    /// Where the answers to the provider's questions go, once the call is made.
    pub fn set_reply(&self, reply: mpsc::Sender<Notice>) {
        lock(&self.state).reply = Some(reply);
    }

    /// A provider's question: before the call is a task, the request's round takes it
    /// (an answer from the agent's retry, or deferred to an input-required result); a
    /// task answers it from the rounds' answers, else parks until `tasks/update`.
    pub fn question(&self, id: u64, key: Option<String>, method: &str, params: Value) -> QuestionOutcome {
        let mut st = lock(&self.state);
        let (outcome, result) = if st.id.is_none() {
            st.round.question(key, method, params)
        } else {
            match st.round.answer(key, method) {
                Ok(answered) => answered,
                Err(_) if st.parked.len() >= MAX_QUESTIONS_PER_CALL => (
                    QuestionOutcome::Declined,
                    Err((-32601, format!("{MAX_QUESTIONS_PER_CALL} questions of this task are already open"))),
                ),
                Err(key) => match super::rounds::input_request(method, params) {
                    Err(why) => (QuestionOutcome::Declined, Err(why)),
                    Ok(request) => {
                        st.parked.insert(key, (id, request, method.to_owned()));
                        st.updated = SystemTime::now();
                        drop(st);
                        self.changed.notify_waiters();
                        return QuestionOutcome::Deferred;
                    }
                },
            }
        };
        if let Some(reply) = &st.reply {
            let _ = reply.try_send(Notice::Reply { id, result });
        }
        outcome
    }

    /// A progress message becomes the task's status message.
    pub fn progress(&self, message: Option<String>) {
        if message.is_some() {
            let mut st = lock(&self.state);
            st.progress = message;
            st.updated = SystemTime::now();
        }
    }

    /// The call ended (a task that was cancelled stays cancelled).
    pub fn end(&self, end: End) {
        {
            let mut st = lock(&self.state);
            if st.end.is_none() {
                st.end = Some(end);
                st.updated = SystemTime::now();
            }
            st.parked.clear();
        }
        self.changed.notify_waiters();
    }

    /// The call ended with `outcome`, which reads as `end` for a task.
    pub fn finish(&self, outcome: super::CallOutcome, end: End) {
        lock(&self.state).outcome = Some(outcome);
        self.end(end);
    }

    /// The call's outcome once it has ended (taken: for the request that started it).
    pub fn take_outcome(&self) -> Option<super::CallOutcome> {
        lock(&self.state).outcome.take()
    }

    /// Takes the request's round, to end the request with it (the call ended before it
    /// became a task).
    pub fn take_round(&self) -> Round {
        std::mem::replace(&mut lock(&self.state).round, Round::empty())
    }

    /// Whether the request deferred questions to an input-required result (then it ends
    /// with that result, not as a task).
    pub fn deferred(&self) -> bool {
        lock(&self.state).round.has_deferred()
    }

    fn task(&self, st: &TaskState, id: &str) -> Task {
        let status = match (&st.end, st.parked.is_empty()) {
            (Some(End::Completed(_)), _) => TaskStatus::Completed,
            (Some(End::Failed(_)), _) => TaskStatus::Failed,
            (Some(End::Cancelled), _) => TaskStatus::Cancelled,
            (None, false) => TaskStatus::InputRequired,
            (None, true) => TaskStatus::Working,
        };
        let ttl = u64::try_from(TASK_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut task = Task::new(id, status, iso8601(self.created), iso8601(st.updated))
            .with_ttl_ms(ttl)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        if let (None, Some(m)) = (&st.end, &st.progress) {
            task = task.with_status_message(m.clone());
        }
        task
    }

    fn expired(&self) -> bool {
        self.started.elapsed() > TASK_TTL
    }
}

impl Tasks {
    /// Makes `cell` a task, unless the node holds [`MAX_TASKS`] (then the call stays a
    /// plain request). Returns the agent's handle on it.
    pub fn promote(&self, cell: &Arc<TaskCell>) -> Option<CreateTaskResult> {
        let mut cells = lock(&self.cells);
        cells.retain(|_, c| {
            let keep = !c.expired();
            if !keep {
                c.cancel.cancel();
            }
            keep
        });
        if cells.len() >= MAX_TASKS {
            return None;
        }
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let task = {
            let mut st = lock(&cell.state);
            st.id = Some(id.clone());
            cell.task(&st, &id)
        };
        cells.insert(id, cell.clone());
        Some(CreateTaskResult::new(task))
    }

    /// How many tasks the node holds (expired ones too, until the next promotion).
    pub fn len(&self) -> usize {
        lock(&self.cells).len()
    }

    fn find(&self, realm: &str, id: &str) -> Result<Arc<TaskCell>, McpError> {
        let unknown =
            || McpError::invalid_params(format!("no task {id:?} (unknown, expired, or another realm's)"), None);
        let mut cells = lock(&self.cells);
        let cell = cells.get(id).cloned().ok_or_else(unknown)?;
        if cell.expired() {
            cells.remove(id);
            cell.cancel.cancel();
            return Err(unknown());
        }
        if cell.realm != realm {
            return Err(unknown());
        }
        Ok(cell)
    }

    /// `tasks/get`: the task's state, with its result, error or open questions.
    pub fn get(&self, realm: &str, id: &str) -> Result<GetTaskResult, McpError> {
        let cell = self.find(realm, id)?;
        let st = lock(&cell.state);
        let task = cell.task(&st, id);
        let payload = match &st.end {
            Some(End::Completed(result)) => TaskPayload::Completed { result: result.clone() },
            Some(End::Failed(error)) => TaskPayload::Failed { error: error.clone() },
            Some(End::Cancelled) => TaskPayload::Cancelled,
            None if st.parked.is_empty() => TaskPayload::Working,
            None => TaskPayload::InputRequired {
                input_requests: st
                    .parked
                    .iter()
                    .map(|(k, (_, r, _))| (k.clone(), r.clone()))
                    .collect::<InputRequests>(),
            },
        };
        Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
    }

    /// `tasks/update`: answers the task's parked questions (unknown keys are ignored; an
    /// answer that is not a result of its question's method is refused).
    pub fn update(&self, realm: &str, id: &str, responses: InputResponses) -> Result<(), McpError> {
        let cell = self.find(realm, id)?;
        let mut st = lock(&cell.state);
        for (key, answer) in responses {
            let Some((_, _, method)) = st.parked.get(&key) else { continue };
            super::rounds::check_answer(method, &answer).map_err(|why| {
                McpError::invalid_params(format!("inputResponses.{key} is not a {method} result: {why}"), None)
            })?;
            if let Some((question, _, _)) = st.parked.remove(&key) {
                if let Some(reply) = &st.reply {
                    let _ = reply.try_send(Notice::Reply { id: question, result: Ok(answer) });
                }
            }
        }
        st.updated = SystemTime::now();
        Ok(())
    }

    /// `tasks/cancel`: ends a running task as cancelled (a finished one stays as it is).
    pub fn cancel(&self, realm: &str, id: &str) -> Result<(), McpError> {
        let cell = self.find(realm, id)?;
        cell.end(End::Cancelled);
        cell.cancel.cancel();
        Ok(())
    }
}

/// `t` as an ISO 8601 UTC timestamp with milliseconds (`2026-12-07T22:45:01.123Z`).
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_683_501_123);
        assert_eq!(iso8601(t), "2026-12-07T22:45:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }
}
