//! Serving engine.
