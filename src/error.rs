//! What kind of failure an error is, said without a transport: every error
//! a request or an admin change can meet has a `kind()`, and the HTTP server
//! maps each kind to one status code in one place (`server::api`). A new
//! error variant picks its kind where it is defined, next to its message.

/// The kind of a failure, as a client should act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input cannot be served as given; `field` names the part at fault
    /// when one does. Sending it again fails again.
    Invalid {
        field: Option<&'static str>,
    },
    /// Not now (no model yet, catching up, stopping, a dependency down);
    /// the same request may succeed later or elsewhere.
    Unavailable,
    /// Too much work queued: retry after a pause.
    Overloaded,
    /// The deadline passed.
    Timeout,
    NotFound,
    /// The request contradicts the current state (a taken semantic ID, a
    /// compaction already running, a folder held by another process).
    Conflict,
    /// Outside what the caller may touch.
    Forbidden,
    /// Something genrec called (the Hugging Face Hub) failed or answered badly.
    Upstream,
    /// The disk is full: the change was not made (nothing of it is kept);
    /// serving goes on, and changes succeed again once there is room.
    NoSpace,
    /// A failure of genrec itself or of its machine; logged with its causes.
    Internal,
}

impl ErrorKind {
    /// An invalid input with the field at fault.
    pub fn invalid(field: &'static str) -> Self {
        ErrorKind::Invalid { field: Some(field) }
    }
}

/// An error and its causes, outermost first, as one line for a log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        // (a message that already shows its cause is not repeated)
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = cause.source();
    }
    out
}

/// A boxed error kept as the source of another (for causes of many types).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "outer: disk on fire");
        let shown = std::io::Error::other("outer: disk on fire");
        assert_eq!(chain(&shown), "outer: disk on fire");
    }
}
