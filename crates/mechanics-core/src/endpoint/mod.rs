//! Endpoints: the configured HTTP calls a job makes through `mechanics:endpoint`.
//!
//! A job never names a URL. It names an endpoint of its [`MechanicsConfig`](crate::job::MechanicsConfig)
//! and passes values for the slots that endpoint opens; the method, host, path structure, query
//! keys and credentials stay in the configuration, which the job cannot read.
//!
//! [`HttpEndpoint`] and its parts are the configuration; [`http_client`] is the transport the pool
//! sends requests through.

mod call;
mod config;
pub mod http_client;
mod template;

use std::fmt;
use std::sync::{Arc, OnceLock};

pub(crate) use call::{CallError, CallInput, CallResult, EndpointDefaults, ResponseBody, perform};
pub use config::{
    EndpointBodyType, EndpointRetryPolicy, HttpEndpoint, HttpMethod, QuerySpec, SlottedQueryMode,
    UrlParamSpec,
};
use http_client::{EndpointHttpClient, ReqwestEndpointHttpClient};

/// The pool's side of endpoint calls: the transport, and the Tokio runtime its futures run on.
///
/// Both are created on the first call, so a pool whose jobs never call an endpoint starts no
/// thread and loads no TLS roots for them.
pub(crate) struct EndpointRuntime {
    configured_client: Option<Arc<dyn EndpointHttpClient>>,
    client: OnceLock<Result<Arc<dyn EndpointHttpClient>, String>>,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    pub(crate) defaults: EndpointDefaults,
}

impl fmt::Debug for EndpointRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointRuntime")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl EndpointRuntime {
    pub(crate) fn new(
        client: Option<Arc<dyn EndpointHttpClient>>,
        defaults: EndpointDefaults,
    ) -> Self {
        Self {
            configured_client: client,
            client: OnceLock::new(),
            runtime: OnceLock::new(),
            defaults,
        }
    }

    /// The transport: the configured one, or reqwest's.
    pub(crate) fn client(&self) -> Result<Arc<dyn EndpointHttpClient>, String> {
        self.client
            .get_or_init(|| match &self.configured_client {
                Some(client) => Ok(client.clone()),
                None => ReqwestEndpointHttpClient::with_defaults()
                    .map(|c| Arc::new(c) as Arc<dyn EndpointHttpClient>)
                    .map_err(|err| format!("the HTTP client could not be created: {err}")),
            })
            .clone()
    }

    /// A handle to the runtime that runs transport futures.
    pub(crate) fn handle(&self) -> Result<tokio::runtime::Handle, String> {
        match self.runtime.get_or_init(|| {
            // One thread is plenty: it only waits on sockets and timers for the workers.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("mechanics-endpoint-io")
                .enable_all()
                .build()
                .map_err(|err| format!("the endpoint I/O runtime could not start: {err}"))
        }) {
            Ok(runtime) => Ok(runtime.handle().clone()),
            Err(message) => Err(message.clone()),
        }
    }
}

impl Drop for EndpointRuntime {
    fn drop(&mut self) {
        // The last owner may be a thread inside some async context, where a blocking drop of the
        // runtime would panic; in-flight calls belong to jobs that are gone anyway.
        if let Some(Ok(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
