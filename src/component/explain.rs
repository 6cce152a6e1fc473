//! What `eventflow explain` asks of a stage: what it would do with one event, and why.

use serde::Serialize;

/// What happens to the event at a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It goes on to the stages that read this one.
    Passes,
    /// It is dropped here (counted, with the reason the steps give).
    Dropped,
    /// It is held and goes on later, merged into a summary.
    Held,
    /// A sink writes or sends it.
    Delivered,
}

/// One condition or step, and whether it held (`None`: a plain statement).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub ok: Option<bool>,
    pub text: String,
}

impl Step {
    pub fn yes(text: impl Into<String>) -> Step {
        Step {
            ok: Some(true),
            text: text.into(),
        }
    }
    pub fn no(text: impl Into<String>) -> Step {
        Step {
            ok: Some(false),
            text: text.into(),
        }
    }
    pub fn note(text: impl Into<String>) -> Step {
        Step {
            ok: None,
            text: text.into(),
        }
    }
    pub fn check(ok: bool, text: impl Into<String>) -> Step {
        Step {
            ok: Some(ok),
            text: text.into(),
        }
    }
}

/// A stage's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    pub steps: Vec<Step>,
    /// What a sink would write: the JSON line, the SQL row, the request (URL and body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// What the stages after this one receive, when it is not the event as it came in (an
    /// `aggregate` stage's summary).
    #[serde(skip)]
    pub emits: Option<Box<crate::event::EventData>>,
}

/// `emits` is shown in `output`; the rest compares as it is.
impl PartialEq for Explanation {
    fn eq(&self, other: &Self) -> bool {
        (self.verdict, &self.steps, &self.output) == (other.verdict, &other.steps, &other.output)
    }
}

impl Explanation {
    pub fn new(verdict: Verdict, steps: Vec<Step>) -> Explanation {
        Explanation {
            verdict,
            steps,
            output: None,
            emits: None,
        }
    }

    /// The stages after this one receive `e` (shown as the output too).
    #[must_use]
    pub fn with_emits(mut self, e: crate::event::EventData) -> Explanation {
        self.output = serde_json::to_value(&e).ok();
        self.emits = Some(Box::new(e));
        self
    }

    #[must_use]
    pub fn with_output(mut self, output: serde_json::Value) -> Explanation {
        self.output = Some(output);
        self
    }
}
