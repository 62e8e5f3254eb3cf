//! One pod's worker: a state machine that drives the pod toward its spec and reports what it
//! sees. Each sync: (1) a pod being deleted is stopped — containers first, then sidecars last
//! to first; preStop, SIGTERM, the grace period, SIGKILL, each signal sent again on the next
//! sync until it got through — its containers and sandbox removed, and the pod deleted for
//! good with grace period 0, as the kubelet does; (2) a pod past its
//! activeDeadlineSeconds, or whose containers completed (restartPolicy Never/OnFailure), is
//! stopped the same way and its terminal phase reported once nothing of it runs; (3) otherwise
//! the sandbox is made, init containers run one by one to completion (a sidecar — restartPolicy
//! Always — only until it has started, and it then runs beside the containers, restarted
//! whenever it exits), then the containers start, and exited containers are restarted
//! according to restartPolicy with CrashLoopBackOff; finished containers get their termination
//! message (the file mounted at terminationMessagePath, or the end of their log); (4) the
//! status is written to `pods/status` when it changed.
//!
//! The worker owns its pod's containers (through the runtime) and its sandbox (through
//! [`super::sandbox`]). Cancelling it (agent shutdown) leaves everything running: a new worker
//! adopts the containers it is handed.

use std::collections::{HashMap, HashSet};
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
use crate::agent::runtime::container::{
    ContainerStatus, CreateRequest, PodRef, Rootfs, Runtime, RuntimeError, State,
};
use crate::agent::runtime::image::PullPolicy;

/// How long a container must run before its restart back-off is forgotten.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(10);
/// How soon to retry after a failure that has no back-off of its own.
const RETRY: Duration = Duration::from_secs(2);
/// The default terminationGracePeriodSeconds.
const DEFAULT_GRACE: i64 = 30;
/// How often a signal that did not get through is sent again while stopping a pod.
const SIGNAL_RETRY: Duration = Duration::from_secs(1);
/// How long after SIGKILL a container may take to die before the worker looks again later.
const KILL_WAIT: Duration = Duration::from_secs(30);
const SIGTERM: i32 = 15;
/// Where the termination message file is mounted unless the container says otherwise.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The kubelet's limits: bytes of a termination message file, lines and bytes of the log
/// used as a fallback.
const MAX_TERMINATION_MESSAGE: u64 = 4096;
const FALLBACK_LOG_LINES: u64 = 80;
const FALLBACK_LOG_BYTES: usize = 2048;
/// The kubelet's reason message for a pod past its activeDeadlineSeconds.
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
const SIGKILL: i32 = 9;

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
                kill_deadline: None,
                signalled: HashSet::new(),
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
    /// When the pod being deleted gets SIGKILL (set at the first termination attempt).
    kill_deadline: Option<Instant>,
    /// Containers that got their preStop hook and SIGTERM while the pod is being deleted.
    signalled: HashSet<String>,
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
        let phase_now = status::phase(&self.view());
        if is_terminal(phase_before.as_deref()) || is_terminal(Some(phase_now)) {
            // A finished pod stays finished: nothing is restarted, nothing of it runs on (its
            // sidecars are stopped once the containers completed). The terminal phase is
            // reported once nothing runs, as the kubelet does.
            if !self.stop_running().await {
                return Next::At(Instant::now() + RETRY);
            }
            self.release_network().await;
            self.write_status().await;
            return Next::At(Instant::now() + RESYNC * 6);
        }
        if self.start_time.is_none() {
            self.start_time = Some(status::now());
        }
        let mut next = Instant::now() + RESYNC;
        if self.failed.is_none() {
            match self.active_deadline_left() {
                Some(left) if left.is_zero() => {
                    info!("activeDeadlineSeconds passed, failing the pod");
                    self.pod_event(EventType::Normal, "DeadlineExceeded", DEADLINE_MESSAGE);
                    self.failed = Some(("DeadlineExceeded".into(), DEADLINE_MESSAGE.into()));
                }
                Some(left) => next = next.min(Instant::now() + left),
                None => {}
            }
        }
        if self.failed.is_some() {
            // Stopped and reported by the next sync, at once.
            return Next::At(Instant::now());
        }
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
        if is_terminal(Some(status::phase(&self.view()))) {
            // Stopped and reported by the next sync, at once.
            return Next::At(Instant::now());
        }
        self.ensure_probes();
        self.write_status().await;
        Next::At(next)
    }

    /// Asks the runtime again about containers that were running; one that has finished gets
    /// its termination message.
    async fn refresh(&mut self) {
        let running: Vec<(String, String)> = self
            .slots
            .iter()
            .filter_map(|(name, slot)| {
                let current = slot.current.as_ref().filter(|c| !is_finished(c))?;
                Some((name.clone(), current.id.clone()))
            })
            .collect();
        for (name, id) in running {
            let status = match self.kubelet.runtime.status(&id).await {
                Ok(status) => self.with_termination_message(status).await,
                Err(err) => {
                    warn!(container = %id, error = %err, "container status");
                    continue;
                }
            };
            if let Some(slot) = self.slots.get_mut(&name) {
                if slot.current.as_ref().is_some_and(|c| c.id == id) {
                    slot.current = Some(status);
                }
            }
        }
    }

    /// The file the kubelet mounts at the container's terminationMessagePath.
    fn termination_log(&self, container: &str, attempt: u32) -> std::path::PathBuf {
        sandbox::pod_dir(&self.kubelet.config.pods_root, &self.uid)
            .join("containers")
            .join(container)
            .join(format!("termination-log-{attempt}"))
    }

    /// Adds the termination message to a finished container's status, as the kubelet reads it:
    /// the last 4096 bytes of the file at terminationMessagePath or, with
    /// FallbackToLogsOnError, when that is empty and the container failed, the last 80 lines
    /// (at most 2048 bytes) of its log.
    async fn with_termination_message(&self, mut status: ContainerStatus) -> ContainerStatus {
        if !is_finished(&status) {
            return status;
        }
        let spec = self.pod.spec.as_ref().and_then(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .find(|c| c.name == status.name)
        });
        let fallback = spec.and_then(|c| c.termination_message_policy.as_deref())
            == Some("FallbackToLogsOnError")
            && status.exit_code != Some(0);
        let file = self.termination_log(&status.name, status.attempt);
        let log = status.log_path.clone();
        let message = tokio::task::spawn_blocking(move || {
            let message = read_tail(&file, MAX_TERMINATION_MESSAGE);
            if message.is_empty() && fallback {
                return last_log_lines(&log);
            }
            message
        })
        .await
        .unwrap_or_default();
        if !message.is_empty() {
            status.message = Some(match status.message.take().filter(|m| !m.is_empty()) {
                Some(runtime_message) => format!("{runtime_message}: {message}"),
                None => message,
            });
        }
        status
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
        // Once a container was created the pod is initialised: sidecars restarting later do
        // not hold anything up.
        let initialized = spec.containers.iter().any(|c| {
            self.slots
                .get(&c.name)
                .is_some_and(|slot| slot.current.is_some())
        });
        for container in spec.init_containers.iter().flatten() {
            let slot = self.slots.get(&container.name).cloned().unwrap_or_default();
            if is_sidecar(container) {
                // A sidecar restarts whenever it exits, whatever the pod's restartPolicy; the
                // next init container waits until it has started.
                let retry = match &slot.current {
                    None => self.start(container, 0).await,
                    Some(current) if is_finished(current) => {
                        self.restart(container, current.clone()).await
                    }
                    Some(_) => None,
                };
                if let Some(at) = retry {
                    earliest(at);
                }
                let slot = self.slots.get(&container.name);
                let running = slot
                    .and_then(|s| s.current.as_ref())
                    .is_some_and(|c| c.state == State::Running);
                let started = container.startup_probe.is_none()
                    || slot.is_some_and(|s| s.started && s.probed_id.is_some());
                if initialized || (running && started) {
                    continue;
                }
                return wake;
            }
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
        let mut volume_mounts = volume_mounts;
        match self.termination_log_mount(container, attempt, &volume_mounts) {
            Ok(Some(mount)) => volume_mounts.push(mount),
            Ok(None) => {}
            Err(err) => {
                if let Some(slot) = self.slots.get_mut(&container.name) {
                    slot.waiting = Some(("CreateContainerConfigError".into(), err));
                }
                return Some(now + RETRY);
            }
        }
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
            // A short-lived container may be done already.
            Ok(status) => self.with_termination_message(status).await,
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

    /// How long the pod may still run under its activeDeadlineSeconds (None: no deadline).
    fn active_deadline_left(&self) -> Option<Duration> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let start = self.start_time.as_ref()?;
        let elapsed = jiff::Timestamp::now().duration_since(start.0);
        let left = jiff::SignedDuration::from_secs(seconds) - elapsed;
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    }

    /// Records a kubelet event on the pod itself.
    fn pod_event(&self, type_: EventType, reason: &str, note: &str) {
        let reference = self.pod.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note.to_string()),
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

    /// Creates the (empty) file for this run's termination message and the mount that puts it
    /// at terminationMessagePath (/dev/termination-log by default), writable by any user as
    /// the kubelet makes it. None when a volume is mounted at that path.
    fn termination_log_mount(
        &self,
        container: &Container,
        attempt: u32,
        volume_mounts: &[crate::agent::runtime::container::spec::Mount],
    ) -> Result<Option<crate::agent::runtime::container::spec::Mount>, String> {
        let target = container
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_string());
        if volume_mounts.iter().any(|m| m.container_path == target) {
            return Ok(None);
        }
        let file = self.termination_log(&container.name, attempt);
        let create = || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&file, b"")?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
        };
        create().map_err(|err| format!("creating {}: {err}", file.display()))?;
        Ok(Some(crate::agent::runtime::container::spec::Mount {
            container_path: target,
            host_path: file,
            read_only: false,
        }))
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
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c));
        for container in sidecars.chain(spec.containers.iter()) {
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
            .and_then(|s| {
                let sidecars = s.init_containers.iter().flatten().filter(|c| is_sidecar(c));
                sidecars
                    .chain(s.containers.iter())
                    .find(|c| c.name == report.container)
            })
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
                let status = self.with_termination_message(status).await;
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

    /// Stops the pod's running containers, main containers first, then sidecars in reverse
    /// order, all within the grace period counted from the first call that found one running.
    /// True when none is left running; otherwise call again later.
    async fn stop_running(&mut self) -> bool {
        let stages = self.termination_stages();
        if stages.iter().all(|stage| stage.is_empty()) {
            return true;
        }
        let now = Instant::now();
        let grace = Duration::from_secs(u64::try_from(self.grace_period()).unwrap_or(0));
        // A shorter grace period given later (a second delete) brings the deadline forward.
        let deadline = self
            .kill_deadline
            .map_or(now + grace, |at| at.min(now + grace));
        if self.kill_deadline.is_none() {
            info!(?grace, "stopping the pod's containers");
        }
        self.kill_deadline = Some(deadline);
        for slot in self.slots.values_mut() {
            if let Some(token) = slot.probes.take() {
                token.cancel();
            }
            slot.probed_id = None;
        }
        for stage in stages {
            let stops = stage
                .iter()
                .map(|(id, container)| self.stop_container(id, container.as_ref(), deadline));
            let results = futures::future::join_all(stops).await;
            let mut all_stopped = true;
            for ((id, _), (signalled, stopped)) in stage.iter().zip(results) {
                if signalled {
                    self.signalled.insert(id.clone());
                }
                all_stopped &= stopped;
            }
            if !all_stopped {
                // Later stages (sidecars) wait for this one.
                return false;
            }
        }
        // What the runtime says now (exit codes, finish times) for the status.
        self.refresh().await;
        true
    }

    /// The pod's unfinished containers in the order they are stopped: the containers (and a
    /// running ordinary init container) together first, then the sidecars (restartable init
    /// containers), last started first stopped, one at a time.
    fn termination_stages(&self) -> Vec<Vec<(String, Option<Container>)>> {
        let spec = self.pod.spec.as_ref();
        let sidecars: Vec<&Container> = spec
            .and_then(|s| s.init_containers.as_ref())
            .map(|list| list.iter().filter(|c| is_sidecar(c)).collect())
            .unwrap_or_default();
        let find = |name: &str| {
            spec.and_then(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
                    .find(|c| c.name == name)
                    .cloned()
            })
        };
        let mut first = Vec::new();
        let mut by_sidecar: HashMap<String, Vec<(String, Option<Container>)>> = HashMap::new();
        for (name, slot) in &self.slots {
            // Unknown may only mean the shim did not answer in time: asked again when stopping.
            let running = slot.current.iter().chain(slot.previous.iter());
            for container in running.filter(|c| !is_finished(c) || c.state == State::Unknown) {
                let entry = (container.id.clone(), find(name));
                if sidecars.iter().any(|s| &s.name == name) {
                    by_sidecar.entry(name.clone()).or_default().push(entry);
                } else {
                    first.push(entry);
                }
            }
        }
        let mut stages = vec![first];
        for sidecar in sidecars.iter().rev() {
            if let Some(stage) = by_sidecar.remove(&sidecar.name) {
                stages.push(stage);
            }
        }
        stages
    }

    /// Stops one container of a pod being deleted: `Killing` event, preStop hook and SIGTERM
    /// (once delivered, not again), waiting until `deadline`, then SIGKILL to all its
    /// processes, re-sent until it is dead or [`KILL_WAIT`] passed. A container that is gone
    /// from the runtime, or whose shim is gone, counts as stopped: what it may have left
    /// running dies with the pod cgroup.
    async fn stop_container(
        &self,
        id: &str,
        container: Option<&Container>,
        deadline: Instant,
    ) -> StopOutcome {
        let runtime = &self.kubelet.runtime;
        let mut signalled = self.signalled.contains(id);
        loop {
            let status = match runtime.status(id).await {
                Ok(status) => status,
                Err(RuntimeError::NotFound(_)) => return (signalled, true),
                Err(err) => {
                    warn!(container = %id, error = %err, "container status while stopping");
                    if Instant::now() >= deadline + KILL_WAIT {
                        return (signalled, false);
                    }
                    tokio::time::sleep(SIGNAL_RETRY).await;
                    continue;
                }
            };
            if is_finished(&status) {
                return (signalled, true);
            }
            let now = Instant::now();
            if now < deadline && status.state == State::Running {
                if !signalled {
                    if let Some(container) = container {
                        self.event(
                            &container.name,
                            EventType::Normal,
                            "Killing",
                            format!("Stopping container {}", container.name),
                        );
                        self.pre_stop(container, id, deadline - now).await;
                    }
                    match runtime.kill(id, SIGTERM, false).await {
                        Ok(()) => signalled = true,
                        Err(err) => warn!(container = %id, error = %err, "sending SIGTERM"),
                    }
                }
                let now = Instant::now();
                let step = if signalled {
                    deadline.saturating_duration_since(now)
                } else {
                    SIGNAL_RETRY.min(deadline.saturating_duration_since(now))
                };
                wait_exit(runtime, id, step).await;
                continue;
            }
            if now >= deadline + KILL_WAIT {
                warn!(container = %id, "still running after SIGKILL");
                return (signalled, false);
            }
            if let Err(err) = runtime.kill(id, SIGKILL, true).await {
                warn!(container = %id, error = %err, "sending SIGKILL");
            }
            wait_exit(runtime, id, SIGNAL_RETRY).await;
        }
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
                sidecar: is_sidecar(c),
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

    /// Stops and removes everything of the pod, then deletes it from the API. Called again
    /// (every [`RETRY`]) until it is all done: each call re-sends SIGTERM to containers that
    /// did not get it and SIGKILL to those still running once the grace period is over, so
    /// that a signal lost on the way (a shim that did not answer) only delays the end.
    async fn terminate(&mut self) -> Next {
        if !self.stop_running().await {
            warn!("containers still running; retrying");
            return Next::At(Instant::now() + RETRY);
        }
        let runtime = self.kubelet.runtime.clone();
        let mut removal_failed = false;
        for slot in self.slots.values_mut() {
            for held in [&mut slot.current, &mut slot.previous] {
                let Some(container) = held.as_ref() else {
                    continue;
                };
                match runtime.remove(&container.id).await {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => *held = None,
                    Err(err) => {
                        warn!(container = %container.id, error = %err, "removing container");
                        removal_failed = true;
                    }
                }
            }
        }
        if removal_failed {
            return Next::At(Instant::now() + RETRY);
        }
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

/// What [`Worker::stop_container`] achieved: (SIGTERM delivered, container gone or exited).
type StopOutcome = (bool, bool);

/// Waits up to `limit` for container `id` to exit; never returns at once while it runs (a
/// shim that does not answer makes `wait` return early).
async fn wait_exit(runtime: &Runtime, id: &str, limit: Duration) {
    let started = Instant::now();
    let exited = matches!(
        tokio::time::timeout(limit, runtime.wait(id)).await,
        Ok(Ok(status)) if is_finished(&status)
    );
    if !exited {
        let spent = started.elapsed();
        if spent < SIGNAL_RETRY.min(limit) {
            tokio::time::sleep(SIGNAL_RETRY.min(limit) - spent).await;
        }
    }
}

/// The last `limit` bytes of a file as text (empty when it is missing or unreadable).
fn read_tail(path: &std::path::Path, limit: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > limit && file.seek(SeekFrom::Start(size - limit)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(limit).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last lines of a container's log (CRI format) as its output, for FallbackToLogsOnError.
fn last_log_lines(log: &std::path::Path) -> String {
    let Ok(content) = std::fs::read(log) else {
        return String::new();
    };
    let lines: Vec<Vec<u8>> = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let options = super::server::logs::LogOptions {
        tail_lines: Some(FALLBACK_LOG_LINES),
        ..Default::default()
    };
    let text = super::server::logs::render(&lines, &options);
    let start = text.len().saturating_sub(FALLBACK_LOG_BYTES);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Succeeded or Failed.
fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// An init container with `restartPolicy: Always`: a sidecar that runs beside the containers.
fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
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
