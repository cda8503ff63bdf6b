//! Where violations go besides the events log: webhooks (Alertmanager API v2, or plain JSON).
pub mod webhook;
