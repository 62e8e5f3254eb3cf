//! Configuration resolution: command line, `CLUSTER_*` environment and config file in, one
//! resolved configuration per command out. Also the layout of the data directory.
//!
//! This is the one place that reads the process environment (through clap's `env` attributes,
//! plus `RUST_LOG` and `PATH`) and the config file. It must not start anything: commands receive
//! the structs resolved here and never look at flags or variables themselves.
//!
//! # Guarantees
//! - Precedence is flag > environment variable > config file > default, per flag.
//! - The config file's keys are the long flag names (`data-dir: /srv/cluster`); values are
//!   scalars, lists (for flags that take several values) or `true`/`false` (for switches).
//! - A missing config file is fine when it is the default one, an error when it was asked for
//!   (`--config` or `CLUSTER_CONFIG`).
//! - Keys that belong to another subcommand (`token` in a file read by `cluster server`) are
//!   ignored, so one file can serve a machine that runs both; keys no subcommand knows are an
//!   error.
//!
//! # How
//! As k3s does: the command line is parsed once to find the config file and to learn which flags
//! were set by the command line or the environment; every other key of the file is appended to
//! the arguments as `--key=value`, and the result is parsed again.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::agent::kubelet::eviction;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use serde_yaml::Value;

use crate::cli::{
    AgentArgs, Cli, Command, DatastoreArgs, ImageStoreArgs, ImagesCommand, ServerArgs,
};

/// Exit code for configuration and usage errors (as clap uses).
pub const USAGE_EXIT_CODE: u8 = 2;

/// Everything that can be wrong with the configuration. All of these are the user's to fix; none
/// is retryable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line itself is wrong (or `--help`/`--version` was asked for): clap's own
    /// message, printed as clap formats it.
    #[error("{0}")]
    Cli(#[source] clap::Error),
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The config file is not YAML, or not a mapping.
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    /// The config file names a flag that no subcommand has.
    #[error("config file {path}: unknown key {key:?}")]
    UnknownKey { path: String, key: String },
    /// The config file gives a key a value of the wrong shape.
    #[error("config file {path}: key {key:?}: expected {expected}")]
    WrongType {
        path: String,
        key: String,
        expected: &'static str,
    },
    /// A value from the config file was refused by the flag's parser.
    #[error("config file {path}: {message}")]
    FileValue { path: String, message: String },
    /// The flags are individually fine but do not make a usable configuration.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// The process exit code this error should end the program with.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Cli(err) => u8::try_from(err.exit_code()).unwrap_or(USAGE_EXIT_CODE),
            _ => USAGE_EXIT_CODE,
        }
    }
}

/// The layout of the data directory. Every path under `--data-dir` is named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (made absolute against the current directory).
    pub fn new(root: &Path) -> Result<DataDir, ConfigError> {
        let root = std::path::absolute(root).map_err(|err| {
            ConfigError::Invalid(format!("data dir {:?}: {err}", root.display().to_string()))
        })?;
        Ok(DataDir { root })
    }

    /// `<data-dir>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data-dir>/server`: everything the control plane keeps.
    pub fn server(&self) -> PathBuf {
        self.root.join("server")
    }

    /// `<data-dir>/server/db`: the embedded store.
    pub fn server_db(&self) -> PathBuf {
        self.server().join("db")
    }

    /// `<data-dir>/agent`: everything the data plane keeps.
    pub fn agent(&self) -> PathBuf {
        self.root.join("agent")
    }

    /// `<data-dir>/agent/images`: airgap archives imported when the agent starts.
    pub fn agent_images(&self) -> PathBuf {
        self.agent().join("images")
    }

    /// `<data-dir>/agent/runtime`: image content, snapshots and records (see
    /// `agent::runtime::image`).
    pub fn agent_runtime(&self) -> PathBuf {
        self.agent().join("runtime")
    }

    /// `<data-dir>/agent/pods`: one directory per pod (generated /etc files, volumes).
    pub fn agent_pods(&self) -> PathBuf {
        self.agent().join("pods")
    }

    /// `<data-dir>/agent/network`: the pod network's persisted IPAM.
    pub fn agent_network(&self) -> PathBuf {
        self.agent().join("network")
    }
}

/// A taint of the node, as `--node-taint key=value:Effect` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaint {
    pub key: String,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Resolved configuration of the node an agent runs (the embedded agent of `cluster server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub data_dir: DataDir,
    pub node_name: String,
    /// `--node-ip` (empty: the address of the default route's interface).
    pub node_ips: Vec<std::net::IpAddr>,
    /// `--node-label`, in the order given.
    pub labels: Vec<(String, String)>,
    pub taints: Vec<NodeTaint>,
    pub kubelet_port: u16,
    pub pod_logs_dir: PathBuf,
    /// `--agent-run-dir`: container state lives in `<run-dir>/containers`.
    pub run_dir: PathBuf,
    pub cluster_dns: std::net::IpAddr,
    pub cluster_domain: String,
    pub cluster_cidr: String,
    /// The node runs a control plane (label node-role.kubernetes.io/control-plane).
    pub control_plane: bool,
    /// The registries file (mirrors, credentials, TLS).
    pub private_registry: PathBuf,
    /// `--eviction-hard`.
    pub eviction_hard: Vec<crate::agent::kubelet::eviction::Threshold>,
    /// `--kube-reserved` plus `--system-reserved`.
    pub reserved: crate::agent::kubelet::eviction::Reserved,
}

/// Parses `--node-label` values (`key=value`; the value may be empty).
pub fn parse_node_labels(values: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    values
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(|text| match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(ConfigError::Invalid(format!(
                "invalid --node-label {text:?}: expected key=value"
            ))),
        })
        .collect()
}

/// Parses `--node-taint` values (`key=value:Effect` or `key:Effect`), as the kubelet's
/// `--register-with-taints` does.
pub fn parse_node_taints(values: &[String]) -> Result<Vec<NodeTaint>, ConfigError> {
    let mut taints = Vec::new();
    for text in values.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let bad = || {
            ConfigError::Invalid(format!(
                "invalid --node-taint {text:?}: expected key=value:Effect with Effect one of NoSchedule, PreferNoSchedule, NoExecute"
            ))
        };
        let (head, effect) = text.rsplit_once(':').ok_or_else(bad)?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad());
        }
        let (key, value) = match head.split_once('=') {
            Some((key, value)) => (key, Some(value.to_string())),
            None => (head, None),
        };
        if key.is_empty() {
            return Err(bad());
        }
        taints.push(NodeTaint {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        });
    }
    Ok(taints)
}

/// The host name, as the kernel knows it (lower case, as node names must be).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where the server keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded sled store under `<data-dir>/server/db`.
    Embedded,
    /// An external etcd cluster.
    Etcd {
        endpoints: Vec<String>,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    },
}

/// Resolved configuration of `cluster server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: DataDir,
    pub datastore: Datastore,
    /// History retention of the embedded store.
    pub history: History,
    pub debug: bool,
    /// Where the API server listens.
    pub listen: std::net::SocketAddr,
    /// Extra names in the serving certificate.
    pub tls_sans: Vec<String>,
    pub token_auth_file: Option<PathBuf>,
    pub write_kubeconfig: PathBuf,
    pub write_kubeconfig_mode: u32,
    pub cluster_domain: String,
    /// The first address of the service CIDR: the `kubernetes` Service's cluster IP.
    pub kubernetes_service_ip: std::net::IpAddr,
    /// Range of Service cluster IPs.
    pub service_cidr: String,
    /// Range of pod IPs, cut into one /24 per node.
    pub cluster_cidr: String,
    pub node_monitor_grace_period: std::time::Duration,
    pub terminated_pod_gc_threshold: usize,
    /// This node's addresses (empty: detect).
    pub node_ips: Vec<std::net::IpAddr>,
    /// The embedded agent; `None` with `--disable-agent`.
    pub agent: Option<NodeConfig>,
}

/// How long the embedded store keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    pub window: std::time::Duration,
    pub min_revisions: i64,
    pub compaction_interval: std::time::Duration,
}

/// Parses durations as Kubernetes tools write them: `90s`, `5m`, `1h`, `1h30m`, `500ms`, or a
/// bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, ConfigError> {
    let bad = || ConfigError::Invalid(format!("invalid duration {text:?}: use e.g. 30s, 5m or 1h"));
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(seconds));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => std::time::Duration::from_millis(number),
            "s" => std::time::Duration::from_secs(number),
            "m" => std::time::Duration::from_secs(number * 60),
            "h" => std::time::Duration::from_secs(number * 3600),
            _ => return Err(bad()),
        };
    }
    Ok(total)
}

/// The first usable address of an IPv4 CIDR (`10.43.0.0/16` → `10.43.0.1`).
pub fn first_address(cidr: &str) -> Result<std::net::IpAddr, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("invalid CIDR {cidr:?}: {why}"));
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected address/prefix"))?;
    let address: std::net::Ipv4Addr = address.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix: u32 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
    if !(1..=30).contains(&prefix) {
        return Err(bad("prefix length must be between 1 and 30"));
    }
    let mask = u32::MAX << (32 - prefix);
    let network = u32::from(address) & mask;
    Ok(std::net::IpAddr::V4(std::net::Ipv4Addr::from(network + 1)))
}

/// Resolved configuration of `cluster agent`.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub data_dir: DataDir,
    /// The server to join.
    pub server_url: String,
    /// The join token (never printed).
    pub token: String,
    pub debug: bool,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("data_dir", &self.data_dir)
            .field("server_url", &self.server_url)
            .field("token", &"<redacted>")
            .field("debug", &self.debug)
            .finish()
    }
}

/// Resolved configuration of `cluster check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// Root of the file system to inspect (`/`).
    pub root: PathBuf,
    /// `PATH`, to look for tools.
    pub search_path: Option<OsString>,
}

/// What to run, with its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
// Built once at start-up: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Invocation {
    Server(ServerConfig),
    Agent(AgentConfig),
    Version,
    CheckConfig(CheckConfig),
    /// The hidden per-container shim; it takes no configuration file.
    Shim(crate::cli::ShimCommand),
    Images(ImagesConfig),
}

/// Resolved configuration of `cluster images …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesConfig {
    pub data_dir: DataDir,
    /// The registries file.
    pub private_registry: PathBuf,
    /// Whether the registries file was asked for (then it must exist).
    pub private_registry_required: bool,
    pub action: ImagesAction,
}

/// What `cluster images` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagesAction {
    Import(Vec<PathBuf>),
    List { quiet: bool },
    Remove(Vec<String>),
    Pull(Vec<String>),
}

/// How to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// `--debug`: the default level is debug instead of info.
    pub debug: bool,
    /// `RUST_LOG`, when set; it wins over the default level.
    pub filter: Option<String>,
}

/// The resolved command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub invocation: Invocation,
    pub logging: Logging,
}

/// Resolves the process's own arguments and environment.
pub fn resolve_process() -> Result<Resolved, ConfigError> {
    resolve(std::env::args_os())
}

/// Resolves `args` (including the program name) against the environment and the config file.
pub fn resolve<I, T>(args: I) -> Result<Resolved, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = parse(&args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Cli)?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty());
    let (invocation, debug) = match cli.command {
        Command::Server(args) => {
            let debug = args.common.debug;
            (Invocation::Server(server_config(args)?), debug)
        }
        Command::Agent(args) => {
            let debug = args.common.debug;
            (Invocation::Agent(agent_config(args)?), debug)
        }
        Command::Images(args) => {
            let (store, action) = match args.command {
                ImagesCommand::Import(a) => (a.store, ImagesAction::Import(a.files)),
                ImagesCommand::Ls(a) => (a.store, ImagesAction::List { quiet: a.quiet }),
                ImagesCommand::Rm(a) => (a.store, ImagesAction::Remove(a.references)),
                ImagesCommand::Pull(a) => (a.store, ImagesAction::Pull(a.references)),
            };
            let debug = store.common.debug;
            (
                Invocation::Images(images_config(store, action, &matches)?),
                debug,
            )
        }
        Command::Version => (Invocation::Version, false),
        Command::Shim(args) => (Invocation::Shim(args.command), false),
        Command::CheckConfig => (
            Invocation::CheckConfig(CheckConfig {
                root: PathBuf::from("/"),
                search_path: std::env::var_os("PATH"),
            }),
            false,
        ),
    };
    Ok(Resolved {
        invocation,
        logging: Logging { debug, filter },
    })
}

/// Parses `args`, merging in the config file of the subcommand (if it takes one).
fn parse(args: &[OsString]) -> Result<ArgMatches, ConfigError> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(ConfigError::Cli)?;
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(matches);
    };
    // `cluster images <action>`: the flags live on the action.
    let (subcommand, sub) = match (command.find_subcommand(name), sub.subcommand()) {
        (Some(parent), Some((leaf, leaf_matches))) => {
            (parent.find_subcommand(leaf).cloned(), leaf_matches)
        }
        (found, _) => (found.cloned(), sub),
    };
    let Some(subcommand) = subcommand else {
        return Ok(matches);
    };
    let Some(config) = sub.try_get_one::<PathBuf>("config").ok().flatten() else {
        return Ok(matches);
    };
    let explicit = is_explicit(sub.value_source("config"));
    let Some(file) = load_file(config, explicit)? else {
        return Ok(matches);
    };
    let extra = file_args(&command, &subcommand, sub, config, &file)?;
    if extra.is_empty() {
        return Ok(matches);
    }
    let merged: Vec<OsString> = args.iter().cloned().chain(extra).collect();
    command
        .try_get_matches_from(merged)
        .map_err(|err| ConfigError::FileValue {
            path: config.display().to_string(),
            message: first_line(&err.to_string()),
        })
}

/// True when the value came from the user rather than from a default.
fn is_explicit(source: Option<ValueSource>) -> bool {
    matches!(
        source,
        Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
    )
}

/// Reads and parses the config file: `None` when it is the default one and does not exist.
fn load_file(path: &Path, explicit: bool) -> Result<Option<serde_yaml::Mapping>, ConfigError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(source) => {
            return Err(ConfigError::ReadFile {
                path: shown,
                source,
            })
        }
    };
    let value: Value = serde_yaml::from_str(&text).map_err(|err| ConfigError::Syntax {
        path: shown.clone(),
        message: format!("not valid YAML: {}", first_line(&err.to_string())),
    })?;
    match value {
        Value::Null => Ok(Some(serde_yaml::Mapping::new())),
        Value::Mapping(mapping) => Ok(Some(mapping)),
        _ => Err(ConfigError::Syntax {
            path: shown,
            message: "expected a mapping of flag names to values".to_string(),
        }),
    }
}

/// The arguments the config file adds to subcommand `name`: one `--key=value` per value of each
/// key whose flag was not set on the command line or in the environment.
fn file_args(
    command: &clap::Command,
    subcommand: &clap::Command,
    sub: &ArgMatches,
    path: &Path,
    file: &serde_yaml::Mapping,
) -> Result<Vec<OsString>, ConfigError> {
    let shown = || path.display().to_string();
    let mut extra = Vec::new();
    for (key, value) in file {
        let Value::String(key) = key else {
            return Err(ConfigError::Syntax {
                path: shown(),
                message: format!(
                    "key {} is not a string",
                    scalar_text(key).unwrap_or_default()
                ),
            });
        };
        let wrong = |expected| ConfigError::WrongType {
            path: shown(),
            key: key.clone(),
            expected,
        };
        if key == "config" {
            return Err(ConfigError::FileValue {
                path: shown(),
                message: "key \"config\" can only be given as a flag or in CLUSTER_CONFIG"
                    .to_string(),
            });
        }
        let Some(arg) = long_arg(subcommand, key) else {
            let elsewhere = command.get_subcommands().any(|other| {
                long_arg(other, key).is_some()
                    || other
                        .get_subcommands()
                        .any(|nested| long_arg(nested, key).is_some())
            });
            if elsewhere {
                continue;
            }
            return Err(ConfigError::UnknownKey {
                path: shown(),
                key: key.clone(),
            });
        };
        if is_explicit(sub.value_source(arg.get_id().as_str())) {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                Value::Bool(true) => extra.push(OsString::from(format!("--{key}"))),
                Value::Bool(false) => {}
                _ => return Err(wrong("true or false")),
            },
            ArgAction::Append => {
                let values = match value {
                    Value::Sequence(items) => items.iter().collect(),
                    single => vec![single],
                };
                for item in values {
                    let text =
                        scalar_text(item).ok_or_else(|| wrong("a value or a list of values"))?;
                    extra.push(OsString::from(format!("--{key}={text}")));
                }
            }
            _ => {
                let text = scalar_text(value).ok_or_else(|| wrong("a single value"))?;
                extra.push(OsString::from(format!("--{key}={text}")));
            }
        }
    }
    Ok(extra)
}

/// The argument of `command` whose long name is `long`.
fn long_arg<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
}

/// A YAML scalar as flag text; `None` for lists, mappings and null.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// The first non-empty line of a (possibly multi-line) message, without clap's `error: `.
fn first_line(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid value");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn images_config(
    store: ImageStoreArgs,
    action: ImagesAction,
    matches: &ArgMatches,
) -> Result<ImagesConfig, ConfigError> {
    let leaf = matches
        .subcommand()
        .and_then(|(_, images)| images.subcommand())
        .map(|(_, leaf)| leaf);
    let required = leaf.is_some_and(|leaf| is_explicit(leaf.value_source("private_registry")));
    Ok(ImagesConfig {
        data_dir: DataDir::new(&store.common.data_dir)?,
        private_registry: store.private_registry,
        private_registry_required: required,
        action,
    })
}

fn server_config(args: ServerArgs) -> Result<ServerConfig, ConfigError> {
    let history = History {
        window: parse_duration(&args.datastore.datastore_history_window)?,
        min_revisions: args.datastore.datastore_history_min_revisions.max(0),
        compaction_interval: parse_duration(&args.datastore.datastore_compaction_interval)?,
    };
    if history.compaction_interval.is_zero() {
        return Err(ConfigError::Invalid(
            "--datastore-compaction-interval must be greater than zero".into(),
        ));
    }
    let mode = u32::from_str_radix(
        args.listener.write_kubeconfig_mode.trim_start_matches("0o"),
        8,
    )
    .ok()
    .filter(|mode| *mode <= 0o777)
    .ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--write-kubeconfig-mode {:?} is not an octal file mode such as 0600 or 0644",
            args.listener.write_kubeconfig_mode
        ))
    })?;
    let agent = if args.disable_agent {
        None
    } else {
        Some(node_config(&args)?)
    };
    Ok(ServerConfig {
        data_dir: DataDir::new(&args.common.data_dir)?,
        datastore: datastore(args.datastore)?,
        history,
        debug: args.common.debug,
        listen: std::net::SocketAddr::new(
            args.listener.bind_address,
            args.listener.https_listen_port,
        ),
        tls_sans: args.listener.tls_san,
        token_auth_file: args.listener.token_auth_file,
        write_kubeconfig: std::path::absolute(&args.listener.write_kubeconfig)
            .unwrap_or(args.listener.write_kubeconfig),
        write_kubeconfig_mode: mode,
        cluster_domain: args.networking.cluster_domain,
        kubernetes_service_ip: first_address(&args.networking.service_cidr)?,
        service_cidr: args.networking.service_cidr.clone(),
        cluster_cidr: {
            first_address(&args.networking.cluster_cidr)?;
            args.networking.cluster_cidr.clone()
        },
        node_monitor_grace_period: parse_duration(&args.networking.node_monitor_grace_period)?,
        terminated_pod_gc_threshold: args.networking.terminated_pod_gc_threshold,
        node_ips: args.networking.node_ip,
        agent,
    })
}

/// The embedded agent's configuration from the server's flags.
fn node_config(args: &ServerArgs) -> Result<NodeConfig, ConfigError> {
    let node_name = match &args.node.node_name {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => hostname(),
    };
    Ok(NodeConfig {
        data_dir: DataDir::new(&args.common.data_dir)?,
        node_name,
        node_ips: args.networking.node_ip.clone(),
        labels: parse_node_labels(&args.node.node_label)?,
        taints: parse_node_taints(&args.node.node_taint)?,
        kubelet_port: args.node.kubelet_port,
        pod_logs_dir: std::path::absolute(&args.node.pod_logs_dir)
            .unwrap_or_else(|_| args.node.pod_logs_dir.clone()),
        run_dir: std::path::absolute(&args.node.agent_run_dir)
            .unwrap_or_else(|_| args.node.agent_run_dir.clone()),
        cluster_dns: args.node.cluster_dns,
        cluster_domain: args.networking.cluster_domain.clone(),
        cluster_cidr: args.networking.cluster_cidr.clone(),
        control_plane: true,
        private_registry: PathBuf::from(crate::cli::DEFAULT_PRIVATE_REGISTRY),
        eviction_hard: eviction::parse_thresholds(&args.node.eviction_hard)
            .map_err(|e| ConfigError::Invalid(format!("--eviction-hard: {e}")))?,
        reserved: eviction::parse_reserved("--kube-reserved", &args.node.kube_reserved)
            .map_err(ConfigError::Invalid)?
            .plus(
                eviction::parse_reserved("--system-reserved", &args.node.system_reserved)
                    .map_err(ConfigError::Invalid)?,
            ),
    })
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_and_cidrs_parse() {
        assert_eq!(
            parse_duration("90").ok(),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("5m").ok(),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(std::time::Duration::from_millis(500))
        );
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            first_address("10.43.0.0/16").ok(),
            Some("10.43.0.1".parse().expect("ip"))
        );
        assert_eq!(
            first_address("10.96.5.7/12").ok(),
            Some("10.96.0.1".parse().expect("ip"))
        );
        assert!(first_address("10.43.0.0").is_err());
        assert!(first_address("fd00::/64").is_err());
    }
}

fn datastore(args: DatastoreArgs) -> Result<Datastore, ConfigError> {
    let endpoints: Vec<String> = args
        .datastore_endpoint
        .iter()
        .map(|endpoint| endpoint.trim().to_string())
        .filter(|endpoint| !endpoint.is_empty())
        .collect();
    if endpoints.is_empty() {
        for (flag, value) in [
            ("--datastore-cafile", &args.datastore_cafile),
            ("--datastore-certfile", &args.datastore_certfile),
            ("--datastore-keyfile", &args.datastore_keyfile),
        ] {
            if value.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{flag} is set but --datastore-endpoint is not"
                )));
            }
        }
        return Ok(Datastore::Embedded);
    }
    for endpoint in &endpoints {
        let host = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        if host.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
            return Err(ConfigError::Invalid(format!(
                "invalid --datastore-endpoint {endpoint:?}: expected http://host:port or https://host:port"
            )));
        }
    }
    if args.datastore_certfile.is_some() != args.datastore_keyfile.is_some() {
        return Err(ConfigError::Invalid(
            "--datastore-certfile and --datastore-keyfile must be given together".to_string(),
        ));
    }
    Ok(Datastore::Etcd {
        endpoints,
        ca_file: args.datastore_cafile,
        cert_file: args.datastore_certfile,
        key_file: args.datastore_keyfile,
    })
}

fn agent_config(args: AgentArgs) -> Result<AgentConfig, ConfigError> {
    let server_url = args
        .server
        .filter(|url| !url.trim().is_empty())
        .ok_or_else(|| ConfigError::Invalid("--server (CLUSTER_URL) is required".to_string()))?;
    if !server_url.starts_with("https://") {
        return Err(ConfigError::Invalid(format!(
            "invalid --server {server_url:?}: expected https://host:port"
        )));
    }
    let token = args
        .token
        .filter(|token| !token.trim().is_empty())
        .ok_or_else(|| ConfigError::Invalid("--token (CLUSTER_TOKEN) is required".to_string()))?;
    Ok(AgentConfig {
        data_dir: DataDir::new(&args.common.data_dir)?,
        server_url,
        token,
        debug: args.common.debug,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard};

    use super::*;

    /// Tests that parse read `CLUSTER_*` variables; the ones that set them must not race the
    /// others, so every parsing test holds this lock.
    static ENV: Mutex<()> = Mutex::new(());

    fn env_lock() -> MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets an environment variable for the life of the guard.
    struct EnvVar(&'static str);

    impl EnvVar {
        fn set(name: &'static str, value: &str) -> EnvVar {
            std::env::set_var(name, value);
            EnvVar(name)
        }
    }

    impl Drop for EnvVar {
        fn drop(&mut self) {
            std::env::remove_var(self.0);
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(config: &str) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("config.yaml"), config).expect("write config");
            Fixture { dir }
        }

        fn config(&self) -> String {
            self.dir.path().join("config.yaml").display().to_string()
        }

        fn server(&self, extra: &[&str]) -> Result<ServerConfig, ConfigError> {
            let config = self.config();
            let mut args = vec!["cluster", "server", "--config", config.as_str()];
            args.extend_from_slice(extra);
            match resolve(args)?.invocation {
                Invocation::Server(config) => Ok(config),
                other => panic!("expected a server invocation, got {other:?}"),
            }
        }
    }

    fn data_dir(config: &ServerConfig) -> &Path {
        config.data_dir.root()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let _env = env_lock();
        let config = Fixture::new("").server(&[]).expect("resolve");
        assert_eq!(data_dir(&config), Path::new("/var/lib/cluster"));
        assert_eq!(config.datastore, Datastore::Embedded);
        assert!(!config.debug);
        assert_eq!(
            config.data_dir.server_db(),
            Path::new("/var/lib/cluster/server/db")
        );
    }

    #[test]
    fn file_beats_default() {
        let _env = env_lock();
        let config = Fixture::new("data-dir: /from/file\ndebug: true\n")
            .server(&[])
            .expect("resolve");
        assert_eq!(data_dir(&config), Path::new("/from/file"));
        assert!(config.debug);
    }

    #[test]
    fn env_beats_file() {
        let _env = env_lock();
        let _var = EnvVar::set("CLUSTER_DATA_DIR", "/from/env");
        let config = Fixture::new("data-dir: /from/file\n")
            .server(&[])
            .expect("resolve");
        assert_eq!(data_dir(&config), Path::new("/from/env"));
    }

    #[test]
    fn flag_beats_env_and_file() {
        let _env = env_lock();
        let _var = EnvVar::set("CLUSTER_DATA_DIR", "/from/env");
        let config = Fixture::new("data-dir: /from/file\n")
            .server(&["--data-dir", "/from/flag"])
            .expect("resolve");
        assert_eq!(data_dir(&config), Path::new("/from/flag"));
    }

    #[test]
    fn config_path_comes_from_the_environment_too() {
        let _env = env_lock();
        let fixture = Fixture::new("data-dir: /from/file\n");
        let _var = EnvVar::set("CLUSTER_CONFIG", &fixture.config());
        let resolved = resolve(["cluster", "server"]).expect("resolve");
        let Invocation::Server(config) = resolved.invocation else {
            panic!("expected a server invocation");
        };
        assert_eq!(data_dir(&config), Path::new("/from/file"));
    }

    #[test]
    fn endpoints_come_from_lists_and_comma_separated_values() {
        let _env = env_lock();
        let yaml = "datastore-endpoint:\n  - http://a:2379\n  - http://b:2379\ndatastore-cafile: /ca.pem\n";
        let config = Fixture::new(yaml).server(&[]).expect("resolve");
        assert_eq!(
            config.datastore,
            Datastore::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                ca_file: Some(PathBuf::from("/ca.pem")),
                cert_file: None,
                key_file: None,
            }
        );
        let _var = EnvVar::set(
            "CLUSTER_DATASTORE_ENDPOINT",
            "https://c:2379,https://d:2379",
        );
        let config = Fixture::new(yaml).server(&[]).expect("resolve");
        let Datastore::Etcd { endpoints, .. } = config.datastore else {
            panic!("expected etcd");
        };
        assert_eq!(endpoints, ["https://c:2379", "https://d:2379"]);
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_and_key() {
        let _env = env_lock();
        let fixture = Fixture::new("foo: 1\n");
        let err = fixture.server(&[]).expect_err("unknown key");
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("config file {}: unknown key \"foo\"", fixture.config())
        );
        assert_eq!(err.exit_code(), USAGE_EXIT_CODE);
    }

    #[test]
    fn keys_of_another_subcommand_are_ignored() {
        let _env = env_lock();
        let config = Fixture::new("token: secret\nserver: https://x:6443\n")
            .server(&[])
            .expect("resolve");
        assert_eq!(config.datastore, Datastore::Embedded);
    }

    #[test]
    fn bad_yaml_is_an_error_on_one_line() {
        let _env = env_lock();
        let fixture = Fixture::new("data-dir: [unclosed\n");
        let err = fixture.server(&[]).expect_err("bad yaml");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("config file {}: ", fixture.config())));
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let _env = env_lock();
        for yaml in [
            "debug: yes-please\n",
            "data-dir: [a, b]\n",
            "data-dir: {a: b}\n",
        ] {
            let err = Fixture::new(yaml).server(&[]).expect_err(yaml);
            assert!(
                matches!(err, ConfigError::WrongType { .. }),
                "{yaml}: {err:?}"
            );
        }
        let err = Fixture::new("- data-dir\n")
            .server(&[])
            .expect_err("a list");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_file_is_fine_only_when_it_is_the_default() {
        let path = Path::new("/nonexistent/cluster/config.yaml");
        assert!(matches!(load_file(path, false), Ok(None)));
        let err = load_file(path, true).expect_err("explicit missing file");
        assert!(err.to_string().starts_with("config file /nonexistent/"));
    }

    #[test]
    fn bad_flags_are_clap_errors_with_exit_code_2() {
        let _env = env_lock();
        let err = resolve(["cluster", "server", "--no-such-flag"]).expect_err("bad flag");
        assert!(matches!(err, ConfigError::Cli(_)));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn datastore_tls_files_need_an_endpoint() {
        let _env = env_lock();
        let err = Fixture::new("datastore-cafile: /ca.pem\n")
            .server(&[])
            .expect_err("cafile without endpoint");
        assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
        let err = Fixture::new("")
            .server(&["--datastore-endpoint", "ftp://x"])
            .expect_err("bad scheme");
        assert!(err.to_string().contains("ftp://x"), "{err}");
    }

    #[test]
    fn the_server_runs_an_agent_unless_disabled() {
        let _env = env_lock();
        let fixture = Fixture::new("node-label: [a=b, c=]\nnode-taint: k=v:NoSchedule\n");
        let config = fixture
            .server(&["--node-name", "edge-1", "--kubelet-port", "10350"])
            .expect("resolve");
        let agent = config.agent.expect("an embedded agent by default");
        assert_eq!(agent.node_name, "edge-1");
        assert_eq!(agent.kubelet_port, 10350);
        assert_eq!(
            agent.labels,
            [("a".into(), "b".into()), ("c".into(), String::new())]
        );
        assert_eq!(
            agent.taints,
            [NodeTaint {
                key: "k".into(),
                value: Some("v".into()),
                effect: "NoSchedule".into()
            }]
        );
        assert_eq!(agent.pod_logs_dir, Path::new("/var/log/pods"));
        assert_eq!(agent.run_dir, Path::new("/run/cluster"));
        assert_eq!(agent.cluster_dns.to_string(), "10.43.0.10");
        assert!(agent.control_plane);
        let config = fixture.server(&["--disable-agent"]).expect("resolve");
        assert!(config.agent.is_none());
        let err = fixture
            .server(&["--node-taint", "k=v:Sometimes"])
            .expect_err("bad effect");
        assert!(err.to_string().contains("--node-taint"), "{err}");
        let err = fixture
            .server(&["--node-label", "novalue"])
            .expect_err("bad label");
        assert!(err.to_string().contains("--node-label"), "{err}");
    }

    #[test]
    fn reservations_and_eviction_thresholds_resolve() {
        let _env = env_lock();
        let fixture = Fixture::new(
            "kube-reserved: [cpu=100m, memory=128Mi]
",
        );
        let agent = fixture
            .server(&["--system-reserved", "cpu=400m,pid=100"])
            .expect("resolve")
            .agent
            .expect("agent");
        assert_eq!(agent.reserved.cpu_milli, 500);
        assert_eq!(agent.reserved.memory_bytes, 128 << 20);
        assert_eq!(agent.reserved.pids, 100);
        // The kubelet's defaults, unless given.
        assert_eq!(
            agent.eviction_hard,
            eviction::parse_thresholds(
                &eviction::DEFAULT_EVICTION_HARD
                    .split(',')
                    .map(String::from)
                    .collect::<Vec<_>>()
            )
            .expect("defaults")
        );
        let agent = fixture
            .server(&["--eviction-hard", "pid.available<5%"])
            .expect("resolve")
            .agent
            .expect("agent");
        assert_eq!(agent.eviction_hard.len(), 1);
        for (flag, value) in [
            ("--eviction-hard", "memory.available>1Gi"),
            ("--eviction-hard", "disk.free<1Gi"),
            ("--system-reserved", "gpu=1"),
            ("--kube-reserved", "memory=lots"),
        ] {
            let err = fixture.server(&[flag, value]).expect_err(value);
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
            assert_eq!(err.exit_code(), 2, "{err}");
        }
    }

    #[test]
    fn agent_needs_server_and_token_and_hides_the_token() {
        let _env = env_lock();
        let fixture = Fixture::new("server: https://10.0.0.1:6443\n");
        let config = fixture.config();
        let err = resolve(["cluster", "agent", "--config", &config]).expect_err("no token");
        assert!(err.to_string().contains("--token"), "{err}");
        let resolved = resolve(["cluster", "agent", "--config", &config, "--token", "s3cret"])
            .expect("resolve");
        let Invocation::Agent(agent) = resolved.invocation else {
            panic!("expected an agent invocation");
        };
        assert_eq!(agent.server_url, "https://10.0.0.1:6443");
        assert!(!format!("{agent:?}").contains("s3cret"));
    }
}
