//! One pod's worker: a state machine that drives the pod toward its spec and reports what it
//! sees. Each sync: (1) a pod being deleted is stopped (SIGTERM, grace period, SIGKILL), its
//! containers and sandbox removed, and the pod deleted for good with grace period 0, as the
//! kubelet does; (2) otherwise the sandbox is made, init containers run one by one to
//! completion, then the containers start, and exited containers are restarted according to
//! restartPolicy with CrashLoopBackOff; (3) the status is written to `pods/status` when it
//! changed.
//!
//! The worker owns its pod's containers (through the runtime) and its sandbox (through
//! [`super::sandbox`]). Cancelling it (agent shutdown) leaves everything running: a new worker
//! adopts the containers it is handed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::Resource as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use super::backoff::Backoff;
use super::hooks;
use super::probes::{self, ProbeEvent, ProbeKind, ProbeReport, ProbeTarget};
use super::sandbox::{self, Sandbox, SandboxContext};
use super::status::{self, ContainerView, PodView};
use super::Kubelet;
use crate::agent::runtime::container::spec::{
    ContainerResources, ContainerSpec, ImageConfig, PodNamespaces, SeccompProfile, SecurityContext,
};
use crate::agent::runtime::container::{ContainerStatus, CreateRequest, PodRef, Rootfs, State};
use crate::agent::runtime::image::PullPolicy;

/// How long a container must run before its restart back-off is forgotten.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(10);
/// How soon to retry after a failure that has no back-off of its own.
const RETRY: Duration = Duration::from_secs(2);
/// The default terminationGracePeriodSeconds.
const DEFAULT_GRACE: i64 = 30;

/// What the pod watcher tells a worker.
#[derive(Debug, Clone)]
pub struct PodUpdate {
    pub pod: Pod,
    /// The pod is gone from the API (deleted with grace 0 by someone, or never seen again).
    pub removed: bool,
}

/// A running worker, as the pod watcher holds it.
#[derive(Debug)]
pub struct WorkerHandle {
    pub updates: watch::Sender<PodUpdate>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a worker for `pod`, adopting `adopted` (its containers found in the runtime).
pub fn spawn(
    kubelet: Kubelet,
    pod: Pod,
    removed: bool,
    adopted: Vec<ContainerStatus>,
    cancel: CancellationToken,
) -> WorkerHandle {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (updates, receiver) = watch::channel(PodUpdate {
        pod: pod.clone(),
        removed,
    });
    let span = tracing::info_span!("pod_worker", pod = %format!("{namespace}/{name}"), uid = %uid);
    let task = tokio::spawn(
        async move {
            let (exit_tx, exit_rx) = mpsc::channel(16);
            let (probe_tx, probe_rx) = mpsc::channel(64);
            let recorder = Recorder::new(
                kubelet.client.clone(),
                Reporter {
                    controller: "kubelet".into(),
                    instance: Some(kubelet.config.node_name.clone()),
                },
            );
            let mut worker = Worker {
                probe_tx,
                recorder,
                kubelet,
                uid,
                pod,
                removed,
                sandbox: None,
                slots: HashMap::new(),
                backoff: Backoff::default(),
                exits: exit_tx,
                start_time: None,
                failed: None,
                last_written: None,
                network_released: false,
                volumes_ready: false,
                volumes_refreshed: Instant::now(),
                cancel: cancel.clone(),
            };
            worker.adopt(adopted);
            worker.run(receiver, exit_rx, probe_rx).await;
        }
        .instrument(span),
    );
    WorkerHandle { updates, task }
}

/// What the worker knows about one container name.
#[derive(Debug, Clone, Default)]
struct Slot {
    current: Option<ContainerStatus>,
    previous: Option<ContainerStatus>,
    waiting: Option<(String, String)>,
    image_ref: Option<String>,
    image_id: Option<String>,
    /// The container id the probe workers run for, and the token that stops them.
    probed_id: Option<String>,
    probes: Option<CancellationToken>,
    /// The readiness probe's result (false until it passed).
    ready: bool,
    /// The startup probe passed (true when there is none).
    started: bool,
}

enum Next {
    /// Sync again at this instant (or earlier when something happens).
    At(Instant),
    /// The pod is gone; the worker ends.
    Done,
}

struct Worker {
    kubelet: Kubelet,
    uid: String,
    pod: Pod,
    removed: bool,
    sandbox: Option<Sandbox>,
    slots: HashMap<String, Slot>,
    backoff: Backoff,
    exits: mpsc::Sender<String>,
    probe_tx: mpsc::Sender<ProbeReport>,
    recorder: Recorder,
    start_time: Option<Time>,
    failed: Option<(String, String)>,
    last_written: Option<PodStatus>,
    network_released: bool,
    /// The pod's volumes are set up (once), and when they were last refreshed.
    volumes_ready: bool,
    volumes_refreshed: Instant,
    cancel: CancellationToken,
}

fn pod_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_finished(status: &ContainerStatus) -> bool {
    matches!(status.state, State::Exited | State::Unknown)
}

impl Worker {
    /// Takes over containers an earlier kubelet started: per name the newest is current, the
    /// one before it previous; older ones are removed.
    fn adopt(&mut self, mut adopted: Vec<ContainerStatus>) {
        adopted.sort_by_key(|c| std::cmp::Reverse(c.attempt));
        let mut stale = Vec::new();
        let mut running = Vec::new();
        for container in adopted {
            let slot = self.slots.entry(container.name.clone()).or_default();
            if slot.current.is_none() {
                if matches!(container.state, State::Running | State::Created) {
                    running.push(container.id.clone());
                }
                slot.current = Some(container);
            } else if slot.previous.is_none() {
                slot.previous = Some(container);
            } else {
                stale.push(container.id);
            }
        }
        for id in running {
            self.watch_exit(id);
        }
        if !self.slots.is_empty() {
            info!(containers = self.slots.len(), "adopted running pod");
        }
        let runtime = self.kubelet.runtime.clone();
        tokio::spawn(async move {
            for id in stale {
                let _ = runtime.remove(&id).await;
            }
        });
        self.start_time = self.pod.status.as_ref().and_then(|s| s.start_time.clone());
    }

    /// Notifies the worker when container `id` exits.
    fn watch_exit(&self, id: String) {
        let runtime = self.kubelet.runtime.clone();
        let exits = self.exits.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = runtime.wait(&id) => { let _ = exits.send(id).await; }
            }
        });
    }

    async fn run(
        &mut self,
        mut updates: watch::Receiver<PodUpdate>,
        mut exits: mpsc::Receiver<String>,
        mut probe_reports: mpsc::Receiver<ProbeReport>,
    ) {
        loop {
            let next = self.sync().await;
            let at = match next {
                Next::Done => return,
                Next::At(at) => at,
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let update = updates.borrow_and_update().clone();
                    self.pod = update.pod;
                    self.removed |= update.removed;
                }
                Some(id) = exits.recv() => debug!(container = %id, "container exited"),
                Some(report) = probe_reports.recv() => self.on_probe(report).await,
                _ = tokio::time::sleep_until(at.into()) => {}
            }
        }
    }

    fn grace_period(&self) -> i64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE)
            .max(0)
    }

    async fn sync(&mut self) -> Next {
        if self.removed || self.pod.metadata.deletion_timestamp.is_some() {
            return self.terminate().await;
        }
        self.refresh().await;
        let phase_before = self
            .last_written
            .as_ref()
            .and_then(|s| s.phase.clone())
            .or_else(|| self.pod.status.as_ref().and_then(|s| s.phase.clone()));
        if matches!(phase_before.as_deref(), Some("Succeeded" | "Failed")) {
            // A finished pod stays finished: nothing is restarted.
            self.release_network().await;
            self.write_status().await;
            return Next::At(Instant::now() + RESYNC * 6);
        }
        if self.start_time.is_none() {
            self.start_time = Some(status::now());
        }
        let mut next = Instant::now() + RESYNC;
        if self.sandbox.is_none() {
            match self.ensure_sandbox().await {
                Ok(sandbox) => self.sandbox = Some(sandbox),
                Err(message) => {
                    debug!(%message, "sandbox not ready");
                    self.write_status().await;
                    return Next::At(Instant::now() + RETRY);
                }
            }
        }
        if !self.volumes_ready {
            match self.kubelet.volumes.setup(&self.pod).await {
                Ok(()) => {
                    self.volumes_ready = true;
                    self.volumes_refreshed = Instant::now();
                }
                Err(err) => {
                    warn!(error = %err, "setting up the pod's volumes");
                    self.write_status().await;
                    return Next::At(Instant::now() + RETRY);
                }
            }
        } else if self.volumes_refreshed.elapsed() >= RESYNC {
            // configMap and secret contents follow updates while the pod runs.
            if let Err(err) = self.kubelet.volumes.refresh(&self.pod).await {
                debug!(error = %err, "refreshing the pod's volumes");
            }
            self.volumes_refreshed = Instant::now();
        }
        if let Some(at) = self.run_containers().await {
            next = next.min(at);
        }
        self.ensure_probes();
        self.write_status().await;
        if self.failed.is_some() {
            self.release_network().await;
        }
        Next::At(next)
    }

    /// Asks the runtime again about containers that were running.
    async fn refresh(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(current) = slot.current.as_mut().filter(|c| !is_finished(c)) {
                match self.kubelet.runtime.status(&current.id).await {
                    Ok(status) => *current = status,
                    Err(err) => warn!(container = %current.id, error = %err, "container status"),
                }
            }
        }
    }

    async fn ensure_sandbox(&mut self) -> Result<Sandbox, String> {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if !host_network
            && !self
                .kubelet
                .network_ready
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err("network is not ready".into());
        }
        let config = &self.kubelet.config;
        let context = SandboxContext {
            pods_root: &config.pods_root,
            node_name: &config.node_name,
            host_ip: self.kubelet.host_ip(),
            cluster_dns: config.cluster_dns,
            cluster_domain: &config.cluster_domain,
        };
        sandbox::ensure(&self.pod, &context, self.kubelet.network.as_deref())
            .await
            .map_err(|err| {
                warn!(error = %err, "creating the pod sandbox");
                err.to_string()
            })
    }

    /// Runs init containers in order, then the containers; returns when to look again.
    async fn run_containers(&mut self) -> Option<Instant> {
        let spec = self.pod.spec.clone()?;
        let policy = status::restart_policy(&self.pod).to_string();
        let mut wake: Option<Instant> = None;
        let mut earliest = |at: Instant| {
            wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        };
        for container in spec.init_containers.iter().flatten() {
            let slot = self.slots.get(&container.name).cloned().unwrap_or_default();
            match &slot.current {
                Some(current) if is_finished(current) && current.exit_code == Some(0) => continue,
                Some(current) if is_finished(current) => {
                    if policy == "Never" {
                        self.failed = Some((
                            "Failed".into(),
                            format!("init container {} failed", container.name),
                        ));
                        return wake;
                    }
                    if let Some(at) = self.restart(container, current.clone()).await {
                        earliest(at);
                    }
                    return wake;
                }
                Some(_) => return wake,
                None => {
                    if let Some(at) = self.start(container, 0).await {
                        earliest(at);
                    }
                    return wake;
                }
            }
        }
        for container in &spec.containers {
            let slot = self.slots.get(&container.name).cloned().unwrap_or_default();
            match &slot.current {
                None => {
                    if let Some(at) = self.start(container, 0).await {
                        earliest(at);
                    }
                }
                Some(current) if is_finished(current) => {
                    let failed = current.state == State::Unknown || current.exit_code != Some(0);
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => failed,
                        _ => true,
                    };
                    if restart {
                        if let Some(at) = self.restart(container, current.clone()).await {
                            earliest(at);
                        }
                    } else if let Some(slot) = self.slots.get_mut(&container.name) {
                        slot.waiting = None;
                    }
                }
                Some(_) => {}
            }
        }
        wake
    }

    /// Restarts an exited container unless it is in back-off (CrashLoopBackOff).
    async fn restart(&mut self, container: &Container, last: ContainerStatus) -> Option<Instant> {
        let now = Instant::now();
        let ran = match (
            status::time(last.started_at.as_deref()),
            status::time(last.finished_at.as_deref()),
        ) {
            (Some(start), Some(end)) => end.0.duration_since(start.0).unsigned_abs(),
            _ => Duration::ZERO,
        };
        if ran >= BACKOFF_RESET {
            self.backoff.reset(&container.name);
        }
        if let Some(delay) = self.backoff.in_backoff(&container.name, now) {
            let (namespace, name) = pod_name(&self.pod);
            let message = format!(
                "back-off {} restarting failed container={} pod={name}_{namespace}({})",
                format_delay(delay),
                container.name,
                self.uid
            );
            let fresh = self.slots.get(&container.name).is_none_or(|slot| {
                slot.waiting.as_ref().map(|w| w.0.as_str()) != Some("CrashLoopBackOff")
            });
            if fresh {
                self.event(
                    &container.name,
                    EventType::Warning,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {name}_{namespace}({})",
                        container.name, self.uid
                    ),
                );
            }
            if let Some(slot) = self.slots.get_mut(&container.name) {
                slot.waiting = Some(("CrashLoopBackOff".into(), message));
            }
            return self.backoff.ready_at(&container.name);
        }
        self.backoff.next(&container.name, now);
        self.start(container, last.attempt + 1).await
    }

    /// Pulls the image and creates and starts one container; failures are recorded in the
    /// slot's waiting reason. Returns when to retry, if it failed.
    async fn start(&mut self, container: &Container, attempt: u32) -> Option<Instant> {
        let now = Instant::now();
        let image_ref = container.image.clone().unwrap_or_default();
        let image_key = format!("image:{}", container.name);
        if self.backoff.in_backoff(&image_key, now).is_some() {
            let slot = self.slots.entry(container.name.clone()).or_default();
            slot.waiting = Some((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image_ref}\""),
            ));
            return self.backoff.ready_at(&image_key);
        }
        let policy = pull_policy(container);
        let present = matches!(self.kubelet.images.find(&image_ref), Ok(Some(_)));
        let will_pull =
            policy == PullPolicy::Always || (policy == PullPolicy::IfNotPresent && !present);
        if will_pull {
            self.event(
                &container.name,
                EventType::Normal,
                "Pulling",
                format!("Pulling image \"{image_ref}\""),
            );
        }
        let pull_started = Instant::now();
        let image = match self.kubelet.images.ensure(&image_ref, policy).await {
            Ok(image) => {
                self.backoff.reset(&image_key);
                let message = if !will_pull {
                    format!("Container image \"{image_ref}\" already present on machine")
                } else {
                    format!(
                        "Successfully pulled image \"{image_ref}\" in {:?}",
                        pull_started.elapsed()
                    )
                };
                self.event(&container.name, EventType::Normal, "Pulled", message);
                image
            }
            Err(err) => {
                warn!(image = %image_ref, error = %err, "pulling image");
                self.event(
                    &container.name,
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image \"{image_ref}\": {err}"),
                );
                self.backoff.next(&image_key, now);
                let reason = if policy == PullPolicy::Never {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                let slot = self.slots.entry(container.name.clone()).or_default();
                slot.waiting = Some((reason.into(), err.to_string()));
                return self.backoff.ready_at(&image_key);
            }
        };
        let slot = self.slots.entry(container.name.clone()).or_default();
        slot.image_ref = image.names.first().cloned();
        slot.image_id = Some(
            image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
        );
        let Some(sandbox) = self.sandbox.clone() else {
            return Some(now + RETRY);
        };
        let pod_ip = sandbox.ip.to_string();
        let host_ip = self.kubelet.host_ip().to_string();
        let env = match super::env::container_env(
            &self.kubelet.client,
            &self.pod,
            container,
            Some(&pod_ip),
            &host_ip,
        )
        .await
        {
            Ok(env) => env,
            Err(err) => {
                if let Some(slot) = self.slots.get_mut(&container.name) {
                    slot.waiting = Some(("CreateContainerConfigError".into(), err.to_string()));
                }
                return Some(now + RETRY);
            }
        };
        let volume_mounts = match self.kubelet.volumes.mounts(&self.pod, container) {
            Ok(mounts) => mounts,
            Err(err) => {
                if let Some(slot) = self.slots.get_mut(&container.name) {
                    slot.waiting = Some(("CreateContainerConfigError".into(), err.to_string()));
                }
                return Some(now + RETRY);
            }
        };
        let (command, args) = super::env::expand_command(container, &env);
        let inputs = Inputs {
            env,
            command,
            args,
            volume_mounts,
        };
        let slot = self.slots.entry(container.name.clone()).or_default();
        let request = create_request(&self.pod, container, attempt, &image, &sandbox, inputs);
        let runtime = self.kubelet.runtime.clone();
        let id = match runtime.create(&request).await {
            Ok(id) => id,
            Err(err) => {
                warn!(container = %container.name, error = %err, "creating container");
                slot.waiting = Some(("CreateContainerError".into(), err.to_string()));
                self.event(
                    &container.name,
                    EventType::Warning,
                    "Failed",
                    format!("Error: {err}"),
                );
                return Some(now + RETRY);
            }
        };
        self.event(
            &container.name,
            EventType::Normal,
            "Created",
            format!("Created container: {}", container.name),
        );
        if let Err(err) = runtime.start(&id).await {
            warn!(container = %container.name, error = %err, "starting container");
            if let Some(slot) = self.slots.get_mut(&container.name) {
                slot.waiting = Some(("RunContainerError".into(), err.to_string()));
            }
            self.event(
                &container.name,
                EventType::Warning,
                "Failed",
                format!("Error: {err}"),
            );
            let _ = runtime.remove(&id).await;
            return Some(now + RETRY);
        }
        info!(container = %container.name, id = %id, attempt, "container started");
        self.event(
            &container.name,
            EventType::Normal,
            "Started",
            format!("Started container {}", container.name),
        );
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let target = self.probe_target(&id);
            // kubelet gives postStart no deadline of its own; the grace period bounds ours.
            let timeout = Duration::from_secs(u64::try_from(self.grace_period()).unwrap_or(0))
                .max(Duration::from_secs(DEFAULT_GRACE as u64));
            if let Err(message) = hooks::run(&runtime, container, hook, &target, timeout).await {
                warn!(container = %container.name, %message, "postStart hook failed");
                self.event(
                    &container.name,
                    EventType::Warning,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {message}"),
                );
                self.kill_container(container, &id, "FailedPostStartHook".into(), None)
                    .await;
            }
        }
        let status = match runtime.status(&id).await {
            Ok(status) => status,
            Err(err) => {
                warn!(container = %id, error = %err, "container status");
                return Some(now + RETRY);
            }
        };
        let slot = self.slots.entry(container.name.clone()).or_default();
        slot.waiting = None;
        // The kubelet keeps one dead container per name (for `logs --previous`).
        if let Some(older) = slot.previous.take() {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                if let Err(err) = runtime.remove(&older.id).await {
                    debug!(container = %older.id, error = %err, "removing an old container");
                }
            });
        }
        slot.previous = slot.current.take();
        slot.current = Some(status);
        self.watch_exit(id);
        None
    }

    /// Records a kubelet event on the pod, naming the container in the field path.
    fn event(&self, container: &str, type_: EventType, reason: &str, note: String) {
        let mut reference = self.pod.object_ref(&());
        let init = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|list| list.iter().any(|c| c.name == container));
        let field = if init { "initContainers" } else { "containers" };
        reference.field_path = Some(format!("spec.{field}{{{container}}}"));
        let event = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(err) = recorder.publish(&event, &reference).await {
                debug!(error = %err, "recording an event");
            }
        });
    }

    /// Where probes and hooks of container `id` go: the pod IP (the node's for hostNetwork).
    fn probe_target(&self, id: &str) -> ProbeTarget {
        ProbeTarget {
            pod_ip: self.sandbox.as_ref().map(|s| s.ip),
            host_ip: self.kubelet.host_ip(),
            container_id: id.to_string(),
        }
    }

    /// Starts probe workers for containers that started running and stops those of
    /// containers that are gone, as kubelet's probe manager does on each pod sync.
    fn ensure_probes(&mut self) {
        let Some(spec) = self.pod.spec.clone() else {
            return;
        };
        for container in &spec.containers {
            let Some(slot) = self.slots.get_mut(&container.name) else {
                continue;
            };
            let running = slot
                .current
                .as_ref()
                .filter(|c| c.state == State::Running)
                .map(|c| c.id.clone());
            if slot.probed_id == running {
                continue;
            }
            if let Some(token) = slot.probes.take() {
                token.cancel();
            }
            slot.probed_id = running.clone();
            slot.ready = false;
            slot.started = container.startup_probe.is_none();
            let Some(id) = running else {
                continue;
            };
            let token = self.cancel.child_token();
            slot.probes = Some(token.clone());
            if let Some(probe) = &container.startup_probe {
                self.spawn_probe(container, ProbeKind::Startup, probe, &id, &token);
            } else {
                self.spawn_after_startup(container, &id, &token);
            }
        }
    }

    /// Liveness and readiness run once the container has started.
    fn spawn_after_startup(&self, container: &Container, id: &str, token: &CancellationToken) {
        if let Some(probe) = &container.liveness_probe {
            self.spawn_probe(container, ProbeKind::Liveness, probe, id, token);
        }
        if let Some(probe) = &container.readiness_probe {
            self.spawn_probe(container, ProbeKind::Readiness, probe, id, token);
        }
    }

    fn spawn_probe(
        &self,
        container: &Container,
        kind: ProbeKind,
        probe: &k8s_openapi::api::core::v1::Probe,
        id: &str,
        token: &CancellationToken,
    ) {
        let probe = match probes::resolve_named_ports(probe, container) {
            Ok(probe) => probe,
            Err(err) => {
                warn!(container = %container.name, %kind, error = %err, "probe not started");
                self.event(
                    &container.name,
                    EventType::Warning,
                    "Unhealthy",
                    format!("{kind} probe errored: {err}"),
                );
                return;
            }
        };
        probes::spawn_worker(
            self.kubelet.runtime.clone(),
            kind,
            probe,
            self.probe_target(id),
            self.probe_tx.clone(),
            container.name.clone(),
            token.clone(),
        );
    }

    /// Acts on a probe worker's report for the container that is current.
    async fn on_probe(&mut self, report: ProbeReport) {
        let Some(container) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == report.container))
            .cloned()
        else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&report.container) else {
            return;
        };
        if slot.probed_id.as_deref() != Some(report.container_id.as_str()) {
            return;
        }
        match (report.kind, report.event) {
            (kind, ProbeEvent::AttemptFailed(message)) => self.event(
                &container.name,
                EventType::Warning,
                "Unhealthy",
                format!("{kind} probe failed: {message}"),
            ),
            (ProbeKind::Readiness, ProbeEvent::Changed(ready)) => slot.ready = ready,
            (ProbeKind::Startup, ProbeEvent::Changed(true)) => {
                slot.started = true;
                if let Some(token) = slot.probes.clone() {
                    self.spawn_after_startup(&container, &report.container_id, &token);
                }
            }
            (ProbeKind::Liveness, ProbeEvent::Changed(true)) => {}
            (kind, ProbeEvent::Changed(false)) => {
                let lower = kind.to_string().to_lowercase();
                info!(container = %container.name, %kind, "probe failed, restarting the container");
                let message = format!(
                    "Container {} failed {lower} probe, will be restarted",
                    container.name
                );
                let probe = match kind {
                    ProbeKind::Startup => container.startup_probe.as_ref(),
                    _ => container.liveness_probe.as_ref(),
                };
                let grace = probe.and_then(|p| p.termination_grace_period_seconds);
                self.kill_container(&container, &report.container_id, message, grace)
                    .await;
            }
        }
    }

    /// Stops one container as kubelet's killContainer does: `Killing` event, preStop hook,
    /// SIGTERM, the grace period, SIGKILL. The pod worker restarts it per restartPolicy.
    async fn kill_container(
        &mut self,
        container: &Container,
        id: &str,
        message: String,
        grace_override: Option<i64>,
    ) {
        if let Some(slot) = self.slots.get_mut(&container.name) {
            if let Some(token) = slot.probes.take() {
                token.cancel();
            }
        }
        self.event(&container.name, EventType::Normal, "Killing", message);
        let grace_seconds = grace_override
            .filter(|g| *g > 0)
            .unwrap_or_else(|| self.grace_period());
        let grace = Duration::from_secs(u64::try_from(grace_seconds).unwrap_or(0));
        let remaining = self.pre_stop(container, id, grace).await;
        match self.kubelet.runtime.stop(id, remaining).await {
            Ok(status) => {
                if let Some(slot) = self.slots.get_mut(&container.name) {
                    if slot.current.as_ref().is_some_and(|c| c.id == id) {
                        slot.current = Some(status);
                    }
                }
            }
            Err(err) => warn!(container = %id, error = %err, "stopping container"),
        }
    }

    /// Runs the container's preStop hook (if any) within `grace`; returns what is left of it.
    async fn pre_stop(&self, container: &Container, id: &str, grace: Duration) -> Duration {
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        else {
            return grace;
        };
        let started = Instant::now();
        let target = self.probe_target(id);
        let run = hooks::run(&self.kubelet.runtime, container, hook, &target, grace);
        match tokio::time::timeout(grace, run).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                warn!(container = %container.name, %message, "preStop hook failed");
                self.event(
                    &container.name,
                    EventType::Warning,
                    "FailedPreStopHook",
                    format!("PreStopHook failed: {message}"),
                );
            }
            Err(_) => {
                warn!(container = %container.name, "preStop hook ran out of the grace period")
            }
        }
        grace.saturating_sub(started.elapsed())
    }

    fn view(&self) -> PodView<'_> {
        let spec = self.pod.spec.as_ref();
        let to_view = |c: &Container| {
            let slot = self.slots.get(&c.name).cloned().unwrap_or_default();
            ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_ref: slot.image_ref,
                image_id: slot.image_id,
                current: slot.current,
                previous: slot.previous,
                waiting: slot.waiting,
                ready: c.readiness_probe.is_none() || slot.ready,
                started: c.startup_probe.is_none() || slot.started,
            }
        };
        PodView {
            pod: &self.pod,
            sandbox_ready: self.sandbox.is_some(),
            pod_ip: self.sandbox.as_ref().map(|s| s.ip),
            host_ip: self.kubelet.host_ip(),
            start_time: self.start_time.clone(),
            qos_class: sandbox::qos_name(sandbox::qos_class(&self.pod)),
            init_containers: spec
                .and_then(|s| s.init_containers.as_ref())
                .map(|list| list.iter().map(to_view).collect())
                .unwrap_or_default(),
            containers: spec
                .map(|s| s.containers.iter().map(to_view).collect())
                .unwrap_or_default(),
            failed: self.failed.clone(),
        }
    }

    /// Writes `pods/status` when it differs from what was written last.
    async fn write_status(&mut self) {
        let previous = self.last_written.as_ref().or(self.pod.status.as_ref());
        let mut new = status::build(&self.view(), previous);
        if let Some(previous) = previous {
            // Keep what this kubelet cannot know again (e.g. after a restart).
            if new.pod_ip.is_none() {
                new.pod_ip = previous.pod_ip.clone();
                new.pod_ips = previous.pod_ips.clone();
            }
        }
        // Unchanged, and the API still shows it (nobody else overwrote it): nothing to write.
        if self.last_written.as_ref() == Some(&new)
            && self.pod.status.as_ref().map(summary) == Some(summary(&new))
        {
            return;
        }
        let (namespace, name) = pod_name(&self.pod);
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), &namespace);
        let patch = serde_json::json!({"status": new});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                debug!(phase = ?new.phase, "pod status written");
                self.last_written = Some(new);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => warn!(error = %err, "writing pod status"),
        }
    }

    /// A finished pod gives its address back (the kubelet kills the sandbox of terminal pods).
    async fn release_network(&mut self) {
        if self.network_released {
            return;
        }
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if let (false, Some(network)) = (host_network, self.kubelet.network.as_ref()) {
            if let Err(err) = network.teardown(&self.uid).await {
                warn!(error = %err, "releasing the pod network");
                return;
            }
        }
        self.network_released = true;
    }

    /// Stops and removes everything of the pod, then deletes it from the API.
    async fn terminate(&mut self) -> Next {
        let grace = Duration::from_secs(u64::try_from(self.grace_period()).unwrap_or(0));
        info!(?grace, "stopping pod");
        let runtime = self.kubelet.runtime.clone();
        for slot in self.slots.values_mut() {
            if let Some(token) = slot.probes.take() {
                token.cancel();
            }
        }
        let ids: Vec<String> = self
            .slots
            .values()
            .flat_map(|s| s.current.iter().chain(s.previous.iter()))
            .map(|c| c.id.clone())
            .collect();
        let containers: Vec<Container> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .cloned()
            .collect();
        let this = &*self;
        let stops = ids.iter().map(|id| {
            let runtime = runtime.clone();
            let spec = this
                .slots
                .values()
                .filter_map(|s| s.current.as_ref())
                .find(|c| &c.id == id && c.state == State::Running)
                .and_then(|c| containers.iter().find(|spec| spec.name == c.name));
            async move {
                let mut grace = grace;
                if let Some(container) = spec {
                    this.event(
                        &container.name,
                        EventType::Normal,
                        "Killing",
                        format!("Stopping container {}", container.name),
                    );
                    grace = this.pre_stop(container, id, grace).await;
                }
                if let Err(err) = runtime.stop(id, grace).await {
                    warn!(container = %id, error = %err, "stopping container");
                }
                if let Err(err) = runtime.remove(id).await {
                    warn!(container = %id, error = %err, "removing container");
                }
            }
        });
        futures::future::join_all(stops).await;
        self.slots.clear();
        if let Err(err) = self.kubelet.volumes.teardown(&self.uid).await {
            warn!(error = %err, "removing the pod's volumes; retrying");
            return Next::At(Instant::now() + RETRY);
        }
        if let Err(err) = sandbox::remove(
            &self.uid,
            &self.kubelet.config.pods_root,
            self.kubelet.network.as_deref(),
        )
        .await
        {
            warn!(error = %err, "removing the pod sandbox; retrying");
            return Next::At(Instant::now() + RETRY);
        }
        let (namespace, name) = pod_name(&self.pod);
        let logs = self
            .kubelet
            .config
            .pod_logs_dir
            .join(format!("{namespace}_{name}_{}", self.uid));
        let _ = tokio::fs::remove_dir_all(&logs).await;
        if self.removed {
            return Next::Done;
        }
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                info!("pod deleted");
                Next::Done
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Next::Done,
            Err(err) => {
                warn!(error = %err, "deleting the pod; retrying");
                Next::At(Instant::now() + RETRY)
            }
        }
    }
}

/// What of a status must match the API's copy: phase, IP, condition states and container
/// states (times and messages may be normalised by the server).
fn summary(status: &PodStatus) -> serde_json::Value {
    let conditions: Vec<(String, String)> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    let containers: Vec<serde_json::Value> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.as_ref();
            serde_json::json!({
                "name": c.name,
                "ready": c.ready,
                "restartCount": c.restart_count,
                "containerID": c.container_id,
                "running": state.is_some_and(|s| s.running.is_some()),
                "waiting": state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()),
                "terminated": state.and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code),
            })
        })
        .collect();
    serde_json::json!({
        "phase": status.phase,
        "podIP": status.pod_ip,
        "conditions": conditions,
        "containers": containers,
    })
}

/// `10s`, `1m20s`, `5m0s`, as Go prints durations in the kubelet's message.
fn format_delay(delay: Duration) -> String {
    let seconds = delay.as_secs();
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{}s", seconds / 60, seconds % 60)
    }
}

/// The container's imagePullPolicy, defaulted as the API server does.
fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let last = image.rsplit('/').next().unwrap_or_default();
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else if !last.contains(':') || last.ends_with(":latest") {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// What the inputs module resolved for one container.
struct Inputs {
    env: Vec<(String, String)>,
    command: Vec<String>,
    args: Vec<String>,
    volume_mounts: Vec<crate::agent::runtime::container::spec::Mount>,
}

/// The runtime's request for one container of the pod.
fn create_request(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    image: &crate::agent::runtime::image::Image,
    sandbox: &Sandbox,
    inputs: Inputs,
) -> CreateRequest {
    let (namespace, name) = pod_name(pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    // The generated /etc files, unless a volume is mounted there.
    let mut mounts: Vec<crate::agent::runtime::container::spec::Mount> = sandbox
        .mounts
        .iter()
        .filter(|m| {
            !inputs
                .volume_mounts
                .iter()
                .any(|v| v.container_path == m.container_path)
        })
        .cloned()
        .collect();
    mounts.extend(inputs.volume_mounts);
    let pod_security = spec.and_then(|s| s.security_context.as_ref());
    let security = container.security_context.as_ref();
    let capabilities = security.and_then(|s| s.capabilities.as_ref());
    let seccomp = security
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod_security.and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    let security = SecurityContext {
        run_as_user: security
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_security.and_then(|s| s.run_as_user)),
        run_as_group: security
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_security.and_then(|s| s.run_as_group)),
        supplemental_groups: pod_security
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        privileged: security.and_then(|s| s.privileged).unwrap_or(false),
        read_only_root_filesystem: security
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        allow_privilege_escalation: security.and_then(|s| s.allow_privilege_escalation),
        capabilities_add: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: capabilities
            .and_then(|c| c.drop.clone())
            .unwrap_or_default(),
        seccomp: if seccomp == Some("RuntimeDefault") {
            SeccompProfile::RuntimeDefault
        } else {
            SeccompProfile::Unconfined
        },
    };
    let resources = container.resources.as_ref();
    let cpu_request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"))
        .and_then(|q| sandbox::parse_cpu_milli(&q.0));
    let cpu_limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|r| r.get("cpu"))
        .and_then(|q| sandbox::parse_cpu_milli(&q.0));
    let memory_limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(|q| sandbox::parse_bytes(&q.0));
    let shares = cpu_request
        .or(cpu_limit)
        .map(|m| u64::try_from(m * 1024 / 1000).unwrap_or(2).max(2))
        .unwrap_or(2);
    let network = match &sandbox.netns {
        Some(path) => path.clone(),
        // hostNetwork: the agent's own network namespace.
        None => format!("/proc/{}/ns/net", std::process::id()).into(),
    };
    let config = &image.config;
    CreateRequest {
        name: container.name.clone(),
        pod: PodRef {
            namespace,
            name,
            uid,
        },
        attempt,
        image: image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| container.image.clone().unwrap_or_default()),
        image_config: ImageConfig {
            entrypoint: config.entrypoint.clone(),
            cmd: config.cmd.clone(),
            env: config.env.clone(),
            working_dir: Some(config.working_dir.clone()).filter(|w| !w.is_empty()),
            user: Some(config.user.clone()).filter(|u| !u.is_empty()),
        },
        rootfs: Rootfs::Overlay {
            lower: image.rootfs.iter().rev().cloned().collect(),
        },
        spec: ContainerSpec {
            command: inputs.command,
            args: inputs.args,
            env: inputs.env,
            working_dir: container.working_dir.clone().filter(|w| !w.is_empty()),
            tty: container.tty.unwrap_or(false),
            stdin: container.stdin.unwrap_or(false),
            stdin_once: container.stdin_once.unwrap_or(false),
            security,
            mounts,
            shm: None,
            namespaces: PodNamespaces {
                network: Some(network),
                ..PodNamespaces::default()
            },
            hostname: Some(sandbox.hostname.clone()),
            resources: ContainerResources {
                cpu_shares: Some(shares),
                cpu_quota: cpu_limit.map(|m| (m * 100).max(1000)),
                cpu_period: cpu_limit.map(|_| 100_000),
                memory_limit,
                pids_limit: None,
            },
        },
        pod_cgroup: sandbox.cgroup.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_as_the_api_server_does() {
        let container = |image: &str| Container {
            name: "c".into(),
            image: Some(image.into()),
            ..Container::default()
        };
        assert_eq!(pull_policy(&container("busybox")), PullPolicy::Always);
        assert_eq!(
            pull_policy(&container("busybox:latest")),
            PullPolicy::Always
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox:1.36")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox")),
            PullPolicy::Always
        );
        assert_eq!(format_delay(Duration::from_secs(40)), "40s");
        assert_eq!(format_delay(Duration::from_secs(300)), "5m0s");
    }
}
