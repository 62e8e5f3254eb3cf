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
// Parsed once at start-up: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the control plane and, unless --disable-agent, a node (the embedded agent)
    Server(ServerArgs),
    /// Run a node that joins a server (not available in this build yet: `cluster server` runs
    /// its own node)
    Agent(AgentArgs),
    /// Print the version
    Version,
    /// Check that this host's kernel and tools can run cluster
    CheckConfig,
    /// Manage the node's container images (import airgap archives, list, remove, pull)
    Images(ImagesArgs),
    /// Internal: the per-container shim the agent starts (not for people)
    #[command(hide = true)]
    Shim(ShimArgs),
}

/// `cluster shim`: started by the agent's container runtime, one per container or exec.
#[derive(Debug, Clone, Args)]
pub struct ShimArgs {
    #[command(subcommand)]
    pub command: ShimCommand,
}

/// What the shim is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ShimCommand {
    /// Create the container of a bundle directory, run it and stay its parent until it exits
    Run {
        /// The container's directory (its OCI bundle and state)
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Run one more process inside a running container, wired to this process's stdio
    Exec {
        /// The container's directory
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Give the process a terminal
        #[arg(long)]
        tty: bool,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
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

    #[command(flatten)]
    pub listener: ListenerArgs,

    #[command(flatten)]
    pub networking: NetworkingArgs,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Run only the control plane: no embedded agent, so this machine is not a node
    #[arg(
        long,
        env = "CLUSTER_DISABLE_AGENT",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Agent"
    )]
    pub disable_agent: bool,
}

/// The node this machine becomes: the agent's flags (the embedded agent of `cluster server`).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Name of this node (default: the host name)
    #[arg(
        long,
        env = "CLUSTER_NODE_NAME",
        value_name = "NAME",
        help_heading = "Agent"
    )]
    pub node_name: Option<String>,

    /// Labels of this node when it registers, key=value (repeat or comma-separate)
    #[arg(
        long,
        env = "CLUSTER_NODE_LABEL",
        value_delimiter = ',',
        value_name = "KEY=VALUE",
        help_heading = "Agent"
    )]
    pub node_label: Vec<String>,

    /// Taints of this node when it registers, key=value:Effect (repeat or comma-separate)
    #[arg(
        long,
        env = "CLUSTER_NODE_TAINT",
        value_delimiter = ',',
        value_name = "KEY=VALUE:EFFECT",
        help_heading = "Agent"
    )]
    pub node_taint: Vec<String>,

    /// HTTPS port of the kubelet API (logs, exec, attach, port-forward)
    #[arg(
        long,
        env = "CLUSTER_KUBELET_PORT",
        default_value_t = 10250,
        value_name = "PORT",
        help_heading = "Agent"
    )]
    pub kubelet_port: u16,

    /// Where container logs are written (<namespace>_<pod>_<uid>/<container>/<restart>.log)
    #[arg(
        long,
        env = "CLUSTER_POD_LOGS_DIR",
        default_value = "/var/log/pods",
        value_name = "DIR",
        help_heading = "Agent"
    )]
    pub pod_logs_dir: PathBuf,

    /// Where the agent keeps state that must not survive a reboot (container state, sockets)
    #[arg(
        long,
        env = "CLUSTER_AGENT_RUN_DIR",
        default_value = "/run/cluster",
        value_name = "DIR",
        hide = true
    )]
    pub agent_run_dir: PathBuf,

    /// Resources held back for Kubernetes' own daemons, RESOURCE=QUANTITY (cpu, memory, ephemeral-storage, pid)
    #[arg(
        long,
        env = "CLUSTER_KUBE_RESERVED",
        value_delimiter = ',',
        value_name = "RESOURCE=QUANTITY",
        help_heading = "Agent"
    )]
    pub kube_reserved: Vec<String>,

    /// Resources held back for the operating system, RESOURCE=QUANTITY (cpu, memory, ephemeral-storage, pid)
    #[arg(
        long,
        env = "CLUSTER_SYSTEM_RESERVED",
        value_delimiter = ',',
        value_name = "RESOURCE=QUANTITY",
        help_heading = "Agent"
    )]
    pub system_reserved: Vec<String>,

    /// Hard eviction thresholds, SIGNAL<QUANTITY or SIGNAL<PERCENT% (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available); below one the node reports pressure
    #[arg(
        long,
        env = "CLUSTER_EVICTION_HARD",
        value_delimiter = ',',
        default_value = crate::agent::kubelet::eviction::DEFAULT_EVICTION_HARD,
        value_name = "SIGNAL<AMOUNT",
        help_heading = "Agent"
    )]
    pub eviction_hard: Vec<String>,

    /// IP address of the cluster DNS service, written into pods' /etc/resolv.conf
    #[arg(
        long,
        env = "CLUSTER_CLUSTER_DNS",
        default_value = "10.43.0.10",
        value_name = "IP",
        help_heading = "Agent"
    )]
    pub cluster_dns: std::net::IpAddr,
}

/// How the API server is reached and who may call it.
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Address the API server listens on
    #[arg(
        long,
        env = "CLUSTER_BIND_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP",
        help_heading = "Listener"
    )]
    pub bind_address: std::net::IpAddr,

    /// HTTPS port of the API server
    #[arg(
        long,
        env = "CLUSTER_HTTPS_LISTEN_PORT",
        default_value_t = 6443,
        value_name = "PORT",
        help_heading = "Listener"
    )]
    pub https_listen_port: u16,

    /// Extra host names or IPs in the serving certificate (repeat or comma-separate)
    #[arg(
        long,
        env = "CLUSTER_TLS_SAN",
        value_delimiter = ',',
        value_name = "NAME",
        help_heading = "Listener"
    )]
    pub tls_san: Vec<String>,

    /// Static bearer tokens, in kube-apiserver's CSV format: token,user,uid,"group1,group2"
    #[arg(
        long,
        env = "CLUSTER_TOKEN_AUTH_FILE",
        value_name = "FILE",
        help_heading = "Listener"
    )]
    pub token_auth_file: Option<PathBuf>,

    /// Where to write the admin kubeconfig
    #[arg(
        long,
        env = "CLUSTER_WRITE_KUBECONFIG",
        default_value = "/etc/cluster/cluster.yaml",
        value_name = "FILE",
        help_heading = "Client"
    )]
    pub write_kubeconfig: PathBuf,

    /// File mode of the admin kubeconfig, in octal
    #[arg(
        long,
        env = "CLUSTER_WRITE_KUBECONFIG_MODE",
        default_value = "0600",
        value_name = "MODE",
        help_heading = "Client"
    )]
    pub write_kubeconfig_mode: String,
}

/// Cluster-wide network settings the control plane needs.
#[derive(Debug, Clone, Args)]
pub struct NetworkingArgs {
    /// Cluster domain of service DNS names
    #[arg(
        long,
        env = "CLUSTER_CLUSTER_DOMAIN",
        default_value = "cluster.local",
        value_name = "DOMAIN",
        help_heading = "Networking"
    )]
    pub cluster_domain: String,

    /// IPv4 range of Service cluster IPs (its first address is the kubernetes Service)
    #[arg(
        long,
        env = "CLUSTER_SERVICE_CIDR",
        default_value = "10.43.0.0/16",
        value_name = "CIDR",
        help_heading = "Networking"
    )]
    pub service_cidr: String,

    /// IPv4 range of pod IPs; each node gets a /24 of it
    #[arg(
        long,
        env = "CLUSTER_CLUSTER_CIDR",
        default_value = "10.42.0.0/16",
        value_name = "CIDR",
        help_heading = "Networking"
    )]
    pub cluster_cidr: String,

    /// How long a node may miss its heartbeats before it is marked Unknown (e.g. 40s)
    #[arg(
        long,
        env = "CLUSTER_NODE_MONITOR_GRACE_PERIOD",
        default_value = "40s",
        value_name = "DURATION",
        help_heading = "Controllers"
    )]
    pub node_monitor_grace_period: String,

    /// Terminated pods kept before the oldest are garbage-collected
    #[arg(
        long,
        env = "CLUSTER_TERMINATED_POD_GC_THRESHOLD",
        default_value_t = 12500,
        value_name = "N",
        help_heading = "Controllers"
    )]
    pub terminated_pod_gc_threshold: usize,

    /// IP addresses of this node (default: the addresses of the host's interfaces)
    #[arg(
        long,
        env = "CLUSTER_NODE_IP",
        value_delimiter = ',',
        value_name = "IP",
        help_heading = "Networking"
    )]
    pub node_ip: Vec<std::net::IpAddr>,
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

    /// How long the embedded store keeps history for watches (e.g. 300s, 5m)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_HISTORY_WINDOW",
        default_value = "5m",
        value_name = "DURATION",
        help_heading = "Datastore"
    )]
    pub datastore_history_window: String,

    /// The embedded store keeps at least this many recent revisions whatever their age
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_HISTORY_MIN_REVISIONS",
        default_value_t = 1000,
        value_name = "N",
        help_heading = "Datastore"
    )]
    pub datastore_history_min_revisions: i64,

    /// How often the embedded store compacts its history (e.g. 30s)
    #[arg(
        long,
        env = "CLUSTER_DATASTORE_COMPACTION_INTERVAL",
        default_value = "30s",
        value_name = "DURATION",
        help_heading = "Datastore"
    )]
    pub datastore_compaction_interval: String,
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

/// Default location of the registries file (mirrors, credentials, TLS), as k3s's
/// `/etc/rancher/k3s/registries.yaml`.
pub const DEFAULT_PRIVATE_REGISTRY: &str = "/etc/cluster/registries.yaml";

/// `cluster images`.
#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

/// The `cluster images` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ImagesCommand {
    /// Import images from `docker save` or OCI layout archives (.tar, .tar.gz, .tar.zst)
    Import(ImagesImportArgs),
    /// List images
    Ls(ImagesListArgs),
    /// Remove images by name (untag; the image goes with its last name) or by ID
    Rm(ImagesRemoveArgs),
    /// Pull images from their registry (through registries.yaml mirrors)
    Pull(ImagesPullArgs),
}

/// Flags of every `cluster images` subcommand.
#[derive(Debug, Clone, Args)]
pub struct ImageStoreArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Registries file: mirrors, endpoint rewrites, credentials and TLS per registry
    #[arg(
        long,
        env = "CLUSTER_PRIVATE_REGISTRY",
        default_value = DEFAULT_PRIVATE_REGISTRY,
        value_name = "FILE",
        help_heading = "Images"
    )]
    pub private_registry: PathBuf,
}

/// `cluster images import`.
#[derive(Debug, Clone, Args)]
pub struct ImagesImportArgs {
    #[command(flatten)]
    pub store: ImageStoreArgs,

    /// Archives to import
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// `cluster images ls`.
#[derive(Debug, Clone, Args)]
pub struct ImagesListArgs {
    #[command(flatten)]
    pub store: ImageStoreArgs,

    /// Print only image IDs
    #[arg(long, short)]
    pub quiet: bool,
}

/// `cluster images rm`.
#[derive(Debug, Clone, Args)]
pub struct ImagesRemoveArgs {
    #[command(flatten)]
    pub store: ImageStoreArgs,

    /// Image names or IDs
    #[arg(required = true, value_name = "REF")]
    pub references: Vec<String>,
}

/// `cluster images pull`.
#[derive(Debug, Clone, Args)]
pub struct ImagesPullArgs {
    #[command(flatten)]
    pub store: ImageStoreArgs,

    /// Image references (busybox, registry.example.com/team/app:1.0)
    #[arg(required = true, value_name = "REF")]
    pub references: Vec<String>,
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
