//! Remote executor nodes: machines that run `mechanics node serve` and take js jobs from the
//! coordinator. Like a source, a node spec names where its token is (an environment variable or
//! a file), never the token itself: the server reads it when it connects.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{SpecError, refuse_nul, source::check_reference, validate_http_url, validate_name};

/// Most jobs a coordinator sends one remote node at once.
pub const MAX_NODE_CAPACITY: u32 = 1024;

/// Local executor nodes, the processes each coordinator starts itself, are named
/// `<LOCAL_NODE_PREFIX>-1`, `-2`, ...
pub const LOCAL_NODE_PREFIX: &str = "node";

/// Whether `name` has the form of a local node's name (`node-N`). Every coordinator sharing the
/// registry names its own local nodes so, however many it runs: a remote node with such a name
/// would be two nodes under one name in `node list`, logs and metrics.
fn is_local_node_name(name: &str) -> bool {
    name.strip_prefix(LOCAL_NODE_PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A remote node as the user registers it (`mechanics node add`, `POST /api/v1/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// `[a-z0-9-]{1,64}`; shown in `mechanics node list`, logs and metrics.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    pub name: String,
    /// Where the node listens: `https://HOST:PORT`. `http://` only to a loopback host, or with
    /// `insecure_plaintext`.
    pub url: String,
    /// Environment variable holding the node's bearer token (preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the node's bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// A PEM file of the CA certificates to trust for this node (a private CA); without it the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Jobs sent to the node at once (default 2, at most [`MAX_NODE_CAPACITY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Allow an `http://` URL to a non-loopback host: the token then crosses the network in
    /// clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext: bool,
}

impl NodeSpec {
    /// Jobs sent at once when the spec does not say.
    pub const DEFAULT_CAPACITY: u32 = 2;

    /// Checks the name, the URL (and that plain `http://` goes only to a loopback host unless
    /// `insecure_plaintext`), that exactly one token reference is given, the CA file and the
    /// capacity. Errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        if is_local_node_name(&self.name) {
            return Err(SpecError::new(
                "name",
                format!(
                    "{:?} is a local node's name (every coordinator names its own local nodes \
                     {LOCAL_NODE_PREFIX}-1, {LOCAL_NODE_PREFIX}-2, ...): choose another, such as \
                     exec-1",
                    self.name
                ),
            ));
        }
        validate_http_url("url", &self.url)?;
        let host = url_host(&self.url)?;
        if self.url.starts_with("http://") && !self.insecure_plaintext && !is_loopback(host) {
            return Err(SpecError::new(
                "url",
                format!(
                    "{:?} is plain http to a host that is not loopback: the token would cross \
                     the network in clear; use https://, or set insecure_plaintext: true",
                    self.url
                ),
            ));
        }
        check_reference("token", &self.token_env, &self.token_file, true)?;
        if let Some(path) = &self.ca_file {
            if path.is_empty() {
                return Err(SpecError::new("ca_file", "must not be empty"));
            }
            refuse_nul("ca_file", path, "a file path")?;
        }
        if let Some(capacity) = self.capacity
            && !(1..=MAX_NODE_CAPACITY).contains(&capacity)
        {
            return Err(SpecError::new(
                "capacity",
                format!("{capacity} is out of range: use 1 to {MAX_NODE_CAPACITY}"),
            ));
        }
        Ok(())
    }

    /// Jobs sent to the node at once.
    pub fn capacity(&self) -> usize {
        self.capacity.unwrap_or(Self::DEFAULT_CAPACITY) as usize
    }
}

/// The host of an `http(s)://` URL already checked by `validate_http_url`; the URL must be only
/// a scheme, an authority and at most a `/`: the node protocol's paths are fixed.
fn url_host(url: &str) -> Result<&str, SpecError> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() || authority.contains(['@', '?', '#']) {
        return Err(SpecError::new(
            "url",
            format!("{url:?} must be only scheme, host and port, such as https://node-1:7070"),
        ));
    }
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map(|(host, _)| host),
        None => authority.split(':').next(),
    };
    match host {
        Some(host) if !host.is_empty() => Ok(host),
        _ => Err(SpecError::new("url", format!("{url:?} has no host"))),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A registered remote node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteNode {
    /// The spec as added.
    pub spec: NodeSpec,
    /// 1 on add, +1 on every update.
    pub revision: i64,
    /// Unix ms of the first add.
    pub created_at: i64,
    /// Unix ms of the last update.
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> Result<NodeSpec, String> {
        let spec: NodeSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_tls_node_with_a_token_reference_is_valid() {
        let spec = check(json!({
            "name": "exec-1", "url": "https://10.0.0.7:7070", "token_env": "EXEC_TOKEN",
            "ca_file": "/etc/mechanics/ca.pem", "capacity": 8
        }))
        .unwrap();
        assert_eq!(spec.capacity(), 8);
        let spec = check(json!({ "name": "b", "url": "https://[::1]:7070/", "token_file": "t" }));
        assert_eq!(spec.unwrap().capacity(), 2);
    }

    #[test]
    fn a_local_node_name_is_refused() {
        for name in ["node-1", "node-2", "node-64"] {
            let err =
                check(json!({ "name": name, "url": "https://10.0.0.7:7070", "token_env": "T" }))
                    .unwrap_err();
            assert!(
                err.starts_with("name: ") && err.contains("local node"),
                "{name}: {err}"
            );
        }
        // Only `node-N` is taken.
        for name in [
            "node",
            "node-",
            "node-a",
            "node-1a",
            "nodes-1",
            "exec-node-1",
        ] {
            let spec = json!({ "name": name, "url": "https://10.0.0.7:7070", "token_env": "T" });
            assert!(check(spec).is_ok(), "{name}");
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_asked_for() {
        let err = check(json!({ "name": "a", "url": "http://10.0.0.7:7070", "token_env": "T" }))
            .unwrap_err();
        assert!(
            err.starts_with("url: ") && err.contains("insecure_plaintext"),
            "{err}"
        );
        for url in [
            "http://127.0.0.2:7070",
            "http://localhost:1",
            "http://[::1]:1",
        ] {
            check(json!({ "name": "a", "url": url, "token_env": "T" })).unwrap();
        }
        check(
            json!({ "name": "a", "url": "http://10.0.0.7:7070", "token_env": "T",
                      "insecure_plaintext": true }),
        )
        .unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({ "name": "a", "url": "ftp://x", "token_env": "T" }),
                "url: ",
            ),
            (
                json!({ "name": "a", "url": "https://x:1/v1", "token_env": "T" }),
                "url: ",
            ),
            (
                json!({ "name": "a", "url": "https://u@x:1", "token_env": "T" }),
                "url: ",
            ),
            (
                json!({ "name": "a", "url": "https://x:1" }),
                "token_env: required",
            ),
            (
                json!({ "name": "a", "url": "https://x:1", "token_env": "T", "token_file": "f" }),
                "token_file: ",
            ),
            (
                json!({ "name": "a", "url": "https://x:1", "token_env": "no way" }),
                "token_env: ",
            ),
            (
                json!({ "name": "a", "url": "https://x:1", "token_env": "T", "ca_file": "" }),
                "ca_file: ",
            ),
            (
                json!({ "name": "a", "url": "https://x:1", "token_env": "T", "capacity": 0 }),
                "capacity: ",
            ),
            (
                json!({ "name": "A B", "url": "https://x:1", "token_env": "T" }),
                "name: ",
            ),
        ];
        for (spec, field) in cases {
            let err = check(spec.clone()).unwrap_err();
            assert!(err.starts_with(field), "{spec}: {err}");
        }
        let unknown = check(json!({ "name": "a", "url": "https://x:1", "token": "secret" }));
        assert!(unknown.unwrap_err().contains("unknown field `token`"));
    }
}
