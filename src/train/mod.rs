//! Training and evaluation.
