//! The one API error type: everything a request can fail with, rendered as a Kubernetes
//! `Status` object with the right HTTP code, reason and details.
//!
//! Owns the mapping from store errors to API errors; handlers return [`ApiError`] and never build
//! `Status` JSON themselves.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::server::store::StoreError;

/// One `details.causes` entry of an Invalid status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// What the object the error is about is called, for `details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    pub name: String,
    pub group: String,
    /// The resource (plural), which is what Kubernetes puts into `details.kind`.
    pub kind: String,
    pub uid: Option<String>,
    pub retry_after_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    Forbidden {
        message: String,
        details: Box<Details>,
    },
    #[error("{message}")]
    NotFound {
        message: String,
        details: Box<Details>,
    },
    #[error("{message}")]
    MethodNotAllowed { message: String },
    #[error("{message}")]
    NotAcceptable { message: String },
    #[error("{message}")]
    AlreadyExists {
        message: String,
        details: Box<Details>,
    },
    #[error("{message}")]
    Conflict {
        message: String,
        details: Box<Details>,
    },
    /// 410: a resourceVersion or continue token older than the retained history.
    #[error("{message}")]
    Expired { message: String },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    #[error("{message}")]
    Invalid {
        message: String,
        details: Box<Details>,
        causes: Vec<Cause>,
    },
    /// 504 for a resourceVersion newer than the store has.
    #[error("{message}")]
    Timeout { message: String },
    #[error("{message}")]
    Internal { message: String },
    #[error("{message}")]
    ServiceUnavailable { message: String },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::Internal {
            message: message.into(),
        }
    }

    /// `pods "web" not found`, as Kubernetes words it.
    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError::NotFound {
            message: format!("{} \"{name}\" not found", qualified(group, resource)),
            details: Box::new(details(group, resource, name)),
        }
    }

    /// For paths that name no resource at all.
    pub fn no_such_route() -> ApiError {
        ApiError::NotFound {
            message: "the server could not find the requested resource".into(),
            details: Box::default(),
        }
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError::AlreadyExists {
            message: format!("{} \"{name}\" already exists", qualified(group, resource)),
            details: Box::new(details(group, resource, name)),
        }
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        ApiError::Conflict {
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
            details: Box::new(details(group, resource, name)),
        }
    }

    /// The standard optimistic-concurrency conflict.
    pub fn modified(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per field, worded like Kubernetes: `Pod "x" is invalid: [spec.a: Required value, ...]`.
    pub fn invalid(
        group: &str,
        kind: &str,
        resource: &str,
        name: &str,
        causes: Vec<Cause>,
    ) -> ApiError {
        let list: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        ApiError::Invalid {
            message: format!("{qualified_kind} \"{name}\" is invalid: {joined}"),
            details: Box::new(Details {
                name: name.into(),
                group: group.into(),
                kind: resource.into(),
                ..Details::default()
            }),
            causes,
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden {
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` field (metav1.StatusReason).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Unauthorized { .. } => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } => "NotFound",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::NotAcceptable { .. } => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired { .. } => "Expired",
            ApiError::PayloadTooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Timeout { .. } => "Timeout",
            ApiError::Internal { .. } => "InternalError",
            ApiError::ServiceUnavailable { .. } => "ServiceUnavailable",
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let (details, causes) = match self {
            ApiError::Forbidden { details, .. }
            | ApiError::NotFound { details, .. }
            | ApiError::AlreadyExists { details, .. }
            | ApiError::Conflict { details, .. } => (Some(details), None),
            ApiError::Invalid {
                details, causes, ..
            } => (Some(details), Some(causes)),
            _ => (None, None),
        };
        if let Some(details) = details {
            if **details != Details::default() || causes.is_some() {
                let mut d = serde_json::Map::new();
                if !details.name.is_empty() {
                    d.insert("name".into(), json!(details.name));
                }
                if !details.group.is_empty() {
                    d.insert("group".into(), json!(details.group));
                }
                if !details.kind.is_empty() {
                    d.insert("kind".into(), json!(details.kind));
                }
                if let Some(uid) = &details.uid {
                    d.insert("uid".into(), json!(uid));
                }
                if let Some(seconds) = details.retry_after_seconds {
                    d.insert("retryAfterSeconds".into(), json!(seconds));
                }
                if let Some(causes) = causes {
                    let causes: Vec<Value> = causes
                        .iter()
                        .map(|c| {
                            // `field` is omitted when empty, as metav1.StatusCause does.
                            let mut cause = json!({"reason": c.reason, "message": c.message});
                            if !c.field.is_empty() {
                                cause["field"] = json!(c.field);
                            }
                            cause
                        })
                        .collect();
                    d.insert("causes".into(), Value::Array(causes));
                }
                status["details"] = Value::Object(d);
            }
        }
        status
    }
}

/// `deployments.apps`, or just `pods` for the core group.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, resource: &str, name: &str) -> Details {
    Details {
        name: name.into(),
        group: group.into(),
        kind: resource.into(),
        ..Details::default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_status().to_string();
        (
            self.code(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl ApiError {
    /// Maps a store error for an operation on one object (`resource` plural in `group`).
    pub fn from_store(err: StoreError, group: &str, resource: &str, name: &str) -> ApiError {
        match err {
            StoreError::AlreadyExists { .. } => ApiError::already_exists(group, resource, name),
            StoreError::NotFound { .. } => ApiError::not_found(group, resource, name),
            StoreError::Conflict { .. } => ApiError::modified(group, resource, name),
            other => ApiError::from(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::Expired {
                message: format!("too old resource version: {requested} ({compacted})"),
            },
            StoreError::FutureRevision { requested, current } => ApiError::Timeout {
                message: format!("Too large resource version: {requested}, current: {current}"),
            },
            StoreError::Closed => ApiError::ServiceUnavailable {
                message: "the server is shutting down".into(),
            },
            StoreError::Backend(message) => ApiError::internal(format!("storage error: {message}")),
            StoreError::Corrupt { path, reason } => {
                ApiError::internal(format!("storage error: {path}: {reason}"))
            }
            StoreError::WatcherTooSlow => ApiError::internal("watch fell behind"),
            StoreError::AlreadyExists { key } => {
                ApiError::internal(format!("{key} already exists"))
            }
            StoreError::NotFound { key } => ApiError::internal(format!("{key} not found")),
            StoreError::Conflict { key, .. } => ApiError::internal(format!("{key} was modified")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let err = ApiError::not_found("apps", "deployments", "web");
        let status = err.to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "deployments");
        assert_eq!(status["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_every_cause() {
        let err = ApiError::invalid(
            "",
            "Pod",
            "pods",
            "x",
            vec![
                Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "spec.containers[0].image".into(),
                },
                Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: \"A\"".into(),
                    field: "metadata.name".into(),
                },
            ],
        );
        let status = err.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["message"],
            "Pod \"x\" is invalid: [spec.containers[0].image: Required value, metadata.name: Invalid value: \"A\"]"
        );
        assert_eq!(
            status["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }

    #[test]
    fn compacted_becomes_expired_410() {
        let err = ApiError::from(StoreError::Compacted {
            requested: 3,
            compacted: 10,
        });
        assert_eq!(err.code(), StatusCode::GONE);
        assert_eq!(err.reason(), "Expired");
    }
}
