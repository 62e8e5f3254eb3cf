//! The environment of one container, as the kubelet builds it: service link variables, `envFrom`,
//! `env` (value and `valueFrom`), with `$(VAR)` expansion; and `$(VAR)` expansion of the
//! container's command and args.
//!
//! Owns reading the ConfigMaps, Secrets, Services and the Node the environment refers to (through
//! the API, like any client). Must not touch containers, volumes or the pod's status: the caller
//! turns an [`EnvError`] into a `CreateContainerConfigError` waiting reason.
//!
//! # Guarantees
//! - Order: service link variables (sorted by name), then `envFrom` sources in order (keys of one
//!   source sorted), then `env` in declaration order. A name set again keeps its first position
//!   and takes the later value, so each name appears once.
//! - `$(VAR)` in an `env` value refers to the variables defined before it (and the service
//!   variables); `$$` is a literal `$`; an unknown reference stays as written (as kubelet's
//!   forked `expansion` package does).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};
use kube::api::{Api, ListParams};

use crate::quantity::parse_milli;

/// Why a container's environment cannot be built. The Display text is the message kubelet shows
/// with `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    #[error("invalid quantity {value:?} in {what}")]
    InvalidQuantity { what: String, value: String },
    #[error("couldn't get {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// The environment as an ordered map: a name keeps its first position, the last value wins.
#[derive(Debug, Default)]
struct OrderedEnv {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: String) {
        if !self.values.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.values.insert(name, value);
    }

    fn into_vec(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .filter_map(|name| self.values.remove(&name).map(|value| (name, value)))
            .collect()
    }
}

/// Environment of one container, in Kubernetes' order and with `$(VAR)` expansion: service links
/// (the `kubernetes` service always, the pod's namespace's services when enableServiceLinks is
/// not false), envFrom, env (value / valueFrom).
pub async fn container_env(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    pod_ip: Option<&str>,
    host_ip: &str,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut env = OrderedEnv::default();

    let services = service_link_services(client, &namespace, spec.enable_service_links).await?;
    let mut service_vars: Vec<(String, String)> = service_env_vars(&services);
    service_vars.sort();
    for (name, value) in service_vars {
        env.set(name, value);
    }

    let mut sources = Sources::new(client, &namespace);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(cm) = &from.config_map_ref {
            let optional = cm.optional == Some(true);
            match sources.config_map(&cm.name).await? {
                Some(map) => map.data.clone().unwrap_or_default(),
                None if optional => continue,
                None => {
                    return Err(EnvError::ConfigMapNotFound {
                        name: cm.name.clone(),
                    })
                }
            }
        } else if let Some(sr) = &from.secret_ref {
            let optional = sr.optional == Some(true);
            match sources.secret(&sr.name).await? {
                Some(secret) => secret_strings(secret),
                None if optional => continue,
                None => {
                    return Err(EnvError::SecretNotFound {
                        name: sr.name.clone(),
                    })
                }
            }
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                env.set(name, value);
            } else {
                invalid.push(name);
            }
        }
        if !invalid.is_empty() {
            tracing::warn!(
                pod = %pod.metadata.name.as_deref().unwrap_or_default(),
                keys = %invalid.join(", "),
                "keys from envFrom skipped since they are not valid environment variable names"
            );
        }
    }

    let pod_ips: Vec<String> = pod_ip.into_iter().map(str::to_string).collect();
    for var in container.env.iter().flatten() {
        let value = var.value.clone().unwrap_or_default();
        let resolved = if !value.is_empty() {
            expand(&value, |name| env.values.get(name).cloned())
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_ref_value(pod, field, pod_ip.unwrap_or_default(), &pod_ips, host_ip)?
            } else if let Some(resource) = &from.resource_field_ref {
                let allocatable = sources.node_allocatable(pod).await?;
                resource_field_value(resource, container, &allocatable)?
            } else if let Some(key_ref) = &from.config_map_key_ref {
                let optional = key_ref.optional == Some(true);
                let Some(map) = sources.config_map(&key_ref.name).await? else {
                    if optional {
                        continue;
                    }
                    return Err(EnvError::ConfigMapNotFound {
                        name: key_ref.name.clone(),
                    });
                };
                match map.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::ConfigMapKeyNotFound {
                            key: key_ref.key.clone(),
                            namespace: namespace.clone(),
                            name: key_ref.name.clone(),
                        })
                    }
                }
            } else if let Some(key_ref) = &from.secret_key_ref {
                let optional = key_ref.optional == Some(true);
                let Some(secret) = sources.secret(&key_ref.name).await? else {
                    if optional {
                        continue;
                    }
                    return Err(EnvError::SecretNotFound {
                        name: key_ref.name.clone(),
                    });
                };
                match secret_strings(secret).remove(&key_ref.key) {
                    Some(v) => v,
                    None if optional => continue,
                    None => {
                        return Err(EnvError::SecretKeyNotFound {
                            key: key_ref.key.clone(),
                            namespace: namespace.clone(),
                            name: key_ref.name.clone(),
                        })
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), resolved);
    }
    Ok(env.into_vec())
}

/// command and args with `$(VAR)` expanded as kubelet does (`$$` escapes, unknown references
/// stay as written).
pub fn expand_command(
    container: &Container,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let command = container
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    let args = container
        .args
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    (command, args)
}

/// Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion): `$$` → `$`, `$(NAME)`
/// → its value or, when unknown, `$(NAME)` itself; an unclosed `$(` and any other `$x` stay.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match bytes[cursor + 1] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // "$" followed by one (possibly multi-byte) character, kept as written.
                    let len = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..len]);
                    len
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// `validation.IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_') => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The services whose variables the pod gets: `default/kubernetes` always, and with service
/// links the services of the pod's namespace (one of those named `kubernetes` wins over the
/// master service in its own namespace, as in kubelet's map).
async fn service_link_services(
    client: &kube::Client,
    namespace: &str,
    enable_service_links: Option<bool>,
) -> Result<Vec<Service>, EnvError> {
    let mut by_name: BTreeMap<String, Service> = BTreeMap::new();
    let default_api: Api<Service> = Api::namespaced(client.clone(), "default");
    if let Some(master) =
        default_api
            .get_opt("kubernetes")
            .await
            .map_err(|source| EnvError::Api {
                what: "service default/kubernetes".into(),
                source,
            })?
    {
        by_name.insert("kubernetes".into(), master);
    }
    if enable_service_links != Some(false) {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| EnvError::Api {
                what: format!("services in namespace {namespace}"),
                source,
            })?;
        for service in list.items {
            let name = service.metadata.name.clone().unwrap_or_default();
            by_name.insert(name, service);
        }
    }
    Ok(by_name.into_values().collect())
}

/// `envvars.FromServices`: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]` and the
/// Docker link variables, for services with a cluster IP.
pub fn service_env_vars(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(service.metadata.name.as_deref().unwrap_or_default());
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let port_name = format!("{prefix}_SERVICE_PORT");
        out.push((port_name.clone(), first.port.to_string()));
        for port in &ports {
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{port_name}_{}", env_name(name)),
                    port.port.to_string(),
                ));
            }
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        for (i, port) in ports.iter().enumerate() {
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let lower = protocol.to_lowercase();
            let url = format!("{lower}://{host}:{}", port.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
            out.push((port_prefix.clone(), url));
            out.push((format!("{port_prefix}_PROTO"), lower));
            out.push((format!("{port_prefix}_PORT"), port.port.to_string()));
            out.push((format!("{port_prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// `makeEnvVariableName`: upper case, `-` → `_`.
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// A Secret's data and stringData as text (lossy for non UTF-8, as Go's `string(bytes)` keeps
/// the bytes; an environment variable cannot carry invalid UTF-8 through our runtime spec).
fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// `podFieldSelectorRuntimeValue` + `fieldpath.ExtractFieldPathAsString`.
pub fn field_ref_value(
    pod: &Pod,
    field: &ObjectFieldSelector,
    pod_ip: &str,
    pod_ips: &[String],
    host_ip: &str,
) -> Result<String, EnvError> {
    let spec = pod.spec.as_ref();
    let meta = &pod.metadata;
    let path = field.field_path.as_str();
    Ok(match path {
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" => pod_ip.to_string(),
        "status.podIPs" => pod_ips.join(","),
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => {
            if let Some(key) = subscript(path, "metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript(path, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedFieldPath(path.to_string()));
            }
        }
    })
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    path.strip_prefix(field)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// `fieldpath.FormatMap`: sorted `key="value"` lines (Go `%q` quoting).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `%q` for the characters that matter: quotes, backslashes and control characters.
fn go_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The node's allocatable cpu, memory and ephemeral-storage, the defaults for unset limits.
#[derive(Debug, Clone, Default)]
pub struct Allocatable {
    pub values: BTreeMap<String, String>,
}

/// `ExtractContainerResourceValue` after `defaultPodLimitsForDownwardAPI`: the container's
/// request or limit (limits default to the node's allocatable) divided by the divisor, rounded up.
pub fn resource_field_value(
    selector: &ResourceFieldSelector,
    container: &Container,
    allocatable: &Allocatable,
) -> Result<String, EnvError> {
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::UnsupportedResource(selector.resource.clone()))?;
    if !matches!(resource, "cpu" | "memory" | "ephemeral-storage")
        || !matches!(kind, "limits" | "requests")
    {
        return Err(EnvError::UnsupportedResource(selector.resource.clone()));
    }
    let resources = container.resources.clone().unwrap_or_default();
    let set = if kind == "limits" {
        resources.limits
    } else {
        resources.requests
    };
    let text = match set.as_ref().and_then(|m| m.get(resource)) {
        Some(q) => Some(q.0.clone()),
        None if kind == "limits" => allocatable.values.get(resource).cloned(),
        None => None,
    };
    let milli = match text {
        Some(t) => parse_milli(&t).ok_or_else(|| EnvError::InvalidQuantity {
            what: selector.resource.clone(),
            value: t.clone(),
        })?,
        None => 0,
    };
    let divisor_milli = match selector.divisor.as_ref().map(|d| d.0.as_str()) {
        None | Some("") | Some("0") => 1000,
        Some(d) => match parse_milli(d) {
            Some(0) => 1000,
            Some(m) => m,
            None => {
                return Err(EnvError::InvalidQuantity {
                    what: format!("divisor of {}", selector.resource),
                    value: d.to_string(),
                })
            }
        },
    };
    let value = if resource == "cpu" {
        div_ceil(milli, divisor_milli)
    } else {
        // Memory and storage: Value() (whole units, rounded up) over the divisor's Value().
        div_ceil(div_ceil(milli, 1000), div_ceil(divisor_milli, 1000).max(1))
    };
    Ok(value.to_string())
}

fn div_ceil(a: i64, b: i64) -> i64 {
    if b == 0 {
        return 0;
    }
    let q = a / b;
    if a % b != 0 && ((a < 0) == (b < 0)) {
        q + 1
    } else {
        q
    }
}

/// ConfigMaps, Secrets and the Node read once per call.
struct Sources<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
    allocatable: Option<Allocatable>,
}

impl<'a> Sources<'a> {
    fn new(client: &'a kube::Client, namespace: &'a str) -> Self {
        Sources {
            client,
            namespace,
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
            allocatable: None,
        }
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            let found = api.get_opt(name).await.map_err(|source| EnvError::Api {
                what: format!("configmap {}/{name}", self.namespace),
                source,
            })?;
            self.config_maps.insert(name.to_string(), found);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            let found = api.get_opt(name).await.map_err(|source| EnvError::Api {
                what: format!("secret {}/{name}", self.namespace),
                source,
            })?;
            self.secrets.insert(name.to_string(), found);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }

    async fn node_allocatable(&mut self, pod: &Pod) -> Result<Allocatable, EnvError> {
        if let Some(a) = &self.allocatable {
            return Ok(a.clone());
        }
        let allocatable = node_allocatable(self.client, pod).await?;
        self.allocatable = Some(allocatable.clone());
        Ok(allocatable)
    }
}

/// The allocatable resources of the pod's node (empty when the pod is not bound or the node is
/// gone: unset limits then read as 0).
pub async fn node_allocatable(client: &kube::Client, pod: &Pod) -> Result<Allocatable, EnvError> {
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(Allocatable::default());
    };
    let api: Api<Node> = Api::all(client.clone());
    let node = api
        .get_opt(&node_name)
        .await
        .map_err(|source| EnvError::Api {
            what: format!("node {node_name}"),
            source,
        })?;
    let values = node
        .and_then(|n| n.status)
        .and_then(|s| s.allocatable)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(Allocatable { values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ResourceRequirements, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expansion_follows_kubernetes_expansion_package() {
        let vars = [("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")];
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$(EMPTY)x", "x"),
            ("$()", "$()"),
            ("é$é", "é$é"),
            ("plain", "plain"),
            ("$(VAR_A)$", "A$"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup(&vars)), want, "input {input:?}");
        }
    }

    #[test]
    fn env_var_names_are_validated_like_kubernetes() {
        for ok in ["A", "_a", "a.b", "-x", "A1"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", "a=b", "ä"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

    fn service(name: &str, ip: &str, ports: &[(Option<&str>, i32, Option<&str>)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: n.map(str::to_string),
                            port: *p,
                            protocol: proto.map(str::to_string),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn service_variables_match_docker_links() {
        let vars = service_env_vars(&[
            service(
                "my-svc",
                "10.43.0.5",
                &[(Some("http"), 80, None), (Some("dns"), 53, Some("UDP"))],
            ),
            service("headless", "None", &[(None, 80, None)]),
        ]);
        let want: Vec<(String, String)> = [
            ("MY_SVC_SERVICE_HOST", "10.43.0.5"),
            ("MY_SVC_SERVICE_PORT", "80"),
            ("MY_SVC_SERVICE_PORT_HTTP", "80"),
            ("MY_SVC_SERVICE_PORT_DNS", "53"),
            ("MY_SVC_PORT", "tcp://10.43.0.5:80"),
            ("MY_SVC_PORT_80_TCP", "tcp://10.43.0.5:80"),
            ("MY_SVC_PORT_80_TCP_PROTO", "tcp"),
            ("MY_SVC_PORT_80_TCP_PORT", "80"),
            ("MY_SVC_PORT_80_TCP_ADDR", "10.43.0.5"),
            ("MY_SVC_PORT_53_UDP", "udp://10.43.0.5:53"),
            ("MY_SVC_PORT_53_UDP_PROTO", "udp"),
            ("MY_SVC_PORT_53_UDP_PORT", "53"),
            ("MY_SVC_PORT_53_UDP_ADDR", "10.43.0.5"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(vars, want);
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns1".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([
                    ("app".into(), "web".into()),
                    ("tier".into(), "a\"b".into()),
                ])),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some("node-a".into()),
                service_account_name: Some("sa".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn field_refs_resolve_pod_fields() {
        let p = pod();
        let get = |path: &str| {
            field_ref_value(
                &p,
                &ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                },
                "10.42.0.7",
                &["10.42.0.7".to_string()],
                "192.168.1.2",
            )
        };
        assert_eq!(get("metadata.name").ok().as_deref(), Some("web"));
        assert_eq!(get("metadata.namespace").ok().as_deref(), Some("ns1"));
        assert_eq!(get("metadata.uid").ok().as_deref(), Some("u-1"));
        assert_eq!(get("metadata.labels['app']").ok().as_deref(), Some("web"));
        assert_eq!(get("metadata.labels['none']").ok().as_deref(), Some(""));
        assert_eq!(
            get("metadata.labels").ok().as_deref(),
            Some("app=\"web\"\ntier=\"a\\\"b\"")
        );
        assert_eq!(get("spec.nodeName").ok().as_deref(), Some("node-a"));
        assert_eq!(get("spec.serviceAccountName").ok().as_deref(), Some("sa"));
        assert_eq!(get("status.podIP").ok().as_deref(), Some("10.42.0.7"));
        assert_eq!(get("status.podIPs").ok().as_deref(), Some("10.42.0.7"));
        assert_eq!(get("status.hostIP").ok().as_deref(), Some("192.168.1.2"));
        assert_eq!(
            get("spec.containers").map_err(|e| e.to_string()).err(),
            Some("unsupported fieldPath: spec.containers".to_string())
        );
    }

    #[test]
    fn resource_fields_divide_and_round_up_and_default_limits_to_allocatable() {
        let container = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("250m".into())),
                    ("memory".into(), Quantity("64Mi".into())),
                ])),
                limits: Some(BTreeMap::from([("cpu".into(), Quantity("1500m".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let alloc = Allocatable {
            values: BTreeMap::from([("memory".into(), "2Gi".into()), ("cpu".into(), "4".into())]),
        };
        let get = |resource: &str, divisor: Option<&str>| {
            resource_field_value(
                &ResourceFieldSelector {
                    resource: resource.into(),
                    divisor: divisor.map(|d| Quantity(d.into())),
                    container_name: None,
                },
                &container,
                &alloc,
            )
            .map_err(|e| e.to_string())
        };
        assert_eq!(get("requests.cpu", None), Ok("1".into()));
        assert_eq!(get("requests.cpu", Some("1m")), Ok("250".into()));
        assert_eq!(get("limits.cpu", None), Ok("2".into()));
        assert_eq!(get("requests.memory", Some("1Mi")), Ok("64".into()));
        assert_eq!(get("limits.memory", Some("1Mi")), Ok("2048".into()));
        assert_eq!(get("limits.memory", None), Ok("2147483648".into()));
        assert_eq!(get("requests.ephemeral-storage", None), Ok("0".into()));
        assert_eq!(
            get("limits.gpu", None),
            Err("unsupported container resource : limits.gpu".into())
        );
    }

    #[test]
    fn expand_command_uses_the_final_environment() {
        let container = Container {
            name: "c".into(),
            command: Some(vec!["/bin/$(CMD)".into(), "$$(CMD)".into()]),
            args: Some(vec!["--x=$(X)".into(), "$(NOPE)".into()]),
            ..Default::default()
        };
        let env = vec![
            ("CMD".to_string(), "sh".to_string()),
            ("X".to_string(), "1".to_string()),
        ];
        let (command, args) = expand_command(&container, &env);
        assert_eq!(command, vec!["/bin/sh", "$(CMD)"]);
        assert_eq!(args, vec!["--x=1", "$(NOPE)"]);
    }

    #[test]
    fn error_messages_match_kubelet() {
        assert_eq!(
            EnvError::ConfigMapNotFound { name: "x".into() }.to_string(),
            "configmap \"x\" not found"
        );
        assert_eq!(
            EnvError::ConfigMapKeyNotFound {
                key: "k".into(),
                namespace: "default".into(),
                name: "x".into()
            }
            .to_string(),
            "couldn't find key k in ConfigMap default/x"
        );
    }
}
