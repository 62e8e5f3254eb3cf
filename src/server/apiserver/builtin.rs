//! The built-in kinds the API server serves, listed once.
//!
//! Everything that needs "every built-in kind" (the resource registry, OpenAPI, typed decoding
//! for validation) goes through [`for_each_builtin!`], so adding a kind is one line here. This
//! module owns only the list and the facts `kubectl` shows that the Rust types do not carry
//! (short names, categories, subresources).

/// Calls `$callback!(Type, [short names], [categories], [subresources])` for every built-in kind.
///
/// `Type` is the k8s-openapi struct; its `k8s_openapi::Resource` constants give the group,
/// version, kind, plural and scope. Subresources are `"status"`, `"scale"`, `"binding"`.
#[macro_export]
macro_rules! for_each_builtin {
    ($callback:ident) => {
        // core/v1
        $callback!(k8s_openapi::api::core::v1::Namespace, ["ns"], [], ["status"]);
        $callback!(k8s_openapi::api::core::v1::Pod, ["po"], ["all"], ["status", "binding", "log", "exec", "attach", "portforward"]);
        $callback!(k8s_openapi::api::core::v1::Service, ["svc"], ["all"], ["status"]);
        $callback!(k8s_openapi::api::core::v1::Endpoints, ["ep"], [], []);
        $callback!(k8s_openapi::api::core::v1::ConfigMap, ["cm"], [], []);
        $callback!(k8s_openapi::api::core::v1::Secret, [], [], []);
        $callback!(k8s_openapi::api::core::v1::ServiceAccount, ["sa"], [], []);
        $callback!(k8s_openapi::api::core::v1::Node, ["no"], [], ["status", "proxy"]);
        $callback!(k8s_openapi::api::core::v1::Event, ["ev"], [], []);
        $callback!(k8s_openapi::api::core::v1::PersistentVolume, ["pv"], [], ["status"]);
        $callback!(k8s_openapi::api::core::v1::PersistentVolumeClaim, ["pvc"], [], ["status"]);
        $callback!(k8s_openapi::api::core::v1::LimitRange, ["limits"], [], []);
        $callback!(k8s_openapi::api::core::v1::ResourceQuota, ["quota"], [], ["status"]);
        // apps/v1
        $callback!(k8s_openapi::api::apps::v1::Deployment, ["deploy"], ["all"], ["status", "scale"]);
        $callback!(k8s_openapi::api::apps::v1::ReplicaSet, ["rs"], ["all"], ["status", "scale"]);
        $callback!(k8s_openapi::api::apps::v1::DaemonSet, ["ds"], ["all"], ["status"]);
        $callback!(k8s_openapi::api::apps::v1::StatefulSet, ["sts"], ["all"], ["status", "scale"]);
        $callback!(k8s_openapi::api::apps::v1::ControllerRevision, [], [], []);
        // batch/v1
        $callback!(k8s_openapi::api::batch::v1::Job, [], ["all"], ["status"]);
        $callback!(k8s_openapi::api::batch::v1::CronJob, ["cj"], ["all"], ["status"]);
        // coordination.k8s.io/v1
        $callback!(k8s_openapi::api::coordination::v1::Lease, [], [], []);
        // discovery.k8s.io/v1
        $callback!(k8s_openapi::api::discovery::v1::EndpointSlice, [], [], []);
        // networking.k8s.io/v1
        $callback!(k8s_openapi::api::networking::v1::Ingress, ["ing"], [], ["status"]);
        $callback!(k8s_openapi::api::networking::v1::IngressClass, [], [], []);
        $callback!(k8s_openapi::api::networking::v1::NetworkPolicy, ["netpol"], [], []);
        // rbac.authorization.k8s.io/v1
        $callback!(k8s_openapi::api::rbac::v1::Role, [], [], []);
        $callback!(k8s_openapi::api::rbac::v1::RoleBinding, [], [], []);
        $callback!(k8s_openapi::api::rbac::v1::ClusterRole, [], [], []);
        $callback!(k8s_openapi::api::rbac::v1::ClusterRoleBinding, [], [], []);
        // storage.k8s.io/v1
        $callback!(k8s_openapi::api::storage::v1::StorageClass, ["sc"], [], []);
        // events.k8s.io/v1
        $callback!(k8s_openapi::api::events::v1::Event, ["ev"], [], []);
        // policy/v1
        $callback!(k8s_openapi::api::policy::v1::PodDisruptionBudget, ["pdb"], [], ["status"]);
        // scheduling.k8s.io/v1
        $callback!(k8s_openapi::api::scheduling::v1::PriorityClass, ["pc"], [], []);
        // apiextensions.k8s.io/v1
        $callback!(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            ["crd", "crds"],
            ["api-extensions"],
            ["status"]
        );
    };
}
