//! Server-side printing: renders lists of objects as `meta.k8s.io/v1` `Table`s for `kubectl get`
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//!
//! Owns the column definitions and cell computations of every built-in kind kubectl prints
//! (the apiserver's `pkg/printers/internalversion`), the `Name`/`Created At` default of resources
//! without a printer, custom resources' `additionalPrinterColumns` (with the simple JSONPath subset
//! CRDs use), kubectl's human durations, and the `?includeObject=` row objects.
//!
//! # Guarantees
//! - Like kube-apiserver, every row carries all cells, including the `priority: 1` columns that
//!   kubectl shows only with `-o wide`; kubectl drops them itself.
//! - Missing or malformed fields never panic: they print as the zero value kubectl would show
//!   (`<none>`, `<unknown>`, `0`, ...).
//!
//! # Caveats
//! - The caller fills `metadata.resourceVersion` / `metadata.continue` of the returned table.

use jiff::Timestamp;
use kube::core::GroupVersionKind;
use serde_json::{json, Map, Value};

use super::selectors::LabelSelector;

/// What each row's `object` holds (`?includeObject=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No `object`.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the query value (`None`, `Metadata`, `Object`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(Self::None),
            "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            _ => Option::None,
        }
    }
}

/// Whether an `Accept` header asks for a `meta.k8s.io` `Table` (`as=Table;g=meta.k8s.io;v=v1`,
/// `v1beta1` accepted too) in any of its media ranges.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !matches!(media, "application/json" | "*/*" | "application/*") {
            return false;
        }
        let (mut is_table, mut group_ok, mut version_ok) = (false, false, false);
        for p in parts {
            match p.split_once('=') {
                Some(("as", "Table")) => is_table = true,
                Some(("g", "meta.k8s.io")) => group_ok = true,
                Some(("v", "v1" | "v1beta1")) => version_ok = true,
                _ => {}
            }
        }
        is_table && group_ok && version_ok
    })
}

/// Renders `items` (all of kind `gvk`) as a `Table`.
///
/// `printer_columns` are a CRD version's `additionalPrinterColumns`; pass them (possibly empty)
/// for custom resources and `None` for built-in kinds.
pub fn to_table(
    gvk: &GroupVersionKind,
    items: &[Value],
    now: Timestamp,
    include: IncludeObject,
    printer_columns: Option<&[Value]>,
) -> Value {
    let (columns, cells_of): (Vec<Value>, CellsFn) = match printer_columns {
        Some(cols) => {
            let custom = CustomColumns::new(cols);
            let defs = custom.definitions();
            (defs, Box::new(move |item| custom.cells(item, now)))
        }
        None => {
            let (cols, row) =
                builtin(&gvk.group, &gvk.kind).unwrap_or((DEFAULT_COLUMNS, default_row));
            (
                cols.iter().copied().map(Col::to_json).collect(),
                Box::new(move |item| row(item, now)),
            )
        }
    };
    let is_pod = gvk.group.is_empty() && gvk.kind == "Pod";
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells_of(item)));
            if is_pod {
                if let Some(conditions) = pod_row_conditions(item) {
                    row.insert("conditions".into(), conditions);
                }
            }
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": item.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".into(), item.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------------------------

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";

/// One column definition (`metav1.TableColumnDefinition`).
#[derive(Clone, Copy, Debug)]
struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    desc: &'static str,
    priority: u8,
}

impl Col {
    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.desc,
            "priority": self.priority,
        })
    }
}

const fn col(name: &'static str, ty: &'static str, desc: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        desc,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, desc: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        desc,
        priority: 1,
    }
}

const NAME: Col = Col {
    name: "Name",
    ty: "string",
    format: "name",
    desc: NAME_DESC,
    priority: 0,
};
const AGE: Col = col("Age", "string", CREATED_DESC);
const CREATED_AT: Col = col("Created At", "date", CREATED_DESC);
const CONTAINERS: Col = wide("Containers", "string", CONTAINERS_DESC);
const IMAGES: Col = wide("Images", "string", IMAGES_DESC);

type RowFn = fn(&Value, Timestamp) -> Vec<Value>;

/// Computes one row's cells.
type CellsFn = Box<dyn Fn(&Value) -> Vec<Value>>;

const DEFAULT_COLUMNS: &[Col] = &[NAME, AGE];
const CREATED_AT_COLUMNS: &[Col] = &[NAME, CREATED_AT];

const POD_COLUMNS: &[Col] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    wide("IP", "string", "IP address allocated to the pod."),
    wide("Node", "string", "The node the pod is scheduled onto."),
    wide("Nominated Node", "string", "The node the scheduler nominated for this pod when preempting."),
    wide("Readiness Gates", "string", "Pod conditions evaluated for readiness."),
];
const NODE_COLUMNS: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide(
        "Internal-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "External-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide("OS-Image", "string", "OS Image reported by the node."),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node.",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node.",
    ),
];
const NAMESPACE_COLUMNS: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];
const SERVICE_COLUMNS: &[Col] = &[
    NAME,
    col("Type", "string", "How the Service is exposed."),
    col(
        "Cluster-IP",
        "string",
        "The IP address of the service, allocated by the master.",
    ),
    col(
        "External-IP",
        "string",
        "IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];
const ENDPOINTS_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];
const CONFIGMAP_COLUMNS: &[Col] = &[NAME, col("Data", "string", "Configuration data keys."), AGE];
const SECRET_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Secret data keys."),
    AGE,
];
const SERVICE_ACCOUNT_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "Secrets in the same namespace that pods running with this service account may use.",
    ),
    AGE,
];
const EVENT_COLUMNS: &[Col] = &[
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning)."),
    col("Reason", "string", "A short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    wide("Subobject", "string", "The part of the object that this event is about."),
    wide("Source", "string", "The component reporting this event."),
    col("Message", "string", "A human-readable description of the status of this operation."),
    wide("First Seen", "string", "The time at which the event was first recorded."),
    wide("Count", "string", "The number of times this event has occurred."),
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        desc: NAME_DESC,
        priority: 1,
    },
];
const PV_COLUMNS: &[Col] = &[
    NAME,
    col("Capacity", "string", "The actual resources of the volume."),
    col(
        "Access Modes",
        "string",
        "All ways the volume can be mounted.",
    ),
    col(
        "Reclaim Policy",
        "string",
        "What happens to a persistent volume when released from its claim.",
    ),
    col(
        "Status",
        "string",
        "Phase indicates if a volume is available, bound to a claim, or released by a claim.",
    ),
    col(
        "Claim",
        "string",
        "The binding between this volume and its claim.",
    ),
    col("StorageClass", "string", "StorageClass of the pv"),
    col(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pv",
    ),
    col(
        "Reason",
        "string",
        "A brief CamelCase string that describes any failure.",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a raw block device.",
    ),
];
const PVC_COLUMNS: &[Col] = &[
    NAME,
    col("Status", "string", "The current phase of the claim."),
    col(
        "Volume",
        "string",
        "The binding reference to the PersistentVolume backing this claim.",
    ),
    col(
        "Capacity",
        "string",
        "The actual resources of the underlying volume.",
    ),
    col(
        "Access Modes",
        "string",
        "The actual access modes the volume backing the PVC has.",
    ),
    col("StorageClass", "string", "StorageClass of the pvc"),
    col(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pvc",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a raw block device.",
    ),
];
const RESOURCE_QUOTA_COLUMNS: &[Col] = &[
    NAME,
    AGE,
    col("Request", "string", "Request represents a minimum amount of cpu/memory that a container may consume."),
    col("Limit", "string", "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
];
const RC_COLUMNS: &[Col] = &[
    NAME,
    col("Desired", "integer", "The number of desired replicas."),
    col(
        "Current",
        "integer",
        "The most recently observed number of replicas.",
    ),
    col("Ready", "integer", "The number of ready replicas."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Label query over pods that should match the replica count.",
    ),
];
const DEPLOYMENT_COLUMNS: &[Col] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", "Label selector for pods."),
];
const REPLICASET_COLUMNS: &[Col] = &[
    NAME,
    col("Desired", "integer", "The number of desired replicas."),
    col(
        "Current",
        "integer",
        "The most recently observed number of replicas.",
    ),
    col("Ready", "integer", "The number of ready replicas."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Label query over pods that should match the replica count.",
    ),
];
const DAEMONSET_COLUMNS: &[Col] = &[
    NAME,
    col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
    col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
    col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod."),
    col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
    col("Node Selector", "string", "A selector which must be true for the pod to fit on a node."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", "A label query over pods that are managed by the daemon set."),
];
const STATEFULSET_COLUMNS: &[Col] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];
const CONTROLLER_REVISION_COLUMNS: &[Col] = &[
    NAME,
    col("Controller", "string", "Controller of the object"),
    col(
        "Revision",
        "string",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];
const JOB_COLUMNS: &[Col] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "A label query over pods that should match the pod count.",
    ),
];
const CRONJOB_COLUMNS: &[Col] = &[
    NAME,
    col("Schedule", "string", "The schedule in Cron format."),
    col(
        "Timezone",
        "string",
        "The time zone name for the given schedule.",
    ),
    col(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions.",
    ),
    col(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
    ),
    col(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "A label query over pods that should match the pod count.",
    ),
];
const LEASE_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Holder",
        "string",
        "The identity of the holder of a current lease.",
    ),
    AGE,
];
const ENDPOINTSLICE_COLUMNS: &[Col] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "The type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "The network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "A list of unique endpoints in this slice.",
    ),
    AGE,
];
const INGRESS_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Class",
        "string",
        "The name of the IngressClass resource that should be used for additional configuration",
    ),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];
const INGRESS_CLASS_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Controller",
        "string",
        "Controller that is responsible for handling this class",
    ),
    col(
        "Parameters",
        "string",
        "A reference to a resource with additional parameters",
    ),
    AGE,
];
const NETWORK_POLICY_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Pod-Selector",
        "string",
        "Selects the pods to which this NetworkPolicy object applies.",
    ),
    AGE,
];
const ROLE_BINDING_COLUMNS: &[Col] = &[
    NAME,
    col("Role", "string", "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace."),
    AGE,
    wide("Users", "string", "Users in the roleBinding"),
    wide("Groups", "string", "Groups in the roleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the roleBinding"),
];
const CLUSTER_ROLE_BINDING_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Role",
        "string",
        "RoleRef can only reference a ClusterRole in the global namespace.",
    ),
    AGE,
    wide("Users", "string", "Users in the clusterRoleBinding"),
    wide("Groups", "string", "Groups in the clusterRoleBinding"),
    wide(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the clusterRoleBinding",
    ),
];
const STORAGE_CLASS_COLUMNS: &[Col] = &[
    NAME,
    col("Provisioner", "string", "Provisioner indicates the type of the provisioner."),
    col("ReclaimPolicy", "string", "Dynamically provisioned PersistentVolumes of this storage class are created with this reclaimPolicy."),
    col("VolumeBindingMode", "string", "VolumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound."),
    col("AllowVolumeExpansion", "string", "AllowVolumeExpansion shows whether the storage class allow volume expand."),
    AGE,
];
const PDB_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Min Available",
        "string",
        "The minimum number of pods that must be available.",
    ),
    col(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable.",
    ),
    col(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time.",
    ),
    AGE,
];
const PRIORITY_CLASS_COLUMNS: &[Col] = &[
    NAME,
    col("Value", "integer", "The value of this priority class."),
    col(
        "Global-Default",
        "boolean",
        "Whether this priority class is the default for pods without a priority class.",
    ),
    AGE,
    col(
        "PreemptionPolicy",
        "string",
        "The Policy for preempting pods with lower priority.",
    ),
];
const WEBHOOK_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Webhooks",
        "integer",
        "Webhooks indicates the number of webhooks registered in this configuration",
    ),
    AGE,
];
const RUNTIME_CLASS_COLUMNS: &[Col] = &[
    NAME,
    col(
        "Handler",
        "string",
        "The underlying runtime and configuration that the CRI implementation will use.",
    ),
    AGE,
];
const CSR_COLUMNS: &[Col] = &[
    NAME,
    AGE,
    col(
        "SignerName",
        "string",
        "The requested signer for the request.",
    ),
    col(
        "Requestor",
        "string",
        "Information about the requesting user.",
    ),
    col(
        "RequestedDuration",
        "string",
        "The requested duration of validity of the issued certificate.",
    ),
    col("Condition", "string", "Conditions applied to the request."),
];

/// The printer of a built-in kind, if it has one.
fn builtin(group: &str, kind: &str) -> Option<(&'static [Col], RowFn)> {
    let printer: (&'static [Col], RowFn) = match (group, kind) {
        ("", "Pod") => (POD_COLUMNS, pod_row),
        ("", "Node") => (NODE_COLUMNS, node_row),
        ("", "Namespace") => (NAMESPACE_COLUMNS, namespace_row),
        ("", "Service") => (SERVICE_COLUMNS, service_row),
        ("", "Endpoints") => (ENDPOINTS_COLUMNS, endpoints_row),
        ("", "ConfigMap") => (CONFIGMAP_COLUMNS, configmap_row),
        ("", "Secret") => (SECRET_COLUMNS, secret_row),
        ("", "ServiceAccount") => (SERVICE_ACCOUNT_COLUMNS, service_account_row),
        ("", "Event") | ("events.k8s.io", "Event") => (EVENT_COLUMNS, event_row),
        ("", "PersistentVolume") => (PV_COLUMNS, pv_row),
        ("", "PersistentVolumeClaim") => (PVC_COLUMNS, pvc_row),
        ("", "ResourceQuota") => (RESOURCE_QUOTA_COLUMNS, resource_quota_row),
        ("", "ReplicationController") => (RC_COLUMNS, rc_row),
        ("", "LimitRange")
        | ("rbac.authorization.k8s.io", "Role" | "ClusterRole")
        | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            (CREATED_AT_COLUMNS, created_at_row)
        }
        ("apps", "Deployment") => (DEPLOYMENT_COLUMNS, deployment_row),
        ("apps", "ReplicaSet") => (REPLICASET_COLUMNS, replicaset_row),
        ("apps", "DaemonSet") => (DAEMONSET_COLUMNS, daemonset_row),
        ("apps", "StatefulSet") => (STATEFULSET_COLUMNS, statefulset_row),
        ("apps", "ControllerRevision") => (CONTROLLER_REVISION_COLUMNS, controller_revision_row),
        ("batch", "Job") => (JOB_COLUMNS, job_row),
        ("batch", "CronJob") => (CRONJOB_COLUMNS, cronjob_row),
        ("coordination.k8s.io", "Lease") => (LEASE_COLUMNS, lease_row),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINTSLICE_COLUMNS, endpointslice_row),
        ("networking.k8s.io", "Ingress") => (INGRESS_COLUMNS, ingress_row),
        ("networking.k8s.io", "IngressClass") => (INGRESS_CLASS_COLUMNS, ingress_class_row),
        ("networking.k8s.io", "NetworkPolicy") => (NETWORK_POLICY_COLUMNS, network_policy_row),
        ("rbac.authorization.k8s.io", "RoleBinding") => (ROLE_BINDING_COLUMNS, role_binding_row),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            (CLUSTER_ROLE_BINDING_COLUMNS, role_binding_row)
        }
        ("storage.k8s.io", "StorageClass") => (STORAGE_CLASS_COLUMNS, storage_class_row),
        ("policy", "PodDisruptionBudget") => (PDB_COLUMNS, pdb_row),
        ("scheduling.k8s.io", "PriorityClass") => (PRIORITY_CLASS_COLUMNS, priority_class_row),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => (WEBHOOK_COLUMNS, webhook_row),
        ("node.k8s.io", "RuntimeClass") => (RUNTIME_CLASS_COLUMNS, runtime_class_row),
        ("certificates.k8s.io", "CertificateSigningRequest") => (CSR_COLUMNS, csr_row),
        _ => return None,
    };
    Some(printer)
}

// ---------------------------------------------------------------------------------------------
// JSON access and formatting
// ---------------------------------------------------------------------------------------------

/// The value at a dotted path, treating `null` as absent.
fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.get(key)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or_default()
}

fn opt_int(v: &Value, path: &str) -> Option<i64> {
    get(v, path).and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
}

fn int(v: &Value, path: &str) -> i64 {
    opt_int(v, path).unwrap_or(0)
}

fn flag(v: &Value, path: &str) -> bool {
    get(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn list<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

fn name(v: &Value) -> Value {
    Value::from(text(v, "metadata.name"))
}

fn parse_time(s: &str) -> Option<Timestamp> {
    if s.is_empty() {
        return None;
    }
    s.parse::<Timestamp>().ok()
}

/// kubectl's `translateTimestampSince`: the human age of an RFC 3339 time, `<unknown>` if unset.
fn since(ts: &str, now: Timestamp) -> String {
    match parse_time(ts) {
        Some(t) => human_duration(now.as_nanosecond().saturating_sub(t.as_nanosecond())),
        None => "<unknown>".to_string(),
    }
}

fn age(v: &Value, now: Timestamp) -> Value {
    Value::from(since(text(v, "metadata.creationTimestamp"), now))
}

/// `duration.HumanDuration` from apimachinery: `45s`, `2m5s`, `15m`, `3h2m`, `20h`, `3d4h`,
/// `12d`, `2y10d`, `9y`; `<invalid>` for times more than a second in the future.
pub fn human_duration(nanos: i128) -> String {
    const SEC: i128 = 1_000_000_000;
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * SEC);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * SEC);
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted by key, `<none>` when empty.
fn format_labels(map: Option<&Value>) -> String {
    let Some(map) = map.and_then(Value::as_object) else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".to_string()
    } else {
        pairs.join(",")
    }
}

/// `metav1.FormatLabelSelector`: the selector string, `<none>` when empty, `<error>` if invalid.
fn format_label_selector(sel: Option<&Value>) -> String {
    match LabelSelector::from_label_selector(sel.unwrap_or(&Value::Null)) {
        Ok(s) => or(&s.to_string(), "<none>").to_string(),
        Err(_) => "<error>".to_string(),
    }
}

/// Container names and images of a pod spec, comma-joined.
fn container_cells(pod_spec: Option<&Value>) -> (Value, Value) {
    let containers = pod_spec.map(|s| list(s, "containers")).unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| text(c, "name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "image")).collect();
    (Value::from(names.join(",")), Value::from(images.join(",")))
}

/// `a,b,c + N more...` (at most `max` listed), or `empty` when the list is empty.
fn list_with_more(list: &[String], total: usize, max: usize, empty: &str) -> String {
    let shown = list.iter().take(max).cloned().collect::<Vec<_>>().join(",");
    if total > max {
        format!("{shown} + {} more...", total - max)
    } else if shown.is_empty() {
        empty.to_string()
    } else {
        shown
    }
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Load-balancer ingress points (IP, else hostname), de-duplicated and sorted.
fn load_balancer_ingress(status: Option<&Value>) -> String {
    let mut points: Vec<&str> = status
        .map(|s| list(s, "ingress"))
        .unwrap_or_default()
        .iter()
        .map(|i| or(text(i, "ip"), text(i, "hostname")))
        .filter(|s| !s.is_empty())
        .collect();
    points.sort_unstable();
    points.dedup();
    points.join(",")
}

fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn quantity_or_zero(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_string(),
    }
}

fn int_or_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Row printers
// ---------------------------------------------------------------------------------------------

fn default_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), age(v, now)]
}

/// The generic `Name` / `Created At` row of resources without a printer (RFC 3339, UTC).
fn created_at_row(v: &Value, _now: Timestamp) -> Vec<Value> {
    let created = parse_time(text(v, "metadata.creationTimestamp"))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    vec![name(v), Value::from(created)]
}

fn pod_row_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match text(pod, "status.phase") {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

fn later(slot: &mut Option<Timestamp>, candidate: Option<Timestamp>) {
    if let Some(c) = candidate {
        if slot.is_none_or(|cur| cur < c) {
            *slot = Some(c);
        }
    }
}

fn has_condition(v: &Value, ty: &str) -> bool {
    list(v, "status.conditions")
        .iter()
        .any(|c| text(c, "type") == ty && text(c, "status") == "True")
}

/// The pod row, computing READY, STATUS and RESTARTS as kubectl's `printPod`.
fn pod_row(pod: &Value, now: Timestamp) -> Vec<Value> {
    let init_specs = list(pod, "spec.initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, "name") == name && text(c, "restartPolicy") == "Always")
    };
    let total = list(pod, "spec.containers").len()
        + init_specs
            .iter()
            .filter(|c| text(c, "restartPolicy") == "Always")
            .count();
    let mut ready = 0usize;
    let phase = text(pod, "status.phase");
    let mut reason = or(text(pod, "status.reason"), phase).to_string();
    if list(pod, "status.conditions")
        .iter()
        .any(|c| text(c, "type") == "PodScheduled" && text(c, "reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;
    let mut initializing = false;
    for (i, st) in list(pod, "status.initContainerStatuses").iter().enumerate() {
        let count = int(st, "restartCount");
        let finished = parse_time(text(st, "lastState.terminated.finishedAt"));
        restarts += count;
        later(&mut last_restart, finished);
        let sidecar = is_sidecar(text(st, "name"));
        if sidecar {
            sidecar_restarts += count;
            later(&mut last_sidecar_restart, finished);
        }
        let terminated = get(st, "state.terminated");
        let waiting_reason = text(st, "state.waiting.reason");
        if terminated.is_some_and(|t| int(t, "exitCode") == 0) {
            continue;
        }
        if sidecar && flag(st, "started") {
            if flag(st, "ready") {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = match text(t, "reason") {
                "" if int(t, "signal") != 0 => format!("Init:Signal:{}", int(t, "signal")),
                "" => format!("Init:ExitCode:{}", int(t, "exitCode")),
                r => format!("Init:{r}"),
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_condition(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for st in list(pod, "status.containerStatuses").iter().rev() {
            restarts += int(st, "restartCount");
            later(
                &mut last_restart,
                parse_time(text(st, "lastState.terminated.finishedAt")),
            );
            let waiting_reason = text(st, "state.waiting.reason");
            let terminated = get(st, "state.terminated");
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match text(t, "reason") {
                    "" if int(t, "signal") != 0 => format!("Signal:{}", int(t, "signal")),
                    "" => format!("ExitCode:{}", int(t, "exitCode")),
                    r => r.to_string(),
                };
            } else if flag(st, "ready") && get(st, "state.running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if !text(pod, "metadata.deletionTimestamp").is_empty() {
        if text(pod, "status.reason") == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration(now.as_nanosecond().saturating_sub(t.as_nanosecond()))
        ),
        _ => restarts.to_string(),
    };

    // podIPs[0] as kubectl prints it, falling back to the legacy single podIP.
    let pod_ip = list(pod, "status.podIPs")
        .first()
        .map(|p| text(p, "ip"))
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| text(pod, "status.podIP"));
    let gates = list(pod, "spec.readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = list(pod, "status.conditions");
        let true_count = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| text(c, "type") == text(g, "conditionType"))
                    .is_some_and(|c| text(c, "status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };

    vec![
        name(pod),
        Value::from(format!("{ready}/{total}")),
        Value::from(reason),
        Value::from(restarts_cell),
        age(pod, now),
        Value::from(or(pod_ip, "<none>")),
        Value::from(or(text(pod, "spec.nodeName"), "<none>")),
        Value::from(or(text(pod, "status.nominatedNodeName"), "<none>")),
        Value::from(readiness_gates),
    ]
}

fn node_row(node: &Value, now: Timestamp) -> Vec<Value> {
    let mut status: Vec<&str> = Vec::new();
    if let Some(c) = list(node, "status.conditions")
        .iter()
        .find(|c| text(c, "type") == "Ready")
    {
        status.push(if text(c, "status") == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    } else {
        status.push("Unknown");
    }
    if flag(node, "spec.unschedulable") {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<String> = get(node, "metadata.labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then(|| role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        list(node, "status.addresses")
            .iter()
            .find(|a| text(a, "type") == ty)
            .map(|a| text(a, "address"))
            .unwrap_or("<none>")
    };
    vec![
        name(node),
        Value::from(status.join(",")),
        Value::from(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        age(node, now),
        Value::from(text(node, "status.nodeInfo.kubeletVersion")),
        Value::from(address("InternalIP")),
        Value::from(address("ExternalIP")),
        Value::from(or(text(node, "status.nodeInfo.osImage"), "<unknown>")),
        Value::from(or(text(node, "status.nodeInfo.kernelVersion"), "<unknown>")),
        Value::from(or(
            text(node, "status.nodeInfo.containerRuntimeVersion"),
            "<unknown>",
        )),
    ]
}

fn namespace_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), Value::from(text(v, "status.phase")), age(v, now)]
}

fn service_row(svc: &Value, now: Timestamp) -> Vec<Value> {
    let svc_type = or(text(svc, "spec.type"), "ClusterIP");
    let cluster_ip = list(svc, "spec.clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(svc, "spec.clusterIP"));
    let external_ips: Vec<&str> = list(svc, "spec.externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ingress(get(svc, "status.loadBalancer"));
            let mut all: Vec<&str> = lb.split(',').filter(|s| !s.is_empty()).collect();
            all.extend(external_ips.iter().copied());
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(svc, "spec.externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = list(svc, "spec.ports")
        .iter()
        .map(|p| {
            let proto = or(text(p, "protocol"), "TCP");
            match opt_int(p, "nodePort").filter(|n| *n > 0) {
                Some(node_port) => format!("{}:{node_port}/{proto}", int(p, "port")),
                None => format!("{}/{proto}", int(p, "port")),
            }
        })
        .collect();
    vec![
        name(svc),
        Value::from(svc_type),
        Value::from(or(cluster_ip, "<none>")),
        Value::from(external),
        Value::from(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(svc, now),
        Value::from(format_labels(get(svc, "spec.selector"))),
    ]
}

fn endpoints_row(ep: &Value, now: Timestamp) -> Vec<Value> {
    let subsets = list(ep, "subsets");
    let cell = if subsets.is_empty() {
        "<none>".to_string()
    } else {
        let mut shown = Vec::new();
        let mut total = 0usize;
        for ss in subsets {
            let addresses = list(ss, "addresses");
            let ports = list(ss, "ports");
            if ports.is_empty() {
                total += addresses.len();
                shown.extend(addresses.iter().map(|a| text(a, "ip").to_string()));
                continue;
            }
            for port in ports {
                total += addresses.len();
                shown.extend(
                    addresses
                        .iter()
                        .map(|a| join_host_port(text(a, "ip"), int(port, "port"))),
                );
            }
        }
        list_with_more(&shown, total, 3, "")
    };
    vec![name(ep), Value::from(cell), age(ep, now)]
}

fn count_keys(v: &Value, path: &str) -> usize {
    get(v, path).and_then(Value::as_object).map_or(0, Map::len)
}

fn configmap_row(v: &Value, now: Timestamp) -> Vec<Value> {
    let data = count_keys(v, "data") + count_keys(v, "binaryData");
    vec![name(v), Value::from(data), age(v, now)]
}

fn secret_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(v),
        Value::from(text(v, "type")),
        Value::from(count_keys(v, "data")),
        age(v, now),
    ]
}

fn service_account_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), Value::from(list(v, "secrets").len()), age(v, now)]
}

/// Events of `v1` and of `events.k8s.io/v1`, whose fields are renamed (`regarding`, `note`,
/// `deprecated*`), print alike.
fn event_row(ev: &Value, now: Timestamp) -> Vec<Value> {
    let pick = |core: &str, v1: &str| or(text(ev, core), text(ev, v1));
    let involved = get(ev, "involvedObject")
        .or_else(|| get(ev, "regarding"))
        .cloned()
        .unwrap_or(Value::Null);
    let first_ts = pick("firstTimestamp", "deprecatedFirstTimestamp");
    let first = if first_ts.is_empty() {
        since(text(ev, "eventTime"), now)
    } else {
        since(first_ts, now)
    };
    let last_ts = pick("lastTimestamp", "deprecatedLastTimestamp");
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        since(last_ts, now)
    };
    let mut count = opt_int(ev, "count")
        .or_else(|| opt_int(ev, "deprecatedCount"))
        .unwrap_or(0);
    if let Some(series) = get(ev, "series") {
        last = since(text(series, "lastObservedTime"), now);
        count = int(series, "count");
    } else if count == 0 {
        count = 1;
    }
    let kind = text(&involved, "kind").to_lowercase();
    let target = match text(&involved, "name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = or(
        pick("source.component", "deprecatedSource.component"),
        text(ev, "reportingController"),
    );
    let instance = or(
        pick("source.host", "deprecatedSource.host"),
        text(ev, "reportingInstance"),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        Value::from(last),
        Value::from(text(ev, "type")),
        Value::from(text(ev, "reason")),
        Value::from(target),
        Value::from(text(&involved, "fieldPath")),
        Value::from(source),
        Value::from(pick("message", "note").trim()),
        Value::from(first),
        Value::from(count),
        name(ev),
    ]
}

fn storage_class_of(v: &Value, spec_path: &str) -> String {
    let beta = get(v, "metadata.annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str);
    beta.unwrap_or_else(|| text(v, spec_path)).to_string()
}

fn pv_row(pv: &Value, now: Timestamp) -> Vec<Value> {
    let claim = match get(pv, "spec.claimRef") {
        Some(r) => format!("{}/{}", text(r, "namespace"), text(r, "name")),
        None => String::new(),
    };
    let phase = if text(pv, "metadata.deletionTimestamp").is_empty() {
        text(pv, "status.phase")
    } else {
        "Terminating"
    };
    vec![
        name(pv),
        Value::from(quantity_or_zero(get(pv, "spec.capacity.storage"))),
        Value::from(access_modes(list(pv, "spec.accessModes"))),
        Value::from(text(pv, "spec.persistentVolumeReclaimPolicy")),
        Value::from(phase),
        Value::from(claim),
        Value::from(storage_class_of(pv, "spec.storageClassName")),
        Value::from(or(text(pv, "spec.volumeAttributesClassName"), "<unset>")),
        Value::from(text(pv, "status.reason")),
        age(pv, now),
        Value::from(or(text(pv, "spec.volumeMode"), "<unset>")),
    ]
}

fn pvc_row(pvc: &Value, now: Timestamp) -> Vec<Value> {
    let phase = if text(pvc, "metadata.deletionTimestamp").is_empty() {
        text(pvc, "status.phase")
    } else {
        "Terminating"
    };
    let volume = text(pvc, "spec.volumeName");
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity_or_zero(get(pvc, "status.capacity.storage")),
            access_modes(list(pvc, "status.accessModes")),
        )
    };
    vec![
        name(pvc),
        Value::from(phase),
        Value::from(volume),
        Value::from(capacity),
        Value::from(modes),
        Value::from(storage_class_of(pvc, "spec.storageClassName")),
        Value::from(or(text(pvc, "spec.volumeAttributesClassName"), "<unset>")),
        age(pvc, now),
        Value::from(or(text(pvc, "spec.volumeMode"), "<unset>")),
    ]
}

fn resource_quota_row(rq: &Value, now: Timestamp) -> Vec<Value> {
    let hard = get(rq, "status.hard")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    // serde_json maps iterate in key order, as the Go printer sorts resource names.
    for (resource, quantity) in &hard {
        let used = quantity_or_zero(get(rq, "status.used").and_then(|u| u.get(resource)));
        let entry = format!("{resource}: {used}/{}", quantity_or_zero(Some(quantity)));
        let is_limit = resource
            .split_once('.')
            .is_some_and(|(head, _)| head == "limits");
        if is_limit {
            limits.push(entry);
        } else {
            requests.push(entry);
        }
    }
    vec![
        name(rq),
        age(rq, now),
        Value::from(requests.join(", ")),
        Value::from(limits.join(", ")),
    ]
}

fn rc_row(rc: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(get(rc, "spec.template.spec"));
    vec![
        name(rc),
        Value::from(int(rc, "spec.replicas")),
        Value::from(int(rc, "status.replicas")),
        Value::from(int(rc, "status.readyReplicas")),
        age(rc, now),
        names,
        images,
        Value::from(format_labels(get(rc, "spec.selector"))),
    ]
}

fn deployment_row(d: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(get(d, "spec.template.spec"));
    let selector =
        match LabelSelector::from_label_selector(get(d, "spec.selector").unwrap_or(&Value::Null)) {
            Ok(s) => s.to_string(),
            Err(_) => "<invalid>".to_string(),
        };
    vec![
        name(d),
        Value::from(format!(
            "{}/{}",
            int(d, "status.readyReplicas"),
            int(d, "spec.replicas")
        )),
        Value::from(int(d, "status.updatedReplicas")),
        Value::from(int(d, "status.availableReplicas")),
        age(d, now),
        names,
        images,
        Value::from(selector),
    ]
}

fn replicaset_row(rs: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(get(rs, "spec.template.spec"));
    vec![
        name(rs),
        Value::from(int(rs, "spec.replicas")),
        Value::from(int(rs, "status.replicas")),
        Value::from(int(rs, "status.readyReplicas")),
        age(rs, now),
        names,
        images,
        Value::from(format_label_selector(get(rs, "spec.selector"))),
    ]
}

fn daemonset_row(ds: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(get(ds, "spec.template.spec"));
    vec![
        name(ds),
        Value::from(int(ds, "status.desiredNumberScheduled")),
        Value::from(int(ds, "status.currentNumberScheduled")),
        Value::from(int(ds, "status.numberReady")),
        Value::from(int(ds, "status.updatedNumberScheduled")),
        Value::from(int(ds, "status.numberAvailable")),
        Value::from(format_labels(get(ds, "spec.template.spec.nodeSelector"))),
        age(ds, now),
        names,
        images,
        Value::from(format_label_selector(get(ds, "spec.selector"))),
    ]
}

fn statefulset_row(sts: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(get(sts, "spec.template.spec"));
    vec![
        name(sts),
        Value::from(format!(
            "{}/{}",
            int(sts, "status.readyReplicas"),
            int(sts, "spec.replicas")
        )),
        age(sts, now),
        names,
        images,
    ]
}

fn controller_revision_row(cr: &Value, now: Timestamp) -> Vec<Value> {
    let controller = list(cr, "metadata.ownerReferences")
        .iter()
        .find(|r| flag(r, "controller"))
        .map(|r| {
            let group = text(r, "apiVersion")
                .split_once('/')
                .map(|(g, _)| g)
                .unwrap_or("");
            let kind = text(r, "kind");
            let group_kind = if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            };
            if group_kind.is_empty() {
                text(r, "name").to_string()
            } else {
                format!("{}/{}", group_kind.to_lowercase(), text(r, "name"))
            }
        })
        .unwrap_or_else(|| "<none>".to_string());
    vec![
        name(cr),
        Value::from(controller),
        Value::from(int(cr, "revision")),
        age(cr, now),
    ]
}

fn job_row(job: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int(job, "status.succeeded");
    let completions = match opt_int(job, "spec.completions") {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(job, "spec.parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (
        parse_time(text(job, "status.startTime")),
        parse_time(text(job, "status.completionTime")),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => {
            human_duration(now.as_nanosecond().saturating_sub(start.as_nanosecond()))
        }
        (Some(start), Some(end)) => {
            human_duration(end.as_nanosecond().saturating_sub(start.as_nanosecond()))
        }
    };
    // hasJobCondition looks at the first condition of a type only.
    let cond = |ty: &str| {
        list(job, "status.conditions")
            .iter()
            .find(|c| text(c, "type") == ty)
            .is_some_and(|c| text(c, "status") == "True")
    };
    let status = if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if !text(job, "metadata.deletionTimestamp").is_empty() {
        "Terminating"
    } else if cond("Suspended") {
        "Suspended"
    } else if cond("FailureTarget") {
        "FailureTarget"
    } else if cond("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (names, images) = container_cells(get(job, "spec.template.spec"));
    vec![
        name(job),
        Value::from(status),
        Value::from(completions),
        Value::from(duration),
        age(job, now),
        names,
        images,
        Value::from(format_label_selector(get(job, "spec.selector"))),
    ]
}

fn cronjob_row(cj: &Value, now: Timestamp) -> Vec<Value> {
    let last = match text(cj, "status.lastScheduleTime") {
        "" => "<none>".to_string(),
        t => since(t, now),
    };
    let suspend = match get(cj, "spec.suspend").and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let (names, images) = container_cells(get(cj, "spec.jobTemplate.spec.template.spec"));
    vec![
        name(cj),
        Value::from(text(cj, "spec.schedule")),
        Value::from(or(text(cj, "spec.timeZone"), "<none>")),
        Value::from(suspend),
        Value::from(list(cj, "status.active").len()),
        Value::from(last),
        age(cj, now),
        names,
        images,
        Value::from(format_label_selector(get(
            cj,
            "spec.jobTemplate.spec.selector",
        ))),
    ]
}

fn lease_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(v),
        Value::from(text(v, "spec.holderIdentity")),
        age(v, now),
    ]
}

fn endpointslice_row(es: &Value, now: Timestamp) -> Vec<Value> {
    let ports = list(es, "ports");
    let port_names: Vec<String> = ports
        .iter()
        .map(|p| match opt_int(p, "port") {
            Some(n) => n.to_string(),
            None => or(text(p, "name"), "*").to_string(),
        })
        .collect();
    let addresses: Vec<String> = list(es, "endpoints")
        .iter()
        .flat_map(|e| list(e, "addresses").iter())
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    vec![
        name(es),
        Value::from(text(es, "addressType")),
        Value::from(list_with_more(&port_names, port_names.len(), 3, "<unset>")),
        Value::from(list_with_more(&addresses, addresses.len(), 3, "<unset>")),
        age(es, now),
    ]
}

fn ingress_row(ing: &Value, now: Timestamp) -> Vec<Value> {
    let rules = list(ing, "spec.rules");
    let hosts: Vec<String> = rules
        .iter()
        .take(3)
        .map(|r| text(r, "host"))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if rules.len() > 3 {
        format!("{} + {} more...", hosts.join(","), rules.len() - 3)
    } else {
        hosts.join(",")
    };
    let ports = if list(ing, "spec.tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(ing),
        Value::from(or(text(ing, "spec.ingressClassName"), "<none>")),
        Value::from(hosts),
        Value::from(load_balancer_ingress(get(ing, "status.loadBalancer"))),
        Value::from(ports),
        age(ing, now),
    ]
}

fn ingress_class_row(ic: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = match get(ic, "spec.parameters") {
        Some(p) => {
            let group = text(p, "apiGroup");
            let kind = if group.is_empty() {
                text(p, "kind").to_string()
            } else {
                format!("{}.{group}", text(p, "kind"))
            };
            format!("{kind}/{}", text(p, "name"))
        }
        None => "<none>".to_string(),
    };
    vec![
        name(ic),
        Value::from(text(ic, "spec.controller")),
        Value::from(parameters),
        age(ic, now),
    ]
}

fn network_policy_row(np: &Value, now: Timestamp) -> Vec<Value> {
    // podSelector is required; an absent one means "all pods" like `{}`.
    let sel = get(np, "spec.podSelector")
        .cloned()
        .unwrap_or_else(|| json!({}));
    vec![
        name(np),
        Value::from(format_label_selector(Some(&sel))),
        age(np, now),
    ]
}

fn role_binding_row(rb: &Value, now: Timestamp) -> Vec<Value> {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut service_accounts = Vec::new();
    for s in list(rb, "subjects") {
        match text(s, "kind") {
            "ServiceAccount" => {
                service_accounts.push(format!("{}/{}", text(s, "namespace"), text(s, "name")))
            }
            "User" => users.push(text(s, "name").to_string()),
            "Group" => groups.push(text(s, "name").to_string()),
            _ => {}
        }
    }
    vec![
        name(rb),
        Value::from(format!(
            "{}/{}",
            text(rb, "roleRef.kind"),
            text(rb, "roleRef.name")
        )),
        age(rb, now),
        Value::from(users.join(", ")),
        Value::from(groups.join(", ")),
        Value::from(service_accounts.join(", ")),
    ]
}

fn storage_class_row(sc: &Value, now: Timestamp) -> Vec<Value> {
    let annotations = get(sc, "metadata.annotations");
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"));
    let mut display = text(sc, "metadata.name").to_string();
    if is_default {
        display.push_str(" (default)");
    }
    vec![
        Value::from(display),
        Value::from(text(sc, "provisioner")),
        Value::from(or(text(sc, "reclaimPolicy"), "Delete")),
        Value::from(or(text(sc, "volumeBindingMode"), "Immediate")),
        Value::from(flag(sc, "allowVolumeExpansion")),
        age(sc, now),
    ]
}

fn pdb_row(pdb: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(pdb),
        Value::from(int_or_string(get(pdb, "spec.minAvailable")).unwrap_or_else(|| "N/A".into())),
        Value::from(int_or_string(get(pdb, "spec.maxUnavailable")).unwrap_or_else(|| "N/A".into())),
        Value::from(int(pdb, "status.disruptionsAllowed")),
        age(pdb, now),
    ]
}

fn priority_class_row(pc: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(pc),
        Value::from(int(pc, "value")),
        Value::from(flag(pc, "globalDefault")),
        age(pc, now),
        Value::from(text(pc, "preemptionPolicy")),
    ]
}

fn webhook_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), Value::from(list(v, "webhooks").len()), age(v, now)]
}

fn runtime_class_row(v: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(v), Value::from(text(v, "handler")), age(v, now)]
}

fn csr_row(csr: &Value, now: Timestamp) -> Vec<Value> {
    let conditions = list(csr, "status.conditions");
    let has = |ty: &str| conditions.iter().any(|c| text(c, "type") == ty);
    let mut status = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        status.push_str(",Failed");
    }
    if !text(csr, "status.certificate").is_empty() {
        status.push_str(",Issued");
    }
    let requested = match opt_int(csr, "spec.expirationSeconds") {
        Some(secs) => human_duration(i128::from(secs) * 1_000_000_000),
        None => "<none>".to_string(),
    };
    vec![
        name(csr),
        age(csr, now),
        Value::from(or(text(csr, "spec.signerName"), "<none>")),
        Value::from(text(csr, "spec.username")),
        Value::from(requested),
        Value::from(status),
    ]
}

// ---------------------------------------------------------------------------------------------
// Custom resources
// ---------------------------------------------------------------------------------------------

/// One parsed `additionalPrinterColumns` entry.
struct CustomColumn {
    definition: Value,
    ty: String,
    path: Option<Vec<Segment>>,
}

struct CustomColumns {
    columns: Vec<CustomColumn>,
}

impl CustomColumns {
    fn new(cols: &[Value]) -> Self {
        let default_age = [json!({
            "name": "Age",
            "type": "date",
            "description": CREATED_DESC,
            "jsonPath": ".metadata.creationTimestamp",
        })];
        let cols = if cols.is_empty() {
            &default_age[..]
        } else {
            cols
        };
        let columns = cols
            .iter()
            .map(|c| {
                let json_path = text(c, "jsonPath");
                let description = match text(c, "description") {
                    "" => format!(
                        "Custom resource definition column (in JSONPath format): {json_path}"
                    ),
                    d => d.to_string(),
                };
                let ty = or(text(c, "type"), "string").to_string();
                CustomColumn {
                    definition: json!({
                        "name": text(c, "name"),
                        "type": ty,
                        "format": text(c, "format"),
                        "description": description,
                        "priority": int(c, "priority"),
                    }),
                    ty,
                    path: parse_json_path(json_path),
                }
            })
            .collect();
        Self { columns }
    }

    fn definitions(&self) -> Vec<Value> {
        std::iter::once(NAME.to_json())
            .chain(self.columns.iter().map(|c| c.definition.clone()))
            .collect()
    }

    fn cells(&self, item: &Value, now: Timestamp) -> Vec<Value> {
        std::iter::once(name(item))
            .chain(self.columns.iter().map(|c| {
                let found = c
                    .path
                    .as_deref()
                    .and_then(|p| eval_json_path(item, p).into_iter().next());
                match found {
                    Some(v) => custom_cell(&c.ty, v, now),
                    None => Value::Null,
                }
            }))
            .collect()
    }
}

/// A cell of a custom column, typed as the apiextensions table convertor does.
fn custom_cell(ty: &str, v: &Value, now: Timestamp) -> Value {
    match (ty, v) {
        (_, Value::Null) => Value::Null,
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, Value::from),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => match parse_time(s) {
            Some(t) => Value::from(human_duration(
                now.as_nanosecond().saturating_sub(t.as_nanosecond()),
            )),
            None => Value::from("<invalid>"),
        },
        ("integer" | "number" | "boolean" | "date", _) => Value::Null,
        (_, Value::String(s)) => Value::from(s.clone()),
        (_, other) => Value::from(other.to_string()),
    }
}

/// One step of the JSONPath subset CRD printer columns use.
#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Field(String),
    Index(i64),
    Wildcard,
    Filter {
        path: Vec<Segment>,
        negate: bool,
        value: Option<Value>,
    },
}

/// Parses `.a.b`, `.a[0]`, `.a[*].b`, `.a['x.y']`, `.a\.b`,
/// `.a[?(@.type=="Ready")].status` (also `!=`, single quotes, numbers, booleans, bare `@.x`);
/// an optional surrounding `{}` is accepted. `None` for anything else.
fn parse_json_path(path: &str) -> Option<Vec<Segment>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path)
        .trim();
    let path = path.strip_prefix('$').unwrap_or(path);
    let chars: Vec<char> = path.chars().collect();
    let mut segs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'.') {
                    return None; // recursive descent is not supported
                }
                let mut field = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    field.push(chars[i]);
                    i += 1;
                }
                match field.as_str() {
                    "" => {
                        if i < chars.len() {
                            return None;
                        }
                    }
                    "*" => segs.push(Segment::Wildcard),
                    _ => segs.push(Segment::Field(field)),
                }
            }
            '[' => {
                let close = find_bracket_end(&chars, i)?;
                let inner: String = chars[i + 1..close].iter().collect();
                segs.push(parse_bracket(inner.trim())?);
                i = close + 1;
            }
            _ => return None,
        }
    }
    Some(segs)
}

fn find_bracket_end(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(j);
                    }
                }
                _ => {}
            },
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Option<Segment> {
    if inner == "*" {
        return Some(Segment::Wildcard);
    }
    if let Some(key) = unquote(inner) {
        return Some(Segment::Field(key.to_string()));
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Segment::Index(n));
    }
    let expr = inner.strip_prefix('?')?.trim();
    let expr = expr.strip_prefix('(')?.strip_suffix(')')?.trim();
    let (lhs, negate, rhs) = if let Some((l, r)) = expr.split_once("!=") {
        (l, true, Some(r))
    } else if let Some((l, r)) = expr.split_once("==") {
        (l, false, Some(r))
    } else {
        (expr, false, None)
    };
    let rel = lhs.trim().strip_prefix('@')?;
    let path = parse_json_path(rel)?;
    let value = match rhs.map(str::trim) {
        None => None,
        Some(r) => Some(match unquote(r) {
            Some(s) => Value::from(s),
            None => serde_json::from_str::<Value>(r).ok()?,
        }),
    };
    Some(Segment::Filter {
        path,
        negate,
        value,
    })
}

fn eval_json_path<'a>(root: &'a Value, segs: &[Segment]) -> Vec<&'a Value> {
    let mut current = vec![root];
    for seg in segs {
        let mut next = Vec::new();
        for v in current {
            match seg {
                Segment::Field(f) => next.extend(v.get(f.as_str())),
                Segment::Index(n) => {
                    if let Some(arr) = v.as_array() {
                        let idx = if *n < 0 {
                            i64::try_from(arr.len()).ok().map(|len| len + n)
                        } else {
                            Some(*n)
                        };
                        next.extend(
                            idx.and_then(|i| usize::try_from(i).ok())
                                .and_then(|i| arr.get(i)),
                        );
                    }
                }
                Segment::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(o) => next.extend(o.values()),
                    _ => {}
                },
                Segment::Filter {
                    path,
                    negate,
                    value,
                } => {
                    if let Some(arr) = v.as_array() {
                        next.extend(arr.iter().filter(|el| {
                            let found = eval_json_path(el, path).into_iter().next();
                            match (value, found) {
                                (None, found) => found.is_some_and(|f| !f.is_null()),
                                (Some(_), None) => false,
                                (Some(want), Some(got)) => json_eq(want, got) != *negate,
                            }
                        }));
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().expect("valid timestamp")
    }

    fn gvk(group: &str, version: &str, kind: &str) -> GroupVersionKind {
        GroupVersionKind::gvk(group, version, kind)
    }

    fn column_names(t: &Value) -> Vec<String> {
        t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn wide_names(t: &Value) -> Vec<String> {
        t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .filter(|c| c["priority"] == 1)
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn cells(t: &Value, row: usize) -> Vec<Value> {
        t["rows"][row]["cells"].as_array().expect("cells").clone()
    }

    fn one(kind: (&str, &str), obj: Value) -> Value {
        to_table(
            &gvk(kind.0, "v1", kind.1),
            &[obj],
            now(),
            IncludeObject::Metadata,
            None,
        )
    }

    #[test]
    fn human_durations_match_apimachinery() {
        let s = |secs: i128| human_duration(secs * 1_000_000_000);
        assert_eq!(s(-5), "<invalid>");
        assert_eq!(human_duration(-500_000_000), "0s");
        assert_eq!(s(0), "0s");
        assert_eq!(s(45), "45s");
        assert_eq!(s(119), "119s");
        assert_eq!(s(120), "2m");
        assert_eq!(s(125), "2m5s");
        assert_eq!(s(5 * 60), "5m");
        assert_eq!(s(15 * 60 + 10), "15m");
        assert_eq!(s(179 * 60), "179m");
        assert_eq!(s(3 * 3600 + 2 * 60), "3h2m");
        assert_eq!(s(5 * 3600), "5h");
        assert_eq!(s(20 * 3600), "20h");
        assert_eq!(s(2 * 86400), "2d");
        assert_eq!(s(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(s(30 * 86400), "30d");
        assert_eq!(s(800 * 86400), "2y70d");
        assert_eq!(s(365 * 3 * 86400), "3y");
        assert_eq!(s(365 * 10 * 86400), "10y");
    }

    #[test]
    fn table_envelope_and_include_object() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": {}});
        let t = one(("", "Pod"), pod.clone());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["rows"][0]["object"]["metadata"]["uid"], "u");

        let full = to_table(
            &gvk("", "v1", "Pod"),
            std::slice::from_ref(&pod),
            now(),
            IncludeObject::Object,
            None,
        );
        assert_eq!(full["rows"][0]["object"], pod);
        let none = to_table(
            &gvk("", "v1", "Pod"),
            &[pod],
            now(),
            IncludeObject::None,
            None,
        );
        assert!(none["rows"][0].get("object").is_none());
        let empty = to_table(
            &gvk("", "v1", "Pod"),
            &[],
            now(),
            IncludeObject::Metadata,
            None,
        );
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
        assert_eq!(IncludeObject::parse("bogus"), None);
        assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    }

    #[test]
    fn accept_header_detection() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(wants_table(
            "application/json; as=Table; v=v1; g=meta.k8s.io"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn running_pod() {
        let pod = json!({
            "metadata": {"name": "web-7d4b9c-x2x", "namespace": "default",
                         "creationTimestamp": "2024-05-01T09:00:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.25"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
                "containerStatuses": [{
                    "name": "web", "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2024-05-01T09:00:05Z"}}
                }]
            }
        });
        let t = one(("", "Pod"), pod);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(
            wide_names(&t),
            ["IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][3]["type"], "string");
        assert_eq!(
            cells(&t, 0),
            [
                json!("web-7d4b9c-x2x"),
                json!("1/1"),
                json!("Running"),
                json!("0"),
                json!("3h"),
                json!("10.42.0.7"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert!(t["rows"][0].get("conditions").is_none());
    }

    #[test]
    fn crashloop_pod() {
        let pod = json!({
            "metadata": {"name": "api", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"containers": [{"name": "api", "image": "api:1"}, {"name": "proxy", "image": "envoy"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "api", "ready": false, "restartCount": 5,
                     "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                     "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                  "finishedAt": "2024-05-01T11:55:00Z"}}},
                    {"name": "proxy", "ready": true, "restartCount": 0,
                     "state": {"running": {"startedAt": "2024-05-01T11:00:03Z"}}}
                ]
            }
        });
        let c = cells(&one(("", "Pod"), pod), 0);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "5 (5m ago)");
        assert_eq!(c[4], "60m");
    }

    #[test]
    fn init_container_pods() {
        let waiting = json!({
            "metadata": {"name": "db", "creationTimestamp": "2024-05-01T11:59:30Z"},
            "spec": {"initContainers": [{"name": "migrate"}, {"name": "seed"}],
                     "containers": [{"name": "db"}]},
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "migrate", "ready": false, "restartCount": 0,
                     "state": {"running": {"startedAt": "2024-05-01T11:59:35Z"}}},
                    {"name": "seed", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
                "containerStatuses": [{"name": "db", "ready": false, "restartCount": 0,
                                       "state": {"waiting": {"reason": "PodInitializing"}}}]
            }
        });
        let c = cells(&one(("", "Pod"), waiting), 0);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "Init:0/2");
        assert_eq!(c[4], "30s");

        let failed_init = json!({
            "metadata": {"name": "db"},
            "spec": {"initContainers": [{"name": "migrate"}], "containers": [{"name": "db"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "migrate", "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 2, "finishedAt": "2024-05-01T11:59:00Z"}}}
            ]}
        });
        let c = cells(&one(("", "Pod"), failed_init), 0);
        assert_eq!(c[2], "Init:CrashLoopBackOff");
        assert_eq!(c[3], "3 (60s ago)");
        assert_eq!(c[4], "<unknown>");

        let init_exit = json!({
            "metadata": {"name": "x"},
            "spec": {"initContainers": [{"name": "a"}], "containers": [{"name": "b"}]},
            "status": {"initContainerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 3}}}]}
        });
        assert_eq!(cells(&one(("", "Pod"), init_exit), 0)[2], "Init:ExitCode:3");
    }

    #[test]
    fn sidecar_init_container_counts_as_container() {
        let pod = json!({
            "metadata": {"name": "s"},
            "spec": {"initContainers": [{"name": "log", "restartPolicy": "Always"}],
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "log", "ready": true, "started": true, "restartCount": 1,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T10:00:00Z"}}}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        let c = cells(&one(("", "Pod"), pod), 0);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "1 (120m ago)");
    }

    #[test]
    fn completed_terminating_and_gated_pods() {
        let done = json!({
            "metadata": {"name": "job-x"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "ready": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let t = one(("", "Pod"), done);
        assert_eq!(cells(&t, 0)[2], "Completed");
        assert_eq!(cells(&t, 0)[1], "0/1");
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");

        let deleting = json!({
            "metadata": {"name": "p", "deletionTimestamp": "2024-05-01T11:59:00Z"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true, "state": {"running": {}}}]}
        });
        assert_eq!(cells(&one(("", "Pod"), deleting), 0)[2], "Terminating");

        let gated = json!({
            "metadata": {"name": "g"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}
        });
        assert_eq!(cells(&one(("", "Pod"), gated), 0)[2], "SchedulingGated");

        let oom = json!({
            "metadata": {"name": "o"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
        });
        assert_eq!(cells(&one(("", "Pod"), oom), 0)[2], "OOMKilled");

        let gates = json!({
            "metadata": {"name": "r"}, "spec": {"containers": [], "readinessGates": [
                {"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]},
            "status": {"phase": "Running", "conditions": [{"type": "example.com/lb", "status": "True"}]}
        });
        assert_eq!(cells(&one(("", "Pod"), gates), 0)[8], "1/2");
    }

    #[test]
    fn deployment_row_and_columns() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-04-29T12:00:00Z"},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [
                         {"name": "web", "image": "nginx:1.25"}, {"name": "sidecar", "image": "busybox"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let t = one(("apps", "Deployment"), d);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(wide_names(&t), ["Containers", "Images", "Selector"]);
        assert_eq!(
            cells(&t, 0),
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("2d"),
                json!("web,sidecar"),
                json!("nginx:1.25,busybox"),
                json!("app=web")
            ]
        );
    }

    #[test]
    fn node_row_and_columns() {
        let n = json!({
            "metadata": {"name": "node-1", "creationTimestamp": "2024-04-01T12:00:00Z",
                         "labels": {"node-role.kubernetes.io/control-plane": "",
                                    "node-role.kubernetes.io/master": "", "kubernetes.io/hostname": "node-1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "node-1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-18-amd64", "containerRuntimeVersion": "containerd://1.7.13"}
            }
        });
        let t = one(("", "Node"), n);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        assert_eq!(
            cells(&t, 0),
            [
                json!("node-1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,master"),
                json!("30d"),
                json!("v1.33.1"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12 (bookworm)"),
                json!("6.1.0-18-amd64"),
                json!("containerd://1.7.13")
            ]
        );
        let bare = cells(&one(("", "Node"), json!({"metadata": {"name": "n2"}})), 0);
        assert_eq!(bare[1], "Unknown");
        assert_eq!(bare[2], "<none>");
        assert_eq!(bare[7], "<unknown>");
        let not_ready = json!({"metadata": {"name": "n3", "labels": {"kubernetes.io/role": "worker"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        let c = cells(&one(("", "Node"), not_ready), 0);
        assert_eq!(c[1], "NotReady");
        assert_eq!(c[2], "worker");
    }

    #[test]
    fn services() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:58:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.15", "clusterIPs": ["10.43.0.15"],
                     "selector": {"tier": "fe", "app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        });
        let t = one(("", "Service"), svc);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(
            cells(&t, 0),
            [
                json!("web"),
                json!("NodePort"),
                json!("10.43.0.15"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("2m"),
                json!("app=web,tier=fe")
            ]
        );
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.2",
            "ports": [{"port": 443}]}, "status": {"loadBalancer": {}}});
        let c = cells(&one(("", "Service"), lb), 0);
        assert_eq!(c[3], "<pending>");
        assert_eq!(c[4], "443/TCP");
        assert_eq!(c[6], "<none>");
        let lb2 = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}});
        let c = cells(&one(("", "Service"), lb2), 0);
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], "203.0.113.9");
        assert_eq!(c[4], "<none>");
        let ext = json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(cells(&one(("", "Service"), ext), 0)[3], "db.example.com");
        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(cells(&one(("", "Service"), headless), 0)[2], "None");
    }

    #[test]
    fn workloads() {
        let rs = json!({"metadata": {"name": "web-7d4b9c"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d4b9c"}},
                     "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
            "status": {"replicas": 2, "readyReplicas": 1}});
        let c = cells(&one(("apps", "ReplicaSet"), rs), 0);
        assert_eq!(c[1..4], [json!(2), json!(2), json!(1)]);
        assert_eq!(c[7], "app=web,pod-template-hash=7d4b9c");

        let ds = json!({"metadata": {"name": "svclb"},
            "spec": {"selector": {"matchLabels": {"app": "svclb"}},
                     "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": []}}},
            "status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1,
                       "updatedNumberScheduled": 1, "numberAvailable": 1}});
        let t = one(("apps", "DaemonSet"), ds);
        assert_eq!(
            column_names(&t)[1..8],
            [
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age"
            ]
        );
        assert_eq!(cells(&t, 0)[6], "kubernetes.io/os=linux");

        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 3}});
        let t = one(("apps", "StatefulSet"), sts);
        assert_eq!(
            column_names(&t),
            ["Name", "Ready", "Age", "Containers", "Images"]
        );
        assert_eq!(cells(&t, 0)[1], "3/3");

        let cr = json!({"metadata": {"name": "svclb-5f7c", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "svclb", "controller": true}]}, "revision": 1});
        let c = cells(&one(("apps", "ControllerRevision"), cr), 0);
        assert_eq!(c[1], "daemonset.apps/svclb");
        assert_eq!(c[2], 1);
    }

    #[test]
    fn jobs_and_cronjobs() {
        let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2024-05-01T11:50:00Z"},
            "spec": {"completions": 1, "parallelism": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}},
                     "template": {"spec": {"containers": [{"name": "pi", "image": "perl:5.34"}]}}},
            "status": {"succeeded": 1, "startTime": "2024-05-01T11:50:00Z", "completionTime": "2024-05-01T11:50:42Z",
                       "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
        let t = one(("batch", "Job"), job);
        assert_eq!(
            column_names(&t),
            [
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            cells(&t, 0)[..5],
            [
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("42s"),
                json!("10m")
            ]
        );
        let running = json!({"metadata": {"name": "r"}, "spec": {"parallelism": 3},
            "status": {"startTime": "2024-05-01T11:00:00Z"}});
        let c = cells(&one(("batch", "Job"), running), 0);
        assert_eq!(c[1], "Running");
        assert_eq!(c[2], "0/1 of 3");
        assert_eq!(c[3], "60m");
        assert_eq!(c[7], "<none>");

        let cj = json!({"metadata": {"name": "backup"}, "spec": {"schedule": "0 3 * * *", "suspend": false,
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "restic"}]}}}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": "2024-05-01T03:00:00Z"}});
        let t = one(("batch", "CronJob"), cj);
        assert_eq!(
            column_names(&t)[..7],
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age"
            ]
        );
        assert_eq!(
            cells(&t, 0)[1..6],
            [
                json!("0 3 * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("9h")
            ]
        );
    }

    #[test]
    fn events_core_and_events_v1() {
        let ev = json!({
            "metadata": {"name": "web.17c", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{web}"},
            "reason": "Pulled", "type": "Normal", "message": "Successfully pulled image \"nginx\"\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2024-05-01T11:40:00Z", "lastTimestamp": "2024-05-01T11:55:00Z", "count": 3
        });
        let t = one(("", "Event"), ev);
        assert_eq!(
            column_names(&t),
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        assert_eq!(
            wide_names(&t),
            ["Subobject", "Source", "First Seen", "Count", "Name"]
        );
        assert_eq!(
            cells(&t, 0),
            [
                json!("5m"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web-1"),
                json!("spec.containers{web}"),
                json!("kubelet, node-1"),
                json!("Successfully pulled image \"nginx\""),
                json!("20m"),
                json!(3),
                json!("web.17c")
            ]
        );

        let v1 = json!({
            "metadata": {"name": "n.1"},
            "regarding": {"kind": "Node", "name": "node-1"},
            "reason": "Starting", "type": "Normal", "note": "Starting kubelet.",
            "eventTime": "2024-05-01T11:58:59.876543Z",
            "reportingController": "kubelet", "reportingInstance": "node-1"
        });
        let c = cells(
            &to_table(
                &gvk("events.k8s.io", "v1", "Event"),
                &[v1],
                now(),
                IncludeObject::None,
                None,
            ),
            0,
        );
        assert_eq!(c[0], "60s");
        assert_eq!(c[3], "node/node-1");
        assert_eq!(c[5], "kubelet, node-1");
        assert_eq!(c[6], "Starting kubelet.");
        assert_eq!(c[7], "60s");
        assert_eq!(c[8], 1);
    }

    #[test]
    fn config_and_storage_kinds() {
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cells(&one(("", "ConfigMap"), cm), 0)[1], 3);
        let s = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}});
        assert_eq!(
            cells(&one(("", "Secret"), s), 0)[1..3],
            [json!("Opaque"), json!(1)]
        );
        let sa = json!({"metadata": {"name": "default"}});
        assert_eq!(cells(&one(("", "ServiceAccount"), sa), 0)[1], 0);
        let ns = json!({"metadata": {"name": "kube-system"}, "status": {"phase": "Active"}});
        assert_eq!(cells(&one(("", "Namespace"), ns), 0)[1], "Active");

        let pv = json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": "default", "name": "data"}, "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}});
        let c = cells(&one(("", "PersistentVolume"), pv), 0);
        assert_eq!(
            c[1..9],
            [
                json!("10Gi"),
                json!("RWO,RWX"),
                json!("Retain"),
                json!("Bound"),
                json!("default/data"),
                json!("local-path"),
                json!("<unset>"),
                json!("")
            ]
        );
        assert_eq!(c[10], "Filesystem");

        let pvc = json!({"metadata": {"name": "data"}, "spec": {"volumeName": "pv1", "storageClassName": "local-path"},
            "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"]}});
        let c = cells(&one(("", "PersistentVolumeClaim"), pvc), 0);
        assert_eq!(
            c[1..7],
            [
                json!("Bound"),
                json!("pv1"),
                json!("10Gi"),
                json!("RWO"),
                json!("local-path"),
                json!("<unset>")
            ]
        );
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let c = cells(&one(("", "PersistentVolumeClaim"), pending), 0);
        assert_eq!(c[2..5], [json!(""), json!(""), json!("")]);

        let sc = json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        let c = cells(&one(("storage.k8s.io", "StorageClass"), sc), 0);
        assert_eq!(
            c[..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );

        let rq = json!({"metadata": {"name": "q"}, "status": {
            "hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "4Gi"},
            "used": {"pods": "3", "requests.cpu": "500m"}}});
        let c = cells(&one(("", "ResourceQuota"), rq), 0);
        assert_eq!(c[2], "pods: 3/10, requests.cpu: 500m/2");
        assert_eq!(c[3], "limits.memory: 0/4Gi");
    }

    #[test]
    fn networking_rbac_and_policy_kinds() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [
            {"ip": "10.42.0.7"}, {"ip": "10.42.0.8"}, {"ip": "10.42.0.9"}, {"ip": "10.42.0.10"}],
            "ports": [{"port": 8080}]}]});
        assert_eq!(
            cells(&one(("", "Endpoints"), ep), 0)[1],
            "10.42.0.7:8080,10.42.0.8:8080,10.42.0.9:8080 + 1 more..."
        );
        assert_eq!(
            cells(
                &one(("", "Endpoints"), json!({"metadata": {"name": "x"}})),
                0
            )[1],
            "<none>"
        );

        let es = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.42.0.7"]}, {"addresses": ["10.42.0.8"]}]});
        assert_eq!(
            cells(&one(("discovery.k8s.io", "EndpointSlice"), es), 0)[1..4],
            [json!("IPv4"), json!("8080"), json!("10.42.0.7,10.42.0.8")]
        );
        let empty_es = json!({"metadata": {"name": "e"}, "addressType": "IPv4"});
        assert_eq!(
            cells(&one(("discovery.k8s.io", "EndpointSlice"), empty_es), 0)[2..4],
            [json!("<unset>"), json!("<unset>")]
        );

        let ing = json!({"metadata": {"name": "web"}, "spec": {"ingressClassName": "traefik",
            "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}], "tls": [{"hosts": ["a.example.com"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.10"}]}}});
        assert_eq!(
            cells(&one(("networking.k8s.io", "Ingress"), ing), 0)[1..5],
            [
                json!("traefik"),
                json!("a.example.com,b.example.com"),
                json!("192.168.1.10"),
                json!("80, 443")
            ]
        );

        let np = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(
            cells(&one(("networking.k8s.io", "NetworkPolicy"), np), 0)[1],
            "<none>"
        );

        let rb = json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]});
        let t = one(("rbac.authorization.k8s.io", "RoleBinding"), rb);
        assert_eq!(
            column_names(&t),
            ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
        );
        assert_eq!(cells(&t, 0)[1], "ClusterRole/view");
        assert_eq!(
            cells(&t, 0)[3..6],
            [json!("alice"), json!("devs"), json!("tools/ci")]
        );

        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2024-05-01T10:00:00Z"}});
        let t = one(("rbac.authorization.k8s.io", "Role"), role);
        assert_eq!(column_names(&t), ["Name", "Created At"]);
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(cells(&t, 0)[1], "2024-05-01T10:00:00Z");

        let pdb = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            cells(&one(("policy", "PodDisruptionBudget"), pdb), 0)[1..4],
            [json!("50%"), json!("N/A"), json!(1)]
        );

        let pc = json!({"metadata": {"name": "system-node-critical"}, "value": 2000001000, "preemptionPolicy": "PreemptLowerPriority"});
        let t = one(("scheduling.k8s.io", "PriorityClass"), pc);
        assert_eq!(
            column_names(&t),
            ["Name", "Value", "Global-Default", "Age", "PreemptionPolicy"]
        );
        assert_eq!(cells(&t, 0)[1..3], [json!(2000001000), json!(false)]);

        let lease = json!({"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1"}});
        assert_eq!(
            cells(&one(("coordination.k8s.io", "Lease"), lease), 0)[1],
            "node-1"
        );
    }

    #[test]
    fn unknown_kinds_get_name_and_age() {
        let t = one(
            ("example.com", "Widget"),
            json!({"metadata": {"name": "w", "creationTimestamp": "2024-05-01T11:59:00Z"}}),
        );
        assert_eq!(column_names(&t), ["Name", "Age"]);
        assert_eq!(cells(&t, 0), [json!("w"), json!("60s")]);
    }

    #[test]
    fn custom_resource_printer_columns() {
        let cols = [
            json!({"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}),
            json!({"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}),
            json!({"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.template.containers[0].image",
                   "description": "The image"}),
            json!({"name": "Labels", "type": "string", "jsonPath": ".metadata.labels"}),
            json!({"name": "Missing", "type": "string", "jsonPath": ".status.nothing"}),
            json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
        ];
        let obj = json!({
            "metadata": {"name": "db", "creationTimestamp": "2024-05-01T06:00:00Z", "labels": {"a": "b"}},
            "spec": {"replicas": 3, "template": {"containers": [{"image": "postgres:16"}]}},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}
        });
        let t = to_table(
            &gvk("example.com", "v1", "Database"),
            &[obj],
            now(),
            IncludeObject::Metadata,
            Some(&cols),
        );
        assert_eq!(
            column_names(&t),
            ["Name", "Replicas", "Ready", "Image", "Labels", "Missing", "Age"]
        );
        assert_eq!(
            t["columnDefinitions"][1]["description"],
            "Custom resource definition column (in JSONPath format): .spec.replicas"
        );
        assert_eq!(t["columnDefinitions"][3]["priority"], 1);
        assert_eq!(t["columnDefinitions"][6]["type"], "date");
        assert_eq!(
            cells(&t, 0),
            [
                json!("db"),
                json!(3),
                json!("True"),
                json!("postgres:16"),
                json!("{\"a\":\"b\"}"),
                Value::Null,
                json!("6h")
            ]
        );

        let none: [Value; 0] = [];
        let t = to_table(
            &gvk("example.com", "v1", "Database"),
            &[json!({"metadata": {"name": "x", "creationTimestamp": "2024-05-01T11:00:00Z"}})],
            now(),
            IncludeObject::Metadata,
            Some(&none),
        );
        assert_eq!(column_names(&t), ["Name", "Age"]);
        assert_eq!(cells(&t, 0), [json!("x"), json!("60m")]);
    }

    #[test]
    fn json_path_subset() {
        let doc = json!({"a": {"b.c": 1, "list": [{"k": 1, "v": "one"}, {"k": 2, "v": "two"}]}, "flag": true});
        let first = |p: &str| {
            let segs = parse_json_path(p).unwrap_or_default();
            eval_json_path(&doc, &segs).into_iter().next().cloned()
        };
        assert_eq!(first(".a.b\\.c"), Some(json!(1)));
        assert_eq!(first("{.a['b.c']}"), Some(json!(1)));
        assert_eq!(first(".a.list[1].v"), Some(json!("two")));
        assert_eq!(first(".a.list[-1].k"), Some(json!(2)));
        assert_eq!(first(".a.list[*].v"), Some(json!("one")));
        assert_eq!(first(".a.list[?(@.k==2)].v"), Some(json!("two")));
        assert_eq!(first(".a.list[?(@.v=='one')].k"), Some(json!(1)));
        assert_eq!(first(".a.list[?(@.v!=\"one\")].k"), Some(json!(2)));
        assert_eq!(first(".a.list[?(@.v)].k"), Some(json!(1)));
        assert_eq!(first(".flag"), Some(json!(true)));
        assert_eq!(first(".a.nope"), None);
        assert!(parse_json_path("..a").is_none());
        assert!(parse_json_path("a.b").is_none());
        assert!(parse_json_path(".a[").is_none());
        assert!(parse_json_path(".a[?(x)]").is_none());
    }
}
