//! A pod's status as the kubelet reports it, computed from what its worker knows: phase
//! (sidecars, init containers with restartPolicy Always, count for readiness, not for it),
//! conditions (PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready),
//! IPs, start time, QoS class and one status per container (state, last state, restart count,
//! image, image ID, container ID, ready, started).
//!
//! Pure: [`build`] turns a [`PodView`] into a `PodStatus`; writing it is the worker's job.

use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::agent::runtime::container::{self as runtime, State};

/// The scheme of container IDs this runtime reports (`cluster://<id>`).
pub const CONTAINER_ID_SCHEME: &str = "cluster://";

/// What a worker knows about one container of its pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// The image's reference as the runtime resolved it, once pulled.
    pub image_ref: Option<String>,
    pub image_id: Option<String>,
    /// The newest container of this name.
    pub current: Option<runtime::ContainerStatus>,
    /// The one before it (for lastState).
    pub previous: Option<runtime::ContainerStatus>,
    /// Why the container is waiting (ErrImagePull, CrashLoopBackOff, …) with its message.
    pub waiting: Option<(String, String)>,
    /// Readiness when running (no readiness probe: true).
    pub ready: bool,
    /// The startup probe passed when running (no startup probe: true).
    pub started: bool,
    /// An init container with `restartPolicy: Always` (a sidecar): it is done initialising
    /// once started, and runs beside the containers.
    pub sidecar: bool,
}

/// Everything [`build`] needs.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub sandbox_ready: bool,
    pub pod_ip: Option<IpAddr>,
    pub host_ip: IpAddr,
    pub start_time: Option<Time>,
    pub qos_class: &'static str,
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    /// The pod failed as a whole (an init container failed with restartPolicy Never, …).
    pub failed: Option<(String, String)>,
}

/// Parses a runtime timestamp to a Kubernetes time (whole seconds, as the API keeps them).
pub fn time(text: Option<&str>) -> Option<Time> {
    let parsed: Timestamp = text?.parse().ok()?;
    Timestamp::from_second(parsed.as_second()).ok().map(Time)
}

/// Now, in whole seconds.
pub fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn terminated(status: &runtime::ContainerStatus) -> ContainerStateTerminated {
    let unknown = status.state == State::Unknown;
    ContainerStateTerminated {
        container_id: Some(format!("{CONTAINER_ID_SCHEME}{}", status.id)),
        exit_code: status.exit_code.unwrap_or(if unknown { 137 } else { 0 }),
        reason: status
            .reason
            .clone()
            .or_else(|| unknown.then(|| "ContainerStatusUnknown".to_string())),
        message: status.message.clone().filter(|m| !m.is_empty()),
        started_at: time(status.started_at.as_deref()),
        finished_at: time(status.finished_at.as_deref()),
        signal: None,
    }
}

fn is_finished(status: &runtime::ContainerStatus) -> bool {
    matches!(status.state, State::Exited | State::Unknown)
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// One container's status. `default_waiting` is the reason shown before it was ever created
/// (ContainerCreating, or PodInitializing while init containers run).
fn container_status(view: &ContainerView, default_waiting: &str) -> ContainerStatus {
    let mut status = ContainerStatus {
        name: view.name.clone(),
        image: view.image_ref.clone().unwrap_or_else(|| view.image.clone()),
        image_id: view.image_id.clone().unwrap_or_default(),
        ..ContainerStatus::default()
    };
    let Some(current) = &view.current else {
        status.state = Some(match &view.waiting {
            Some((reason, message)) => waiting(reason, Some(message.clone())),
            None => waiting(default_waiting, None),
        });
        status.ready = false;
        status.started = Some(false);
        return status;
    };
    status.container_id = Some(format!("{CONTAINER_ID_SCHEME}{}", current.id));
    status.restart_count = i32::try_from(current.attempt).unwrap_or(i32::MAX);
    let finished = is_finished(current);
    match (&view.waiting, finished) {
        (Some((reason, message)), true) => {
            // Waiting to be restarted: the last run is the last state.
            status.state = Some(waiting(reason, Some(message.clone())));
            status.last_state = Some(ContainerState {
                terminated: Some(terminated(current)),
                ..ContainerState::default()
            });
        }
        _ => {
            status.state = Some(match current.state {
                State::Running => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: time(current.started_at.as_deref()),
                    }),
                    ..ContainerState::default()
                },
                State::Created => waiting("ContainerCreating", None),
                State::Exited | State::Unknown => ContainerState {
                    terminated: Some(terminated(current)),
                    ..ContainerState::default()
                },
            });
            if let Some(previous) = view.previous.as_ref().filter(|p| is_finished(p)) {
                status.last_state = Some(ContainerState {
                    terminated: Some(terminated(previous)),
                    ..ContainerState::default()
                });
            }
        }
    }
    let running = current.state == State::Running;
    // kubelet: started follows the startup probe, and only a started container can be ready.
    let started = running && view.started;
    status.started = Some(started);
    status.ready = started && view.ready;
    status
}

/// An init container is done: completed successfully, or, for a sidecar, started.
fn init_done(view: &ContainerView) -> bool {
    match &view.current {
        Some(s) if view.sidecar => s.state == State::Running && view.started,
        Some(s) => is_finished(s) && s.exit_code == Some(0),
        None => false,
    }
}

/// The init containers that keep the pod from being initialised; none once a container was
/// created (a sidecar restarting later does not make the pod uninitialised again).
fn incomplete_init<'v>(view: &'v PodView<'_>) -> Vec<&'v str> {
    if view.containers.iter().any(|c| c.current.is_some()) {
        return Vec::new();
    }
    view.init_containers
        .iter()
        .filter(|c| !init_done(c))
        .map(|c| c.name.as_str())
        .collect()
}

/// The pod's phase, as the kubelet's getPhase computes it. Sidecars do not count: a pod whose
/// containers completed is Succeeded while its sidecars are being stopped.
pub fn phase(view: &PodView<'_>) -> &'static str {
    if view.failed.is_some() {
        return "Failed";
    }
    let policy = restart_policy(view.pod);
    if !incomplete_init(view).is_empty() {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for container in &view.containers {
        match &container.current {
            Some(s) if s.state == State::Running => running += 1,
            Some(s) if is_finished(s) => {
                stopped += 1;
                if s.exit_code == Some(0) && s.state == State::Exited {
                    succeeded += 1;
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// `spec.restartPolicy` (Always by default).
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn condition(
    previous: Option<&PodStatus>,
    kind: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == kind));
    let last_transition_time = match old {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Some(now()),
    };
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        last_transition_time,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The pod's status. `previous` is the status in the API now, for transition times and the
/// PodScheduled condition the scheduler set.
pub fn build(view: &PodView<'_>, previous: Option<&PodStatus>) -> PodStatus {
    let phase = phase(view);
    let incomplete = incomplete_init(view);
    let init_pending = !incomplete.is_empty();
    let init_statuses: Vec<ContainerStatus> = view
        .init_containers
        .iter()
        .map(|c| container_status(c, "PodInitializing"))
        .collect();
    let default_waiting = if init_pending {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let statuses: Vec<ContainerStatus> = view
        .containers
        .iter()
        .map(|c| container_status(c, default_waiting))
        .collect();

    let mut conditions = Vec::new();
    let scheduled = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .cloned();
    conditions.push(scheduled.unwrap_or_else(|| condition(None, "PodScheduled", true, None, None)));
    let terminal = phase == "Succeeded" || phase == "Failed";
    conditions.push(condition(
        previous,
        "PodReadyToStartContainers",
        view.sandbox_ready && !terminal,
        None,
        None,
    ));
    conditions.push(condition(
        previous,
        "Initialized",
        incomplete.is_empty(),
        Some("ContainersNotInitialized".into()),
        Some(format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        )),
    ));
    // Sidecars count for readiness as the containers do.
    let sidecars = view
        .init_containers
        .iter()
        .zip(&init_statuses)
        .filter(|(view, _)| view.sidecar)
        .map(|(_, status)| status);
    let unready: Vec<&str> = sidecars
        .chain(statuses.iter())
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let (reason, message) = if phase == "Succeeded" || phase == "Failed" {
        ("PodCompleted".to_string(), String::new())
    } else {
        (
            "ContainersNotReady".to_string(),
            format!("containers with unready status: [{}]", unready.join(" ")),
        )
    };
    let ready = unready.is_empty() && !terminal;
    let message = (!message.is_empty()).then_some(message);
    conditions.push(condition(
        previous,
        "ContainersReady",
        ready,
        Some(reason.clone()),
        message.clone(),
    ));
    conditions.push(condition(previous, "Ready", ready, Some(reason), message));

    let (reason, message) = match &view.failed {
        Some((reason, message)) => (Some(reason.clone()), Some(message.clone())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.to_string(),
        }]),
        pod_ip: view.pod_ip.map(|ip| ip.to_string()),
        pod_ips: view.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: view.start_time.clone(),
        qos_class: Some(view.qos_class.to_string()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        reason,
        message,
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::container::PodRef;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "busybox"}]}
        }))
        .expect("pod")
    }

    fn exited(code: i32, attempt: u32) -> runtime::ContainerStatus {
        runtime::ContainerStatus {
            id: format!("id{attempt}"),
            name: "c".into(),
            pod: PodRef {
                namespace: "default".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            attempt,
            image: "busybox".into(),
            state: State::Exited,
            pid: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: Some("2026-01-01T00:00:01.5Z".into()),
            finished_at: Some("2026-01-01T00:00:02Z".into()),
            exit_code: Some(code),
            oom_killed: false,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            message: None,
            log_path: "/dev/null".into(),
        }
    }

    fn view<'a>(pod: &'a Pod, container: ContainerView) -> PodView<'a> {
        PodView {
            pod,
            sandbox_ready: true,
            pod_ip: Some("10.42.0.5".parse().expect("ip")),
            host_ip: "192.0.2.1".parse().expect("ip"),
            start_time: Some(now()),
            qos_class: "BestEffort",
            init_containers: Vec::new(),
            containers: vec![container],
            failed: None,
        }
    }

    #[test]
    fn a_failed_container_with_restart_policy_never_fails_the_pod() {
        let p = pod("Never");
        let v = view(
            &p,
            ContainerView {
                name: "c".into(),
                image: "busybox".into(),
                current: Some(exited(1, 0)),
                ..ContainerView::default()
            },
        );
        let status = build(&v, None);
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let c = &status.container_statuses.expect("statuses")[0];
        let t = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
        assert_eq!(t.container_id.as_deref(), Some("cluster://id0"));
        assert_eq!(
            t.started_at.as_ref().map(|t| t.0.to_string()),
            Some("2026-01-01T00:00:01Z".into())
        );
        let ready = status
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
    }

    #[test]
    fn crash_loop_back_off_shows_the_last_run() {
        let p = pod("Always");
        let v = view(
            &p,
            ContainerView {
                name: "c".into(),
                image: "busybox".into(),
                current: Some(exited(2, 3)),
                waiting: Some((
                    "CrashLoopBackOff".into(),
                    "back-off 40s restarting failed container=c pod=p_default(u)".into(),
                )),
                ..ContainerView::default()
            },
        );
        let status = build(&v, None);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let c = &status.container_statuses.expect("statuses")[0];
        assert_eq!(c.restart_count, 3);
        assert_eq!(
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            c.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(2)
        );
    }

    #[test]
    fn completed_containers_make_a_succeeded_pod() {
        let p = pod("OnFailure");
        let v = view(
            &p,
            ContainerView {
                name: "c".into(),
                image: "busybox".into(),
                current: Some(exited(0, 0)),
                ..ContainerView::default()
            },
        );
        assert_eq!(phase(&v), "Succeeded");
        let v = view(
            &p,
            ContainerView {
                name: "c".into(),
                image: "busybox".into(),
                ..ContainerView::default()
            },
        );
        assert_eq!(phase(&v), "Pending");
    }

    #[test]
    fn readiness_and_startup_results_drive_ready_started_and_the_conditions() {
        let pod = pod("Always");
        let running = runtime::ContainerStatus {
            state: State::Running,
            finished_at: None,
            exit_code: None,
            reason: None,
            ..exited(0, 0)
        };
        let shown = |ready: bool, started: bool| {
            let v = view(
                &pod,
                ContainerView {
                    name: "c".into(),
                    current: Some(running.clone()),
                    ready,
                    started,
                    ..ContainerView::default()
                },
            );
            let status = build(&v, None);
            let container = status
                .container_statuses
                .as_ref()
                .and_then(|c| c.first())
                .cloned()
                .expect("container status");
            let condition = |type_: &str| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == type_)
                    .map(|c| c.status.clone())
                    .unwrap_or_default()
            };
            (
                container.started,
                container.ready,
                condition("ContainersReady"),
                condition("Ready"),
                status.phase,
            )
        };
        let running_phase = Some("Running".to_string());
        // The startup probe has not passed: neither started nor ready, even if readiness says so.
        assert_eq!(
            shown(true, false),
            (
                Some(false),
                false,
                "False".into(),
                "False".into(),
                running_phase.clone()
            )
        );
        // Started, readiness failing: started but not ready.
        assert_eq!(
            shown(false, true),
            (
                Some(true),
                false,
                "False".into(),
                "False".into(),
                running_phase.clone()
            )
        );
        assert_eq!(
            shown(true, true),
            (
                Some(true),
                true,
                "True".into(),
                "True".into(),
                running_phase
            )
        );
    }

    fn condition_of(status: &PodStatus, type_: &str) -> (String, Option<String>) {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.message.clone()))
            .unwrap_or_default()
    }

    fn running(name: &str) -> runtime::ContainerStatus {
        runtime::ContainerStatus {
            name: name.into(),
            id: format!("{name}-id"),
            state: State::Running,
            finished_at: None,
            exit_code: None,
            reason: None,
            ..exited(0, 0)
        }
    }

    #[test]
    fn a_sidecar_initialises_once_started_and_counts_for_readiness_not_for_the_phase() {
        let p = pod("Never");
        let sidecar =
            |current: Option<runtime::ContainerStatus>, started: bool, ready: bool| ContainerView {
                name: "side".into(),
                current,
                started,
                ready,
                sidecar: true,
                ..ContainerView::default()
            };
        // Running but its startup probe has not passed: the pod is not initialised yet.
        let mut v = view(
            &p,
            ContainerView {
                name: "c".into(),
                ..ContainerView::default()
            },
        );
        v.init_containers = vec![sidecar(Some(running("side")), false, false)];
        let status = build(&v, None);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(
            condition_of(&status, "Initialized"),
            (
                "False".into(),
                Some("containers with incomplete status: [side]".into())
            )
        );
        let c = &status.container_statuses.clone().expect("statuses")[0];
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        assert_eq!(
            waiting.and_then(|w| w.reason.as_deref()),
            Some("PodInitializing")
        );

        // Started and the container running: initialised, Running; the unready sidecar keeps the
        // pod from being Ready.
        v.containers[0].current = Some(running("c"));
        v.containers[0].started = true;
        v.containers[0].ready = true;
        v.init_containers = vec![sidecar(Some(running("side")), true, false)];
        let status = build(&v, None);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition_of(&status, "Initialized").0, "True");
        assert_eq!(
            condition_of(&status, "Ready"),
            (
                "False".into(),
                Some("containers with unready status: [side]".into())
            )
        );
        let side = &status.init_container_statuses.clone().expect("init")[0];
        assert_eq!((side.started, side.ready), (Some(true), false));

        v.init_containers = vec![sidecar(Some(running("side")), true, true)];
        let status = build(&v, None);
        assert_eq!(condition_of(&status, "Ready").0, "True");

        // The container completed (restartPolicy Never): Succeeded whatever the sidecar does,
        // and a sidecar that exited since does not make the pod uninitialised.
        v.containers[0].current = Some(exited(0, 0));
        assert_eq!(phase(&v), "Succeeded");
        let mut stopped = exited(137, 0);
        stopped.name = "side".into();
        v.init_containers = vec![sidecar(Some(stopped), false, false)];
        let status = build(&v, None);
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(condition_of(&status, "Initialized").0, "True");
    }
}
