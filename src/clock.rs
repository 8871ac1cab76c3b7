//! The time the engine decides lifetimes and engagement decay by: the
//! system clock in service, a clock the tests set by hand
//! ([`Clock::manual`]), so that "served one millisecond before its expiry,
//! never after" is tested to the millisecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, from the system or set by hand.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that reads `ms` until set again (tests).
    pub fn manual(ms: u64) -> Self {
        Clock(Some(Arc::new(AtomicU64::new(ms))))
    }

    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => crate::catalog::expiry::system_ms(),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, ms: u64) {
        if let Some(t) = &self.0 {
            t.store(ms, Ordering::SeqCst);
        }
    }

    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }
}
