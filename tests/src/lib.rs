//! Shared helpers for the root end-to-end tests.
