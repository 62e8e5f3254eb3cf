//! Leader election through a coordination.k8s.io Lease, as client-go's leaderelection does it,
//! so that several servers sharing one external etcd run exactly one active scheduler and one
//! active controller manager.
//!
//! Owns the Lease named after the component in `kube-system`; it only ever talks to the API.
//!
//! # Guarantees
//! - The work runs only while this process holds the Lease; it is cancelled when renewing fails
//!   for longer than the renew deadline, before another candidate can take the Lease over
//!   (renew deadline < lease duration).
//!
//! # Caveats
//! - Lease times come from the candidates' clocks, as in Kubernetes: badly skewed clocks
//!   between servers shorten or lengthen take-over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Timings of an election (client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Campaigns for the Lease `kube-system/<name>` as `identity` until `shutdown`; whenever it is
/// won, runs `work` with a token that is cancelled when leadership is lost or on shutdown. The
/// Lease is released on a clean shutdown so that another server takes over at once.
pub async fn run<F, Fut>(
    client: kube::Client,
    name: &str,
    identity: &str,
    timings: Timings,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let span = info_span!("leader_election", lease = name, identity);
    async move {
        loop {
            // Campaign until this candidate holds the Lease.
            loop {
                match try_acquire_or_renew(&leases, name, identity, timings).await {
                    Ok(true) => break,
                    Ok(false) => debug!("the lease is held by another candidate"),
                    Err(err) => warn!(error = %err, "acquiring the lease failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(timings.retry_period) => {}
                }
            }
            info!("became the leader");
            let leading = shutdown.child_token();
            let task = tokio::spawn(work(leading.clone()));
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(timings.retry_period) => {}
                }
                match try_acquire_or_renew(&leases, name, identity, timings).await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => {
                        warn!("the lease was taken by another candidate");
                        break;
                    }
                    Err(err) => {
                        warn!(error = %err, "renewing the lease failed");
                        if last_renewal.elapsed() > timings.renew_deadline {
                            break;
                        }
                    }
                }
            }
            leading.cancel();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                warn!("the leader's work did not stop in time");
            }
            if shutdown.is_cancelled() {
                release(&leases, name, identity).await;
                info!("released the lease");
                return;
            }
            info!("lost leadership; campaigning again");
        }
    }
    .instrument(span)
    .await
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// One round of client-go's tryAcquireOrRenew: true when this candidate holds the Lease after it.
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    timings: Timings,
) -> Result<bool, kube::Error> {
    let duration_seconds = timings.lease_duration.as_secs() as i32;
    let existing = leases.get_opt(name).await?;
    let Some(mut lease) = existing else {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": duration_seconds,
                "leaseTransitions": 0,
            }
        }))
        .map_err(kube::Error::SerdeError)?;
        let mut lease = lease;
        if let Some(spec) = lease.spec.as_mut() {
            spec.acquire_time = Some(now());
            spec.renew_time = Some(now());
        }
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => {
            let expires = renewed
                .0
                .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
                .unwrap_or(renewed.0);
            expires < jiff::Timestamp::now()
        }
        _ => true,
    };
    if !holder.is_empty() && holder != identity && !expired {
        return Ok(false);
    }
    if holder != identity {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(now());
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now());
    // The resourceVersion in the object makes this a compare-and-swap.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Gives the Lease up (as client-go's ReleaseOnCancel does).
async fn release(leases: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = leases.get_opt(name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    if let Err(err) = leases.replace(name, &PostParams::default(), &lease).await {
        warn!(error = %err, "releasing the lease failed");
    }
}
