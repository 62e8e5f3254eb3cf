//! The command line: clap structures and nothing else.
//!
//! This module declares flags (names, help, `CLUSTER_*` environment variables, defaults); it
//! must not read files, touch the environment itself or run anything. [`crate::config`] turns a
//! parsed [`Cli`] (plus the config file) into the resolved configuration the commands run with.
//!
//! Every flag can also be set by its environment variable and by the config file
//! (`/etc/cluster/config.yaml`, keys are the long flag names). Precedence: flag > environment >
//! config file > default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default location of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/cluster/config.yaml";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cluster";

/// `cluster`: a single-binary, lightweight Kubernetes distribution.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (API store; the API server and controllers are on the way)
    Server(ServerArgs),
    /// Run a node that joins a server (not available in this build yet)
    Agent(AgentArgs),
    /// Print the version
    Version,
    /// Check that this host's kernel and tools can run cluster
    CheckConfig,
}

/// Flags every long-running command takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Config file; its keys are the long flag names
    #[arg(
        long,
        env = "CLUSTER_CONFIG",
        default_value = DEFAULT_CONFIG,
        value_name = "FILE",
        help_heading = "Config"
    )]
    pub config: PathBuf,

    /// Log at debug level (RUST_LOG, when set, takes precedence)
    #[arg(
        long,
        env = "CLUSTER_DEBUG",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Logging"
    )]
    pub debug: bool,

    /// Directory that holds all state
    #[arg(
        long,
        env = "CLUSTER_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        value_name = "DIR",
        help_heading = "Data"
    )]
    pub data_dir: PathBuf,
}

/// `cluster server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

/// Where the server keeps its objects: the embedded store unless an etcd endpoint is given.
#[derive(Debug, Clone, Args)]
pub struct DatastoreArgs {
    /// External etcd to use instead of the embedded store (http(s)://host:2379; a
    /// comma-separated list for several members)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_ENDPOINT",
        value_delimiter = ',',
        value_name = "URL",
        help_heading = "Datastore"
    )]
    pub datastore_endpoint: Vec<String>,

    /// CA bundle that signed the etcd servers' certificates (PEM)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_CAFILE",
        value_name = "FILE",
        help_heading = "Datastore"
    )]
    pub datastore_cafile: Option<PathBuf>,

    /// Client certificate for etcd (PEM)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_CERTFILE",
        value_name = "FILE",
        help_heading = "Datastore"
    )]
    pub datastore_certfile: Option<PathBuf>,

    /// Client private key for etcd (PEM)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_KEYFILE",
        value_name = "FILE",
        help_heading = "Datastore"
    )]
    pub datastore_keyfile: Option<PathBuf>,
}

/// `cluster agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Server to join (https://host:6443)
    #[arg(long, env = "CLUSTER_URL", value_name = "URL", help_heading = "Agent")]
    pub server: Option<String>,

    /// Join token
    #[arg(
        long,
        env = "CLUSTER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Agent"
    )]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
