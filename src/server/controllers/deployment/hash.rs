//! The `pod-template-hash`: the label that tells a Deployment's ReplicaSets (and their pods)
//! apart, computed as Kubernetes' `controller.ComputeHash` does it in meaning — FNV-32a over the
//! pod template (here its canonical JSON), then over the collision count when there is one,
//! and the decimal digits of the sum mapped onto the "safe" alphabet without vowels.
//!
//! Also template equality that ignores the hash label (`EqualIgnoreHash`), which is how a
//! Deployment finds which of its ReplicaSets runs its current template.
//!
//! # Caveats
//! - The hash of a template differs from the one kube-controller-manager would compute (it
//!   hashes a Go struct dump); only stability and the alphabet matter to clients.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label (and selector key) carrying the hash.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The characters a hash is written with: no vowels (no words), no look-alikes (0, 1, 3).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits.
#[derive(Clone, Copy, Debug)]
struct Fnv32a(u32);

impl Fnv32a {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;

    fn new() -> Fnv32a {
        Fnv32a(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u32::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

/// Maps every character onto the safe alphabet (`rand.SafeEncodeString`).
pub fn safe_encode(s: &str) -> String {
    s.chars()
        .map(|c| {
            let index = (c as usize) % SAFE_ALPHABET.len();
            char::from(SAFE_ALPHABET[index])
        })
        .collect()
}

/// The `pod-template-hash` of `template` with the Deployment's `collisionCount`.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hasher = Fnv32a::new();
    let value = serde_json::to_value(template).unwrap_or(Value::Null);
    let mut canonical = String::new();
    write_canonical(&normalize(value), &mut canonical);
    hasher.write(canonical.as_bytes());
    if let Some(count) = collision_count {
        // Eight bytes, the count little-endian in the first four, as ComputeHash writes it.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&u32::from_ne_bytes(count.to_ne_bytes()).to_le_bytes());
        hasher.write(&bytes);
    }
    safe_encode(&hasher.0.to_string())
}

/// Whether two templates are the same once the hash label is ignored; absent, null and empty
/// maps and lists count as equal (as `apiequality.Semantic.DeepEqual` treats nil and empty).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

fn comparable(template: &PodTemplateSpec) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    normalize(serde_json::to_value(&template).unwrap_or(Value::Null))
}

/// Drops nulls and empty maps and lists, recursively.
fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// JSON with object keys sorted, whatever map type serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(value: Value) -> PodTemplateSpec {
        serde_json::from_value(value).expect("template")
    }

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv32a::new();
            h.write(s.as_bytes());
            h.0
        };
        assert_eq!(hash(""), 0x811c_9dc5);
        assert_eq!(hash("a"), 0xe40c_292c);
        assert_eq!(hash("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encoding_maps_digits_like_upstream() {
        // '0' is 48: 48 % 27 = 21 -> '4'; '9' is 57: 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode("0"), "4");
        assert_eq!(safe_encode("9"), "f");
        assert_eq!(safe_encode("1234567890"), "56789bcdf4");
    }

    #[test]
    fn hash_is_stable_and_changes_with_template_and_collisions() {
        let a = template(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}));
        let same = template(
            json!({"spec": {"containers": [{"image": "nginx:1", "name": "c"}]},
            "metadata": {"labels": {"app": "web"}, "annotations": {}}}),
        );
        let b = template(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}));
        let h = pod_template_hash(&a, None);
        assert_eq!(h, pod_template_hash(&same, None));
        assert_ne!(h, pod_template_hash(&b, None));
        assert_ne!(h, pod_template_hash(&a, Some(1)));
        assert_ne!(
            pod_template_hash(&a, Some(1)),
            pod_template_hash(&a, Some(2))
        );
        assert!(h.len() <= 10 && !h.is_empty());
        assert!(h.bytes().all(|c| SAFE_ALPHABET.contains(&c)), "{h}");
    }

    #[test]
    fn equality_ignores_the_hash_label_only() {
        let a = template(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}));
        let hashed = template(
            json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "x"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}),
        );
        let relabelled = template(json!({"metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}));
        assert!(equal_ignore_hash(&a, &hashed));
        assert!(!equal_ignore_hash(&a, &relabelled));
    }
}
