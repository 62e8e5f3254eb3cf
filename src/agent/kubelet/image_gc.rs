//! The kubelet's periodic image garbage collection: every [`PERIOD`] (the kubelet's 5 minutes),
//! when the file system holding the images is fuller than the policy's high threshold, unused
//! images are deleted least recently used first down to the low threshold
//! ([`crate::agent::runtime::image::gc`] plans, [`ImageService::gc_now`] applies).
//!
//! An image is in use while any container the runtime knows — running or exited, until the
//! pod worker removes it — was created from it. This module only decides when to collect and
//! which images are in use; it must not touch containers or the API.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::agent::runtime::container::Runtime;
use crate::agent::runtime::image::digest::Digest;
use crate::agent::runtime::image::gc::GcPolicy;
use crate::agent::runtime::image::ImageService;

/// How often the images are looked at (the kubelet's `ImageGCPeriod`).
pub const PERIOD: Duration = Duration::from_secs(300);

/// Runs image GC every `period` until `shutdown`. The first pass comes one period after start,
/// so images imported at start-up are not judged before any pod could use them.
pub fn spawn(
    images: ImageService,
    runtime: Runtime,
    policy: GcPolicy,
    period: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                if let Err(err) = collect(&images, &runtime, &policy).await {
                    warn!(error = %err, "image garbage collection failed");
                }
            }
        }
        .instrument(info_span!("image_gc")),
    )
}

/// One pass: the images in use, then the GC itself on a blocking thread (it walks the disk).
pub async fn collect(
    images: &ImageService,
    runtime: &Runtime,
    policy: &GcPolicy,
) -> Result<(), String> {
    let containers = runtime.list().await.map_err(|err| err.to_string())?;
    let references: Vec<String> = containers.into_iter().map(|c| c.image).collect();
    let images = images.clone();
    let policy = policy.clone();
    let report = tokio::task::spawn_blocking(move || {
        let in_use = in_use(&images, &references);
        images.gc_now(&policy, &in_use)
    })
    .await
    .map_err(|err| err.to_string())?
    .map_err(|err| err.to_string())?;
    if report.removed.is_empty() {
        debug!(
            bytes_to_free = report.bytes_to_free,
            "image GC: nothing to do"
        );
    } else {
        info!(
            removed = report.removed.len(),
            bytes_freed = report.bytes_freed,
            bytes_to_free = report.bytes_to_free,
            "image GC removed unused images"
        );
    }
    Ok(())
}

/// The IDs of the images the given container image references resolve to. A reference that
/// no longer resolves (the image was removed by hand) protects nothing.
pub fn in_use(images: &ImageService, references: &[String]) -> HashSet<Digest> {
    references
        .iter()
        .filter_map(|reference| match images.find(reference) {
            Ok(found) => found.map(|image| image.id),
            Err(err) => {
                debug!(%reference, error = %err, "image of a container not found");
                None
            }
        })
        .collect()
}
