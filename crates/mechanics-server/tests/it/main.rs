//! Integration tests of the coordinator: a real server on 127.0.0.1:0 over a real SQLite file,
//! driven through its HTTP API, dispatching to real http workers (axum servers in this process).

mod api;
mod cron;
mod dispatch;
mod instances;
mod keys;
mod observe;
mod observe_webhooks;
mod openapi;
mod policy;
mod support;
mod ui;
mod webhooks;
mod write_back_once;
