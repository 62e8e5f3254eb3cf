//! Admission for built-in kinds: what kube-apiserver does to an object between decoding the
//! request body and writing it to storage.
//!
//! This module owns the per-kind rules that Kubernetes 1.33 applies to built-in objects:
//! defaulting ([`apply_defaults`], in `defaults.rs`), validation ([`validate`], in
//! `validation.rs`), and the schema walks that detect unknown fields and wrongly typed values
//! ([`unknown_fields`], [`decode_error`], in `unknown_fields.rs`). It also holds the kind
//! registry built from [`for_each_builtin!`](crate::for_each_builtin), so every built-in kind
//! is known here without a second list.
//!
//! It must not touch storage, HTTP, or system metadata (`uid`, `resourceVersion`,
//! `creationTimestamp`, `generation`, managed fields): the caller sets those and turns the
//! returned [`FieldError`]s into a `Status` of reason `Invalid`. Every function works on plain
//! JSON so unknown fields survive and nothing panics on hostile input.
//!
//! # Caveats
//! - Allocation (service cluster IPs and node ports, the service-account token volume) belongs
//!   to the caller; [`prepare_update`] only carries allocated values over from the old object.
//! - Kinds that are not built in (custom resources) get no defaults and no validation here.

mod defaults;
mod unknown_fields;
mod validation;

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::OnceLock;

// The main crate reaches this type as `kube::core::GroupVersionKind`.
use kube::core::GroupVersionKind;
use serde_json::{Map, Value};

pub use unknown_fields::{decode_error, unknown_fields};
pub use validation::validate;

/// One field-level validation failure, rendered like `k8s.io/apimachinery/pkg/util/validation/field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.containers[0].image`.
    pub field: String,
    /// metav1 `CauseType`, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// The message as Kubernetes prints it after the field, e.g. `Required value`.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl FieldError {
    /// `field.Required`: the value is missing.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message,
        }
    }

    /// `field.Invalid`: the value is malformed; `value` is printed as Go's field errors print it.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let mut message = format!("Invalid value: {}", go_value(value));
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message,
        }
    }

    /// `field.NotSupported`: the value is not one of `supported`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let mut message = format!("Unsupported value: {}", go_value(value));
        if !supported.is_empty() {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            message.push_str(": supported values: ");
            message.push_str(&quoted.join(", "));
        }
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message,
        }
    }

    /// `field.Duplicate`: the value repeats one that must be unique.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {}", go_value(value)),
        }
    }

    /// `field.Forbidden`: the field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `field.TooLong`: the value exceeds `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }

    /// `field.NotFound`: the value refers to something that does not exist.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueNotFound",
            message: format!("Not found: {}", go_value(value)),
        }
    }
}

/// Quotes a string as Go's `%q` does (close enough for ASCII and printable Unicode).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
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

/// Renders a value the way `field.Error` renders Go values: strings quoted, numbers and bools
/// bare, string maps as `map[string]string{...}`, anything else as compact JSON.
pub(crate) fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::String(s) => go_quote(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let body: Vec<String> = items
                .iter()
                .map(|v| go_quote(v.as_str().unwrap_or_default()))
                .collect();
            format!("[]string{{{}}}", body.join(", "))
        }
        Value::Object(map) if map.values().all(Value::is_string) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    let v = map.get(k).and_then(Value::as_str).unwrap_or_default();
                    format!("{}:{}", go_quote(k), go_quote(v))
                })
                .collect();
            format!("map[string]string{{{}}}", body.join(", "))
        }
        other => other.to_string(),
    }
}

/// Parses a resource quantity (`100m`, `1Gi`, `1e3`) into its value; `None` when malformed.
pub(crate) fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" || number.matches('.').count() > 1 {
        return None;
    }
    let digits = number.trim_start_matches(['+', '-']);
    if digits == "." {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(value * multiplier)
}

/// Appends `name` to a field path (`spec` + `containers` → `spec.containers`).
pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Appends a list index to a field path (`spec.containers` → `spec.containers[0]`).
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Appends a map key to a field path (`data` → `data[key]`).
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// Facts about one built-in kind, collected from `for_each_builtin!`.
pub(crate) struct KindInfo {
    pub(crate) namespaced: bool,
    /// Name of the kind's schema in [`Registry::definitions`].
    pub(crate) schema_name: String,
    /// Decodes the JSON into the k8s-openapi struct, returning serde's message on failure.
    pub(crate) decode: fn(&Value) -> Result<(), String>,
}

/// Every built-in kind keyed by `(group, version, kind)`, with the JSON schemas of all types.
pub(crate) struct Registry {
    /// Keyed by `group/version/kind` (`/v1/Pod` for the core group).
    pub(crate) kinds: HashMap<String, KindInfo>,
    /// Schema definitions keyed by k8s-openapi schema name (`io.k8s.api.core.v1.Pod`).
    pub(crate) definitions: Map<String, Value>,
}

fn decode_as<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
    T::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
}

fn is_namespaced<T: k8s_openapi::Resource>() -> bool
where
    T::Scope: 'static,
{
    TypeId::of::<T::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>()
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut kinds = HashMap::new();
        macro_rules! register {
            ($t:ty, [$($short:literal),*], [$($cat:literal),*], [$($sub:literal),*]) => {{
                // Registers the kind's schema under its name in the generator's definitions.
                let _ = generator.subschema_for::<$t>();
                kinds.insert(
                    kind_key(
                        <$t as k8s_openapi::Resource>::GROUP,
                        <$t as k8s_openapi::Resource>::VERSION,
                        <$t as k8s_openapi::Resource>::KIND,
                    ),
                    KindInfo {
                        namespaced: is_namespaced::<$t>(),
                        schema_name: <$t as schemars::JsonSchema>::schema_name().into_owned(),
                        decode: decode_as::<$t>,
                    },
                );
            }};
        }
        crate::for_each_builtin!(register);
        let definitions = generator.take_definitions(true);
        Registry { kinds, definitions }
    })
}

/// Looks up a built-in kind.
pub(crate) fn kind_info(gvk: &GroupVersionKind) -> Option<&'static KindInfo> {
    registry()
        .kinds
        .get(&kind_key(&gvk.group, &gvk.version, &gvk.kind))
}

fn kind_key(group: &str, version: &str, kind: &str) -> String {
    format!("{group}/{version}/{kind}")
}

/// Fills in the fields kube-apiserver defaults for `gvk` (create and update; idempotent).
///
/// Includes the defaults that real clusters add through built-in admission plugins and
/// registry strategies and that do not need allocation: the `default` service account,
/// priority 0, the not-ready/unreachable tolerations of pods, namespace finalizers, and the
/// job selector (only when `metadata.uid` is already set, as the job strategy needs it).
pub fn apply_defaults(gvk: &GroupVersionKind, obj: &mut Value) {
    defaults::apply(gvk, obj);
}

/// Carries values the server allocated on create over from `old` into `obj` before an update
/// is validated, as the registry strategies do (a `kubectl replace` without `clusterIP` keeps
/// the old one). Call it after [`apply_defaults`] and before [`validate`].
pub fn prepare_update(gvk: &GroupVersionKind, obj: &mut Value, old: &Value) {
    defaults::carry_over(gvk, obj, old);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_every_builtin_kind() {
        let r = registry();
        assert!(r.kinds.len() >= 30);
        let pod = r
            .kinds
            .get(&kind_key("", "v1", "Pod"))
            .expect("pod registered");
        assert!(pod.namespaced);
        assert!(r.definitions.contains_key(&pod.schema_name));
        let ns = r
            .kinds
            .get(&kind_key("", "v1", "Namespace"))
            .expect("namespace registered");
        assert!(!ns.namespaced);
    }

    #[test]
    fn go_value_formats_like_field_errors() {
        assert_eq!(go_value(&Value::from("a\"b")), "\"a\\\"b\"");
        assert_eq!(
            go_value(&serde_json::json!({"b": "2", "a": "1"})),
            "map[string]string{\"a\":\"1\", \"b\":\"2\"}"
        );
        assert_eq!(go_value(&serde_json::json!(5)), "5");
        assert_eq!(
            go_value(&serde_json::json!(["a", "b"])),
            "[]string{\"a\", \"b\"}"
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity("1Xi"), None);
    }
}
