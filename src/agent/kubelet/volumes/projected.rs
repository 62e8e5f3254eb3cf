//! projected volumes: configMap, secret, downwardAPI and serviceAccountToken sources merged into
//! one directory, written by the atomic writer.
//!
//! Owns building the payload and requesting service account tokens (TokenRequest, bound to the
//! pod; renewed after 80 % of their lifetime); must not write files itself.
//!
//! # Caveats
//! clusterTrustBundle sources are refused.

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::{Api, PostParams};

use super::atomic_writer::{FileProjection, Payload};
use super::config_map::{project, ProjectionError};
use super::downward_api::DownwardApiError;
use super::{CachedToken, TokenCache};

pub const PLUGIN: &str = "kubernetes.io~projected";
/// kubelet's `ProjectedVolumeSourceDefaultMode` (0644).
pub const DEFAULT_MODE: i32 = 0o644;
/// `expirationSeconds` when the source does not say (the API default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Why a projected volume's payload cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ProjectedError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    DownwardApi(#[from] DownwardApiError),
    #[error("failed to fetch token: {0}")]
    Token(#[source] kube::Error),
    #[error("failed to fetch token: the token request returned no token")]
    EmptyToken,
    #[error("unsupported projected volume source {0}")]
    Unsupported(&'static str),
}

/// The merged payload of all sources, later sources overwriting earlier paths.
pub async fn payload(
    client: &kube::Client,
    pod: &Pod,
    volume: &str,
    source: &ProjectedVolumeSource,
    tokens: &TokenCache,
) -> Result<Payload, ProjectedError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    let mut payload = Payload::new();
    for projection in source.sources.iter().flatten() {
        if let Some(cm) = &projection.config_map {
            let optional = cm.optional == Some(true);
            if let Some(data) =
                super::config_map::fetch(client, namespace, &cm.name, optional).await?
            {
                payload.extend(project(
                    &data,
                    cm.items.as_deref(),
                    default_mode,
                    optional,
                    ProjectionError::ConfigMapKey,
                )?);
            }
        }
        if let Some(secret) = &projection.secret {
            let optional = secret.optional == Some(true);
            if let Some(data) =
                super::secret::fetch(client, namespace, &secret.name, optional).await?
            {
                payload.extend(project(
                    &data,
                    secret.items.as_deref(),
                    default_mode,
                    optional,
                    ProjectionError::SecretKey,
                )?);
            }
        }
        if let Some(downward) = &projection.downward_api {
            payload.extend(
                super::downward_api::payload(
                    client,
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                    default_mode,
                )
                .await?,
            );
        }
        if let Some(token) = &projection.service_account_token {
            let seconds = token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
            let value = service_account_token(
                client,
                pod,
                volume,
                &token.path,
                token.audience.clone(),
                seconds,
                tokens,
            )
            .await?;
            payload.insert(
                token.path.clone(),
                FileProjection {
                    data: value.into_bytes(),
                    mode: (default_mode as u32) & 0o7777,
                },
            );
        }
        if projection.cluster_trust_bundle.is_some() {
            return Err(ProjectedError::Unsupported("clusterTrustBundle"));
        }
    }
    Ok(payload)
}

/// A token for the pod's service account bound to the pod, reused until 80 % of its lifetime.
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    volume: &str,
    path: &str,
    audience: Option<String>,
    seconds: i64,
    tokens: &TokenCache,
) -> Result<String, ProjectedError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = (uid.clone(), volume.to_string(), path.to_string());
    if let Ok(cache) = tokens.lock() {
        if let Some(cached) = cache.get(&key) {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let request = TokenRequest {
        metadata: Default::default(),
        spec: TokenRequestSpec {
            audiences: audience.into_iter().filter(|a| !a.is_empty()).collect(),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: Some(uid),
            }),
        },
        status: None,
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let response = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(ProjectedError::Token)?;
    let token = response
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or(ProjectedError::EmptyToken)?;
    let refresh_after = Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(3600) * 8 / 10);
    if let Ok(mut cache) = tokens.lock() {
        cache.insert(
            key,
            CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + refresh_after,
            },
        );
    }
    Ok(token)
}
