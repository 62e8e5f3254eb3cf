//! Defaulting of built-in kinds, as kube-apiserver 1.33 applies it on decode (the generated
//! `SetDefaults_*` functions of `pkg/apis/{core,apps,batch,...}/v1`), plus the defaults real
//! clusters add through built-in admission plugins and registry strategies that need no
//! allocation (service account, priority, default tolerations, namespace finalizers, the job
//! selector).
//!
//! This module owns only filling in absent fields. It must not reject anything (that is
//! `validation.rs`), allocate IPs or ports, or touch system metadata. Every function is
//! idempotent: a defaulted object defaults to itself.

use super::GroupVersionKind;
use serde_json::{json, Map, Value};

type Obj = Map<String, Value>;

/// Whether a field is absent for defaulting purposes (missing or `null`).
fn absent(m: &Obj, k: &str) -> bool {
    m.get(k).is_none_or(Value::is_null)
}

/// Sets `k` when it is absent.
fn default_value(m: &mut Obj, k: &str, v: Value) {
    if absent(m, k) {
        m.insert(k.to_owned(), v);
    }
}

/// Sets a string field when it is absent or empty (Go's `if x == ""`).
fn default_str(m: &mut Obj, k: &str, v: &str) {
    if absent(m, k) || m.get(k).and_then(Value::as_str) == Some("") {
        m.insert(k.to_owned(), Value::from(v));
    }
}

/// Sets a non-pointer integer field when it is absent or zero (Go's `if x == 0`).
fn default_nonzero(m: &mut Obj, k: &str, v: i64) {
    if absent(m, k) || m.get(k).and_then(Value::as_i64) == Some(0) {
        m.insert(k.to_owned(), Value::from(v));
    }
}

/// The object at `k`, created empty when absent; `None` when it holds something else.
fn child_obj<'a>(m: &'a mut Obj, k: &str) -> Option<&'a mut Obj> {
    if absent(m, k) {
        m.insert(k.to_owned(), Value::Object(Map::new()));
    }
    m.get_mut(k).and_then(Value::as_object_mut)
}

/// The object at `k` only when it already exists.
fn existing_obj<'a>(m: &'a mut Obj, k: &str) -> Option<&'a mut Obj> {
    m.get_mut(k).and_then(Value::as_object_mut)
}

/// Runs `f` on every object element of the list at `k`.
fn each_item(m: &mut Obj, k: &str, mut f: impl FnMut(&mut Obj)) {
    if let Some(items) = m.get_mut(k).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

fn str_of<'a>(m: &'a Obj, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn apply(gvk: &GroupVersionKind, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => pod(root),
        ("", "Service") => service(root),
        ("", "Namespace") => namespace(root),
        ("", "Secret") => secret(root),
        ("", "PersistentVolume") => persistent_volume(root),
        ("", "PersistentVolumeClaim") => persistent_volume_claim(root),
        ("", "Endpoints") => each_item(root, "subsets", |s| {
            each_item(s, "ports", |p| default_str(p, "protocol", "TCP"))
        }),
        ("", "Node") => node(root),
        ("", "LimitRange") => limit_range(root),
        ("apps", "Deployment") => deployment(root),
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child_obj(root, "spec") {
                default_value(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "DaemonSet") => daemon_set(root),
        ("apps", "StatefulSet") => stateful_set(root),
        ("batch", "Job") => job(root),
        ("batch", "CronJob") => cron_job(root),
        ("discovery.k8s.io", "EndpointSlice") => each_item(root, "ports", |p| {
            default_value(p, "name", json!(""));
            default_value(p, "protocol", json!("TCP"));
        }),
        ("networking.k8s.io", "NetworkPolicy") => network_policy(root),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(root),
        ("storage.k8s.io", "StorageClass") => {
            default_value(root, "reclaimPolicy", json!("Delete"));
            default_value(root, "volumeBindingMode", json!("Immediate"));
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default_value(root, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(root),
        _ => {}
    }
}

// ---- pods and pod templates ----

/// `SetDefaults_Pod` plus what the ServiceAccount, Priority and DefaultTolerationSeconds
/// admission plugins add to every pod.
fn pod(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    pod_spec(spec);
    for list in ["containers", "initContainers"] {
        each_item(spec, list, |c| {
            let Some(resources) = existing_obj(c, "resources") else {
                return;
            };
            let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
                return;
            };
            if let Some(requests) = child_obj(resources, "requests") {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        });
    }
    default_value(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for list in ["containers", "initContainers"] {
            each_item(spec, list, |c| {
                each_item(c, "ports", |p| {
                    if p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        if let Some(port) = p.get("containerPort").cloned() {
                            p.insert("hostPort".to_owned(), port);
                        }
                    }
                })
            });
        }
    }
    // ServiceAccount admission; the deprecated field mirrors the new one (v1 conversion).
    let account = match (
        str_of(spec, "serviceAccountName"),
        str_of(spec, "serviceAccount"),
    ) {
        ("", "") => "default".to_owned(),
        ("", old) => old.to_owned(),
        (name, _) => name.to_owned(),
    };
    spec.insert(
        "serviceAccountName".to_owned(),
        Value::from(account.clone()),
    );
    spec.insert("serviceAccount".to_owned(), Value::from(account));
    // Priority admission: no class means priority 0 and the default preemption policy.
    if str_of(spec, "priorityClassName").is_empty() {
        default_value(spec, "priority", json!(0));
    }
    default_value(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    // DefaultTolerationSeconds admission.
    let mut tolerations = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut changed = false;
    for taint in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = tolerations.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            (effect.is_empty() || effect == "NoExecute")
                && (k == taint || (k.is_empty() && op == "Exists"))
        });
        if !tolerated {
            tolerations.push(json!({"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            changed = true;
        }
    }
    if changed {
        spec.insert("tolerations".to_owned(), Value::Array(tolerations));
    }
}

/// `SetDefaults_PodSpec` and the defaults of every type nested in a pod spec.
fn pod_spec(spec: &mut Obj) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default_value(spec, "securityContext", json!({}));
    default_value(spec, "terminationGracePeriodSeconds", json!(30));
    default_str(spec, "schedulerName", "default-scheduler");
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        each_item(spec, list, container);
    }
    each_item(spec, "volumes", volume);
}

fn container(c: &mut Obj) {
    if str_of(c, "imagePullPolicy").is_empty() {
        let policy = if image_tag(str_of(c, "image")) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".to_owned(), Value::from(policy));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    each_item(c, "ports", |p| default_str(p, "protocol", "TCP"));
    for probe_name in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = existing_obj(c, probe_name) {
            default_nonzero(probe, "timeoutSeconds", 1);
            default_nonzero(probe, "periodSeconds", 10);
            default_nonzero(probe, "successThreshold", 1);
            default_nonzero(probe, "failureThreshold", 3);
            handler(probe);
        }
    }
    if let Some(lifecycle) = existing_obj(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing_obj(lifecycle, hook) {
                handler(h);
            }
        }
    }
    each_item(c, "env", |e| {
        if let Some(field_ref) =
            existing_obj(e, "valueFrom").and_then(|v| existing_obj(v, "fieldRef"))
        {
            default_str(field_ref, "apiVersion", "v1");
        }
    });
}

fn handler(h: &mut Obj) {
    if let Some(get) = existing_obj(h, "httpGet") {
        default_str(get, "path", "/");
        default_str(get, "scheme", "HTTP");
    }
}

/// The tag `ParseImageName` finds: `latest` when there is neither tag nor digest.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last_segment_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_segment_start..].rsplit_once(':') {
        Some((_, tag)) => tag,
        None if digest.is_some() => "",
        None => "latest",
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn volume(v: &mut Obj) {
    if VOLUME_SOURCES.iter().all(|s| absent(v, s)) {
        v.insert("emptyDir".to_owned(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = existing_obj(v, source) {
            default_value(s, "defaultMode", json!(420));
        }
    }
    if let Some(projected) = existing_obj(v, "projected") {
        each_item(projected, "sources", |s| {
            if let Some(token) = existing_obj(s, "serviceAccountToken") {
                default_value(token, "expirationSeconds", json!(3600));
            }
        });
    }
    if let Some(host_path) = existing_obj(v, "hostPath") {
        default_value(host_path, "type", json!(""));
    }
    if let Some(image) = existing_obj(v, "image") {
        if str_of(image, "pullPolicy").is_empty() {
            let policy = if image_tag(str_of(image, "reference")) == "latest" {
                "Always"
            } else {
                "IfNotPresent"
            };
            image.insert("pullPolicy".to_owned(), Value::from(policy));
        }
    }
    if let Some(spec) = existing_obj(v, "ephemeral")
        .and_then(|e| existing_obj(e, "volumeClaimTemplate"))
        .and_then(|t| existing_obj(t, "spec"))
    {
        default_value(spec, "volumeMode", json!("Filesystem"));
    }
}

/// Defaults the pod template at `spec.template` of a workload.
fn template(spec: &mut Obj) {
    if let Some(pod_spec_obj) = child_obj(spec, "template").and_then(|t| child_obj(t, "spec")) {
        pod_spec(pod_spec_obj);
    }
}

// ---- apps/v1 ----

fn deployment(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    default_value(spec, "replicas", json!(1));
    if let Some(strategy) = child_obj(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(rolling) = child_obj(strategy, "rollingUpdate") {
                default_value(rolling, "maxUnavailable", json!("25%"));
                default_value(rolling, "maxSurge", json!("25%"));
            }
        }
    }
    default_value(spec, "revisionHistoryLimit", json!(10));
    default_value(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

fn daemon_set(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    if let Some(strategy) = child_obj(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(rolling) = child_obj(strategy, "rollingUpdate") {
                default_value(rolling, "maxUnavailable", json!(1));
                default_value(rolling, "maxSurge", json!(0));
            }
        }
    }
    default_value(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

fn stateful_set(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(strategy) = child_obj(spec, "updateStrategy") {
        if str_of(strategy, "type").is_empty() {
            strategy.insert("type".to_owned(), json!("RollingUpdate"));
            default_value(strategy, "rollingUpdate", json!({}));
        }
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(rolling) = existing_obj(strategy, "rollingUpdate") {
                default_value(rolling, "partition", json!(0));
            }
        }
    }
    if let Some(policy) = child_obj(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(policy, "whenDeleted", "Retain");
        default_str(policy, "whenScaled", "Retain");
    }
    default_value(spec, "replicas", json!(1));
    default_value(spec, "revisionHistoryLimit", json!(10));
    each_item(spec, "volumeClaimTemplates", |pvc| {
        if let Some(status) = child_obj(pvc, "status") {
            default_str(status, "phase", "Pending");
        }
        if let Some(pvc_spec) = child_obj(pvc, "spec") {
            default_value(pvc_spec, "volumeMode", json!("Filesystem"));
        }
    });
    template(spec);
}

// ---- batch/v1 ----

fn job(root: &mut Obj) {
    let name = root
        .get("metadata")
        .map(|m| m.get("name").and_then(Value::as_str).unwrap_or(""))
        .unwrap_or("")
        .to_owned();
    let uid = root
        .get("metadata")
        .map(|m| m.get("uid").and_then(Value::as_str).unwrap_or(""))
        .unwrap_or("")
        .to_owned();
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    if absent(spec, "completions") && absent(spec, "parallelism") {
        spec.insert("completions".to_owned(), json!(1));
    }
    default_value(spec, "parallelism", json!(1));
    if absent(spec, "backoffLimit") {
        let limit = if absent(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        spec.insert("backoffLimit".to_owned(), json!(limit));
    }
    default_value(spec, "completionMode", json!("NonIndexed"));
    default_value(spec, "suspend", json!(false));
    if let Some(policy) = existing_obj(spec, "podFailurePolicy") {
        each_item(policy, "rules", |rule| {
            each_item(rule, "onPodConditions", |c| {
                default_str(c, "status", "True")
            })
        });
    }
    if absent(spec, "podReplacementPolicy") {
        let policy = if absent(spec, "podFailurePolicy") {
            "TerminatingOrFailed"
        } else {
            "Failed"
        };
        spec.insert("podReplacementPolicy".to_owned(), json!(policy));
    }
    default_value(spec, "manualSelector", json!(false));
    // The job strategy generates the selector from the uid when the selector is not manual.
    if spec.get("manualSelector").and_then(Value::as_bool) != Some(true) && !uid.is_empty() {
        if let Some(labels) = child_obj(spec, "template")
            .and_then(|t| child_obj(t, "metadata"))
            .and_then(|m| child_obj(m, "labels"))
        {
            for k in ["job-name", "batch.kubernetes.io/job-name"] {
                labels.entry(k).or_insert_with(|| Value::from(name.clone()));
            }
            for k in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
                labels.entry(k).or_insert_with(|| Value::from(uid.clone()));
            }
        }
        if let Some(match_labels) =
            child_obj(spec, "selector").and_then(|s| child_obj(s, "matchLabels"))
        {
            match_labels
                .entry("batch.kubernetes.io/controller-uid")
                .or_insert_with(|| Value::from(uid.clone()));
        }
    }
    template(spec);
    // Job labels default to the template's labels when the job has none.
    let template_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    if let (Some(labels), Some(meta)) = (template_labels, child_obj(root, "metadata")) {
        let empty = meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
        if empty {
            meta.insert("labels".to_owned(), labels);
        }
    }
}

fn cron_job(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default_value(spec, "suspend", json!(false));
    default_value(spec, "successfulJobsHistoryLimit", json!(3));
    default_value(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(job_spec) = child_obj(spec, "jobTemplate").and_then(|t| child_obj(t, "spec")) {
        template(job_spec);
    }
}

// ---- core/v1, other than pods ----

fn service(root: &mut Obj) {
    let Some(spec) = child_obj(root, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let has_timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !has_timeout {
                spec.insert(
                    "sessionAffinityConfig".to_owned(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    each_item(spec, "ports", |p| {
        default_str(p, "protocol", "TCP");
        let unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset {
            let port = p.get("port").cloned().unwrap_or(json!(0));
            p.insert("targetPort".to_owned(), port);
        }
    });
    let ty = str_of(spec, "type").to_owned();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_value(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default_value(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    // IP family defaults from the service registry, for a single-stack cluster.
    if ty != "ExternalName" {
        default_value(spec, "ipFamilyPolicy", json!("SingleStack"));
        let families_unset = spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if families_unset {
            let family = if str_of(spec, "clusterIP").contains(':') {
                "IPv6"
            } else {
                "IPv4"
            };
            spec.insert("ipFamilies".to_owned(), json!([family]));
        }
    }
}

fn namespace(root: &mut Obj) {
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !name.is_empty() {
        if let Some(labels) = child_obj(root, "metadata").and_then(|m| child_obj(m, "labels")) {
            labels.insert("kubernetes.io/metadata.name".to_owned(), Value::from(name));
        }
    }
    if let Some(spec) = child_obj(root, "spec") {
        default_value(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = child_obj(root, "status") {
        default_str(status, "phase", "Active");
    }
}

/// `SetDefaults_Secret`, and the v1 conversion that folds `stringData` into `data`.
fn secret(root: &mut Obj) {
    default_str(root, "type", "Opaque");
    let Some(Value::Object(string_data)) = root.remove("stringData") else {
        return;
    };
    if let Some(data) = child_obj(root, "data") {
        for (k, v) in string_data {
            if let Some(text) = v.as_str() {
                data.insert(k, Value::from(base64_encode(text.as_bytes())));
            }
        }
    }
}

/// Standard base64 with padding, as Go encodes `[]byte`.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn persistent_volume(root: &mut Obj) {
    if let Some(status) = child_obj(root, "status") {
        default_str(status, "phase", "Pending");
    }
    if let Some(spec) = child_obj(root, "spec") {
        default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        default_value(spec, "volumeMode", json!("Filesystem"));
    }
}

fn persistent_volume_claim(root: &mut Obj) {
    if let Some(status) = child_obj(root, "status") {
        default_str(status, "phase", "Pending");
    }
    if let Some(spec) = child_obj(root, "spec") {
        default_value(spec, "volumeMode", json!("Filesystem"));
    }
}

fn node(root: &mut Obj) {
    if let Some(status) = existing_obj(root, "status") {
        if absent(status, "allocatable") {
            if let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned() {
                status.insert("allocatable".to_owned(), capacity);
            }
        }
    }
}

fn limit_range(root: &mut Obj) {
    let Some(spec) = existing_obj(root, "spec") else {
        return;
    };
    each_item(spec, "limits", |item| {
        if str_of(item, "type") != "Container" {
            return;
        }
        let max = item
            .get("max")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let min = item
            .get("min")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut default = item
            .get("default")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut request = item
            .get("defaultRequest")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        for (k, v) in &default {
            request.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in min {
            request.entry(k).or_insert(v);
        }
        // Go drops empty maps on output (omitempty), so only write non-empty ones.
        if !default.is_empty() {
            item.insert("default".to_owned(), Value::Object(default));
        }
        if !request.is_empty() {
            item.insert("defaultRequest".to_owned(), Value::Object(request));
        }
    });
}

// ---- other groups ----

fn network_policy(root: &mut Obj) {
    let Some(spec) = existing_obj(root, "spec") else {
        return;
    };
    for direction in ["ingress", "egress"] {
        let ports_key = "ports";
        each_item(spec, direction, |rule| {
            each_item(rule, ports_key, |p| default_str(p, "protocol", "TCP"))
        });
    }
    let types_unset = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if types_unset {
        let mut types = vec![json!("Ingress")];
        if spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
        {
            types.push(json!("Egress"));
        }
        spec.insert("policyTypes".to_owned(), Value::Array(types));
    }
}

fn role_binding(root: &mut Obj) {
    if let Some(role_ref) = existing_obj(root, "roleRef") {
        default_str(role_ref, "apiGroup", "rbac.authorization.k8s.io");
    }
    each_item(root, "subjects", |s| {
        if absent(s, "apiGroup") {
            match str_of(s, "kind") {
                "ServiceAccount" => {
                    s.insert("apiGroup".to_owned(), json!(""));
                }
                "User" | "Group" => {
                    s.insert("apiGroup".to_owned(), json!("rbac.authorization.k8s.io"));
                }
                _ => {}
            }
        }
    });
}

fn crd(root: &mut Obj) {
    let Some(spec) = existing_obj(root, "spec") else {
        return;
    };
    if let Some(conversion) = child_obj(spec, "conversion") {
        default_str(conversion, "strategy", "None");
        if let Some(service) = existing_obj(conversion, "webhook")
            .and_then(|w| existing_obj(w, "clientConfig"))
            .and_then(|c| existing_obj(c, "service"))
        {
            default_value(service, "port", json!(443));
        }
    }
    if let Some(names) = existing_obj(spec, "names") {
        let kind = str_of(names, "kind").to_owned();
        if !kind.is_empty() {
            default_str(names, "singular", &kind.to_lowercase());
            default_str(names, "listKind", &format!("{kind}List"));
        }
    }
}

// ---- update carry-over ----

pub(super) fn carry_over(gvk: &GroupVersionKind, obj: &mut Value, old: &Value) {
    if gvk.group.is_empty() && gvk.kind == "Service" {
        let (Some(spec), Some(old_spec)) = (
            obj.get_mut("spec").and_then(Value::as_object_mut),
            old.get("spec"),
        ) else {
            return;
        };
        let new_type = str_of(spec, "type").to_owned();
        let old_type = old_spec.get("type").and_then(Value::as_str).unwrap_or("");
        if new_type == "ExternalName" || old_type == "ExternalName" {
            return;
        }
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let unset = match spec.get(k) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if let (true, Some(v)) = (unset, old_spec.get(k)) {
                spec.insert(k.to_owned(), v.clone());
            }
        }
        if matches!(new_type.as_str(), "NodePort" | "LoadBalancer") {
            let old_ports = old_spec
                .get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            each_item(spec, "ports", |p| {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    return;
                }
                let matching = old_ports.iter().find(|o| {
                    o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                });
                if let Some(node_port) = matching
                    .and_then(|o| o.get("nodePort"))
                    .filter(|n| !n.is_null())
                {
                    p.insert("nodePort".to_owned(), node_port.clone());
                }
            });
        }
        if let (true, Some(v)) = (
            absent(spec, "healthCheckNodePort"),
            old_spec.get("healthCheckNodePort"),
        ) {
            if str_of(spec, "externalTrafficPolicy") == "Local" {
                spec.insert("healthCheckNodePort".to_owned(), v.clone());
            }
        }
    } else if gvk.group == "batch" && gvk.kind == "Job" {
        // The generated selector and template labels are not resent by every client.
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if absent(spec, "selector") {
            if let Some(sel) = old.get("spec").and_then(|s| s.get("selector")) {
                spec.insert("selector".to_owned(), sel.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gvk(g: &str, v: &str, k: &str) -> GroupVersionKind {
        GroupVersionKind::gvk(g, v, k)
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("nginx"), "latest");
        assert_eq!(image_tag("nginx:1.27"), "1.27");
        assert_eq!(image_tag("localhost:5000/app"), "latest");
        assert_eq!(image_tag("localhost:5000/app:v1"), "v1");
        assert_eq!(image_tag("nginx@sha256:abc"), "");
        assert_eq!(image_tag("nginx:latest"), "latest");
    }

    /// A bare pod as a 1.33 cluster returns it (less allocation: token volume, nodeName, status).
    #[test]
    fn bare_pod_defaults() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                "readinessProbe": {"httpGet": {"port": 80}}}],
                "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "cfg"}}]}});
        apply(&gvk("", "v1", "Pod"), &mut pod);
        let expected = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
        "spec": {
            "containers": [{"name": "nginx", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0, "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {},
            "serviceAccount": "default", "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}]
        }});
        assert_eq!(pod, expected);
        let again = pod.clone();
        apply(&gvk("", "v1", "Pod"), &mut pod);
        assert_eq!(pod, again, "defaulting is idempotent");
    }

    /// `kubectl create deployment web --image=nginx` as a 1.33 cluster stores it.
    #[test]
    fn bare_deployment_defaults() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}});
        apply(&gvk("apps", "v1", "Deployment"), &mut d);
        let expected = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"progressDeadlineSeconds": 600, "replicas": 1, "revisionHistoryLimit": 10,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}, "type": "RollingUpdate"},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"image": "nginx", "imagePullPolicy": "Always", "name": "nginx",
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
                    "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                    "securityContext": {}, "terminationGracePeriodSeconds": 30}}}});
        assert_eq!(d, expected);
    }

    #[test]
    fn job_defaults_and_generated_selector() {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl:5.34"}]}}}});
        apply(&gvk("batch", "v1", "Job"), &mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert_eq!(
            j["metadata"]["labels"]["batch.kubernetes.io/job-name"],
            "pi"
        );
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn service_defaults() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}});
        apply(&gvk("", "v1", "Service"), &mut s);
        assert_eq!(
            s["spec"],
            json!({"type": "NodePort", "selector": {"app": "web"}, "sessionAffinity": "None",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "externalTrafficPolicy": "Cluster",
                "internalTrafficPolicy": "Cluster", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]})
        );
    }

    #[test]
    fn namespace_and_statefulset_defaults() {
        let mut ns = json!({"metadata": {"name": "dev"}});
        apply(&gvk("", "v1", "Namespace"), &mut ns);
        assert_eq!(
            ns,
            json!({"metadata": {"name": "dev", "labels": {"kubernetes.io/metadata.name": "dev"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        );
        let mut sts = json!({"metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        apply(&gvk("apps", "v1", "StatefulSet"), &mut sts);
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    }

    #[test]
    fn secret_string_data_folds_into_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"user": "admin", "k": "ab"}, "data": {"k": "eA=="}});
        apply(&gvk("", "v1", "Secret"), &mut s);
        assert_eq!(
            s,
            json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"user": "YWRtaW4=", "k": "YWI="}})
        );
    }

    #[test]
    fn service_update_keeps_allocated_ip() {
        let old = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]}});
        let mut new = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        carry_over(&gvk("", "v1", "Service"), &mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.10");
    }
}
