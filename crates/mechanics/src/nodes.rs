//! `mechanics node add|rm`: the remote executor nodes of the registry (`/api/v1/nodes`).
//!
//! Like a source, a node is registered with *where* its token is (`--token-env`, `--token-file`,
//! read by the server in its own environment), never the token. The spec is checked here before
//! anything is sent, so a bad URL or a plain-http URL to another host names the field and exits
//! 2 even when no server runs; the server then contacts the node and refuses a wrong token.

use mechanics_proto::domain::{NodeSpec, RemoteNode};

use crate::client::{Api, ClientArgs, Failure, Result, out};

/// `mechanics node add NAME ...`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The node's name (a-z, 0-9 and '-'), as `mechanics node list` will show it.
    name: String,
    /// Where the node listens: https://HOST:PORT (http:// only to a loopback host, or with
    /// --insecure-plaintext).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The environment variable of the server that holds the node's token.
    #[arg(long, value_name = "VAR", required_unless_present = "token_file")]
    token_env: Option<String>,
    /// The file, on the server's machine, that holds the node's token.
    #[arg(long, value_name = "FILE", conflicts_with = "token_env")]
    token_file: Option<String>,
    /// A PEM file, on the server's machine, of the CA certificates to trust for the node.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<String>,
    /// Jobs sent to the node at once [default: what the node reports, its engine workers].
    #[arg(long, value_name = "N")]
    capacity: Option<u32>,
    /// Allow http:// to a host that is not loopback: the token crosses the network in clear.
    #[arg(long)]
    insecure_plaintext: bool,
}

/// Runs `mechanics node add`.
pub fn node_add(client: &ClientArgs, args: &AddArgs) -> Result<()> {
    let spec = NodeSpec {
        name: args.name.clone(),
        url: args.url.clone(),
        token_env: args.token_env.clone(),
        token_file: args.token_file.clone(),
        ca_file: args.ca_file.clone(),
        capacity: args.capacity,
        insecure_plaintext: args.insecure_plaintext,
    };
    spec.validate()
        .map_err(|err| Failure::usage(format!("node {}: {err}", args.name)))?;
    let api = Api::new(client)?;
    let answer = api.run(api.client().add_node(&spec))?;
    api.print(&answer, |answer| {
        let node: RemoteNode = answer.parse()?;
        let verb = if node.revision == 1 {
            "added"
        } else {
            "updated"
        };
        Ok(format!(
            "node {} {verb}: {}; `mechanics node list` shows its state\n",
            node.spec.name, node.spec.url
        ))
    })
}

/// Runs `mechanics node rm NAME`.
pub fn node_rm(client: &ClientArgs, name: &str) -> Result<()> {
    let api = Api::new(client)?;
    api.run(api.client().remove_node(name))?;
    if !api.json {
        out(&format!(
            "node {name} removed: it gets no new jobs; those on it finish\n"
        ));
    }
    Ok(())
}
