//! The level-triggered driver the loops share: reflector caches fed by watches, and one
//! reconcile of the whole state whenever any of them changes (debounced), on a requeue
//! deadline, or after an error.
//!
//! # Guarantees
//! - The first reconcile runs only after every cache has finished its initial list, so a loop
//!   never acts on a half-filled cache (which could delete what it merely has not seen yet).
//! - A reconcile that fails is retried after a backoff; it must be idempotent.
//!
//! # Caveats
//! - Each reconcile looks at the whole cached state: fine for the object counts of small
//!   clusters, proportional to them for large ones.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long changes are gathered before one reconcile handles them all.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The wait after a failed reconcile.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Caches being filled, their change signals and what tells that all are filled.
pub struct Caches {
    triggers: SelectAll<BoxStream<'static, ()>>,
    ready: Vec<BoxFuture<'static, ()>>,
}

impl Default for Caches {
    fn default() -> Caches {
        Caches {
            triggers: SelectAll::new(),
            ready: Vec::new(),
        }
    }
}

impl Caches {
    /// A cache of every object of `api` matching `config`.
    pub fn cache<K>(&mut self, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        let (reader, writer) = reflector::store();
        self.add(reader.clone(), writer, api, config);
        reader
    }

    /// A cache of dynamic objects of one resource.
    pub fn cache_dynamic(
        &mut self,
        api: Api<kube::api::DynamicObject>,
        resource: kube::api::ApiResource,
    ) -> Store<kube::api::DynamicObject> {
        let writer = reflector::store::Writer::new(resource);
        let reader = writer.as_reader();
        self.add(reader.clone(), writer, api, watcher::Config::default());
        reader
    }

    fn add<K>(
        &mut self,
        reader: Store<K>,
        writer: reflector::store::Writer<K>,
        api: Api<K>,
        config: watcher::Config,
    ) where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        let stream = reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .map(|_| ())
            .boxed();
        self.triggers.push(stream);
        self.ready.push(
            async move {
                let _ = reader.wait_until_ready().await;
            }
            .boxed(),
        );
    }

    /// A change signal that is not a cache (e.g. a timer or another loop's channel).
    pub fn trigger(&mut self, stream: BoxStream<'static, ()>) {
        self.triggers.push(stream);
    }
}

/// Runs `reconcile` until `cancel`: once all caches are filled, then after every change, when
/// the requeue it asked for is due (at most `period` later), and after errors.
pub async fn drive<F, Fut, E>(
    mut caches: Caches,
    cancel: CancellationToken,
    period: Duration,
    mut reconcile: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Duration>, E>>,
    E: std::fmt::Display,
{
    let ready = futures::future::join_all(std::mem::take(&mut caches.ready));
    tokio::pin!(ready);
    // Fill the caches first (their streams must be polled for that).
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = &mut ready => break,
            next = caches.triggers.next() => {
                if next.is_none() {
                    return;
                }
            }
        }
    }
    loop {
        let wait = match reconcile().await {
            Ok(requeue) => requeue.map_or(period, |r| r.min(period)),
            Err(err) => {
                warn!(error = %err, "reconcile failed; retrying");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            next = caches.triggers.next() => {
                if next.is_none() {
                    return;
                }
                // Gather the burst this change is part of.
                let gather = tokio::time::sleep(DEBOUNCE);
                tokio::pin!(gather);
                loop {
                    tokio::select! {
                        _ = &mut gather => break,
                        _ = caches.triggers.next() => {}
                    }
                }
            }
        }
    }
}

/// Errors of the loops' reconciles: API errors and objects that cannot be understood.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed; retried.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// An object could not be (de)serialized; retried after the object changes.
    #[error("object: {0}")]
    Json(#[from] serde_json::Error),
}

/// True for a 404 from the API.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// True for a 409 from the API (conflict or already exists).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// Maps a 404 (and, with `conflicts`, a 409) to success: the level is re-read next time.
pub fn tolerate<T>(result: Result<T, kube::Error>, conflicts: bool) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) if conflicts && is_conflict(&err) => Ok(()),
        Err(err) => Err(err),
    }
}
