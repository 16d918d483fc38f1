//! Questions to MCP 2026-07-28 agents: input-required results (SEP-2322).
//!
//! Such an agent is not asked while the call runs. Each question the provider asks during a
//! run is answered `INPUT_REQUIRED` at once (so the provider ends the run) and collected;
//! when the run ends, the agent's request ends with an `InputRequiredResult`: the questions
//! as `inputRequests`, by key, and a sealed `requestState` holding the answers that run
//! used. The agent retries the request with its answers (`inputResponses`) and that state;
//! the call runs again, and the provider's questions are answered from them by key. Rounds
//! go on until a run asks nothing new.
//!
//! The node keeps nothing between rounds, so nothing has to be bounded or expired there:
//! the agent holds the state, sealed with HMAC-SHA256 (rmcp's `RequestStateCodec`) under a
//! key this process draws at start, bound to the realm, the method, its target and its
//! arguments, and valid for [`STATE_TTL`]. A state from another node or an earlier run of
//! this one fails its check, and the agent starts the request again without it.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use rmcp::model::{
    ElicitResult, InputRequest, InputRequests, InputRequiredResult, InputResponses, RequestStateCodec, SealOptions,
};
use rmcp::ErrorData as McpError;
use serde_json::Value;

use super::service::{QuestionOutcome, MAX_QUESTIONS_PER_CALL};

/// How long a `requestState` stays valid: time for a person to fill in a form.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// This process's sealing key, drawn once; `None` if the system has no randomness to give
/// (then 2026-07-28 agents are not asked at all, rather than asked with a guessable key).
fn codec() -> Option<&'static RequestStateCodec> {
    static CODEC: OnceLock<Option<RequestStateCodec>> = OnceLock::new();
    CODEC
        .get_or_init(|| {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).ok()?;
            RequestStateCodec::try_new(key.to_vec()).ok()
        })
        .as_ref()
}

/// What a question gets: what became of it, and the reply to the provider (the answer, or
/// an error code and message).
pub type Answer = (QuestionOutcome, Result<Value, (i64, String)>);

/// One run of a call serving a 2026-07-28 request: the answers it may use, and the
/// questions it asked that have none.
pub struct Round {
    /// What the request's state is bound to, once worked out.
    binding: Option<Vec<u8>>,
    /// Answers from the state and the retry, by key (the retry's win).
    given: BTreeMap<String, Value>,
    /// The answers this run used: the next state carries them.
    used: BTreeMap<String, Value>,
    asked: InputRequests,
    /// Questions seen this run: an unkeyed question is named by its place (`q<n>`).
    seen: usize,
    /// A malformed answer: the request fails with it, as the agent's fault.
    invalid: Option<String>,
}

impl Round {
    /// The round a request starts, from its `requestState` and `inputResponses`; `binding`
    /// names the request (realm, method, target, arguments), which a state must match (it
    /// is only worked out when there is a state to check).
    ///
    /// # Errors
    /// `-32602` for a state that fails its check (tampered, expired, another request's, or
    /// another node's) or when this node cannot seal states.
    pub fn open(
        state: Option<&str>,
        responses: Option<InputResponses>,
        binding: impl FnOnce() -> Vec<u8>,
    ) -> Result<Round, McpError> {
        let Some(codec) = codec() else {
            return Err(McpError::internal_error("this node cannot seal request states (no system randomness)", None));
        };
        let binding = state.map(|_| binding());
        let mut given: BTreeMap<String, Value> = match (state, &binding) {
            (Some(s), Some(binding)) => codec.open_json_with(s, binding).map_err(|e| {
                McpError::invalid_params(
                    format!("requestState failed its check ({e}): send the request again without requestState"),
                    None,
                )
            })?,
            _ => BTreeMap::new(),
        };
        given.extend(responses.unwrap_or_default());
        Ok(Round { binding, given, used: BTreeMap::new(), asked: InputRequests::new(), seen: 0, invalid: None })
    }

    /// The reply to a provider's question (`key` its own, else its place in the run): the
    /// agent's answer, or an error code and message. Capabilities are checked before.
    pub fn question(&mut self, key: Option<String>, method: &str, params: Value) -> Answer {
        let key = match self.answer(key, method) {
            Ok(answered) => return answered,
            Err(key) => key,
        };
        if !self.asked.contains_key(&key) && self.asked.len() >= MAX_QUESTIONS_PER_CALL {
            return (
                QuestionOutcome::Declined,
                Err((-32601, format!("{MAX_QUESTIONS_PER_CALL} questions of this call are already open"))),
            );
        }
        match input_request(method, params) {
            Err(why) => (QuestionOutcome::Declined, Err(why)),
            Ok(request) => {
                self.asked.entry(key).or_insert(request);
                let why = "the agent is asked through an input-required result and answers on its retry, \
                           which runs the call again: end this run";
                (QuestionOutcome::Deferred, Err((fovea_core::tool::INPUT_REQUIRED, why.to_owned())))
            }
        }
    }

    /// The reply to a question from the agent's answers (`key` its own, else its place in
    /// the run), or (`Err`) the question's key when there is no answer for it.
    pub fn answer(&mut self, key: Option<String>, method: &str) -> Result<Answer, String> {
        self.seen += 1;
        let key = key.unwrap_or_else(|| format!("q{}", self.seen));
        let Some(answer) = self.given.get(&key) else { return Err(key) };
        let size = serde_json::to_vec(answer).map_or(0, |v| v.len());
        let checked = if size > fovea_core::frame::MAX_NOTICE_LEN {
            Err(format!("{size} bytes, over the 16 KiB an answer may have"))
        } else {
            check_answer(method, answer)
        };
        Ok(match checked {
            Ok(()) => {
                self.used.insert(key, answer.clone());
                (QuestionOutcome::Answered, Ok(answer.clone()))
            }
            Err(why) => {
                let why = format!("inputResponses.{key} is not a {method} result: {why}");
                self.invalid.get_or_insert_with(|| why.clone());
                (QuestionOutcome::Declined, Err((-32602, why)))
            }
        })
    }

    /// A round with no answers and nothing asked (for a request that no longer needs one).
    pub fn empty() -> Round {
        Round {
            binding: None,
            given: BTreeMap::new(),
            used: BTreeMap::new(),
            asked: InputRequests::new(),
            seen: 0,
            invalid: None,
        }
    }

    /// Whether the run deferred questions (or met a malformed answer): the request ends
    /// with them.
    pub fn has_deferred(&self) -> bool {
        !self.asked.is_empty() || self.invalid.is_some()
    }

    /// How the request ends when its run has: `None` to give the run's result, else the
    /// input-required result asking the agent the run's open questions, its state bound to
    /// `binding` (as [`Round::open`]'s).
    ///
    /// # Errors
    /// `-32602` when the agent's answer to a question was malformed.
    pub fn finish(self, binding: impl FnOnce() -> Vec<u8>) -> Result<Option<InputRequiredResult>, McpError> {
        if let Some(why) = self.invalid {
            return Err(McpError::invalid_params(why, None));
        }
        if self.asked.is_empty() {
            return Ok(None);
        }
        let Some(codec) = codec() else { return Err(McpError::internal_error("no sealing key", None)) };
        let binding = self.binding.unwrap_or_else(binding);
        let options = SealOptions::new().associated_data(&binding).ttl(STATE_TTL);
        let state = codec
            .seal_json_with(&self.used, &options)
            .map_err(|e| McpError::internal_error(format!("sealing the request state: {e}"), None))?;
        Ok(Some(InputRequiredResult::new(Some(self.asked), Some(state))))
    }
}

/// A provider's question as the MCP request the agent is sent, or the error that declines
/// it (params MCP does not accept for that method).
pub(super) fn input_request(method: &str, params: Value) -> Result<InputRequest, (i64, String)> {
    serde_json::from_value(serde_json::json!({"method": method, "params": params}))
        .map_err(|e| (-32602, format!("the provider's {method} params are not MCP: {e}")))
}

/// What a request's state is bound to: its realm, method, target (tool or prompt name,
/// URI) and arguments, so a state cannot be replayed against another request.
pub fn binding(realm: &str, method: &str, target: &str, arguments: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    for part in [realm, method, target] {
        b.extend_from_slice(part.as_bytes());
        b.push(0);
    }
    b.extend_from_slice(&serde_json::to_vec(arguments).unwrap_or_default());
    b
}

/// Whether `answer` is a result of the question's `method` (as rmcp reads them).
// Sampling and roots are deprecated by SEP-2577, yet still in both eras this node serves.
#[allow(deprecated)]
pub(super) fn check_answer(method: &str, answer: &Value) -> Result<(), String> {
    let r = match method {
        "elicitation/create" => serde_json::from_value::<ElicitResult>(answer.clone()).map(drop),
        "sampling/createMessage" => {
            serde_json::from_value::<rmcp::model::CreateMessageResult>(answer.clone()).map(drop)
        }
        _ => serde_json::from_value::<rmcp::model::ListRootsResult>(answer.clone()).map(drop),
    };
    r.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NAME: (&str, &str, &str) = ("default", "tools/call", "greet");

    fn bind() -> Vec<u8> {
        binding(NAME.0, NAME.1, NAME.2, &json!({}))
    }

    fn elicit() -> Value {
        json!({"message": "Name?", "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}}})
    }

    #[test]
    fn a_question_is_deferred_then_answered_on_the_retry() {
        let mut round = Round::open(None, None, bind).unwrap();
        let (asked, reply) = round.question(Some("name".into()), "elicitation/create", elicit());
        assert_eq!(asked, QuestionOutcome::Deferred);
        assert_eq!(reply.unwrap_err().0, fovea_core::tool::INPUT_REQUIRED);
        let result = serde_json::to_value(round.finish(bind).unwrap().unwrap()).unwrap();
        assert_eq!(result["resultType"], "input_required");
        assert_eq!(result["inputRequests"]["name"]["method"], "elicitation/create");
        let state = result["requestState"].as_str().unwrap().to_owned();

        let answer = json!({"action": "accept", "content": {"name": "Ada"}});
        let responses = InputResponses::from([("name".to_owned(), answer.clone())]);
        let mut retry = Round::open(Some(&state), Some(responses), bind).unwrap();
        assert_eq!(
            retry.question(Some("name".into()), "elicitation/create", elicit()),
            (QuestionOutcome::Answered, Ok(answer))
        );
        assert!(retry.finish(bind).unwrap().is_none(), "nothing left to ask: the run's result stands");
    }

    #[test]
    fn answers_carry_over_rounds_and_unkeyed_questions_go_by_place() {
        let mut first = Round::open(None, None, bind).unwrap();
        let _ = first.question(None, "roots/list", json!({}));
        let state = first.finish(bind).unwrap().unwrap().request_state.unwrap();
        let roots = json!({"roots": [{"uri": "file:///x"}]});
        let mut second =
            Round::open(Some(&state), Some(InputResponses::from([("q1".into(), roots.clone())])), bind).unwrap();
        assert_eq!(second.question(None, "roots/list", json!({})).0, QuestionOutcome::Answered);
        assert_eq!(second.question(None, "elicitation/create", elicit()).0, QuestionOutcome::Deferred);
        let state2 = second.finish(bind).unwrap().unwrap().request_state.unwrap();
        assert_ne!(state, state2);
        // The third run gets the first answer from the state, the second from the retry.
        let accept = json!({"action": "decline"});
        let mut third = Round::open(Some(&state2), Some(InputResponses::from([("q2".into(), accept)])), bind).unwrap();
        assert_eq!(third.question(None, "roots/list", json!({})), (QuestionOutcome::Answered, Ok(roots)));
        assert_eq!(third.question(None, "elicitation/create", elicit()).0, QuestionOutcome::Answered);
        assert!(third.finish(bind).unwrap().is_none());
    }

    #[test]
    fn a_tampered_or_foreign_state_is_refused() {
        let mut round = Round::open(None, None, bind).unwrap();
        let _ = round.question(None, "roots/list", json!({}));
        let state = round.finish(bind).unwrap().unwrap().request_state.unwrap();
        assert!(Round::open(Some(&format!("{state}-TAMPERED")), None, bind).is_err());
        assert!(Round::open(Some("not a state"), None, bind).is_err());
        let other = binding(NAME.0, NAME.1, "other", &json!({}));
        assert!(Round::open(Some(&state), None, || other).is_err(), "bound to its target");
        let args = binding(NAME.0, NAME.1, NAME.2, &json!({"x": 1}));
        assert!(Round::open(Some(&state), None, || args).is_err(), "bound to its arguments");
        assert!(Round::open(Some(&state), None, bind).is_ok());
    }

    #[test]
    fn a_malformed_answer_fails_the_request_and_extra_answers_are_ignored() {
        let responses = InputResponses::from([("name".into(), json!(12345)), ("extra".into(), json!({"x": 1}))]);
        let mut round = Round::open(None, Some(responses), bind).unwrap();
        let (asked, reply) = round.question(Some("name".into()), "elicitation/create", elicit());
        assert_eq!((asked, reply.unwrap_err().0), (QuestionOutcome::Declined, -32602));
        assert!(round.finish(bind).is_err());
        // Questions the provider cannot express in MCP are declined, not put to the agent.
        let mut round = Round::open(None, None, bind).unwrap();
        assert_eq!(round.question(None, "elicitation/create", json!({"message": 7})).0, QuestionOutcome::Declined);
        assert!(round.finish(bind).unwrap().is_none());
    }

    #[test]
    fn a_run_asks_at_most_the_bound() {
        let mut round = Round::open(None, None, bind).unwrap();
        for i in 0..MAX_QUESTIONS_PER_CALL {
            assert_eq!(round.question(Some(format!("k{i}")), "roots/list", json!({})).0, QuestionOutcome::Deferred);
        }
        assert_eq!(round.question(Some("one more".into()), "roots/list", json!({})).0, QuestionOutcome::Declined);
        assert_eq!(round.finish(bind).unwrap().unwrap().input_requests.unwrap().len(), MAX_QUESTIONS_PER_CALL);
    }
}
