//! The kubelet's pod inputs against a real `cluster server`: container environments from
//! ConfigMaps, Secrets, Services and the Node; volumes on disk (atomic ConfigMap updates,
//! subPath, readOnly, PVCs, tmpfs); probes against local listeners and a real container.
//!
//! Tests that mount or run containers need root: under `CI=true` they must run, elsewhere they
//! skip and say why.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::agent::kubelet::env::{container_env, expand_command};
use cluster::agent::kubelet::probes::{
    probe_once, spawn_worker, ProbeKind, ProbeOutcome, ProbeTarget,
};
use cluster::agent::kubelet::volumes::VolumeManager;
use cluster::agent::runtime::container::{Runtime, RuntimeConfig};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection,
    ConfigMapVolumeSource, Container, DownwardAPIProjection, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, ExecAction,
    HostPathVolumeSource, KeyToPath, Node, NodeStatus, ObjectFieldSelector, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PersistentVolumeSpec, Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceFieldSelector,
    Secret, SecretEnvSource, SecretKeySelector, SecretProjection, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use support::server::TestServer;

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &k8s_openapi::api::core::v1::Namespace {
            metadata: meta(name, None),
            ..Default::default()
        },
    )
    .await
    .expect("namespace");
}

async fn create_config_map(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: meta(name, Some(ns)),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
    )
    .await
    .expect("configmap");
}

async fn create_secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &Secret {
            metadata: meta(name, Some(ns)),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        },
    )
    .await
    .expect("secret");
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    }
}

fn field(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            api_version: None,
        }),
        ..Default::default()
    }
}

fn pod(ns: &str, spec: PodSpec) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some(ns.into()),
            uid: Some(uuid::Uuid::new_v4().to_string()),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn container_env_resolves_sources_in_kubernetes_order() {
    let server = TestServer::start();
    let client = server.client().await;
    create_namespace(&client, "shop").await;
    create_config_map(
        &client,
        "shop",
        "settings",
        &[("MODE", "fast"), ("COLOR", "blue"), ("1bad", "skipped")],
    )
    .await;
    create_secret(&client, "shop", "creds", &[("PASSWORD", "s3cret")]).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let service = services
        .create(
            &PostParams::default(),
            &Service {
                metadata: meta("redis-master", Some("shop")),
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        name: Some("redis".into()),
                        port: 6379,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            },
        )
        .await
        .expect("service");
    let service_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster IP allocated");
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &Node {
                metadata: meta("node-a", None),
                spec: None,
                status: Some(NodeStatus {
                    allocatable: Some(BTreeMap::from([
                        ("cpu".into(), Quantity("4".into())),
                        ("memory".into(), Quantity("8Gi".into())),
                    ])),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("node");
    // The status of a created Node may be dropped by the API server: set it through /status.
    let mut node = nodes.get("node-a").await.expect("node");
    if node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .is_none()
    {
        node.status = Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".into(), Quantity("4".into())),
                ("memory".into(), Quantity("8Gi".into())),
            ])),
            ..Default::default()
        });
        nodes
            .replace_status("node-a", &PostParams::default(), &node)
            .await
            .expect("node status");
    }

    let container = Container {
        name: "app".into(),
        command: Some(vec!["echo".into(), "$(GREETING)".into()]),
        args: Some(vec!["$$(GREETING)".into(), "$(UNDEFINED)".into()]),
        env_from: Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                secret_ref: None,
            },
            EnvFromSource {
                config_map_ref: None,
                prefix: None,
                secret_ref: Some(SecretEnvSource {
                    name: "creds".into(),
                    optional: None,
                }),
            },
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "absent".into(),
                    optional: Some(true),
                }),
                prefix: None,
                secret_ref: None,
            },
        ]),
        env: Some(vec![
            env_value("CFG_MODE", "overridden"),
            env_from(
                "COLOR",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "settings".into(),
                        key: "COLOR".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            env_from(
                "PW",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "PASSWORD".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            env_from(
                "MAYBE",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "NOPE".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ),
            env_from("POD_NAME", field("metadata.name")),
            env_from("POD_NS", field("metadata.namespace")),
            env_from("APP", field("metadata.labels['app']")),
            env_from("NODE", field("spec.nodeName")),
            env_from("POD_IP", field("status.podIP")),
            env_from("HOST_IP", field("status.hostIP")),
            env_from(
                "MEM_LIMIT_MI",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "limits.memory".into(),
                        divisor: Some(Quantity("1Mi".into())),
                        container_name: None,
                    }),
                    ..Default::default()
                },
            ),
            env_from(
                "CPU_REQUEST_M",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "requests.cpu".into(),
                        divisor: Some(Quantity("1m".into())),
                        container_name: None,
                    }),
                    ..Default::default()
                },
            ),
            env_value("GREETING", "hi $(POD_NAME) on $(REDIS_MASTER_SERVICE_HOST)"),
            env_value("LITERAL", "$$(POD_NAME) $(MISSING)"),
        ]),
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let the_pod = pod(
        "shop",
        PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![container.clone()],
            ..Default::default()
        },
    );
    let env = container_env(
        &client,
        &the_pod,
        &container,
        Some("10.42.0.9"),
        "192.0.2.1",
    )
    .await
    .expect("environment");

    assert_eq!(
        lookup(&env, "REDIS_MASTER_SERVICE_HOST"),
        Some(service_ip.as_str())
    );
    assert_eq!(lookup(&env, "REDIS_MASTER_SERVICE_PORT"), Some("6379"));
    assert_eq!(
        lookup(&env, "REDIS_MASTER_SERVICE_PORT_REDIS"),
        Some("6379")
    );
    assert_eq!(
        lookup(&env, "REDIS_MASTER_PORT_6379_TCP"),
        Some(format!("tcp://{service_ip}:6379").as_str())
    );
    assert!(lookup(&env, "KUBERNETES_SERVICE_HOST").is_some());
    assert_eq!(lookup(&env, "CFG_MODE"), Some("overridden"));
    assert_eq!(lookup(&env, "CFG_COLOR"), Some("blue"));
    assert_eq!(
        lookup(&env, "CFG_1bad"),
        Some("skipped"),
        "prefix makes it valid"
    );
    assert_eq!(lookup(&env, "PASSWORD"), Some("s3cret"));
    assert_eq!(lookup(&env, "COLOR"), Some("blue"));
    assert_eq!(lookup(&env, "PW"), Some("s3cret"));
    assert_eq!(lookup(&env, "MAYBE"), None);
    assert_eq!(lookup(&env, "POD_NAME"), Some("web"));
    assert_eq!(lookup(&env, "POD_NS"), Some("shop"));
    assert_eq!(lookup(&env, "APP"), Some("web"));
    assert_eq!(lookup(&env, "NODE"), Some("node-a"));
    assert_eq!(lookup(&env, "POD_IP"), Some("10.42.0.9"));
    assert_eq!(lookup(&env, "HOST_IP"), Some("192.0.2.1"));
    assert_eq!(lookup(&env, "MEM_LIMIT_MI"), Some("8192"));
    assert_eq!(lookup(&env, "CPU_REQUEST_M"), Some("250"));
    assert_eq!(
        lookup(&env, "GREETING"),
        Some(format!("hi web on {service_ip}").as_str())
    );
    assert_eq!(lookup(&env, "LITERAL"), Some("$(POD_NAME) $(MISSING)"));

    // Order: service variables, then envFrom, then env; each name once.
    let position = |name: &str| env.iter().position(|(n, _)| n == name).expect(name);
    assert!(position("REDIS_MASTER_SERVICE_HOST") < position("CFG_COLOR"));
    assert!(position("CFG_COLOR") < position("PASSWORD"));
    assert!(position("PASSWORD") < position("PW"));
    assert!(position("PW") < position("GREETING"));
    let mut names: Vec<&String> = env.iter().map(|(n, _)| n).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "a name appears once");

    let (command, args) = expand_command(&container, &env);
    assert_eq!(
        command,
        vec!["echo".to_string(), format!("hi web on {service_ip}")]
    );
    assert_eq!(args, vec!["$(GREETING)", "$(UNDEFINED)"]);

    // enableServiceLinks: false keeps only the master service's variables.
    let mut no_links = the_pod.clone();
    if let Some(spec) = no_links.spec.as_mut() {
        spec.enable_service_links = Some(false);
    }
    let env = container_env(&client, &no_links, &container, None, "192.0.2.1")
        .await
        .expect("environment");
    assert!(lookup(&env, "REDIS_MASTER_SERVICE_HOST").is_none());
    assert!(lookup(&env, "KUBERNETES_SERVICE_HOST").is_some());
    assert_eq!(lookup(&env, "POD_IP"), Some(""));
}

#[tokio::test]
async fn missing_sources_fail_with_kubelets_messages() {
    let server = TestServer::start();
    let client = server.client().await;
    create_config_map(&client, "default", "present", &[("a", "1")]).await;
    let cases: Vec<(EnvVar, &str)> = vec![
        (
            env_from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "gone".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            "configmap \"gone\" not found",
        ),
        (
            env_from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "present".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            "couldn't find key k in ConfigMap default/present",
        ),
        (
            env_from(
                "X",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "nosecret".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            "secret \"nosecret\" not found",
        ),
    ];
    for (var, message) in cases {
        let container = Container {
            name: "c".into(),
            env: Some(vec![var]),
            ..Default::default()
        };
        let p = pod("default", PodSpec::default());
        let err = container_env(&client, &p, &container, None, "192.0.2.1")
            .await
            .expect_err("must fail");
        assert_eq!(err.to_string(), message);
    }
}

/// The `..2…` timestamped directories of an atomic-writer volume.
fn ts_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("..2"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

#[tokio::test]
async fn volumes_are_written_resolved_refreshed_and_removed() {
    let server = TestServer::start();
    let client = server.client().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let pods_root = temp.path().join("pods");
    let host_dir = temp.path().join("host/data");
    create_config_map(
        &client,
        "default",
        "app-config",
        &[("greeting", "hello"), ("other", "x")],
    )
    .await;
    create_secret(&client, "default", "app-secret", &[("token", "t0k3n")]).await;

    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app-config".into(),
                items: Some(vec![KeyToPath {
                    key: "greeting".into(),
                    path: "conf/greeting.txt".into(),
                    mode: Some(0o600),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "all-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app-config".into(),
                default_mode: Some(0o640),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "maybe".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "not-there".into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("app-secret".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "podinfo".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    DownwardAPIVolumeFile {
                        path: "labels".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                    DownwardAPIVolumeFile {
                        path: "name".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "bundle".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "app-config".into(),
                            items: Some(vec![KeyToPath {
                                key: "greeting".into(),
                                path: "greeting".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        secret: Some(SecretProjection {
                            name: "app-secret".into(),
                            items: None,
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "ns".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    api_version: None,
                                }),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: host_dir.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        },
    ];
    let mount = |name: &str, path: &str, sub: Option<&str>, ro: Option<bool>| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub.map(str::to_string),
        read_only: ro,
        ..Default::default()
    };
    let container = Container {
        name: "app".into(),
        volume_mounts: Some(vec![
            mount("config", "/etc/app", None, None),
            mount("scratch", "/scratch", None, None),
            mount("scratch", "/cache", Some("cache/a"), None),
            mount("host", "/data", None, Some(true)),
        ]),
        ..Default::default()
    };
    let the_pod = pod(
        "default",
        PodSpec {
            containers: vec![container.clone()],
            volumes: Some(volumes),
            ..Default::default()
        },
    );
    let uid = the_pod.metadata.uid.clone().expect("uid");
    let manager = VolumeManager::new(client.clone(), pods_root.clone());
    manager.setup(&the_pod).await.expect("setup");
    manager.setup(&the_pod).await.expect("setup is idempotent");

    let vols = pods_root.join(&uid).join("volumes");
    let config_dir = vols.join("kubernetes.io~configmap/config");
    let greeting = config_dir.join("conf/greeting.txt");
    assert_eq!(fs::read_to_string(&greeting).expect("greeting"), "hello");
    assert_eq!(mode_of(&greeting), 0o600);
    assert_eq!(
        fs::read_link(config_dir.join("conf")).expect("user link"),
        PathBuf::from("..data/conf")
    );
    let all = vols.join("kubernetes.io~configmap/all-config");
    assert_eq!(fs::read_to_string(all.join("other")).expect("other"), "x");
    assert_eq!(mode_of(&all.join("other")), 0o640);
    let maybe = vols.join("kubernetes.io~configmap/maybe");
    assert!(maybe.is_dir());
    assert!(fs::read_dir(maybe.join("..data"))
        .expect("data")
        .next()
        .is_none());
    let secret_file = vols.join("kubernetes.io~secret/secret/token");
    assert_eq!(fs::read_to_string(&secret_file).expect("secret"), "t0k3n");
    assert_eq!(mode_of(&secret_file), 0o644);
    let podinfo = vols.join("kubernetes.io~downward-api/podinfo");
    assert_eq!(
        fs::read_to_string(podinfo.join("labels")).expect("labels"),
        "app=\"web\""
    );
    assert_eq!(
        fs::read_to_string(podinfo.join("name")).expect("name"),
        "web"
    );
    let bundle = vols.join("kubernetes.io~projected/bundle");
    assert_eq!(
        fs::read_to_string(bundle.join("greeting")).expect("b"),
        "hello"
    );
    assert_eq!(
        fs::read_to_string(bundle.join("token")).expect("b"),
        "t0k3n"
    );
    assert_eq!(fs::read_to_string(bundle.join("ns")).expect("b"), "default");
    assert_eq!(mode_of(&bundle.join("ns")), 0o444);
    assert!(host_dir.is_dir(), "DirectoryOrCreate made the host path");

    let mounts = manager.mounts(&the_pod, &container).expect("mounts");
    let by_path: BTreeMap<&str, _> = mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m))
        .collect();
    assert_eq!(by_path["/etc/app"].host_path, config_dir);
    assert!(
        by_path["/etc/app"].read_only,
        "configMap volumes are read-only"
    );
    let scratch = vols.join("kubernetes.io~empty-dir/scratch");
    assert_eq!(by_path["/scratch"].host_path, scratch);
    assert!(!by_path["/scratch"].read_only);
    assert_eq!(by_path["/cache"].host_path, scratch.join("cache/a"));
    assert!(
        scratch.join("cache/a").is_dir(),
        "a missing subPath is created"
    );
    assert_eq!(by_path["/data"].host_path, host_dir);
    assert!(by_path["/data"].read_only);

    // A subPath that leaves the volume through a symlink is refused.
    std::os::unix::fs::symlink(temp.path(), scratch.join("escape")).expect("symlink");
    let escaping = Container {
        name: "bad".into(),
        volume_mounts: Some(vec![mount("scratch", "/x", Some("escape/host"), None)]),
        ..Default::default()
    };
    let err = manager.mounts(&the_pod, &escaping).expect_err("refused");
    assert!(err.to_string().contains("outside the volume"), "{err}");

    // A ConfigMap update reaches the same path after refresh; the old payload goes.
    let before = ts_dirs(&config_dir);
    assert_eq!(before.len(), 1);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut map = maps.get("app-config").await.expect("get");
    map.data = Some(BTreeMap::from([
        ("greeting".to_string(), "bonjour".to_string()),
        ("other".to_string(), "x".to_string()),
    ]));
    maps.replace("app-config", &PostParams::default(), &map)
        .await
        .expect("update");
    manager.refresh(&the_pod).await.expect("refresh");
    assert_eq!(fs::read_to_string(&greeting).expect("greeting"), "bonjour");
    assert_eq!(
        fs::read_to_string(bundle.join("greeting")).expect("b"),
        "bonjour"
    );
    let after = ts_dirs(&config_dir);
    assert_eq!(after.len(), 1);
    assert_ne!(before, after);
    assert!(!config_dir.join(&before[0]).exists());
    // Unchanged volumes are not rewritten.
    let secret_dirs = ts_dirs(&vols.join("kubernetes.io~secret/secret"));
    manager.refresh(&the_pod).await.expect("refresh");
    assert_eq!(
        ts_dirs(&vols.join("kubernetes.io~secret/secret")),
        secret_dirs
    );

    manager.teardown(&uid).await.expect("teardown");
    assert!(!vols.exists());
    assert!(host_dir.is_dir(), "hostPath data is left alone");
    manager
        .teardown(&uid)
        .await
        .expect("teardown is idempotent");
}

#[tokio::test]
async fn missing_volume_sources_fail_setup_with_kubelets_messages() {
    let server = TestServer::start();
    let client = server.client().await;
    let temp = tempfile::tempdir().expect("tempdir");
    create_config_map(&client, "default", "small", &[("a", "1")]).await;
    let manager = VolumeManager::new(client.clone(), temp.path().join("pods"));
    let cases = vec![
        (
            Volume {
                name: "v".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "gone".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "MountVolume.SetUp failed for volume \"v\" : configmap \"gone\" not found",
        ),
        (
            Volume {
                name: "v".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "small".into(),
                    items: Some(vec![KeyToPath {
                        key: "zz".into(),
                        path: "zz".into(),
                        mode: None,
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "MountVolume.SetUp failed for volume \"v\" : configmap references non-existent config key: zz",
        ),
        (
            Volume {
                name: "s".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("gone".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "MountVolume.SetUp failed for volume \"s\" : secret \"gone\" not found",
        ),
        (
            Volume {
                name: "h".into(),
                host_path: Some(HostPathVolumeSource {
                    path: temp.path().join("nothing").display().to_string(),
                    type_: Some("Directory".into()),
                }),
                ..Default::default()
            },
            "is not a directory",
        ),
    ];
    for (volume, message) in cases {
        let p = pod(
            "default",
            PodSpec {
                volumes: Some(vec![volume]),
                ..Default::default()
            },
        );
        let err = manager.setup(&p).await.expect_err("must fail");
        assert!(err.to_string().contains(message), "{err} vs {message}");
    }
}

#[tokio::test]
async fn a_claim_bound_to_a_host_path_volume_mounts_that_path() {
    let server = TestServer::start();
    let client = server.client().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("pv-data");
    fs::create_dir_all(&data).expect("pv dir");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.create(
        &PostParams::default(),
        &PersistentVolume {
            metadata: meta("pv-1", None),
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                host_path: Some(HostPathVolumeSource {
                    path: data.display().to_string(),
                    type_: None,
                }),
                ..Default::default()
            }),
            status: None,
        },
    )
    .await
    .expect("pv");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim_spec = |volume: Option<&str>| PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        volume_name: volume.map(str::to_string),
        resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (name, volume) in [("bound", Some("pv-1")), ("pending", None)] {
        pvcs.create(
            &PostParams::default(),
            &PersistentVolumeClaim {
                metadata: meta(name, Some("default")),
                spec: Some(claim_spec(volume)),
                status: None,
            },
        )
        .await
        .expect("pvc");
    }
    let manager = VolumeManager::new(client.clone(), temp.path().join("pods"));
    let claim_pod = |claim: &str| {
        let container = Container {
            name: "db".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/var/lib/db".into(),
                sub_path: Some("db".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        (
            pod(
                "default",
                PodSpec {
                    containers: vec![container.clone()],
                    volumes: Some(vec![Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim.into(),
                            read_only: Some(true),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
            ),
            container,
        )
    };
    let (bound_pod, container) = claim_pod("bound");
    manager.setup(&bound_pod).await.expect("setup");
    let mounts = manager.mounts(&bound_pod, &container).expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].host_path, data.join("db"));
    assert!(mounts[0].read_only);
    assert!(data.join("db").is_dir());
    let uid = bound_pod.metadata.uid.clone().expect("uid");
    manager.teardown(&uid).await.expect("teardown");
    assert!(data.join("db").is_dir(), "the PV's data stays");

    let (pending_pod, _) = claim_pod("pending");
    let err = manager.setup(&pending_pod).await.expect_err("unbound");
    assert!(err.to_string().contains("is not bound"), "{err}");
}

/// True when mount tests can run (root); under CI=true they must.
fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: mount tests need root, and CI=true must run them");
    }
    eprintln!("skipping {test}: mount tests need root");
    false
}

/// The mountinfo line of `path`, if it is a mount point.
fn mount_line(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    let real = real.to_str()?;
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .find(|l| l.split(' ').nth(4) == Some(real))
        .map(str::to_string)
}

/// Unmounts whatever a failed test left below `dir`.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        while mount_line(&self.0).is_some() {
            if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_memory_empty_dir_is_a_sized_tmpfs_until_teardown() {
    if !require_root("a_memory_empty_dir_is_a_sized_tmpfs_until_teardown") {
        return;
    }
    let server = TestServer::start();
    let client = server.client().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let manager = VolumeManager::new(client, temp.path().join("pods"));
    let the_pod = pod(
        "default",
        PodSpec {
            volumes: Some(vec![Volume {
                name: "shm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("16Mi".into())),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        },
    );
    let uid = the_pod.metadata.uid.clone().expect("uid");
    let dir = temp
        .path()
        .join("pods")
        .join(&uid)
        .join("volumes/kubernetes.io~empty-dir/shm");
    fs::create_dir_all(&dir).expect("dir");
    let _guard = UnmountOnDrop(dir.clone());
    manager.setup(&the_pod).await.expect("setup");
    manager.setup(&the_pod).await.expect("setup again");
    let line = mount_line(&dir).expect("tmpfs mounted");
    assert!(line.contains(" - tmpfs "), "{line}");
    assert!(line.contains("size=16384k"), "{line}");
    let mounts_here = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4) == dir.to_str())
        .count();
    assert_eq!(mounts_here, 1, "setup does not stack mounts");
    fs::write(dir.join("f"), b"in memory").expect("write");

    manager.teardown(&uid).await.expect("teardown");
    assert!(mount_line(&dir).is_none());
    assert!(!temp.path().join("pods").join(&uid).exists());
}

fn test_runtime(dir: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        root: dir.join("containers"),
        log_root: dir.join("logs"),
        shim_binary: PathBuf::from(env!("CARGO_BIN_EXE_cluster")),
        log_max_size: 1024 * 1024,
        log_max_files: 1,
    })
    .expect("runtime")
}

#[tokio::test]
async fn a_tcp_readiness_worker_reports_changes_only() {
    let temp = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(temp.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            host: None,
            port: IntOrString::Int(i32::from(port)),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Default::default()
    };
    let target = ProbeTarget {
        pod_ip: Some("127.0.0.1".parse().expect("ip")),
        host_ip: "127.0.0.1".parse().expect("ip"),
        container_id: "none".into(),
    };
    assert_eq!(
        probe_once(&runtime, &probe, &target).await,
        ProbeOutcome::Success
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = spawn_worker(
        runtime,
        ProbeKind::Readiness,
        probe,
        target,
        tx,
        "app".into(),
        cancel.clone(),
    );
    let wait = Duration::from_secs(30);
    let first = tokio::time::timeout(wait, next_change(&mut rx))
        .await
        .expect("report");
    assert_eq!(first, Some((ProbeKind::Readiness, "app".to_string(), true)));
    drop(listener);
    let second = tokio::time::timeout(wait, next_change(&mut rx))
        .await
        .expect("report");
    assert_eq!(
        second,
        Some((ProbeKind::Readiness, "app".to_string(), false))
    );
    cancel.cancel();
    tokio::time::timeout(wait, worker)
        .await
        .expect("worker stops on cancel")
        .expect("worker task");
    assert_eq!(
        next_change(&mut rx).await,
        None,
        "nothing more after cancel"
    );
}

/// The next change of a probe worker's result as (kind, container, passing), skipping the
/// reports of single failed attempts; `None` when the worker is gone.
async fn next_change(
    rx: &mut tokio::sync::mpsc::Receiver<cluster::agent::kubelet::probes::ProbeReport>,
) -> Option<(ProbeKind, String, bool)> {
    while let Some(report) = rx.recv().await {
        if let cluster::agent::kubelet::probes::ProbeEvent::Changed(passed) = report.event {
            return Some((report.kind, report.container, passed));
        }
    }
    None
}

#[tokio::test]
async fn exec_probes_run_in_the_container_and_see_its_volumes() {
    if !support::rootfs::require_root("exec_probes_run_in_the_container_and_see_its_volumes") {
        return;
    }
    let server = TestServer::start();
    let client = server.client().await;
    create_config_map(&client, "default", "live", &[("state", "one")]).await;
    let t = support::rootfs::TestRuntime::new();
    let manager = VolumeManager::new(client.clone(), t.temp.path().join("pods"));
    let container = Container {
        name: "main".into(),
        volume_mounts: Some(vec![VolumeMount {
            name: "cfg".into(),
            mount_path: "/etc/cfg".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let the_pod = pod(
        "default",
        PodSpec {
            containers: vec![container.clone()],
            volumes: Some(vec![Volume {
                name: "cfg".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "live".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        },
    );
    let uid = the_pod.metadata.uid.clone().expect("uid");
    manager.setup(&the_pod).await.expect("setup");
    let mut request = t.request("main", &["/bin/sleep", "300"]);
    request.spec.mounts = manager.mounts(&the_pod, &container).expect("mounts");
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");

    let target = ProbeTarget {
        pod_ip: None,
        host_ip: "127.0.0.1".parse().expect("ip"),
        container_id: id.clone(),
    };
    let exec_probe = |script: &str| Probe {
        exec: Some(ExecAction {
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        }),
        timeout_seconds: Some(10),
        ..Default::default()
    };
    let check = exec_probe("grep -qx two /etc/cfg/state");
    let outcome = probe_once(&t.runtime, &check, &target).await;
    assert!(matches!(outcome, ProbeOutcome::Failure(_)), "{outcome:?}");
    assert_eq!(
        probe_once(
            &t.runtime,
            &exec_probe("grep -qx one /etc/cfg/state"),
            &target
        )
        .await,
        ProbeOutcome::Success
    );
    // A read-only volume: writing into it fails inside the container.
    assert!(matches!(
        probe_once(&t.runtime, &exec_probe("touch /etc/cfg/new"), &target).await,
        ProbeOutcome::Failure(_)
    ));

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut map = maps.get("live").await.expect("get");
    map.data = Some(BTreeMap::from([("state".to_string(), "two".to_string())]));
    maps.replace("live", &PostParams::default(), &map)
        .await
        .expect("update");
    manager.refresh(&the_pod).await.expect("refresh");
    assert_eq!(
        probe_once(&t.runtime, &check, &target).await,
        ProbeOutcome::Success,
        "the running container sees the new contents"
    );

    // A readiness worker on the exec probe reports ready.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut periodic = check.clone();
    periodic.period_seconds = Some(1);
    let worker = spawn_worker(
        t.runtime.clone(),
        ProbeKind::Readiness,
        periodic,
        target.clone(),
        tx,
        "main".into(),
        cancel.clone(),
    );
    let report = tokio::time::timeout(Duration::from_secs(60), next_change(&mut rx))
        .await
        .expect("report");
    assert_eq!(
        report,
        Some((ProbeKind::Readiness, "main".to_string(), true))
    );
    cancel.cancel();
    let _ = worker.await;

    t.runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    t.runtime.remove(&id).await.expect("remove");
    manager.teardown(&uid).await.expect("teardown");
}
