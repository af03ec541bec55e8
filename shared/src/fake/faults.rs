//! Injected faults: the next call of an AWS operation fails with a chosen code, before or
//! after its effect.

use std::collections::{HashMap, VecDeque};

use crate::error::AwsError;

/// Whether an injected fault withholds the call's effect or applies it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// The call fails and nothing happens (AWS refused it).
    Before,
    /// The call takes effect, then the caller sees the error (the answer was lost, or the
    /// caller died right after AWS acted).
    After,
}

/// One injected fault. `code: None` is "no response" (a timeout), as the adapters report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: Option<String>,
    pub when: When,
}

/// Injecting faults into a fake: each fake says how to queue one (`inject`); the
/// common cases come with it.
pub trait FaultInjection {
    /// Queues any fault for the next call of `operation` (an AWS API name such as
    /// `RunInstances` or `PutItem`), including "no response" (`code: None`).
    fn inject(&self, operation: &str, fault: Fault);

    /// The next call of `operation` fails with `code`, doing nothing. Faults queue in order.
    fn fail_next(&self, operation: &str, code: &str) {
        self.inject(operation, Fault { code: Some(code.to_owned()), when: When::Before });
    }

    /// The next call of `operation` takes effect, then fails with `code`.
    fn fail_next_after(&self, operation: &str, code: &str) {
        self.inject(operation, Fault { code: Some(code.to_owned()), when: When::After });
    }
}

/// HTTP status AWS answers a code with (only used by `from_code` to break ties for codes
/// it does not know).
fn status_of(code: &str) -> u16 {
    match code {
        "InsufficientInstanceCapacity" | "InternalError" | "InternalFailure" | "InternalServerError" => 500,
        "RequestLimitExceeded" | "ServiceUnavailable" | "Unavailable" | "ThrottlingException" => 503,
        _ => 400,
    }
}

/// An error answer, built as the adapters build it (`aws_error` → `AwsError::from_code`).
pub(crate) fn aws(service: &'static str, operation: &'static str, code: &str, message: impl Into<String>) -> AwsError {
    let message = message.into();
    AwsError::from_code(service, operation, Some(code), Some(&message), Some(status_of(code)))
}

/// Faults queued per operation name, taken in order.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    queued: HashMap<String, VecDeque<Fault>>,
}

impl Faults {
    pub(crate) fn push(&mut self, operation: &str, fault: Fault) {
        self.queued.entry(operation.to_owned()).or_default().push_back(fault);
    }

    pub(crate) fn take(&mut self, operation: &str) -> Option<Fault> {
        self.queued.get_mut(operation)?.pop_front()
    }

    pub(crate) fn pending(&self) -> usize {
        self.queued.values().map(VecDeque::len).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.queued.clear();
    }
}

impl Fault {
    pub(crate) fn error(&self, service: &'static str, operation: &'static str) -> AwsError {
        match &self.code {
            Some(code) => aws(service, operation, code, format!("injected fault: {code}")),
            None => AwsError::from_code(service, operation, None, Some("injected fault: no response (timeout)"), None),
        }
    }
}

/// Runs one AWS call under the fault rules: a queued fault for `operation` is taken first
/// (whatever else would happen); `Before` returns its error untouched, `After` runs the call
/// (whose own error, if any, wins: AWS did not act) and then returns the fault's error.
pub(crate) fn with_fault<T>(
    fault: Option<Fault>,
    service: &'static str,
    operation: &'static str,
    call: impl FnOnce() -> Result<T, AwsError>,
) -> Result<T, AwsError> {
    match fault {
        Some(f) if f.when == When::Before => Err(f.error(service, operation)),
        Some(f) => {
            call()?;
            Err(f.error(service, operation))
        }
        None => call(),
    }
}
