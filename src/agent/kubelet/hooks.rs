//! Container lifecycle hooks (postStart, preStop) with exec or httpGet handlers, run with the
//! probes' transport ([`super::probes::probe_once`]), as kubelet's handler runner does.
//!
//! Owns running one hook; must not stop or restart containers (the pod worker decides that).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};

use super::probes::{self, ProbeOutcome, ProbeTarget};
use crate::agent::runtime::container::Runtime;

/// The handler as a one-shot probe: exec and httpGet carry over, `sleep` and the deprecated
/// tcpSocket are not hooks kubelet runs through the prober. `None`: nothing to run.
pub fn as_probe(handler: &LifecycleHandler, timeout: Duration) -> Option<Probe> {
    if handler.exec.is_none() && handler.http_get.is_none() {
        return None;
    }
    Some(Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        timeout_seconds: Some(i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Probe::default()
    })
}

/// Runs one hook handler to completion (or `timeout`); `Err` carries kubelet's message.
pub async fn run(
    runtime: &Runtime,
    container: &Container,
    handler: &LifecycleHandler,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds.max(0)).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(seconds).min(timeout)).await;
        return Ok(());
    }
    let Some(probe) = as_probe(handler, timeout) else {
        return Ok(());
    };
    let probe = probes::resolve_named_ports(&probe, container).map_err(|e| e.to_string())?;
    match probes::probe_once(runtime, &probe, target).await {
        ProbeOutcome::Success => Ok(()),
        ProbeOutcome::Failure(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, SleepAction, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn exec_handlers_become_one_shot_probes_with_the_timeout() {
        let handler = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..LifecycleHandler::default()
        };
        let probe = as_probe(&handler, Duration::from_secs(7));
        assert_eq!(probe.as_ref().and_then(|p| p.timeout_seconds), Some(7));
        assert!(probe.and_then(|p| p.exec).is_some());
        let tcp = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..LifecycleHandler::default()
        };
        assert!(as_probe(&tcp, Duration::from_secs(1)).is_none());
        let sleep = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 1 }),
            ..LifecycleHandler::default()
        };
        assert!(as_probe(&sleep, Duration::from_secs(1)).is_none());
    }
}
