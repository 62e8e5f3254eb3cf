//! Schema walks over a built-in object's JSON: fields the schema does not know (for
//! `fieldValidation=Strict`/`Warn`) and values of the wrong JSON type (the decode errors
//! kube-apiserver returns as `... cannot be handled as a Pod: json: cannot unmarshal ...`).
//!
//! This module owns only the walk over the k8s-openapi schemas held by the kind registry in
//! `mod.rs`; it must not change the object and knows nothing about per-kind rules.
//!
//! # Caveats
//! - Free-form parts (`x-kubernetes-preserve-unknown-fields`, untyped objects such as
//!   `FieldsV1`, `RawExtension` and CRD `JSON` values) are not descended into.
//! - Duplicate keys cannot be reported: they are gone once the body is parsed into JSON.

use super::GroupVersionKind;
use serde_json::Value;

use super::{kind_info, registry};

/// Schemas whose Go types accept any JSON value.
const ANY_VALUE_SCHEMAS: &[&str] = &[
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
];

const QUANTITY_SCHEMA: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// Follows `$ref`s to the schema they name; returns the schema and the last name followed.
fn resolve(schema: &Value) -> (&Value, Option<&str>) {
    let defs = &registry().definitions;
    let mut current = schema;
    let mut name = None;
    for _ in 0..32 {
        let Some(reference) = current.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(raw) = reference.rsplit('/').next() else {
            break;
        };
        let unescaped = raw.replace("~1", "/").replace("~0", "~");
        match defs.get_key_value(unescaped.as_str()) {
            Some((k, v)) => {
                name = Some(k.as_str());
                current = v;
            }
            None => break,
        }
    }
    (current, name)
}

fn root_schema(gvk: &GroupVersionKind) -> Option<&'static Value> {
    let info = kind_info(gvk)?;
    registry().definitions.get(&info.schema_name)
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Paths (`.spec.containers[0].imagee`) of object properties the kind's schema does not know.
///
/// `apiVersion` and `kind` are part of every schema, so they are never reported. Kinds that
/// are not built in yield nothing. Strip the leading dot to print kube-apiserver's
/// `unknown field "spec.containers[0].imagee"`.
pub fn unknown_fields(gvk: &GroupVersionKind, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(schema) = root_schema(gvk) {
        walk_unknown(obj, schema, "", &mut out);
    }
    out
}

fn walk_unknown(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let (schema, _) = resolve(schema);
    if preserves_unknown(schema) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    match props.get(k) {
                        Some(sub) => walk_unknown(v, sub, &format!("{path}.{k}"), out),
                        None => out.push(format!("{path}.{k}")),
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in map {
                    walk_unknown(v, additional, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_unknown(v, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Why the object would not decode into its Go (and k8s-openapi) type, as Go's
/// `encoding/json` words it: `json: cannot unmarshal string into Go struct field
/// PodSpec.spec.containers of type []v1.Container`. `None` when it decodes.
///
/// Missing required fields are not decode errors (Go decodes them as zero values); validation
/// reports them as `Required value`.
pub fn decode_error(gvk: &GroupVersionKind, obj: &Value) -> Option<String> {
    let info = kind_info(gvk)?;
    let schema = registry().definitions.get(&info.schema_name)?;
    let root_type = go_type_of_name(&info.schema_name);
    let mut walker = TypeWalk { error: None };
    walker.check(obj, schema, "", "", &root_type);
    if let Some(err) = walker.error {
        return Some(err);
    }
    match (info.decode)(obj) {
        Ok(()) => None,
        Err(e) if e.starts_with("missing field") => None,
        Err(e) => Some(format!("json: {e}")),
    }
}

/// `io.k8s.api.core.v1.Container` → `v1.Container`.
fn go_type_of_name(name: &str) -> String {
    let mut parts = name.rsplit('.');
    match (parts.next(), parts.next()) {
        (Some(ty), Some(pkg)) => format!("{pkg}.{ty}"),
        (Some(ty), None) => ty.to_owned(),
        _ => name.to_owned(),
    }
}

/// The Go type a schema describes, as `reflect.Type.String()` prints it.
fn go_type(schema: &Value) -> String {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
    {
        return go_type_of_name(&name.replace("~1", "/").replace("~0", "~"));
    }
    if schema.get("x-kubernetes-int-or-string").is_some() {
        return "intstr.IntOrString".to_owned();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "[]{}",
            schema
                .get("items")
                .map(go_type)
                .unwrap_or_else(|| "interface {}".to_owned())
        ),
        Some("object") => match schema.get("additionalProperties").filter(|a| a.is_object()) {
            Some(a) => format!("map[string]{}", go_type(a)),
            None => "map[string]interface {}".to_owned(),
        },
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("byte") => {
            "[]uint8".to_owned()
        }
        Some("string") => "string".to_owned(),
        Some("integer") => match schema.get("format").and_then(Value::as_str) {
            Some("int32") => "int32".to_owned(),
            _ => "int64".to_owned(),
        },
        Some("number") => "float64".to_owned(),
        Some("boolean") => "bool".to_owned(),
        _ => "interface {}".to_owned(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct TypeWalk {
    error: Option<String>,
}

impl TypeWalk {
    fn fail(&mut self, what: String, parent: &str, path: &str, go_ty: &str) {
        if self.error.is_some() {
            return;
        }
        self.error = Some(if path.is_empty() {
            format!("json: cannot unmarshal {what} into Go value of type {go_ty}")
        } else {
            format!("json: cannot unmarshal {what} into Go struct field {parent}.{path} of type {go_ty}")
        });
    }

    /// `parent` is the Go struct holding the field at `path` (dot-joined keys, no indices, as Go
    /// 1.20+ prints them); `go_ty` is the field's Go type.
    fn check(&mut self, value: &Value, raw_schema: &Value, parent: &str, path: &str, go_ty: &str) {
        if self.error.is_some() || value.is_null() {
            return;
        }
        let (schema, name) = resolve(raw_schema);
        if name.is_some_and(|n| ANY_VALUE_SCHEMAS.contains(&n)) || preserves_unknown(schema) {
            return;
        }
        if schema.get("x-kubernetes-int-or-string").is_some() {
            if !(value.is_string() || value.is_number()) {
                self.fail(json_kind(value).to_owned(), parent, path, go_ty);
            } else if name == Some(QUANTITY_SCHEMA) {
                let ok = match value {
                    Value::String(s) => super::parse_quantity(s).is_some(),
                    _ => true,
                };
                if !ok && self.error.is_none() {
                    self.error = Some(
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                            .to_owned(),
                    );
                }
            }
            return;
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => match value {
                Value::String(s)
                    if schema.get("format").and_then(Value::as_str) == Some("byte") =>
                {
                    if let Some(at) = base64_error_at(s) {
                        if self.error.is_none() {
                            self.error = Some(format!("illegal base64 data at input byte {at}"));
                        }
                    }
                }
                Value::String(_) => {}
                other => self.fail(json_kind(other).to_owned(), parent, path, go_ty),
            },
            Some("integer") => {
                let fits = match value {
                    Value::Number(n) => match n.as_i64() {
                        Some(i) if go_ty == "int32" => i32::try_from(i).is_ok(),
                        Some(_) => true,
                        None => false,
                    },
                    _ => false,
                };
                if !fits {
                    let what = match value {
                        Value::Number(n) => format!("number {n}"),
                        other => json_kind(other).to_owned(),
                    };
                    self.fail(what, parent, path, go_ty);
                }
            }
            Some("number") if !value.is_number() => {
                self.fail(json_kind(value).to_owned(), parent, path, go_ty)
            }
            Some("boolean") if !value.is_boolean() => {
                self.fail(json_kind(value).to_owned(), parent, path, go_ty)
            }
            Some("array") => match value {
                Value::Array(items) => {
                    if let Some(item_schema) = schema.get("items") {
                        let item_ty = go_type(item_schema);
                        for item in items {
                            self.check(item, item_schema, parent, path, &item_ty);
                        }
                    }
                }
                other => self.fail(json_kind(other).to_owned(), parent, path, go_ty),
            },
            Some("object") => match value {
                Value::Object(map) => {
                    let struct_name = name
                        .map(|n| n.rsplit('.').next().unwrap_or(n))
                        .unwrap_or(parent);
                    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                        for (k, v) in map {
                            if let Some(sub) = props.get(k) {
                                let sub_path = if path.is_empty() {
                                    k.clone()
                                } else {
                                    format!("{path}.{k}")
                                };
                                self.check(v, sub, struct_name, &sub_path, &go_type(sub));
                            }
                        }
                    } else if let Some(additional) =
                        schema.get("additionalProperties").filter(|a| a.is_object())
                    {
                        let value_ty = go_type(additional);
                        for (k, v) in map {
                            let sub_path = if path.is_empty() {
                                k.clone()
                            } else {
                                format!("{path}.{k}")
                            };
                            self.check(v, additional, parent, &sub_path, &value_ty);
                        }
                    }
                }
                other => self.fail(json_kind(other).to_owned(), parent, path, go_ty),
            },
            _ => {}
        }
    }
}

/// Position of the first byte Go's standard base64 decoder rejects, if any.
fn base64_error_at(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut end = bytes.len();
    let mut padding = 0;
    while end > 0 && bytes[end - 1] == b'=' && padding < 2 {
        end -= 1;
        padding += 1;
    }
    for (i, b) in bytes[..end].iter().enumerate() {
        if !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/') {
            return Some(i);
        }
    }
    if (end + padding) % 4 != 0 || (padding > 0 && end % 4 == 1) {
        return Some(end.saturating_sub(end % 4));
    }
    None
}

/// Decoded length of a base64 string (for size limits); assumes it is valid.
pub(crate) fn base64_decoded_len(s: &str) -> usize {
    let trimmed = s.trim_end_matches('=');
    trimmed.len() * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gvk(g: &str, v: &str, k: &str) -> GroupVersionKind {
        GroupVersionKind::gvk(g, v, k)
    }

    #[test]
    fn unknown_field_at_depth_is_reported() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"any-key": "v"}, "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "nginx", "imagee": "x",
                      "resources": {"limits": {"cpu": "1"}}}],
                     "overhead": {"cpu": "1"}}
        });
        let found = unknown_fields(&gvk("", "v1", "Pod"), &pod);
        assert_eq!(
            found,
            vec![
                ".metadata.bogus".to_owned(),
                ".spec.containers[0].imagee".to_owned()
            ]
        );
    }

    #[test]
    fn deployment_template_unknown_field() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "portz": []}]}}}});
        assert_eq!(
            unknown_fields(&gvk("apps", "v1", "Deployment"), &d),
            vec![".spec.template.spec.containers[0].portz".to_owned()]
        );
    }

    #[test]
    fn free_form_fields_are_not_descended() {
        let crd = json!({"metadata": {"name": "foos.example.com"}, "spec": {"group": "example.com",
            "names": {"kind": "Foo", "plural": "foos"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "default": {"anything": 1},
                    "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
        let g = gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
        assert!(unknown_fields(&g, &crd).is_empty());
        let cm = json!({"metadata": {"name": "c", "managedFields": [{"fieldsV1": {"f:data": {}}}]}, "data": {"k": "v"}});
        assert!(unknown_fields(&gvk("", "v1", "ConfigMap"), &cm).is_empty());
    }

    #[test]
    fn decode_error_names_the_field() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": "nginx"}});
        assert_eq!(
            decode_error(&gvk("", "v1", "Pod"), &pod).as_deref(),
            Some("json: cannot unmarshal string into Go struct field PodSpec.spec.containers of type []v1.Container")
        );
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}});
        assert_eq!(
            decode_error(&gvk("", "v1", "Pod"), &pod).as_deref(),
            Some("json: cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort of type int32")
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": "http"}]}});
        assert_eq!(decode_error(&gvk("", "v1", "Service"), &svc), None);
        // A missing required field decodes (validation reports it).
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}});
        assert_eq!(decode_error(&gvk("", "v1", "Pod"), &pod), None);
        let secret = json!({"metadata": {"name": "s"}, "data": {"k": "not base64!"}});
        assert!(decode_error(&gvk("", "v1", "Secret"), &secret).is_some());
        let kubectl_run = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": null, "labels": {"run": "p"}},
            "spec": {"containers": [{"name": "p", "image": "nginx", "resources": {}}],
                     "dnsPolicy": "ClusterFirst", "restartPolicy": "Always"}, "status": {}});
        assert_eq!(decode_error(&gvk("", "v1", "Pod"), &kubectl_run), None);
        assert!(unknown_fields(&gvk("", "v1", "Pod"), &kubectl_run).is_empty());
        let big = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3_000_000_000_u64}});
        assert!(decode_error(&gvk("apps", "v1", "Deployment"), &big).is_some());
    }
}
