//! Validation of built-in kinds on create and update, after `pkg/apis/*/validation` of
//! kube-apiserver 1.33: object metadata, the essentials of each kind's spec, and the fields
//! an update may not change. Messages and field paths follow `field.Error` so `kubectl` shows
//! what it shows against a real cluster.
//!
//! This module owns only judging an already-defaulted object; it must not change it (defaults
//! belong to `defaults.rs`) and does not check system metadata the caller manages
//! (`resourceVersion`, `generation`, managed fields).
//!
//! # Caveats
//! Coverage is the common paths, not every rule of the Go validators: volume sources are
//! checked for presence and their key reference, not every plugin's fields; security contexts,
//! topology spread, affinity and resource claims are not validated.

use std::collections::{BTreeSet, HashSet};

use super::GroupVersionKind;
use serde_json::Value;

use super::{child, index, key, kind_info, parse_quantity, FieldError};

type Errs = Vec<FieldError>;

// ---- small JSON accessors ----

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |cur, k| cur.get(k))
        .filter(|v| !v.is_null())
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(Value::as_i64)
}

fn entries<'a>(v: &'a Value, path: &[&str]) -> Vec<(&'a String, &'a Value)> {
    get(v, path)
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// Removes what Go's semantic equality cannot see: nulls, empty strings and empty lists.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| {
                    !matches!(v, Value::Null)
                        && v.as_str() != Some("")
                        && v.as_array().is_none_or(|a| !a.is_empty())
                })
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    normalized(a.unwrap_or(&Value::Null)) == normalized(b.unwrap_or(&Value::Null))
}

/// Lists where two values differ, as `path: old -> new` lines (at most `limit`).
fn diff_lines(path: &str, old: &Value, new: &Value, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || normalized(old) == normalized(new) {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff_lines(
                    &child(path, k),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                    limit,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_lines(&index(path, i), x, y, out, limit);
            }
        }
        _ => out.push(format!("  {path}: {old} -> {new}")),
    }
}

// ---- apimachinery string validators ----

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, ex) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{ex}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|c| is_alnum_lower(*c) || *c == b'-')
}

pub(crate) fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches_dns_label(s) {
        errs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?",
            &["my-name", "123-abc"],
        ));
    }
    errs
}

pub(crate) fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !s.split('.').all(matches_dns_label) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
            &["example.com"],
        ));
    }
    errs
}

fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !(matches_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()) {
        errs.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            "[a-z]([-a-z0-9]*[a-z0-9])?",
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

const QUALIFIED_NAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

pub(crate) fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !matches_qualified_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

pub(crate) fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !matches_qualified_part(s) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?",
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn port_number(p: i64) -> Vec<String> {
    if (1..=65535).contains(&p) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_owned()]
    }
}

fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len_error(15));
    }
    if !s.bytes().all(|c| is_alnum_lower(c) || c == b'-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_owned());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".to_owned());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_owned());
    }
    errs
}

fn config_map_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        errs.push("must not be '.'".to_owned());
    } else if s == ".." {
        errs.push("must not be '..'".to_owned());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".to_owned());
    }
    errs
}

fn path_segment_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s == "." || s == ".." {
        errs.push(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

// ---- metadata ----

#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

fn name_rule(gvk: &GroupVersionKind) -> NameRule {
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn check_name(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::Dns1035 => dns1035_label(name),
        NameRule::PathSegment => path_segment_name(name),
    }
}

fn labels(labels: &Value, path: &str, errs: &mut Errs) {
    let Some(map) = labels.as_object() else {
        return;
    };
    for (k, v) in map {
        for msg in qualified_name(k) {
            errs.push(FieldError::invalid(path, &Value::from(k.as_str()), &msg));
        }
        let value = v.as_str().unwrap_or("");
        for msg in label_value(value) {
            errs.push(FieldError::invalid(path, &Value::from(value), &msg));
        }
    }
}

const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn annotations(annotations: &Value, path: &str, errs: &mut Errs) {
    let Some(map) = annotations.as_object() else {
        return;
    };
    let mut total = 0;
    for (k, v) in map {
        for msg in qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(path, &Value::from(k.as_str()), &msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

/// `ValidateObjectMeta`.
fn object_meta(meta: &Value, namespaced: bool, rule: NameRule, errs: &mut Errs) {
    let name = text(meta, &["name"]);
    let generate_name = text(meta, &["generateName"]);
    if !generate_name.is_empty() {
        // A trailing dash is allowed in a prefix.
        let masked = match generate_name.strip_suffix('-') {
            Some(rest) => format!("{rest}a"),
            None => generate_name.to_owned(),
        };
        for msg in check_name(rule, &masked) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                &Value::from(generate_name),
                &msg,
            ));
        }
    }
    if name.is_empty() {
        if generate_name.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        for msg in check_name(rule, name) {
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                &msg,
            ));
        }
    }
    let namespace = text(meta, &["namespace"]);
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for msg in dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    "metadata.namespace",
                    &Value::from(namespace),
                    &msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(l) = get(meta, &["labels"]) {
        labels(l, "metadata.labels", errs);
    }
    if let Some(a) = get(meta, &["annotations"]) {
        annotations(a, "metadata.annotations", errs);
    }
    for (i, owner) in list(meta, &["ownerReferences"]).iter().enumerate() {
        let path = index("metadata.ownerReferences", i);
        for (field, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if text(owner, &[field]).is_empty() {
                errs.push(FieldError::invalid(
                    child(&path, field),
                    &Value::from(""),
                    &format!("{what} must not be empty"),
                ));
            }
        }
    }
    for finalizer in list(meta, &["finalizers"]).iter().filter_map(Value::as_str) {
        let msgs = qualified_name(finalizer);
        for msg in &msgs {
            errs.push(FieldError::invalid(
                "metadata.finalizers",
                &Value::from(finalizer),
                msg,
            ));
        }
        if msgs.is_empty()
            && !finalizer.contains('/')
            && !["kubernetes", "orphan", "foregroundDeletion"].contains(&finalizer)
        {
            errs.push(FieldError::invalid(
                "metadata.finalizers",
                &Value::from(finalizer),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

/// `ValidateObjectMetaUpdate`: identity fields keep their values.
fn object_meta_update(meta: &Value, old: &Value, errs: &mut Errs) {
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        let new_value = text(meta, &[field]);
        let old_value = text(old, &[field]);
        let both_set = !new_value.is_empty() && !old_value.is_empty();
        let name_like = field == "name" || field == "namespace";
        if new_value != old_value && (both_set || name_like) {
            errs.push(FieldError::invalid(
                child("metadata", field),
                &Value::from(new_value),
                "field is immutable",
            ));
        }
    }
}

/// Template metadata: labels and annotations only.
fn template_meta(meta: &Value, path: &str, errs: &mut Errs) {
    if let Some(l) = get(meta, &["labels"]) {
        labels(l, &child(path, "labels"), errs);
    }
    if let Some(a) = get(meta, &["annotations"]) {
        annotations(a, &child(path, "annotations"), errs);
    }
}

// ---- label selectors ----

fn label_selector(selector: &Value, path: &str, errs: &mut Errs) {
    if let Some(l) = get(selector, &["matchLabels"]) {
        labels(l, &child(path, "matchLabels"), errs);
    }
    for (i, expr) in list(selector, &["matchExpressions"]).iter().enumerate() {
        let p = index(&child(path, "matchExpressions"), i);
        let values = list(expr, &["values"]);
        match text(expr, &["operator"]) {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(FieldError::required(
                        child(&p, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(FieldError::forbidden(
                        child(&p, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            other => errs.push(FieldError::invalid(
                child(&p, "operator"),
                &Value::from(other),
                "not a valid selector operator",
            )),
        }
        let k = text(expr, &["key"]);
        for msg in qualified_name(k) {
            errs.push(FieldError::invalid(child(&p, "key"), &Value::from(k), &msg));
        }
    }
}

fn selector_is_empty(selector: &Value) -> bool {
    entries(selector, &["matchLabels"]).is_empty()
        && list(selector, &["matchExpressions"]).is_empty()
}

/// Whether a `LabelSelector` selects the given labels.
pub(crate) fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels = entries(selector, &["matchLabels"])
        .into_iter()
        .all(|(k, v)| label(k) == v.as_str());
    let match_exprs = list(selector, &["matchExpressions"]).iter().all(|e| {
        let k = text(e, &["key"]);
        let in_values = |v: &str| list(e, &["values"]).iter().any(|x| x.as_str() == Some(v));
        match text(e, &["operator"]) {
            "In" => label(k).is_some_and(in_values),
            "NotIn" => !label(k).is_some_and(in_values),
            "Exists" => label(k).is_some(),
            "DoesNotExist" => label(k).is_none(),
            _ => false,
        }
    });
    match_labels && match_exprs
}

// ---- pod spec ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum PodOwner {
    Pod,
    /// Deployment and ReplicaSet templates.
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    Job,
}

fn non_negative(v: &Value, field: &str, path: &str, errs: &mut Errs) {
    if let Some(n) = int(v, &[field]) {
        if n < 0 {
            errs.push(FieldError::invalid(
                child(path, field),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn one_of(v: &Value, field: &str, path: &str, supported: &[&str], required: bool, errs: &mut Errs) {
    let value = text(v, &[field]);
    if value.is_empty() {
        if required {
            errs.push(FieldError::required(child(path, field), ""));
        }
    } else if !supported.contains(&value) {
        errs.push(FieldError::not_supported(
            child(path, field),
            &Value::from(value),
            supported,
        ));
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn volumes(spec: &Value, path: &str, errs: &mut Errs) -> HashSet<String> {
    let mut names = HashSet::new();
    for (i, vol) in list(spec, &["volumes"]).iter().enumerate() {
        let p = index(&child(path, "volumes"), i);
        let name = text(vol, &["name"]);
        if name.is_empty() {
            errs.push(FieldError::required(child(&p, "name"), ""));
        } else {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    child(&p, "name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            if !names.insert(name.to_owned()) {
                errs.push(FieldError::duplicate(child(&p, "name"), &Value::from(name)));
            }
        }
        let sources: Vec<&&str> = VOLUME_SOURCES
            .iter()
            .filter(|s| get(vol, &[s]).is_some())
            .collect();
        match sources.as_slice() {
            [] => errs.push(FieldError::required(&p, "must specify a volume type")),
            [only] => {
                let sp = child(&p, only);
                let required_name = match **only {
                    "secret" => Some("secretName"),
                    "configMap" => Some("name"),
                    "persistentVolumeClaim" => Some("claimName"),
                    "hostPath" | "nfs" => Some("path"),
                    _ => None,
                };
                if let Some(field) = required_name {
                    if text(vol, &[only, field]).is_empty() {
                        errs.push(FieldError::required(child(&sp, field), ""));
                    }
                }
                if let Some(mode) = int(vol, &[only, "defaultMode"]) {
                    if !(0..=0o777).contains(&mode) {
                        errs.push(FieldError::invalid(
                            child(&sp, "defaultMode"),
                            &Value::from(mode),
                            "must be a number between 0 and 0777 (octal), both inclusive",
                        ));
                    }
                }
            }
            [_, second, ..] => {
                errs.push(FieldError::forbidden(
                    child(&p, second),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    names
}

fn resources(res: &Value, path: &str, errs: &mut Errs) {
    for kind in ["limits", "requests"] {
        for (name, q) in entries(res, &[kind]) {
            let qp = key(&child(path, kind), name);
            let parsed = match q {
                Value::String(s) => parse_quantity(s),
                Value::Number(n) => n.as_f64(),
                _ => None,
            };
            if parsed.is_some_and(|v| v < 0.0) {
                errs.push(FieldError::invalid(
                    qp,
                    q,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    let limits = entries(res, &["limits"]);
    for (name, request) in entries(res, &["requests"]) {
        let Some((_, limit)) = limits.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        let as_num = |q: &Value| match q {
            Value::String(s) => parse_quantity(s),
            Value::Number(n) => n.as_f64(),
            _ => None,
        };
        if let (Some(r), Some(l)) = (as_num(request), as_num(limit)) {
            if r > l {
                let limit_text = limit
                    .as_str()
                    .map_or_else(|| limit.to_string(), str::to_owned);
                let request_text = request
                    .as_str()
                    .map_or_else(|| request.to_string(), str::to_owned);
                errs.push(FieldError::invalid(
                    key(&child(path, "requests"), name),
                    &Value::from(request_text),
                    &format!("must be less than or equal to {name} limit of {limit_text}"),
                ));
            }
        }
    }
}

fn probe(probe: &Value, path: &str, must_succeed_once: bool, errs: &mut Errs) {
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter(|h| get(probe, &[h]).is_some())
        .count();
    if handlers == 0 {
        errs.push(FieldError::required(path, "must specify a handler type"));
    } else if handlers > 1 {
        errs.push(FieldError::forbidden(
            path,
            "may not specify more than 1 handler type",
        ));
    }
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        non_negative(probe, field, path, errs);
    }
    if must_succeed_once {
        if let Some(n) = int(probe, &["successThreshold"]) {
            if n != 1 {
                errs.push(FieldError::invalid(
                    child(path, "successThreshold"),
                    &Value::from(n),
                    "must be 1",
                ));
            }
        }
    }
    if let Some(port) =
        get(probe, &["httpGet", "port"]).or_else(|| get(probe, &["tcpSocket", "port"]))
    {
        let handler = if get(probe, &["httpGet"]).is_some() {
            "httpGet"
        } else {
            "tcpSocket"
        };
        let pp = child(&child(path, handler), "port");
        match port {
            Value::Number(n) => {
                for msg in port_number(n.as_i64().unwrap_or(0)) {
                    errs.push(FieldError::invalid(&pp, port, &msg));
                }
            }
            Value::String(s) => {
                for msg in port_name(s) {
                    errs.push(FieldError::invalid(&pp, port, &msg));
                }
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn container(
    c: &Value,
    path: &str,
    is_init: bool,
    volume_names: &HashSet<String>,
    container_names: &mut HashSet<String>,
    errs: &mut Errs,
) {
    let name = text(c, &["name"]);
    if name.is_empty() {
        errs.push(FieldError::required(child(path, "name"), ""));
    } else {
        for msg in dns1123_label(name) {
            errs.push(FieldError::invalid(
                child(path, "name"),
                &Value::from(name),
                &msg,
            ));
        }
        if !container_names.insert(name.to_owned()) {
            errs.push(FieldError::duplicate(
                child(path, "name"),
                &Value::from(name),
            ));
        }
    }
    let image = text(c, &["image"]);
    if image.is_empty() {
        errs.push(FieldError::required(child(path, "image"), ""));
    } else if image.trim() != image {
        errs.push(FieldError::invalid(
            child(path, "image"),
            &Value::from(image),
            "must not have leading or trailing whitespace",
        ));
    }
    one_of(
        c,
        "imagePullPolicy",
        path,
        &["Always", "IfNotPresent", "Never"],
        true,
        errs,
    );
    one_of(
        c,
        "terminationMessagePolicy",
        path,
        &["FallbackToLogsOnError", "File"],
        true,
        errs,
    );
    if is_init {
        one_of(c, "restartPolicy", path, &["Always"], false, errs);
    }
    let mut port_names = HashSet::new();
    for (i, port) in list(c, &["ports"]).iter().enumerate() {
        let pp = index(&child(path, "ports"), i);
        match int(port, &["containerPort"]) {
            None | Some(0) => errs.push(FieldError::required(child(&pp, "containerPort"), "")),
            Some(n) => {
                for msg in port_number(n) {
                    errs.push(FieldError::invalid(
                        child(&pp, "containerPort"),
                        &Value::from(n),
                        &msg,
                    ));
                }
            }
        }
        if let Some(n) = int(port, &["hostPort"]).filter(|n| *n != 0) {
            for msg in port_number(n) {
                errs.push(FieldError::invalid(
                    child(&pp, "hostPort"),
                    &Value::from(n),
                    &msg,
                ));
            }
        }
        let port_name_value = text(port, &["name"]);
        if !port_name_value.is_empty() {
            for msg in port_name(port_name_value) {
                errs.push(FieldError::invalid(
                    child(&pp, "name"),
                    &Value::from(port_name_value),
                    &msg,
                ));
            }
            if !port_names.insert(port_name_value) {
                errs.push(FieldError::duplicate(
                    child(&pp, "name"),
                    &Value::from(port_name_value),
                ));
            }
        }
        one_of(port, "protocol", &pp, &["SCTP", "TCP", "UDP"], true, errs);
    }
    for (i, env) in list(c, &["env"]).iter().enumerate() {
        let ep = index(&child(path, "env"), i);
        let env_name = text(env, &["name"]);
        if env_name.is_empty() {
            errs.push(FieldError::required(child(&ep, "name"), ""));
        } else if !env_name
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'=')
        {
            errs.push(FieldError::invalid(
                child(&ep, "name"),
                &Value::from(env_name),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if get(env, &["value"]).is_some_and(|v| v.as_str() != Some(""))
            && get(env, &["valueFrom"]).is_some()
        {
            errs.push(FieldError::invalid(
                child(&ep, "valueFrom"),
                &Value::from(""),
                "may not be specified when `value` is not empty",
            ));
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, mount) in list(c, &["volumeMounts"]).iter().enumerate() {
        let mp = index(&child(path, "volumeMounts"), i);
        let mount_name = text(mount, &["name"]);
        if mount_name.is_empty() {
            errs.push(FieldError::required(child(&mp, "name"), ""));
        } else if !volume_names.contains(mount_name) {
            errs.push(FieldError::not_found(
                child(&mp, "name"),
                &Value::from(mount_name),
            ));
        }
        let mount_path = text(mount, &["mountPath"]);
        if mount_path.is_empty() {
            errs.push(FieldError::required(child(&mp, "mountPath"), ""));
        } else if !mount_paths.insert(mount_path) {
            errs.push(FieldError::invalid(
                child(&mp, "mountPath"),
                &Value::from(mount_path),
                "must be unique",
            ));
        }
    }
    if let Some(res) = get(c, &["resources"]) {
        resources(res, &child(path, "resources"), errs);
    }
    let sidecar = is_init && text(c, &["restartPolicy"]) == "Always";
    for (probe_name, must_succeed_once) in [
        ("livenessProbe", true),
        ("readinessProbe", false),
        ("startupProbe", true),
    ] {
        if let Some(p) = get(c, &[probe_name]) {
            if is_init && !sidecar {
                errs.push(FieldError::forbidden(
                    child(path, probe_name),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            } else {
                probe(p, &child(path, probe_name), must_succeed_once, errs);
            }
        }
    }
}

fn tolerations(spec: &Value, path: &str, errs: &mut Errs) {
    for (i, t) in list(spec, &["tolerations"]).iter().enumerate() {
        let tp = index(&child(path, "tolerations"), i);
        let k = text(t, &["key"]);
        if !k.is_empty() {
            for msg in qualified_name(k) {
                errs.push(FieldError::invalid(
                    child(&tp, "key"),
                    &Value::from(k),
                    &msg,
                ));
            }
        }
        let operator = text(t, &["operator"]);
        if k.is_empty() && operator != "Exists" {
            errs.push(FieldError::invalid(
                child(&tp, "operator"),
                &Value::from(operator),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        match operator {
            "" | "Equal" => {
                let value = text(t, &["value"]);
                for msg in label_value(value) {
                    errs.push(FieldError::invalid(
                        child(&tp, "value"),
                        &Value::from(value),
                        &msg,
                    ));
                }
            }
            "Exists" => {
                if !text(t, &["value"]).is_empty() {
                    errs.push(FieldError::invalid(
                        child(&tp, "operator"),
                        &Value::from(text(t, &["value"])),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                child(&tp, "operator"),
                &Value::from(other),
                &["Equal", "Exists"],
            )),
        }
        one_of(
            t,
            "effect",
            &tp,
            &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            false,
            errs,
        );
        if get(t, &["tolerationSeconds"]).is_some() && text(t, &["effect"]) != "NoExecute" {
            errs.push(FieldError::invalid(
                child(&tp, "effect"),
                &Value::from(text(t, &["effect"])),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
    }
}

/// `ValidatePodSpec` for a pod or a template; `extra_volumes` are names a workload adds
/// (StatefulSet volume claim templates).
fn pod_spec(spec: &Value, path: &str, owner: PodOwner, extra_volumes: &[String], errs: &mut Errs) {
    let mut volume_names = volumes(spec, path, errs);
    volume_names.extend(extra_volumes.iter().cloned());
    let mut container_names = HashSet::new();
    if list(spec, &["containers"]).is_empty() {
        errs.push(FieldError::required(child(path, "containers"), ""));
    }
    for (i, c) in list(spec, &["initContainers"]).iter().enumerate() {
        container(
            c,
            &index(&child(path, "initContainers"), i),
            true,
            &volume_names,
            &mut container_names,
            errs,
        );
    }
    for (i, c) in list(spec, &["containers"]).iter().enumerate() {
        container(
            c,
            &index(&child(path, "containers"), i),
            false,
            &volume_names,
            &mut container_names,
            errs,
        );
    }
    let restart = text(spec, &["restartPolicy"]);
    match owner {
        PodOwner::Pod => one_of(
            spec,
            "restartPolicy",
            path,
            &["Always", "OnFailure", "Never"],
            true,
            errs,
        ),
        PodOwner::ReplicaSet | PodOwner::DaemonSet | PodOwner::StatefulSet => {
            if restart != "Always" {
                errs.push(FieldError::not_supported(
                    child(path, "restartPolicy"),
                    &Value::from(restart),
                    &["Always"],
                ));
            }
        }
        PodOwner::Job => {
            if restart.is_empty() {
                errs.push(FieldError::required(child(path, "restartPolicy"), ""));
            } else if restart != "OnFailure" && restart != "Never" {
                errs.push(FieldError::not_supported(
                    child(path, "restartPolicy"),
                    &Value::from(restart),
                    &["OnFailure", "Never"],
                ));
            }
        }
    }
    one_of(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        true,
        errs,
    );
    if text(spec, &["dnsPolicy"]) == "None" && get(spec, &["dnsConfig"]).is_none() {
        errs.push(FieldError::required(
            child(path, "dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ));
    }
    if let Some(n) = int(spec, &["activeDeadlineSeconds"]) {
        let message = match owner {
            PodOwner::ReplicaSet | PodOwner::StatefulSet => {
                Some("activeDeadlineSeconds in ReplicaSet is not Supported")
            }
            PodOwner::DaemonSet => Some("activeDeadlineSeconds in DaemonSet is not Supported"),
            _ => None,
        };
        if let Some(message) = message {
            errs.push(FieldError::forbidden(
                child(path, "activeDeadlineSeconds"),
                message,
            ));
        } else if !(1..=i64::from(i32::MAX)).contains(&n) {
            errs.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                &Value::from(n),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    for field in ["serviceAccountName", "nodeName", "priorityClassName"] {
        let value = text(spec, &[field]);
        if !value.is_empty() {
            for msg in dns1123_subdomain(value) {
                errs.push(FieldError::invalid(
                    child(path, field),
                    &Value::from(value),
                    &msg,
                ));
            }
        }
    }
    for field in ["hostname", "subdomain"] {
        let value = text(spec, &[field]);
        if !value.is_empty() {
            for msg in dns1123_label(value) {
                errs.push(FieldError::invalid(
                    child(path, field),
                    &Value::from(value),
                    &msg,
                ));
            }
        }
    }
    if let Some(selector) = get(spec, &["nodeSelector"]) {
        labels(selector, &child(path, "nodeSelector"), errs);
    }
    tolerations(spec, path, errs);
    one_of(
        spec,
        "preemptionPolicy",
        path,
        &["Never", "PreemptLowerPriority"],
        false,
        errs,
    );
}

/// A workload's `spec.template`: metadata, pod spec, and that the selector selects it.
fn workload_template(
    spec: &Value,
    path: &str,
    owner: PodOwner,
    extra_volumes: &[String],
    errs: &mut Errs,
) {
    let template_path = child(path, "template");
    let Some(template) = get(spec, &["template"]) else {
        errs.push(FieldError::required(&template_path, ""));
        return;
    };
    let meta = get(template, &["metadata"]).cloned().unwrap_or(Value::Null);
    template_meta(&meta, &child(&template_path, "metadata"), errs);
    let empty = Value::Object(serde_json::Map::new());
    let template_spec = get(template, &["spec"]).unwrap_or(&empty);
    pod_spec(
        template_spec,
        &child(&template_path, "spec"),
        owner,
        extra_volumes,
        errs,
    );
    if let Some(selector) = get(spec, &["selector"]) {
        let template_labels = get(&meta, &["labels"])
            .cloned()
            .unwrap_or(Value::Object(serde_json::Map::new()));
        if !selector_is_empty(selector) && !selector_matches(selector, &template_labels) {
            errs.push(FieldError::invalid(
                child(&child(&template_path, "metadata"), "labels"),
                &template_labels,
                "`selector` does not match template `labels`",
            ));
        }
    }
}

fn required_selector(spec: &Value, path: &str, empty_message: &str, errs: &mut Errs) {
    let sp = child(path, "selector");
    match get(spec, &["selector"]) {
        None => errs.push(FieldError::required(sp, "")),
        Some(selector) => {
            if selector_is_empty(selector) {
                errs.push(FieldError::invalid(&sp, selector, empty_message));
            }
            label_selector(selector, &sp, errs);
        }
    }
}

// ---- entry point ----

/// Validates a defaulted object; `old` is the stored object on update.
///
/// Returns every problem found, in the order the Go validators report them (roughly). Kinds
/// that are not built in only get no errors.
pub fn validate(gvk: &GroupVersionKind, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(info) = kind_info(gvk) else {
        return errs;
    };
    let null = Value::Null;
    let meta = obj.get("metadata").unwrap_or(&null);
    object_meta(meta, info.namespaced, name_rule(gvk), &mut errs);
    if let Some(old) = old {
        object_meta_update(meta, old.get("metadata").unwrap_or(&null), &mut errs);
    }
    let spec = obj.get("spec").unwrap_or(&null);
    let old_spec = old.map(|o| o.get("spec").unwrap_or(&Value::Null));
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => {
            pod_spec(spec, "spec", PodOwner::Pod, &[], &mut errs);
            if let Some(old_spec) = old_spec {
                pod_update(spec, old_spec, &mut errs);
            }
        }
        ("", "Service") => service(spec, old_spec, &mut errs),
        ("", "ConfigMap") => config_map(obj, old, &mut errs),
        ("", "Secret") => secret(obj, old, &mut errs),
        ("", "PersistentVolumeClaim") => pvc(spec, old_spec, &mut errs),
        ("", "PersistentVolume") => pv(spec, &mut errs),
        ("apps", "Deployment") => deployment(spec, &mut errs),
        ("apps", "ReplicaSet") => {
            required_selector(
                spec,
                "spec",
                "empty selector is invalid for deployment",
                &mut errs,
            );
            non_negative(spec, "replicas", "spec", &mut errs);
            non_negative(spec, "minReadySeconds", "spec", &mut errs);
            workload_template(spec, "spec", PodOwner::ReplicaSet, &[], &mut errs);
        }
        ("apps", "DaemonSet") => daemon_set(spec, &mut errs),
        ("apps", "StatefulSet") => stateful_set(spec, old_spec, &mut errs),
        ("batch", "Job") => job(obj, old, &mut errs),
        ("batch", "CronJob") => cron_job(obj, &mut errs),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            role_binding(gvk, obj, old, &mut errs)
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            for (i, rule) in list(obj, &["rules"]).iter().enumerate() {
                if list(rule, &["verbs"]).is_empty() {
                    errs.push(FieldError::required(
                        child(&index("rules", i), "verbs"),
                        "verbs must contain at least one value",
                    ));
                }
            }
        }
        ("networking.k8s.io", "Ingress") => ingress(spec, &mut errs),
        ("policy", "PodDisruptionBudget") => {
            if get(spec, &["minAvailable"]).is_some() && get(spec, &["maxUnavailable"]).is_some() {
                errs.push(FieldError::invalid(
                    "spec",
                    get(spec, &["minAvailable"]).unwrap_or(&null),
                    "minAvailable and maxUnavailable cannot be both set",
                ));
            }
            if let Some(selector) = get(spec, &["selector"]) {
                label_selector(selector, "spec.selector", &mut errs);
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if text(obj, &["provisioner"]).is_empty() {
                errs.push(FieldError::required("provisioner", ""));
            }
            one_of(
                obj,
                "reclaimPolicy",
                "",
                &["Delete", "Retain"],
                false,
                &mut errs,
            );
            one_of(
                obj,
                "volumeBindingMode",
                "",
                &["Immediate", "WaitForFirstConsumer"],
                false,
                &mut errs,
            );
            if let Some(old) = old {
                if text(obj, &["provisioner"]) != text(old, &["provisioner"]) {
                    errs.push(FieldError::forbidden(
                        "provisioner",
                        "updates to provisioner are forbidden.",
                    ));
                }
                if !same(get(obj, &["parameters"]), get(old, &["parameters"])) {
                    errs.push(FieldError::forbidden(
                        "parameters",
                        "updates to parameters are forbidden.",
                    ));
                }
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            one_of(
                obj,
                "preemptionPolicy",
                "",
                &["Never", "PreemptLowerPriority"],
                false,
                &mut errs,
            );
            if let Some(old) = old {
                if get(obj, &["value"]) != get(old, &["value"]) {
                    errs.push(FieldError::forbidden(
                        "value",
                        "may not be changed in an update.",
                    ));
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj, &mut errs),
        _ => {}
    }
    if let Some(old) = old {
        apps_update(gvk, obj, old, &mut errs);
    }
    errs
}

// ---- pods ----

/// `ValidatePodUpdate`: only images, `activeDeadlineSeconds`, added tolerations,
/// removed scheduling gates and a negative grace period may change.
fn pod_update(spec: &Value, old_spec: &Value, errs: &mut Errs) {
    let mut munged = spec.clone();
    if let Some(m) = munged.as_object_mut() {
        for list_name in ["containers", "initContainers"] {
            let old_list = list(old_spec, &[list_name]);
            if let Some(items) = m.get_mut(list_name).and_then(Value::as_array_mut) {
                for (i, c) in items.iter_mut().enumerate() {
                    if let (Some(c), Some(old_c)) = (c.as_object_mut(), old_list.get(i)) {
                        match old_c.get("image") {
                            Some(image) => c.insert("image".to_owned(), image.clone()),
                            None => c.remove("image"),
                        };
                    }
                }
            }
        }
        if let Some(new_deadline) = int(spec, &["activeDeadlineSeconds"]) {
            if let Some(old_deadline) = int(old_spec, &["activeDeadlineSeconds"]) {
                if new_deadline > old_deadline {
                    errs.push(FieldError::invalid(
                        "spec.activeDeadlineSeconds",
                        &Value::from(new_deadline),
                        "must be less than or equal to previous value",
                    ));
                }
            }
        } else if int(old_spec, &["activeDeadlineSeconds"]).is_some() {
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                "must not update from a positive integer to nil value",
            ));
        }
        let mut carry = |field: &str, allowed: bool| {
            if allowed {
                match old_spec.get(field) {
                    Some(v) => m.insert(field.to_owned(), v.clone()),
                    None => m.remove(field),
                };
            }
        };
        carry("activeDeadlineSeconds", true);
        let new_tolerations = list(spec, &["tolerations"]);
        let tolerations_added_only = list(old_spec, &["tolerations"]).iter().all(|t| {
            new_tolerations
                .iter()
                .any(|n| normalized(n) == normalized(t))
        });
        carry("tolerations", tolerations_added_only);
        let old_gates = list(old_spec, &["schedulingGates"]);
        let gates_removed_only = list(spec, &["schedulingGates"])
            .iter()
            .all(|g| old_gates.contains(g));
        carry("schedulingGates", gates_removed_only);
        let grace_fix = int(old_spec, &["terminationGracePeriodSeconds"]).is_some_and(|g| g < 0)
            && int(spec, &["terminationGracePeriodSeconds"]) == Some(1);
        carry("terminationGracePeriodSeconds", grace_fix);
        carry("ephemeralContainers", true);
    }
    if normalized(&munged) != normalized(old_spec) {
        let mut lines = Vec::new();
        diff_lines("spec", old_spec, &munged, &mut lines, 10);
        let mut message = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_owned();
        for line in lines {
            message.push('\n');
            message.push_str(&line);
        }
        errs.push(FieldError::forbidden("spec", &message));
    }
}

// ---- services ----

fn service(spec: &Value, old_spec: Option<&Value>, errs: &mut Errs) {
    let ty = text(spec, &["type"]);
    let headless = text(spec, &["clusterIP"]) == "None";
    one_of(
        spec,
        "type",
        "spec",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        true,
        errs,
    );
    one_of(
        spec,
        "sessionAffinity",
        "spec",
        &["ClientIP", "None"],
        true,
        errs,
    );
    let ports = list(spec, &["ports"]);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" {
        let external = text(spec, &["externalName"]);
        if external.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        } else {
            for msg in dns1123_subdomain(external.trim_end_matches('.')) {
                errs.push(FieldError::invalid(
                    "spec.externalName",
                    &Value::from(external),
                    &msg,
                ));
            }
        }
        if !text(spec, &["clusterIP"]).is_empty() || !list(spec, &["clusterIPs"]).is_empty() {
            errs.push(FieldError::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let pp = index("spec.ports", i);
        let name = text(port, &["name"]);
        if name.is_empty() {
            if ports.len() > 1 {
                errs.push(FieldError::required(child(&pp, "name"), ""));
            }
        } else {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    child(&pp, "name"),
                    &Value::from(name),
                    &msg,
                ));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(
                    child(&pp, "name"),
                    &Value::from(name),
                ));
            }
        }
        let number = int(port, &["port"]).unwrap_or(0);
        for msg in port_number(number) {
            errs.push(FieldError::invalid(
                child(&pp, "port"),
                &Value::from(number),
                &msg,
            ));
        }
        one_of(port, "protocol", &pp, &["SCTP", "TCP", "UDP"], true, errs);
        match get(port, &["targetPort"]) {
            Some(Value::Number(n)) => {
                for msg in port_number(n.as_i64().unwrap_or(0)) {
                    errs.push(FieldError::invalid(
                        child(&pp, "targetPort"),
                        &Value::from(n.clone()),
                        &msg,
                    ));
                }
            }
            Some(Value::String(s)) => {
                for msg in port_name(s) {
                    errs.push(FieldError::invalid(
                        child(&pp, "targetPort"),
                        &Value::from(s.as_str()),
                        &msg,
                    ));
                }
            }
            _ => {}
        }
        if let Some(node_port) = int(port, &["nodePort"]).filter(|n| *n != 0) {
            if ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    child(&pp, "nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else {
                for msg in port_number(node_port) {
                    errs.push(FieldError::invalid(
                        child(&pp, "nodePort"),
                        &Value::from(node_port),
                        &msg,
                    ));
                }
            }
        }
    }
    let cluster_ip = text(spec, &["clusterIP"]);
    if !cluster_ip.is_empty() && cluster_ip != "None" && !is_ip(cluster_ip) {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            &Value::from(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    let cluster_ips = list(spec, &["clusterIPs"]);
    if let Some(first) = cluster_ips.first().and_then(Value::as_str) {
        if first != cluster_ip {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &Value::Array(cluster_ips.to_vec()),
                "first value must match `clusterIP`",
            ));
        }
    }
    if let Some(selector) = get(spec, &["selector"]) {
        labels(selector, "spec.selector", errs);
    }
    let external_ips = !list(spec, &["externalIPs"]).is_empty();
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && external_ips);
    let etp = text(spec, &["externalTrafficPolicy"]);
    if !etp.is_empty() {
        if !externally_accessible {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                &Value::from(etp),
                "may only be set for externally-accessible services",
            ));
        } else {
            one_of(
                spec,
                "externalTrafficPolicy",
                "spec",
                &["Cluster", "Local"],
                false,
                errs,
            );
        }
    }
    one_of(
        spec,
        "internalTrafficPolicy",
        "spec",
        &["Cluster", "Local"],
        false,
        errs,
    );
    one_of(
        spec,
        "ipFamilyPolicy",
        "spec",
        &["PreferDualStack", "RequireDualStack", "SingleStack"],
        false,
        errs,
    );
    if let Some(old_spec) = old_spec {
        let old_ip = text(old_spec, &["clusterIP"]);
        let old_type = text(old_spec, &["type"]);
        if ty != "ExternalName" && old_type != "ExternalName" && !old_ip.is_empty() {
            if cluster_ip != old_ip {
                errs.push(FieldError::invalid(
                    "spec.clusterIP",
                    &Value::from(cluster_ip),
                    "field is immutable",
                ));
            }
            let old_first = list(old_spec, &["clusterIPs"])
                .first()
                .and_then(Value::as_str)
                .unwrap_or(old_ip);
            let new_first = cluster_ips
                .first()
                .and_then(Value::as_str)
                .unwrap_or(cluster_ip);
            if new_first != old_first {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    &Value::from(new_first),
                    "may not change once set",
                ));
            }
        }
    }
}

// ---- config maps and secrets ----

/// Largest total payload of a ConfigMap or Secret.
const MAX_DATA_SIZE: usize = 1024 * 1024;

fn data_keys(obj: &Value, fields: &[&str], errs: &mut Errs) {
    let mut seen = HashSet::new();
    for field in fields {
        for (k, _) in entries(obj, &[field]) {
            for msg in config_map_key(k) {
                errs.push(FieldError::invalid(
                    key(field, k),
                    &Value::from(k.as_str()),
                    &msg,
                ));
            }
            if !seen.insert(k.clone()) {
                errs.push(FieldError::invalid(
                    key(field, k),
                    &Value::from(k.as_str()),
                    "duplicate of key present in data",
                ));
            }
        }
    }
}

fn immutable_data(obj: &Value, old: Option<&Value>, fields: &[&str], errs: &mut Errs) {
    let Some(old) = old else {
        return;
    };
    if get(old, &["immutable"]).and_then(Value::as_bool) != Some(true) {
        return;
    }
    if get(obj, &["immutable"]).and_then(Value::as_bool) != Some(true) {
        errs.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for field in fields {
        if !same(get(obj, &[field]), get(old, &[field])) {
            errs.push(FieldError::forbidden(
                *field,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn config_map(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    data_keys(obj, &["data", "binaryData"], errs);
    let text_size: usize = entries(obj, &["data"])
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    let binary_size: usize = entries(obj, &["binaryData"])
        .iter()
        .map(|(k, v)| {
            k.len()
                + v.as_str()
                    .map_or(0, super::unknown_fields::base64_decoded_len)
        })
        .sum();
    if text_size + binary_size > MAX_DATA_SIZE {
        errs.push(FieldError::too_long("", MAX_DATA_SIZE));
    }
    immutable_data(obj, old, &["data", "binaryData"], errs);
}

fn secret(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    data_keys(obj, &["data"], errs);
    let size: usize = entries(obj, &["data"])
        .iter()
        .map(|(_, v)| {
            v.as_str()
                .map_or(0, super::unknown_fields::base64_decoded_len)
        })
        .sum();
    if size > MAX_DATA_SIZE {
        errs.push(FieldError::too_long("data", MAX_DATA_SIZE));
    }
    let has = |k: &str| get(obj, &["data", k]).is_some();
    let required_keys: &[&str] = match text(obj, &["type"]) {
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        _ => &[],
    };
    for k in required_keys {
        if !has(k) {
            errs.push(FieldError::required(key("data", k), ""));
        }
    }
    if text(obj, &["type"]) == "kubernetes.io/service-account-token"
        && text(
            obj,
            &[
                "metadata",
                "annotations",
                "kubernetes.io/service-account.name",
            ],
        )
        .is_empty()
    {
        errs.push(FieldError::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
            "",
        ));
    }
    if let Some(old) = old {
        if text(obj, &["type"]) != text(old, &["type"]) {
            errs.push(FieldError::invalid(
                "type",
                &Value::from(text(obj, &["type"])),
                "field is immutable",
            ));
        }
    }
    immutable_data(obj, old, &["data"], errs);
}

// ---- volumes ----

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn access_modes(spec: &Value, errs: &mut Errs) {
    let modes = list(spec, &["accessModes"]);
    if modes.is_empty() {
        errs.push(FieldError::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    for mode in modes {
        let m = mode.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            errs.push(FieldError::not_supported(
                "spec.accessModes",
                mode,
                ACCESS_MODES,
            ));
        }
    }
}

fn pvc(spec: &Value, old_spec: Option<&Value>, errs: &mut Errs) {
    access_modes(spec, errs);
    if get(spec, &["resources", "requests", "storage"]).is_none() {
        errs.push(FieldError::required("spec.resources[storage]", ""));
    }
    one_of(
        spec,
        "volumeMode",
        "spec",
        &["Block", "Filesystem"],
        false,
        errs,
    );
    if let Some(res) = get(spec, &["resources"]) {
        resources(res, "spec.resources", errs);
    }
    let Some(old_spec) = old_spec else {
        return;
    };
    let mut munged = spec.clone();
    if let Some(m) = munged.as_object_mut() {
        if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
            match get(old_spec, &["resources", "requests"]) {
                Some(v) => r.insert("requests".to_owned(), v.clone()),
                None => r.remove("requests"),
            };
        }
        let mut carry = |field: &str| {
            match old_spec.get(field) {
                Some(v) => m.insert(field.to_owned(), v.clone()),
                None => m.remove(field),
            };
        };
        carry("volumeAttributesClassName");
        if text(old_spec, &["volumeName"]).is_empty() {
            carry("volumeName");
        }
    }
    if normalized(&munged) != normalized(old_spec) {
        let mut lines = Vec::new();
        diff_lines("spec", old_spec, &munged, &mut lines, 10);
        let mut message =
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".to_owned();
        for line in lines {
            message.push('\n');
            message.push_str(&line);
        }
        errs.push(FieldError::forbidden("spec", &message));
    }
    let storage = |s: &Value| {
        get(s, &["resources", "requests", "storage"])
            .and_then(Value::as_str)
            .and_then(parse_quantity)
    };
    if let (Some(new_size), Some(old_size)) = (storage(spec), storage(old_spec)) {
        if new_size < old_size {
            errs.push(FieldError::forbidden(
                "spec.resources.requests.storage",
                "field can not be less than previous value",
            ));
        }
    }
}

fn pv(spec: &Value, errs: &mut Errs) {
    access_modes(spec, errs);
    if entries(spec, &["capacity"]).is_empty() {
        errs.push(FieldError::required("spec.capacity", ""));
    }
    if !VOLUME_SOURCES
        .iter()
        .chain(["local"].iter())
        .any(|s| get(spec, &[s]).is_some())
    {
        errs.push(FieldError::required("spec", "must specify a volume type"));
    }
    one_of(
        spec,
        "persistentVolumeReclaimPolicy",
        "spec",
        &["Delete", "Recycle", "Retain"],
        false,
        errs,
    );
    one_of(
        spec,
        "volumeMode",
        "spec",
        &["Block", "Filesystem"],
        false,
        errs,
    );
}

// ---- apps/v1 ----

fn percent_or_int(v: &Value, path: &str, errs: &mut Errs) -> Option<f64> {
    match v {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                errs.push(FieldError::invalid(
                    path,
                    &Value::from(n),
                    "must be greater than or equal to 0",
                ));
            }
            Some(n as f64)
        }
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                if p > 100 {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        "must not be greater than 100%",
                    ));
                } else if p < 0 {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        "must be greater than or equal to 0",
                    ));
                }
                Some(p as f64)
            }
            None => {
                errs.push(FieldError::invalid(path, v, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        _ => None,
    }
}

fn rolling_update(rolling: &Value, path: &str, errs: &mut Errs) {
    let unavailable = get(rolling, &["maxUnavailable"])
        .and_then(|v| percent_or_int(v, &child(path, "maxUnavailable"), errs));
    let surge =
        get(rolling, &["maxSurge"]).and_then(|v| percent_or_int(v, &child(path, "maxSurge"), errs));
    if unavailable == Some(0.0) && surge == Some(0.0) {
        errs.push(FieldError::invalid(
            child(path, "maxUnavailable"),
            get(rolling, &["maxUnavailable"]).unwrap_or(&Value::Null),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn deployment(spec: &Value, errs: &mut Errs) {
    required_selector(
        spec,
        "spec",
        "empty selector is invalid for deployment",
        errs,
    );
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        non_negative(spec, field, "spec", errs);
    }
    workload_template(spec, "spec", PodOwner::ReplicaSet, &[], errs);
    let strategy = get(spec, &["strategy"]).cloned().unwrap_or(Value::Null);
    one_of(
        &strategy,
        "type",
        "spec.strategy",
        &["Recreate", "RollingUpdate"],
        true,
        errs,
    );
    match (
        text(&strategy, &["type"]),
        get(&strategy, &["rollingUpdate"]),
    ) {
        ("Recreate", Some(_)) => errs.push(FieldError::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        )),
        ("RollingUpdate", Some(rolling)) => {
            rolling_update(rolling, "spec.strategy.rollingUpdate", errs)
        }
        _ => {}
    }
    if let (Some(deadline), min_ready) = (
        int(spec, &["progressDeadlineSeconds"]),
        int(spec, &["minReadySeconds"]).unwrap_or(0),
    ) {
        if deadline <= min_ready {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                &Value::from(deadline),
                "must be greater than minReadySeconds",
            ));
        }
    }
}

fn daemon_set(spec: &Value, errs: &mut Errs) {
    required_selector(
        spec,
        "spec",
        "empty selector is invalid for daemonset",
        errs,
    );
    for field in ["minReadySeconds", "revisionHistoryLimit"] {
        non_negative(spec, field, "spec", errs);
    }
    workload_template(spec, "spec", PodOwner::DaemonSet, &[], errs);
    let strategy = get(spec, &["updateStrategy"])
        .cloned()
        .unwrap_or(Value::Null);
    one_of(
        &strategy,
        "type",
        "spec.updateStrategy",
        &["OnDelete", "RollingUpdate"],
        true,
        errs,
    );
    if let Some(rolling) = get(&strategy, &["rollingUpdate"]) {
        rolling_update(rolling, "spec.updateStrategy.rollingUpdate", errs);
    }
}

/// Fields of a StatefulSet spec an update may change.
const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn stateful_set(spec: &Value, old_spec: Option<&Value>, errs: &mut Errs) {
    required_selector(
        spec,
        "spec",
        "empty selector is invalid for statefulset",
        errs,
    );
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        non_negative(spec, field, "spec", errs);
    }
    let policy = text(spec, &["podManagementPolicy"]);
    if policy.is_empty() {
        errs.push(FieldError::required("spec.podManagementPolicy", ""));
    } else if policy != "OrderedReady" && policy != "Parallel" {
        errs.push(FieldError::invalid(
            "spec.podManagementPolicy",
            &Value::from(policy),
            "must be 'OrderedReady' or 'Parallel'",
        ));
    }
    let strategy = get(spec, &["updateStrategy"])
        .cloned()
        .unwrap_or(Value::Null);
    one_of(
        &strategy,
        "type",
        "spec.updateStrategy",
        &["OnDelete", "RollingUpdate"],
        true,
        errs,
    );
    if text(&strategy, &["type"]) == "OnDelete" && get(&strategy, &["rollingUpdate"]).is_some() {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate",
            get(&strategy, &["rollingUpdate"]).unwrap_or(&Value::Null),
            "only allowed for updateStrategy 'RollingUpdate'",
        ));
    }
    non_negative(
        &strategy,
        "partition",
        "spec.updateStrategy.rollingUpdate",
        errs,
    );
    let claim_names: Vec<String> = list(spec, &["volumeClaimTemplates"])
        .iter()
        .map(|t| text(t, &["metadata", "name"]).to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    workload_template(spec, "spec", PodOwner::StatefulSet, &claim_names, errs);
    if let Some(old_spec) = old_spec {
        let strip = |s: &Value| {
            let mut s = s.clone();
            if let Some(m) = s.as_object_mut() {
                for field in STATEFULSET_MUTABLE {
                    m.remove(*field);
                }
            }
            normalized(&s)
        };
        if strip(spec) != strip(old_spec) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

/// The selector of every apps/v1 workload is immutable.
fn selector_update(spec: &Value, old_spec: &Value, errs: &mut Errs) {
    if !same(get(spec, &["selector"]), get(old_spec, &["selector"])) {
        errs.push(FieldError::invalid(
            "spec.selector",
            get(spec, &["selector"]).unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

// ---- batch/v1 ----

/// `validateJobSpec` for a job (`path` = `spec`) or a cron job's template.
fn job_spec(spec: &Value, path: &str, is_template: bool, uid: &str, errs: &mut Errs) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, field, path, errs);
    }
    if let Some(n) = int(spec, &["activeDeadlineSeconds"]) {
        if n <= 0 {
            errs.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                &Value::from(n),
                "must be greater than 0",
            ));
        }
    }
    one_of(
        spec,
        "completionMode",
        path,
        &["NonIndexed", "Indexed"],
        false,
        errs,
    );
    if text(spec, &["completionMode"]) == "Indexed" && get(spec, &["completions"]).is_none() {
        errs.push(FieldError::required(
            child(path, "completions"),
            "when completion mode is Indexed",
        ));
    }
    one_of(
        spec,
        "podReplacementPolicy",
        path,
        &["TerminatingOrFailed", "Failed"],
        false,
        errs,
    );
    let manual = get(spec, &["manualSelector"]).and_then(Value::as_bool) == Some(true);
    match get(spec, &["selector"]) {
        None if !is_template => errs.push(FieldError::required(child(path, "selector"), "")),
        None => {}
        Some(selector) => {
            label_selector(selector, &child(path, "selector"), errs);
            if !is_template && !manual && !uid.is_empty() {
                let generated = text(
                    selector,
                    &["matchLabels", "batch.kubernetes.io/controller-uid"],
                );
                if generated != uid {
                    errs.push(FieldError::invalid(
                        child(path, "selector"),
                        selector,
                        "`selector` not auto-generated",
                    ));
                }
            }
        }
    }
    workload_template(spec, path, PodOwner::Job, &[], errs);
}

fn job(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    job_spec(spec, "spec", false, text(obj, &["metadata", "uid"]), errs);
    let Some(old_spec) = old.and_then(|o| o.get("spec")) else {
        return;
    };
    if !same(get(spec, &["selector"]), get(old_spec, &["selector"])) {
        errs.push(FieldError::invalid(
            "spec.selector",
            get(spec, &["selector"]).unwrap_or(&null),
            "field is immutable",
        ));
    }
    for field in ["completionMode", "podFailurePolicy", "backoffLimitPerIndex"] {
        if !same(get(spec, &[field]), get(old_spec, &[field])) {
            errs.push(FieldError::invalid(
                child("spec", field),
                get(spec, &[field]).unwrap_or(&null),
                "field is immutable",
            ));
        }
    }
    // Indexed jobs may scale completions together with parallelism.
    let elastic = text(spec, &["completionMode"]) == "Indexed"
        && get(spec, &["completions"]) == get(spec, &["parallelism"]);
    if !elastic && !same(get(spec, &["completions"]), get(old_spec, &["completions"])) {
        errs.push(FieldError::invalid(
            "spec.completions",
            get(spec, &["completions"]).unwrap_or(&null),
            "field is immutable",
        ));
    }
    // A suspended job that never started may change its pods' scheduling directives.
    let mut template = get(spec, &["template"]).cloned().unwrap_or(Value::Null);
    let old_template = get(old_spec, &["template"]).cloned().unwrap_or(Value::Null);
    let suspended_unstarted = get(old_spec, &["suspend"]).and_then(Value::as_bool) == Some(true)
        && old.and_then(|o| get(o, &["status", "startTime"])).is_none();
    if suspended_unstarted {
        for (section, field) in [
            ("spec", "nodeSelector"),
            ("spec", "affinity"),
            ("spec", "tolerations"),
            ("spec", "schedulingGates"),
            ("metadata", "labels"),
            ("metadata", "annotations"),
        ] {
            let old_value = get(&old_template, &[section, field]).cloned();
            if let Some(m) = template.get_mut(section).and_then(Value::as_object_mut) {
                match old_value {
                    Some(v) => m.insert(field.to_owned(), v),
                    None => m.remove(field),
                };
            }
        }
    }
    if normalized(&template) != normalized(&old_template) {
        errs.push(FieldError::invalid(
            "spec.template",
            get(spec, &["template"]).unwrap_or(&null),
            "field is immutable",
        ));
    }
}

fn cron_job(obj: &Value, errs: &mut Errs) {
    let null = Value::Null;
    let name = text(obj, &["metadata", "name"]);
    if name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            "must be no more than 52 characters",
        ));
    }
    let spec = obj.get("spec").unwrap_or(&null);
    let schedule = text(spec, &["schedule"]);
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        if let Err(msg) = check_cron(schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &Value::from(schedule),
                &msg,
            ));
        }
        if schedule.contains("TZ") {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &Value::from(schedule),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        }
    }
    one_of(
        spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        true,
        errs,
    );
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, field, "spec", errs);
    }
    let template = get(spec, &["jobTemplate"]).unwrap_or(&null);
    template_meta(
        get(template, &["metadata"]).unwrap_or(&null),
        "spec.jobTemplate.metadata",
        errs,
    );
    job_spec(
        get(template, &["spec"]).unwrap_or(&null),
        "spec.jobTemplate.spec",
        true,
        "",
        errs,
    );
}

/// Checks a standard 5-field cron expression or descriptor, with robfig/cron's messages.
fn check_cron(schedule: &str) -> Result<(), String> {
    let schedule = schedule.trim();
    if let Some(descriptor) = schedule.strip_prefix('@') {
        return match descriptor {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            d if d.starts_with("every ") => Ok(()),
            _ => Err(format!("unrecognized descriptor: {schedule}")),
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let bounds: [(u32, u32, &[&str], u32); 5] = [
        (0, 59, &[], 0),
        (0, 23, &[], 0),
        (1, 31, &[], 0),
        (1, 12, MONTHS, 1),
        (0, 6, DAYS, 0),
    ];
    for (field, (min, max, names, name_base)) in fields.iter().zip(bounds) {
        for expr in field.split(',') {
            let (range, step) = match expr.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (expr, None),
            };
            let number = |s: &str| -> Result<u32, String> {
                if let Some(pos) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                    return Ok(pos as u32 + name_base);
                }
                s.parse::<u32>()
                    .map_err(|_| format!("failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": invalid syntax"))
            };
            let (start, end) = if range == "*" || range == "?" {
                (min, max)
            } else if let Some((a, b)) = range.split_once('-') {
                (number(a)?, number(b)?)
            } else {
                let n = number(range)?;
                (n, if step.is_some() { max } else { n })
            };
            if start < min {
                return Err(format!(
                    "beginning of range ({start}) below minimum ({min}): {expr}"
                ));
            }
            if end > max {
                return Err(format!(
                    "end of range ({end}) above maximum ({max}): {expr}"
                ));
            }
            if start > end {
                return Err(format!(
                    "beginning of range ({start}) beyond end of range ({end}): {expr}"
                ));
            }
            if let Some(step) = step {
                let s = number(step)?;
                if s == 0 {
                    return Err(format!("step of range should be a positive number: {expr}"));
                }
            }
        }
    }
    Ok(())
}

// ---- other groups ----

fn role_binding(gvk: &GroupVersionKind, obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let cluster = gvk.kind == "ClusterRoleBinding";
    let supported: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["ClusterRole", "Role"]
    };
    let role_ref = get(obj, &["roleRef"]).cloned().unwrap_or(Value::Null);
    if text(&role_ref, &["apiGroup"]) != "rbac.authorization.k8s.io" {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &Value::from(text(&role_ref, &["apiGroup"])),
            &["rbac.authorization.k8s.io"],
        ));
    }
    one_of(&role_ref, "kind", "roleRef", supported, true, errs);
    let role_name = text(&role_ref, &["name"]);
    if role_name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else {
        for msg in path_segment_name(role_name) {
            errs.push(FieldError::invalid(
                "roleRef.name",
                &Value::from(role_name),
                &msg,
            ));
        }
    }
    for (i, subject) in list(obj, &["subjects"]).iter().enumerate() {
        let sp = index("subjects", i);
        if text(subject, &["name"]).is_empty() {
            errs.push(FieldError::required(child(&sp, "name"), ""));
        }
        one_of(
            subject,
            "kind",
            &sp,
            &["Group", "ServiceAccount", "User"],
            true,
            errs,
        );
        if text(subject, &["kind"]) == "ServiceAccount"
            && cluster
            && text(subject, &["namespace"]).is_empty()
        {
            errs.push(FieldError::required(child(&sp, "namespace"), ""));
        }
    }
    if let Some(old) = old {
        if !same(get(obj, &["roleRef"]), get(old, &["roleRef"])) {
            errs.push(FieldError::invalid(
                "roleRef",
                &role_ref,
                "cannot change roleRef",
            ));
        }
    }
}

fn ingress(spec: &Value, errs: &mut Errs) {
    for (i, rule) in list(spec, &["rules"]).iter().enumerate() {
        let rp = index("spec.rules", i);
        let host = text(rule, &["host"]);
        if !host.is_empty() {
            let checked = host.strip_prefix("*.").unwrap_or(host);
            for msg in dns1123_subdomain(checked) {
                errs.push(FieldError::invalid(
                    child(&rp, "host"),
                    &Value::from(host),
                    &msg,
                ));
            }
        }
        for (j, p) in list(rule, &["http", "paths"]).iter().enumerate() {
            let pp = index(&child(&rp, "http.paths"), j);
            let path_type = text(p, &["pathType"]);
            if path_type.is_empty() {
                errs.push(FieldError::required(
                    child(&pp, "pathType"),
                    "pathType must be specified",
                ));
            } else if !["Exact", "ImplementationSpecific", "Prefix"].contains(&path_type) {
                errs.push(FieldError::not_supported(
                    child(&pp, "pathType"),
                    &Value::from(path_type),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                ));
            }
            let path = text(p, &["path"]);
            if (path_type == "Exact" || path_type == "Prefix") && !path.starts_with('/') {
                errs.push(FieldError::invalid(
                    child(&pp, "path"),
                    &Value::from(path),
                    "must be an absolute path",
                ));
            }
            if get(p, &["backend"]).is_none() {
                errs.push(FieldError::required(child(&pp, "backend"), ""));
            }
        }
    }
}

fn crd(obj: &Value, errs: &mut Errs) {
    let plural = text(obj, &["spec", "names", "plural"]);
    let group = text(obj, &["spec", "group"]);
    let name = text(obj, &["metadata", "name"]);
    if name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            &Value::from(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    } else {
        for msg in dns1123_label(plural) {
            errs.push(FieldError::invalid(
                "spec.names.plural",
                &Value::from(plural),
                &msg,
            ));
        }
    }
    if text(obj, &["spec", "names", "kind"]).is_empty() {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    one_of(
        get(obj, &["spec"]).unwrap_or(&Value::Null),
        "scope",
        "spec",
        &["Cluster", "Namespaced"],
        true,
        errs,
    );
    let versions = list(obj, &["spec", "versions"]);
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            &Value::Null,
            "must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| get(v, &["storage"]).and_then(Value::as_bool) == Some(true))
        .count()
        != 1
    {
        errs.push(FieldError::invalid(
            "spec.versions",
            &Value::Array(versions.to_vec()),
            "must have exactly one version marked as storage version",
        ));
    }
}

/// Checks that hold on update for all apps/v1 workloads.
fn apps_update(gvk: &GroupVersionKind, obj: &Value, old: &Value, errs: &mut Errs) {
    if gvk.group == "apps"
        && matches!(
            gvk.kind.as_str(),
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet"
        )
    {
        let null = Value::Null;
        selector_update(
            obj.get("spec").unwrap_or(&null),
            old.get("spec").unwrap_or(&null),
            errs,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gvk(g: &str, v: &str, k: &str) -> GroupVersionKind {
        GroupVersionKind::gvk(g, v, k)
    }

    fn defaulted(g: &GroupVersionKind, mut obj: Value) -> Value {
        super::super::apply_defaults(g, &mut obj);
        obj
    }

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    fn good_pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 80}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "128Mi"}},
                "livenessProbe": {"httpGet": {"port": "http"}}}],
                "volumes": [{"name": "data", "emptyDir": {}}]}})
    }

    fn good_deployment() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}})
    }

    #[test]
    fn good_objects_have_no_errors() {
        let pod_gvk = gvk("", "v1", "Pod");
        assert_eq!(
            fields(&validate(&pod_gvk, &defaulted(&pod_gvk, good_pod()), None)),
            Vec::<String>::new()
        );
        let d = gvk("apps", "v1", "Deployment");
        assert_eq!(
            fields(&validate(&d, &defaulted(&d, good_deployment()), None)),
            Vec::<String>::new()
        );
        let svc = gvk("", "v1", "Service");
        let s = defaulted(
            &svc,
            json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "https", "port": 443}]}}),
        );
        assert_eq!(fields(&validate(&svc, &s, None)), Vec::<String>::new());
        let job = gvk("batch", "v1", "Job");
        let j = defaulted(
            &job,
            json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}}}}),
        );
        assert_eq!(fields(&validate(&job, &j, None)), Vec::<String>::new());
        let cj = gvk("batch", "v1", "CronJob");
        let c = defaulted(
            &cj,
            json!({"metadata": {"name": "tick", "namespace": "default"},
            "spec": {"schedule": "*/5 * * * 1-5", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "t", "image": "busybox"}]}}}}}}),
        );
        assert_eq!(fields(&validate(&cj, &c, None)), Vec::<String>::new());
        let ns = gvk("", "v1", "Namespace");
        assert!(validate(
            &ns,
            &defaulted(&ns, json!({"metadata": {"name": "dev"}})),
            None
        )
        .is_empty());
        let sts = gvk("apps", "v1", "StatefulSet");
        let st = defaulted(
            &sts,
            json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {"serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres",
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]}]}}}}),
        );
        assert_eq!(fields(&validate(&sts, &st, None)), Vec::<String>::new());
    }

    #[test]
    fn invalid_names() {
        let g = gvk("", "v1", "ConfigMap");
        let errs = validate(
            &g,
            &json!({"metadata": {"name": "Foo", "namespace": "default"}}),
            None,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.name");
        assert_eq!(errs[0].reason, "FieldValueInvalid");
        assert_eq!(
            errs[0].message,
            "Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        let errs = validate(&g, &json!({"metadata": {"namespace": "default"}}), None);
        assert_eq!(
            fields(&errs),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        let errs = validate(
            &g,
            &json!({"metadata": {"generateName": "cfg-", "namespace": "default"}}),
            None,
        );
        assert!(errs.is_empty());
        // Services need DNS-1035 labels: no leading digit, no dots.
        let svc = gvk("", "v1", "Service");
        let errs = validate(
            &svc,
            &defaulted(
                &svc,
                json!({"metadata": {"name": "1web", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}}),
            ),
            None,
        );
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("a DNS-1035 label"),
            "{}",
            errs[0].message
        );
        // Namespaces need DNS-1123 labels.
        let ns = gvk("", "v1", "Namespace");
        let errs = validate(&ns, &json!({"metadata": {"name": "a.b"}}), None);
        assert!(errs[0].message.contains("RFC 1123 label"));
        // Bad label key and value.
        let errs = validate(
            &g,
            &json!({"metadata": {"name": "c", "namespace": "d", "labels": {"a/b/c": "ok", "k": "-bad"}}}),
            None,
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.field == "metadata.labels"));
    }

    #[test]
    fn missing_image_and_duplicate_container() {
        let g = gvk("", "v1", "Pod");
        let pod = defaulted(
            &g,
            json!({"metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]}}),
        );
        let errs = validate(&g, &pod, None);
        assert_eq!(
            fields(&errs),
            vec![
                "spec.containers[0].image: Required value",
                "spec.containers[1].name: Duplicate value: \"a\"",
                "spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ]
        );
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [], "restartPolicy": "Sometimes", "dnsPolicy": "ClusterFirst"}});
        assert_eq!(
            fields(&validate(&g, &pod, None)),
            vec![
                "spec.containers: Required value",
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ]
        );
    }

    #[test]
    fn selector_mismatch() {
        let g = gvk("apps", "v1", "Deployment");
        let mut d = good_deployment();
        d["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        let errs = validate(&g, &defaulted(&g, d), None);
        assert_eq!(
            fields(&errs),
            vec!["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\", \"tier\":\"fe\"}: `selector` does not match template `labels`"]
        );
        let mut d = good_deployment();
        d["spec"].as_object_mut().map(|m| m.remove("selector"));
        let errs = validate(&g, &defaulted(&g, d), None);
        assert_eq!(fields(&errs), vec!["spec.selector: Required value"]);
        let mut d = good_deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let errs = validate(&g, &defaulted(&g, d), None);
        assert_eq!(
            fields(&errs),
            vec![
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn immutable_pod_spec_change() {
        let g = gvk("", "v1", "Pod");
        let old = defaulted(&g, good_pod());
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        new["spec"]["activeDeadlineSeconds"] = json!(60);
        assert!(
            validate(&g, &new, Some(&old)).is_empty(),
            "image changes are allowed"
        );
        let mut new = old.clone();
        new["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
        let errs = validate(&g, &new, Some(&old));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec");
        assert_eq!(errs[0].reason, "FieldValueForbidden");
        assert!(errs[0].message.starts_with(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
        ));
        assert!(
            errs[0]
                .message
                .contains("spec.containers[0].ports[0].containerPort: 80 -> 8080"),
            "{}",
            errs[0].message
        );
        let mut new = old.clone();
        new["metadata"]["namespace"] = json!("other");
        let errs = validate(&g, &new, Some(&old));
        assert_eq!(
            fields(&errs),
            vec!["metadata.namespace: Invalid value: \"other\": field is immutable"]
        );
    }

    #[test]
    fn service_cluster_ip_change() {
        let g = gvk("", "v1", "Service");
        let old = defaulted(
            &g,
            json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"], "ports": [{"port": 80}]}}),
        );
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.43.0.11");
        new["spec"]["clusterIPs"] = json!(["10.43.0.11"]);
        assert_eq!(
            fields(&validate(&g, &new, Some(&old))),
            vec![
                "spec.clusterIP: Invalid value: \"10.43.0.11\": field is immutable",
                "spec.clusterIPs[0]: Invalid value: \"10.43.0.11\": may not change once set",
            ]
        );
        let errs = validate(
            &g,
            &defaulted(
                &g,
                json!({"metadata": {"name": "s", "namespace": "d"},
            "spec": {"type": "Fancy", "ports": [{"port": 80}, {"port": 0, "protocol": "HTTP"}]}}),
            ),
            None,
        );
        assert_eq!(
            fields(&errs),
            vec![
                "spec.type: Unsupported value: \"Fancy\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ports[1].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn workload_updates() {
        let g = gvk("apps", "v1", "Deployment");
        let old = defaulted(&g, good_deployment());
        let mut new = old.clone();
        new["spec"]["selector"]["matchLabels"]["tier"] = json!("fe");
        let errs = validate(&g, &new, Some(&old));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.selector");
        assert!(errs[0].message.ends_with("field is immutable"));

        let sts = gvk("apps", "v1", "StatefulSet");
        let old = defaulted(
            &sts,
            json!({"metadata": {"name": "db", "namespace": "d"}, "spec": {"serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "pg"}]}}}}),
        );
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        assert!(validate(&sts, &new, Some(&old)).is_empty());
        new["spec"]["serviceName"] = json!("other");
        let errs = validate(&sts, &new, Some(&old));
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .message
            .contains("updates to statefulset spec for fields other than 'replicas'"));
    }

    #[test]
    fn jobs_and_cronjobs() {
        let g = gvk("batch", "v1", "Job");
        let j = defaulted(
            &g,
            json!({"metadata": {"name": "j", "namespace": "d", "uid": "u1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        );
        assert_eq!(
            fields(&validate(&g, &j, None)),
            vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]
        );
        let old = defaulted(
            &g,
            json!({"metadata": {"name": "j", "namespace": "d", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
        );
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
        assert_eq!(validate(&g, &new, Some(&old)).len(), 1);
        let mut suspended = old.clone();
        suspended["spec"]["suspend"] = json!(true);
        let mut new = suspended.clone();
        new["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        assert!(validate(&g, &new, Some(&suspended)).is_empty());

        let cj = gvk("batch", "v1", "CronJob");
        let c = defaulted(
            &cj,
            json!({"metadata": {"name": "c", "namespace": "d"},
            "spec": {"schedule": "", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "t", "image": "b"}]}}}}}}),
        );
        assert_eq!(
            fields(&validate(&cj, &c, None)),
            vec!["spec.schedule: Required value"]
        );
        assert!(check_cron("61 * * * *").is_err());
        assert!(check_cron("* * *").is_err());
        assert!(check_cron("0 0 * JAN-MAR MON").is_ok());
        assert!(check_cron("@hourly").is_ok());
    }

    #[test]
    fn config_maps_and_secrets() {
        let g = gvk("", "v1", "ConfigMap");
        let errs = validate(
            &g,
            &json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"bad key": "v", "ok.key": "v"}}),
            None,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "data[bad key]");
        let big = "x".repeat(MAX_DATA_SIZE);
        let errs = validate(
            &g,
            &json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"k": big}}),
            None,
        );
        assert_eq!(errs[0].reason, "FieldValueTooLong");
        let old = json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"k": "v"}});
        let new = json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"k": "w"}});
        assert_eq!(
            fields(&validate(&g, &new, Some(&old))),
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let s = gvk("", "v1", "Secret");
        let errs = validate(
            &s,
            &json!({"metadata": {"name": "t", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            None,
        );
        assert_eq!(fields(&errs), vec!["data[tls.key]: Required value"]);
    }

    #[test]
    fn pvc_updates() {
        let g = gvk("", "v1", "PersistentVolumeClaim");
        let old = defaulted(
            &g,
            json!({"metadata": {"name": "c", "namespace": "d"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv1"}}),
        );
        let mut new = old.clone();
        new["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(validate(&g, &new, Some(&old)).is_empty());
        new["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let errs = validate(&g, &new, Some(&old));
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .message
            .starts_with("Forbidden: spec is immutable after creation except resources.requests"));
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert_eq!(
            qualified_name("/x"),
            vec!["prefix part must be non-empty".to_owned()]
        );
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(label_value("").is_empty());
        assert_eq!(
            port_name("http--x"),
            vec!["must not contain consecutive hyphens".to_owned()]
        );
    }
}
