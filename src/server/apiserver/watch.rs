//! Watches: a chunked stream of newline-separated JSON events
//! (`{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}`), as kube-apiserver sends them.
//!
//! Owns the translation of store events into watch events for one client: selector changes
//! become ADDED/DELETED as the object enters or leaves the client's view, deleted objects carry
//! the revision of their deletion, a too-old resourceVersion becomes an ERROR event with a 410
//! `Expired` status. Each watch is one tokio task that ends on timeout, on client disconnect or
//! when the store cuts it off.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info_span, Instrument};

use super::errors::ApiError;
use super::objects;
use super::request::{Output, Query, ResourceRequest};
use super::resources::ResourceInfo;
use super::rest::{self, Filter};
use super::table;
use super::ApiState;
use crate::server::store::{Event, EventKind};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// Watch events buffered for a slow client before the watch stops reading the store.
const CLIENT_BUFFER: usize = 256;

/// Starts a watch and returns the streaming response.
pub async fn watch(
    state: Arc<ApiState>,
    request: &ResourceRequest,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let info = request.info.clone();
    let mut filter = Filter::from_query(&info, query)?;
    if let Some(name) = &request.name {
        filter = filter.with_name(name);
    }
    let prefix = objects::prefix(&info, request.namespace.as_deref());
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let timeout = match query.int("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    let rv = query.get("resourceVersion");
    // "" and "0" (and sendInitialEvents) start with the current state as ADDED events.
    let (initial, from) = match rv {
        Some(rv) if rv != "0" && !send_initial => {
            (Vec::new(), objects::parse_resource_version(rv)?)
        }
        _ => {
            let (items, revision, _) =
                rest::collect(&state, &info, prefix.clone(), None, None, 0, &filter).await?;
            (items, revision)
        }
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
    let store_stream = state.store.watch(&prefix, from).await;
    let span = info_span!("watch", resource = %info.plural, namespace = request.namespace.as_deref().unwrap_or(""), from);
    let guard = state.metrics.watch_started(&info.plural);
    tokio::spawn(
        async move {
            let _guard = guard;
            let render = |kind: &str, obj: Value| line(kind, render_object(&info, obj, output));
            for obj in initial {
                if sender.send(render("ADDED", obj)).await.is_err() {
                    return;
                }
            }
            if send_initial && bookmarks {
                let mut mark = bookmark(&info, from);
                mark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                if sender.send(line("BOOKMARK", mark)).await.is_err() {
                    return;
                }
            }
            let mut events = match store_stream {
                Ok(events) => events,
                Err(err) => {
                    let _ = sender.send(line("ERROR", ApiError::from(err).to_status())).await;
                    return;
                }
            };
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut ticker = tokio::time::interval_at(
                tokio::time::Instant::now() + BOOKMARK_INTERVAL,
                BOOKMARK_INTERVAL,
            );
            let mut last = from;
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = sender.closed() => break,
                    _ = ticker.tick(), if bookmarks => {
                        if sender.send(line("BOOKMARK", bookmark(&info, last))).await.is_err() {
                            break;
                        }
                    }
                    next = events.next() => match next {
                        Some(Ok(event)) => {
                            last = event.revision();
                            if let Some((kind, obj)) = classify(&info, &filter, &event) {
                                if sender.send(render(kind, obj)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Some(Err(err)) => {
                            // Too slow or a closed store: the client re-watches from `last`.
                            debug!(error = %err, "watch ended by the store");
                            if matches!(err, crate::server::store::StoreError::Compacted { .. }) {
                                let _ = sender.send(line("ERROR", ApiError::from(err).to_status())).await;
                            }
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        .instrument(span),
    );
    let body =
        Body::from_stream(ReceiverStream::new(receiver).map(Ok::<_, std::convert::Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .map_err(|err| ApiError::internal(format!("building the watch response: {err}")))
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut out = json!({"type": kind, "object": object}).to_string();
    out.push('\n');
    Bytes::from(out)
}

fn bookmark(info: &ResourceInfo, revision: i64) -> Value {
    json!({
        "kind": info.kind,
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
    })
}

fn render_object(info: &ResourceInfo, obj: Value, output: Output) -> Value {
    match output {
        Output::Json => obj,
        Output::Table(include) => table::to_table(
            &info.gvk(),
            std::slice::from_ref(&obj),
            jiff::Timestamp::now(),
            include,
            info.custom.as_ref().map(|c| c.printer_columns.as_slice()),
        ),
        Output::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

/// What one store event means to a client with this filter, if anything.
fn classify(info: &ResourceInfo, filter: &Filter, event: &Event) -> Option<(&'static str, Value)> {
    let old = event
        .prev_kv
        .as_ref()
        .and_then(|kv| objects::decode(info, kv).ok());
    let old_matches = old.as_ref().is_some_and(|o| filter.matches(o));
    match event.kind {
        EventKind::Put => {
            let new = objects::decode(info, &event.kv).ok()?;
            match (old_matches, filter.matches(&new)) {
                (false, true) => Some(("ADDED", new)),
                (true, true) => Some(("MODIFIED", new)),
                // It left the client's view: to that client it is gone.
                (true, false) => Some(("DELETED", new)),
                (false, false) => None,
            }
        }
        EventKind::Delete => {
            let mut old = old.filter(|_| old_matches)?;
            objects::set_resource_version(&mut old, event.revision());
            Some(("DELETED", old))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::apiserver::request::Query;
    use crate::server::apiserver::resources::Resources;
    use crate::server::store::KeyValue;

    fn kv(labels: Value, revision: i64) -> KeyValue {
        KeyValue {
            key: b"/registry/core/configmaps/default/a".to_vec(),
            value: serde_json::to_vec(
                &json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}}),
            )
            .expect("json"),
            create_revision: 1,
            mod_revision: revision,
            version: 1,
        }
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let resources = Resources::new();
        let info = resources.find("", "v1", "configmaps").expect("configmaps");
        let filter = Filter::from_query(&info, &Query::parse(Some("labelSelector=app%3Dweb")))
            .expect("filter");
        let web = json!({"app": "web"});
        let other = json!({"app": "db"});
        let put = |prev: Option<KeyValue>, now: KeyValue| Event {
            kind: EventKind::Put,
            kv: now,
            prev_kv: prev,
        };
        assert_eq!(
            classify(&info, &filter, &put(None, kv(web.clone(), 2))).map(|e| e.0),
            Some("ADDED")
        );
        assert_eq!(
            classify(
                &info,
                &filter,
                &put(Some(kv(web.clone(), 2)), kv(web.clone(), 3))
            )
            .map(|e| e.0),
            Some("MODIFIED")
        );
        assert_eq!(
            classify(
                &info,
                &filter,
                &put(Some(kv(web.clone(), 3)), kv(other.clone(), 4))
            )
            .map(|e| e.0),
            Some("DELETED")
        );
        assert_eq!(
            classify(
                &info,
                &filter,
                &put(Some(kv(other.clone(), 4)), kv(web.clone(), 5))
            )
            .map(|e| e.0),
            Some("ADDED")
        );
        assert!(classify(
            &info,
            &filter,
            &put(Some(kv(other.clone(), 5)), kv(other.clone(), 6))
        )
        .is_none());
        let delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: b"/registry/core/configmaps/default/a".to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: 9,
                version: 0,
            },
            prev_kv: Some(kv(web, 8)),
        };
        let (kind, obj) = classify(&info, &filter, &delete).expect("deleted");
        assert_eq!(kind, "DELETED");
        assert_eq!(obj["metadata"]["resourceVersion"], "9");
    }
}
