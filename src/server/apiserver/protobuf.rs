//! Reading `application/vnd.kubernetes.protobuf` request bodies.
//!
//! client-go's typed clients — kubectl >= 1.31 for `create configmap|secret|deployment|…`,
//! `drain`'s evictions, `auth can-i` — send built-in objects in Kubernetes' protobuf envelope:
//! the magic `k8s\0`, then a `runtime.Unknown` {typeMeta{apiVersion, kind}, raw, …} whose `raw`
//! is the object's own message. This module turns such a body into the same JSON object a JSON
//! client would have sent, so that everything after decoding is shared.
//!
//! Owns: the wire decoding and the mapping to Kubernetes JSON (the apimachinery types with a
//! custom JSON form — Time, MicroTime, Duration, Quantity, IntOrString, RawExtension, FieldsV1 —
//! and Go's `omitempty`). The field tables come from build.rs (generated from the k8s-pb crate);
//! JSON names are taken from k8s-openapi's schema so acronyms (`podIP`) come out right.
//! Must not touch: storage, admission; responses are still JSON.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::openapi;

/// How a field is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Int32,
    Int64,
    Bool,
    Double,
    Bytes,
    Message,
    Map,
}

/// One field of a message, as build.rs read it.
#[derive(Debug)]
pub struct FieldSpec {
    pub tag: u32,
    pub rust_name: &'static str,
    pub kind: FieldKind,
    pub repeated: bool,
    /// The message name for `Message`; `<key kind>,<value kind or message name>` for `Map`.
    pub type_name: &'static str,
}

/// One message, named like its OpenAPI definition (`io.k8s.api.apps.v1.Deployment`).
#[derive(Debug)]
pub struct Message {
    pub name: &'static str,
    pub fields: &'static [FieldSpec],
}

mod tables {
    use super::{FieldKind, FieldSpec, Message};
    include!(concat!(env!("OUT_DIR"), "/k8s_protobuf.rs"));
}

/// The media type client-go sends.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The envelope's first four bytes.
pub const MAGIC: &[u8] = b"k8s\x00";

/// Why a protobuf body could not be read (the caller answers 400 or 415).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the protobuf body does not start with the Kubernetes envelope")]
    NoEnvelope,
    #[error("the protobuf body is malformed: {0}")]
    Malformed(String),
    #[error("no protobuf encoding is known for {api_version}, Kind={kind}")]
    UnknownKind { api_version: String, kind: String },
}

/// Decodes an enveloped object into its JSON form, `apiVersion` and `kind` included.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body.strip_prefix(MAGIC).ok_or(DecodeError::NoEnvelope)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut reader = Reader::new(rest);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, WIRE_LEN) => {
                let mut meta = Reader::new(reader.bytes()?);
                while let Some((tag, wire)) = meta.key()? {
                    match (tag, wire) {
                        (1, WIRE_LEN) => api_version = meta.string()?,
                        (2, WIRE_LEN) => kind = meta.string()?,
                        _ => meta.skip(wire)?,
                    }
                }
            }
            (2, WIRE_LEN) => raw = reader.bytes()?,
            (3, WIRE_LEN) => {
                let encoding = reader.string()?;
                if !encoding.is_empty() {
                    return Err(DecodeError::Malformed(format!(
                        "content encoding {encoding:?} is not supported"
                    )));
                }
            }
            _ => reader.skip(wire)?,
        }
    }
    let message = message_for(&api_version, &kind).ok_or_else(|| DecodeError::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = decode_message(message, raw)? {
        object.extend(fields);
    }
    Ok(Value::Object(object))
}

/// The message for an apiVersion and kind: k8s-pb's resource list first, then any message
/// of that name in the group's package (subresource kinds such as Eviction or Scale).
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    if let Some((_, _, name)) = tables::RESOURCES
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
    {
        return message(name);
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let package = match group {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".into(),
        "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration".into(),
        "meta.k8s.io" => "io.k8s.apimachinery.pkg.apis.meta".into(),
        other => {
            let short = other.split('.').next().unwrap_or(other);
            let short = if other == "rbac.authorization.k8s.io" {
                "rbac"
            } else if other == "internal.apiserver.k8s.io" {
                "apiserverinternal"
            } else {
                short
            };
            format!("io.k8s.api.{short}")
        }
    };
    message(&format!("{package}.{version}.{kind}"))
}

fn message(name: &str) -> Option<&'static Message> {
    static INDEX: OnceLock<HashMap<&'static str, &'static Message>> = OnceLock::new();
    INDEX
        .get_or_init(|| tables::MESSAGES.iter().map(|m| (m.name, m)).collect())
        .get(name)
        .copied()
}

/// A message's fields by tag, with their JSON names resolved once.
fn fields_of(message: &'static Message) -> &'static HashMap<u32, (&'static FieldSpec, String)> {
    type Cache = HashMap<&'static str, &'static HashMap<u32, (&'static FieldSpec, String)>>;
    static CACHE: OnceLock<std::sync::Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = match cache.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.entry(message.name).or_insert_with(|| {
        let known = openapi::builtin_property_names(message.name).unwrap_or_default();
        let map: HashMap<u32, (&'static FieldSpec, String)> = message
            .fields
            .iter()
            .map(|f| (f.tag, (f, json_name(f.rust_name, &known))))
            .collect();
        Box::leak(Box::new(map))
    })
}

/// The JSON name for a snake-case field: the schema's property that matches it ignoring case
/// and underscores (`pod_ip` → `podIP`), else lower camel case.
fn json_name(rust_name: &str, known: &[&str]) -> String {
    let flat: String = rust_name.chars().filter(|c| *c != '_').collect();
    if let Some(name) = known
        .iter()
        .find(|k| k.replace(['$', '-', '_'], "").eq_ignore_ascii_case(&flat))
    {
        return (*name).to_string();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in rust_name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Fields that are pointers in Go and whose zero value means something other than "unset"
/// (`replicas: 0` is not `replicas` defaulted to 1). Every other zero scalar is dropped, as
/// Go's `omitempty` drops it from JSON.
const ZERO_IS_MEANINGFUL: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "parallelism",
    "completions",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "terminationGracePeriodSeconds",
    "deletionGracePeriodSeconds",
    "gracePeriodSeconds",
    "tolerationSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "allowPrivilegeEscalation",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "priority",
    "value",
    "storageClassName",
    "defaultMode",
    "mode",
    "expirationSeconds",
    "hostUsers",
];

fn decode_message(message: &'static Message, bytes: &[u8]) -> Result<Value, DecodeError> {
    if let Some(special) = decode_special(message.name, bytes)? {
        return Ok(special);
    }
    let fields = fields_of(message);
    let mut out = Map::new();
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        let Some((spec, name)) = fields.get(&tag) else {
            reader.skip(wire)?;
            continue;
        };
        if spec.kind == FieldKind::Map {
            let (key, value) = map_entry(spec, reader.bytes()?)?;
            let entry = out
                .entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = entry {
                map.insert(key, value);
            }
            continue;
        }
        if spec.repeated {
            let values = repeated_values(spec, wire, &mut reader)?;
            let entry = out
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = entry {
                items.extend(values);
            }
            continue;
        }
        let value = single_value(spec, wire, &mut reader)?;
        match value {
            None => {
                out.remove(name);
            }
            Some(value) => {
                if is_zero_scalar(&value) && !ZERO_IS_MEANINGFUL.contains(&name.as_str()) {
                    out.remove(name);
                } else {
                    out.insert(name.clone(), value);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn is_zero_scalar(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// A single (non-repeated) value; None for a value that Go encodes as JSON null (zero Time).
fn single_value(
    spec: &FieldSpec,
    wire: u8,
    reader: &mut Reader<'_>,
) -> Result<Option<Value>, DecodeError> {
    match spec.kind {
        FieldKind::Message => {
            expect_wire(wire, WIRE_LEN)?;
            let nested = message(spec.type_name).ok_or_else(|| {
                DecodeError::Malformed(format!("unknown message {}", spec.type_name))
            })?;
            let value = decode_message(nested, reader.bytes()?)?;
            Ok((!value.is_null()).then_some(value))
        }
        _ => scalar(spec.kind, wire, reader).map(Some),
    }
}

fn repeated_values(
    spec: &FieldSpec,
    wire: u8,
    reader: &mut Reader<'_>,
) -> Result<Vec<Value>, DecodeError> {
    let packable = matches!(
        spec.kind,
        FieldKind::Int32 | FieldKind::Int64 | FieldKind::Bool | FieldKind::Double
    );
    if packable && wire == WIRE_LEN {
        let mut packed = Reader::new(reader.bytes()?);
        let inner_wire = if spec.kind == FieldKind::Double {
            WIRE_FIXED64
        } else {
            WIRE_VARINT
        };
        let mut out = Vec::new();
        while !packed.is_empty() {
            out.push(scalar(spec.kind, inner_wire, &mut packed)?);
        }
        return Ok(out);
    }
    Ok(vec![
        single_value(spec, wire, reader)?.unwrap_or(Value::Null)
    ])
}

fn scalar(kind: FieldKind, wire: u8, reader: &mut Reader<'_>) -> Result<Value, DecodeError> {
    Ok(match kind {
        FieldKind::String => {
            expect_wire(wire, WIRE_LEN)?;
            Value::String(reader.string()?)
        }
        FieldKind::Bytes => {
            expect_wire(wire, WIRE_LEN)?;
            Value::String(base64::engine::general_purpose::STANDARD.encode(reader.bytes()?))
        }
        FieldKind::Int32 => {
            expect_wire(wire, WIRE_VARINT)?;
            Value::from(reader.varint()? as i64 as i32)
        }
        FieldKind::Int64 => {
            expect_wire(wire, WIRE_VARINT)?;
            Value::from(reader.varint()? as i64)
        }
        FieldKind::Bool => {
            expect_wire(wire, WIRE_VARINT)?;
            Value::Bool(reader.varint()? != 0)
        }
        FieldKind::Double => {
            expect_wire(wire, WIRE_FIXED64)?;
            let bits = reader.fixed64()?;
            serde_json::Number::from_f64(f64::from_bits(bits))
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        FieldKind::Message | FieldKind::Map => {
            return Err(DecodeError::Malformed(
                "a message where a scalar belongs".into(),
            ))
        }
    })
}

/// One `map<K, V>` entry: a message {1: key, 2: value}. Keys are strings in every
/// Kubernetes map; values are strings, bytes or messages.
fn map_entry(spec: &FieldSpec, bytes: &[u8]) -> Result<(String, Value), DecodeError> {
    let (_, value_type) = spec
        .type_name
        .split_once(',')
        .ok_or_else(|| DecodeError::Malformed(format!("bad map type {}", spec.type_name)))?;
    let mut key = String::new();
    let mut value: Option<Value> = None;
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match tag {
            1 => {
                expect_wire(wire, WIRE_LEN)?;
                key = reader.string()?;
            }
            2 => {
                value = Some(match value_type {
                    "string" => scalar(FieldKind::String, wire, &mut reader)?,
                    "bytes" => scalar(FieldKind::Bytes, wire, &mut reader)?,
                    "int32" => scalar(FieldKind::Int32, wire, &mut reader)?,
                    "int64" => scalar(FieldKind::Int64, wire, &mut reader)?,
                    "bool" => scalar(FieldKind::Bool, wire, &mut reader)?,
                    name => {
                        expect_wire(wire, WIRE_LEN)?;
                        let nested = message(name).ok_or_else(|| {
                            DecodeError::Malformed(format!("unknown message {name}"))
                        })?;
                        decode_message(nested, reader.bytes()?)?
                    }
                })
            }
            _ => reader.skip(wire)?,
        }
    }
    let value = value.unwrap_or_else(|| match value_type {
        "string" | "bytes" => Value::String(String::new()),
        "int32" | "int64" => Value::from(0),
        "bool" => Value::Bool(false),
        _ => Value::Object(Map::new()),
    });
    Ok((key, value))
}

/// The apimachinery types whose JSON form is not their protobuf structure.
fn decode_special(name: &str, bytes: &[u8]) -> Result<Option<Value>, DecodeError> {
    const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
    const EXT: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.";
    let fields = raw_fields(bytes)?;
    let value = match name.strip_prefix(META) {
        Some("Time") | Some("MicroTime") => {
            let seconds = fields.varint(1)? as i64;
            let nanos = fields.varint(2)? as i64 as i32;
            if seconds == 0 && nanos == 0 {
                Value::Null
            } else {
                let micro = name.ends_with("MicroTime");
                Value::String(format_time(seconds, nanos, micro)?)
            }
        }
        Some("Duration") => Value::String(format_duration(fields.varint(1)? as i64)),
        Some("FieldsV1") => raw_json(fields.bytes(1)?.unwrap_or_default())?,
        _ => match name {
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => Value::String(
                fields
                    .bytes(1)?
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            ),
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                if fields.varint(1)? == 1 {
                    Value::String(
                        fields
                            .bytes(3)?
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default(),
                    )
                } else {
                    Value::from(fields.varint(2)? as i64 as i32)
                }
            }
            "io.k8s.apimachinery.pkg.runtime.RawExtension" => {
                raw_json(fields.bytes(1)?.unwrap_or_default())?
            }
            _ if name == format!("{EXT}JSON") => raw_json(fields.bytes(1)?.unwrap_or_default())?,
            _ => return Ok(None),
        },
    };
    Ok(Some(value))
}

fn raw_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes)
        .map_err(|err| DecodeError::Malformed(format!("embedded raw object is not JSON: {err}")))
}

/// Go's `time.RFC3339` (seconds) or metav1.MicroTime's `2006-01-02T15:04:05.000000Z07:00`.
fn format_time(seconds: i64, nanos: i32, micro: bool) -> Result<String, DecodeError> {
    let ts = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 })
        .map_err(|err| DecodeError::Malformed(format!("time out of range: {err}")))?;
    Ok(if micro {
        ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    } else {
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// Go's `time.Duration.String()` (`1h2m3s`, `1.5s`, `300ms`, `0s`).
fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let negative = nanos < 0;
    let n = nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    if n < 1_000_000_000 {
        let (unit, scale) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", fraction(n, scale));
    }
    let total_seconds = n / 1_000_000_000;
    let hours = total_seconds / 3600;
    let minutes = (total_seconds % 3600) / 60;
    let seconds = fraction(n % 60_000_000_000, 1_000_000_000);
    let mut out = sign.to_string();
    if hours > 0 {
        out.push_str(&format!("{hours}h{minutes}m"));
    } else if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

/// `n / scale` with the remainder as decimals, trailing zeros trimmed.
fn fraction(n: u64, scale: u64) -> String {
    let whole = n / scale;
    let rest = n % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let digits = scale.to_string().len() - 1;
    let decimals = format!("{rest:0digits$}");
    format!("{whole}.{}", decimals.trim_end_matches('0'))
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn expect_wire(got: u8, want: u8) -> Result<(), DecodeError> {
    if got == want {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "wire type {got} where {want} was expected"
        )))
    }
}

/// A message's raw fields by tag (the last occurrence wins), for the special types.
struct RawFields<'a> {
    fields: Vec<(u32, RawValue<'a>)>,
}

enum RawValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn raw_fields(bytes: &[u8]) -> Result<RawFields<'_>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let mut fields = Vec::new();
    while let Some((tag, wire)) = reader.key()? {
        let value = match wire {
            WIRE_VARINT => RawValue::Varint(reader.varint()?),
            WIRE_LEN => RawValue::Bytes(reader.bytes()?),
            other => {
                reader.skip(other)?;
                RawValue::Other
            }
        };
        fields.push((tag, value));
    }
    Ok(RawFields { fields })
}

impl<'a> RawFields<'a> {
    fn varint(&self, tag: u32) -> Result<u64, DecodeError> {
        match self.fields.iter().rev().find(|(t, _)| *t == tag) {
            None => Ok(0),
            Some((_, RawValue::Varint(v))) => Ok(*v),
            Some(_) => Err(DecodeError::Malformed(format!(
                "field {tag} should be a varint"
            ))),
        }
    }

    fn bytes(&self, tag: u32) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.fields.iter().rev().find(|(t, _)| *t == tag) {
            None => Ok(None),
            Some((_, RawValue::Bytes(b))) => Ok(Some(b)),
            Some(_) => Err(DecodeError::Malformed(format!(
                "field {tag} should be length-delimited"
            ))),
        }
    }
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next field's (tag, wire type), or None at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3)
            .map_err(|_| DecodeError::Malformed("field number out of range".into()))?;
        if tag == 0 {
            return Err(DecodeError::Malformed("field number 0".into()));
        }
        Ok(Some((tag, (key & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self
                .data
                .split_first()
                .ok_or_else(|| DecodeError::Malformed("truncated varint".into()))?;
            self.data = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("varint longer than 10 bytes".into()))
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Malformed("truncated field".into()));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| DecodeError::Malformed("length out of range".into()))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DecodeError::Malformed("a string field is not UTF-8".into()))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.take(8).map(|_| ()),
            WIRE_LEN => self.bytes().map(|_| ()),
            WIRE_FIXED32 => self.take(4).map(|_| ()),
            other => Err(DecodeError::Malformed(format!(
                "unsupported wire type {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny protobuf writer for building test bodies by hand.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(mut self, tag: u32, v: u64) -> W {
            put_varint(&mut self.0, u64::from(tag << 3));
            put_varint(&mut self.0, v);
            self
        }
        fn bytes(mut self, tag: u32, b: &[u8]) -> W {
            put_varint(&mut self.0, u64::from(tag << 3 | 2));
            put_varint(&mut self.0, b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, tag: u32, s: &str) -> W {
            self.bytes(tag, s.as_bytes())
        }
        fn msg(self, tag: u32, m: W) -> W {
            self.bytes(tag, &m.0)
        }
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
        let unknown = W::default()
            .msg(1, W::default().str(1, api_version).str(2, kind))
            .msg(2, raw)
            .str(3, "")
            .str(4, "");
        let mut out = MAGIC.to_vec();
        out.extend(unknown.0);
        out
    }

    fn entry(k: &str, v: &str) -> W {
        W::default().str(1, k).str(2, v)
    }

    #[test]
    fn a_config_map_decodes_like_its_json() {
        // ObjectMeta: name=1, namespace=3, labels=11, creationTimestamp=8 (zero: null).
        let meta = W::default()
            .str(1, "cfg")
            .str(2, "")
            .str(3, "default")
            .msg(8, W::default())
            .msg(11, entry("app", "web"));
        // ConfigMap: metadata=1, data=2, binaryData=3.
        let cm = W::default()
            .msg(1, meta)
            .msg(2, entry("a", "1"))
            .msg(2, entry("empty", ""))
            .msg(3, W::default().str(1, "bin").bytes(2, b"\x00\x01"));
        let value = decode(&envelope("v1", "ConfigMap", cm)).expect("decode");
        assert_eq!(
            value,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "default", "labels": {"app": "web"}},
                "data": {"a": "1", "empty": ""},
                "binaryData": {"bin": "AAE="},
            })
        );
    }

    #[test]
    fn acronyms_pointers_quantities_and_int_or_string() {
        // Deployment{spec{replicas=1: 0, strategy=4{rollingUpdate=2{maxUnavailable=1: 25%}}}}.
        let rolling = W::default().msg(1, W::default().varint(1, 1).varint(2, 0).str(3, "25%"));
        let spec = W::default()
            .varint(1, 0)
            .msg(4, W::default().str(1, "RollingUpdate").msg(2, rolling))
            .varint(5, 0); // minReadySeconds: a plain int32 in Go, so 0 is omitted
        let value = decode(&envelope(
            "apps/v1",
            "Deployment",
            W::default().msg(2, spec),
        ))
        .expect("decode");
        assert_eq!(value["spec"]["replicas"], json!(0));
        assert_eq!(value["spec"].get("minReadySeconds"), None);
        assert_eq!(
            value["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}})
        );
        // PodStatus.podIP (tag 6) keeps its acronym; a Quantity is a string.
        let status = W::default().str(6, "10.42.0.5");
        let pod = decode(&envelope("v1", "Pod", W::default().msg(3, status))).expect("pod");
        assert_eq!(pod["status"]["podIP"], json!("10.42.0.5"));
        let limits = W::default().msg(
            1,
            W::default()
                .str(1, "cpu")
                .msg(2, W::default().str(1, "500m")),
        );
        let rr = decode_message(
            message("io.k8s.api.core.v1.ResourceRequirements").expect("known"),
            &limits.0,
        )
        .expect("resources");
        assert_eq!(rr, json!({"limits": {"cpu": "500m"}}));
    }

    #[test]
    fn times_and_durations_take_their_go_json_forms() {
        assert_eq!(
            format_time(1_700_000_000, 0, false).expect("time"),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            format_time(1_700_000_000, 123_456_789, true).expect("time"),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(300_000_000), "300ms");
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(format_duration(-60_000_000_000), "-1m0s");
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert_eq!(decode(b"{}"), Err(DecodeError::NoEnvelope));
        let mut truncated = envelope("v1", "ConfigMap", W::default().str(1, "x"));
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(decode(&truncated), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(&envelope("example.com/v1", "Widget", W::default())),
            Err(DecodeError::UnknownKind { .. })
        ));
        // Every prefix of a valid body fails cleanly.
        let body = envelope("v1", "ConfigMap", W::default().msg(2, entry("a", "1")));
        for len in 0..body.len() {
            let _ = decode(&body[..len]);
        }
    }

    #[test]
    fn the_tables_cover_what_kubectl_sends() {
        for (api_version, kind) in [
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Namespace"),
            ("v1", "Service"),
            ("v1", "ServiceAccount"),
            ("apps/v1", "Deployment"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("policy/v1", "Eviction"),
            ("policy/v1", "PodDisruptionBudget"),
            ("authentication.k8s.io/v1", "TokenRequest"),
            ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
            ("autoscaling/v1", "Scale"),
            ("scheduling.k8s.io/v1", "PriorityClass"),
            ("networking.k8s.io/v1", "Ingress"),
        ] {
            assert!(
                message_for(api_version, kind).is_some(),
                "{api_version} {kind}"
            );
        }
    }
}
