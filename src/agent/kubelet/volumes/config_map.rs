//! configMap volumes: the ConfigMap's keys (or the chosen `items`) as files, with
//! `defaultMode`/`mode`, written by the atomic writer so updates appear at once.
//!
//! Owns building the payload; must not write files itself (the manager hands the payload to the
//! atomic writer).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, KeyToPath};
use kube::Api;

use super::atomic_writer::{FileProjection, Payload};

pub const PLUGIN: &str = "kubernetes.io~configmap";
/// kubelet's `ConfigMapVolumeSourceDefaultMode` (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Why a ConfigMap cannot be projected. Messages as kubelet's.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    #[error("references non-existent secret key: {0}")]
    SecretKey(String),
    #[error("couldn't get {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// The payload of a configMap volume; an absent optional ConfigMap gives an empty payload.
pub async fn payload(
    client: &kube::Client,
    namespace: &str,
    source: &ConfigMapVolumeSource,
) -> Result<Payload, ProjectionError> {
    let optional = source.optional == Some(true);
    let data = fetch(client, namespace, &source.name, optional).await?;
    match data {
        None => Ok(Payload::new()),
        Some(data) => project(
            &data,
            source.items.as_deref(),
            source.default_mode.unwrap_or(DEFAULT_MODE),
            optional,
            ProjectionError::ConfigMapKey,
        ),
    }
}

/// The ConfigMap's data and binaryData as bytes; `None` when it is absent and optional.
pub(super) async fn fetch(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ProjectionError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(name)
        .await
        .map_err(|source| ProjectionError::Api {
            what: format!("configmap {namespace}/{name}"),
            source,
        })?;
    match found {
        None if optional => Ok(None),
        None => Err(ProjectionError::ConfigMapNotFound(name.to_string())),
        Some(map) => {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in map.binary_data.unwrap_or_default() {
                data.entry(k).or_insert(v.0);
            }
            Ok(Some(data))
        }
    }
}

/// kubelet's `MakePayload`: every key as a file named after it, or only the `items` at their
/// paths; a missing item key is an error unless the source is optional.
pub(super) fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    missing: fn(String) -> ProjectionError,
) -> Result<Payload, ProjectionError> {
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) as u32) & 0o7777;
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, value) in data {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode: mode(None),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        payload.insert(
                            item.path.clone(),
                            FileProjection {
                                data: value.clone(),
                                mode: mode(item.mode),
                            },
                        );
                    }
                    None if optional => continue,
                    None => return Err(missing(item.key.clone())),
                }
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ])
    }

    #[test]
    fn all_keys_with_the_default_mode() {
        let payload =
            project(&data(), None, 0o600, false, ProjectionError::ConfigMapKey).expect("payload");
        assert_eq!(payload.len(), 2);
        assert_eq!(payload["a"].mode, 0o600);
        assert_eq!(payload["b"].data, b"2");
    }

    #[test]
    fn items_choose_paths_and_modes() {
        let items = vec![
            KeyToPath {
                key: "a".into(),
                path: "dir/first".into(),
                mode: Some(0o400),
            },
            KeyToPath {
                key: "b".into(),
                path: "second".into(),
                mode: None,
            },
        ];
        let payload = project(
            &data(),
            Some(&items),
            0o644,
            false,
            ProjectionError::ConfigMapKey,
        )
        .expect("payload");
        assert_eq!(
            payload.keys().collect::<Vec<_>>(),
            vec!["dir/first", "second"]
        );
        assert_eq!(payload["dir/first"].mode, 0o400);
        assert_eq!(payload["second"].mode, 0o644);
    }

    #[test]
    fn a_missing_item_key_fails_unless_optional() {
        let items = vec![KeyToPath {
            key: "zzz".into(),
            path: "z".into(),
            mode: None,
        }];
        let err = project(
            &data(),
            Some(&items),
            0o644,
            false,
            ProjectionError::ConfigMapKey,
        );
        assert_eq!(
            err.map_err(|e| e.to_string()).err().as_deref(),
            Some("configmap references non-existent config key: zzz")
        );
        let payload = project(
            &data(),
            Some(&items),
            0o644,
            true,
            ProjectionError::ConfigMapKey,
        )
        .expect("optional");
        assert!(payload.is_empty());
    }
}
