//! The real kubectl (1.27 and 1.33) against a `cluster server`: one user's session from
//! discovery to CRDs, asserting on what kubectl prints. One server per kubectl version; the
//! versions run as separate tests, in parallel.
//!
//! The cluster has its control loops but no nodes: a Deployment's pods are never scheduled
//! (READY stays 0/N; UP-TO-DATE moves as the rollout proceeds).

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::{kubectls, TestServer};

const APP: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels:
    app: web
data:
  greeting: hello
  color: blue
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: blue
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
"#;

/// The same application, changed: a key removed and one added, a new image and replica count.
const APP_CHANGED: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels:
    app: web
data:
  greeting: hi
  size: large
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.26
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: blue
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
"#;

const PAIR: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: one
data:
  n: "1"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: two
data:
  n: "2"
"#;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames:
    - wd
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should be.
            properties:
              size:
                type: integer
                description: How big the widget is.
              color:
                type: string
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
"#;

fn widget(size: u32) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {size}\n  color: red\n"
    )
}

/// One kubectl binary bound to one server.
struct Kubectl<'a> {
    server: &'a TestServer,
    bin: PathBuf,
    minor: u32,
}

impl Kubectl<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("KUBECONFIG", &self.server.kubeconfig)
            .env("HOME", self.server.dir.path());
        command
    }

    fn describe(&self, args: &[&str]) -> String {
        format!("{} {}", self.bin.display(), args.join(" "))
    }

    /// Runs kubectl, expects success, returns stdout.
    fn ok_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> String {
        let out = self.server.kubectl_with(&self.bin, args, stdin, env);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "`{}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log (tail):\n{}",
            self.describe(args),
            out.status,
            tail(&self.server.log(), 40)
        );
        stdout
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None, &[])
    }

    fn apply_stdin(&self, args: &[&str], manifest: &str) -> String {
        self.ok_with(args, Some(manifest), &[])
    }

    /// Runs kubectl, expects failure, returns stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.server.kubectl_with(&self.bin, args, stdin, &[]);
        assert!(
            !out.status.success(),
            "`{}` should have failed:\nstdout:\n{}",
            self.describe(args),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("kubectl -o json prints JSON")
    }

    fn jsonpath(&self, target: &[&str], path: &str) -> String {
        let mut args = vec!["get"];
        args.extend_from_slice(target);
        let expr = format!("jsonpath={path}");
        args.extend(["-o", &expr]);
        self.ok(&args)
    }

    /// Starts kubectl in the background; its stdout is collected as it arrives.
    fn background(&self, args: &[&str]) -> Background {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        Background {
            child,
            output,
            readers,
            what: self.describe(args),
        }
    }
}

/// A kubectl running in the background (get -w, wait).
struct Background {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    what: String,
}

impl Background {
    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the output has a line for which `pred` holds.
    fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.output();
            if let Some(line) = out.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "`{}` never printed {what}; it printed:\n{out}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to exit by itself; returns success and everything it printed.
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("`{}` did not exit; output:\n{}", self.what, self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        (status.success(), self.output())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The row of a table whose first column is `name`, as columns.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(columns)
        .find(|c| c.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{table}"))
}

/// The value after `key:` on the line of `describe` output that starts with it.
fn described<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
}

/// Runs the whole session with one kubectl version.
fn scenario(minor: u32) {
    for bin in kubectls(&[minor]) {
        let server = TestServer::start();
        let k = Kubectl {
            server: &server,
            bin,
            minor,
        };
        discovery_and_explain(&k);
        create_and_apply(&k);
        get_in_every_format(&k);
        get_watch_sees_changes(&k);
        describe_and_edit(&k);
        patch_label_annotate_scale(&k);
        delete_with_each_cascade_and_wait(&k);
        custom_resources(&k);
        // kubectl >= 1.31 sends these through client-go's typed clients as protobuf.
        configmaps_and_secrets_from_literals(&k);
    }
}

#[test]
fn kubectl_1_27() {
    scenario(27);
}

#[test]
fn kubectl_1_33() {
    scenario(33);
}

fn discovery_and_explain(k: &Kubectl) {
    let versions = lines(&k.ok(&["api-versions"])).join(" ");
    for gv in ["v1", "apps/v1", "apiextensions.k8s.io/v1", "batch/v1"] {
        assert!(
            versions.split(' ').any(|v| v == gv),
            "{gv} missing from api-versions: {versions}"
        );
    }

    let resources = k.ok(&["api-resources"]);
    let header = columns(resources.lines().next().expect("header"));
    assert_eq!(
        header,
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    assert_eq!(
        row(&resources, "deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(
        row(&resources, "configmaps"),
        ["configmaps", "cm", "v1", "true", "ConfigMap"]
    );
    assert_eq!(
        row(&resources, "namespaces"),
        ["namespaces", "ns", "v1", "false", "Namespace"]
    );
    let namespaced = k.ok(&["api-resources", "--namespaced=false", "-o", "name"]);
    assert!(
        namespaced.lines().any(|l| l == "namespaces"),
        "{namespaced}"
    );
    assert!(
        !namespaced.lines().any(|l| l == "configmaps"),
        "{namespaced}"
    );

    let explain = k.ok(&["explain", "pod.spec.containers"]);
    assert!(
        explain.contains("KIND:") && explain.contains("Pod"),
        "{explain}"
    );
    assert!(
        explain.contains("FIELD:") && explain.contains("containers"),
        "{explain}"
    );
    assert!(
        explain.contains("List of containers belonging to the pod"),
        "the field's description is missing:\n{explain}"
    );
    assert!(explain.contains("FIELDS:"), "{explain}");
    for field in ["image", "name", "ports", "env", "volumeMounts"] {
        assert!(
            explain
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{field}\t"))),
            "field {field} missing:\n{explain}"
        );
    }
    assert!(
        explain.contains("Container image name"),
        "the image field's docs are missing:\n{explain}"
    );
}

fn create_and_apply(k: &Kubectl) {
    let created = k.apply_stdin(&["create", "-f", "-"], PAIR);
    assert_eq!(
        lines(&created),
        ["configmap/one created", "configmap/two created"]
    );
    let again = k.fails(&["create", "-f", "-"], Some(PAIR));
    assert!(
        again.contains(r#"Error from server (AlreadyExists)"#)
            && again.contains(r#"configmaps "one" already exists"#)
            && again.contains(r#"configmaps "two" already exists"#),
        "{again}"
    );
    // `create` keeps no last-applied configuration.
    assert_eq!(k.jsonpath(&["cm", "one"], "{.metadata.annotations}"), "");

    let applied = k.apply_stdin(&["apply", "-f", "-"], APP);
    assert_eq!(
        lines(&applied),
        [
            "configmap/app-config created",
            "deployment.apps/web created",
            "service/web created"
        ]
    );
    let last = k.jsonpath(
        &["cm", "app-config"],
        r"{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}",
    );
    let last: Value = serde_json::from_str(&last).expect("last-applied is JSON");
    assert_eq!(last["data"]["color"], "blue");
    assert_eq!(last["metadata"]["name"], "app-config");

    // A label set by hand is not in the applied configuration: re-applying keeps it.
    let labeled = k.ok(&["label", "cm", "app-config", "by-hand=yes"]);
    assert_eq!(labeled.trim(), "configmap/app-config labeled");

    let reapplied = k.apply_stdin(&["apply", "-f", "-"], APP_CHANGED);
    assert_eq!(
        lines(&reapplied),
        [
            "configmap/app-config configured",
            "deployment.apps/web configured",
            "service/web unchanged"
        ]
    );
    let cm = k.json(&["get", "cm", "app-config"]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"greeting": "hi", "size": "large"}),
        "color was applied before and is gone from the manifest: it is removed"
    );
    assert_eq!(cm["metadata"]["labels"]["by-hand"], "yes");
    let last: Value = serde_json::from_str(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("annotation"),
    )
    .expect("json");
    assert_eq!(last["data"]["size"], "large");

    let deploy = k.json(&["get", "deploy", "web"]);
    assert_eq!(deploy["spec"]["replicas"], 3);
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["image"], "nginx:1.26");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
    assert_eq!(deploy["metadata"]["generation"], 2);

    // Applying the same again changes nothing.
    let same = k.apply_stdin(&["apply", "-f", "-"], APP_CHANGED);
    assert_eq!(
        lines(&same),
        [
            "configmap/app-config unchanged",
            "deployment.apps/web unchanged",
            "service/web unchanged"
        ]
    );
}

fn get_in_every_format(k: &Kubectl) {
    let wide = k.ok(&["get", "deploy", "web", "-o", "wide"]);
    assert_eq!(
        columns(wide.lines().next().expect("header")),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let web = row(&wide, "web");
    assert_eq!(web.len(), 8, "{wide}");
    // No nodes: no pod is ready or available; how many are up to date depends on how far
    // the rollout got.
    assert_eq!(
        (web[0], web[1], web[3]),
        ("web", "0/3", "0"),
        "no nodes: no ready pods"
    );
    assert!(web[2].parse::<u32>().is_ok_and(|n| n <= 3), "{wide}");
    assert_eq!(&web[5..], ["web", "nginx:1.26", "app=web"]);

    let svc = k.ok(&["get", "svc", "web", "-o", "wide"]);
    assert_eq!(
        columns(svc.lines().next().expect("header")),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let web = row(&svc, "web");
    // The cluster IP is allocated from the default service CIDR, 10.43.0.0/16.
    assert_eq!(
        (web[1], web[3], web[4], web[6]),
        ("ClusterIP", "<none>", "80/TCP", "app=web"),
        "{svc}"
    );
    assert!(web[2].starts_with("10.43."), "{svc}");

    let cms = k.ok(&["get", "cm"]);
    assert_eq!(
        columns(cms.lines().next().expect("header")),
        ["NAME", "DATA", "AGE"]
    );
    assert_eq!(&row(&cms, "app-config")[..2], ["app-config", "2"]);
    assert_eq!(&row(&cms, "one")[..2], ["one", "1"]);

    let yaml = k.ok(&["get", "cm", "app-config", "-o", "yaml"]);
    let parsed: Value = serde_yaml::from_str(&yaml).expect("-o yaml prints YAML");
    assert_eq!(parsed["kind"], "ConfigMap");
    assert_eq!(parsed["data"]["greeting"], "hi");
    assert!(
        parsed["metadata"]["uid"].is_string() && parsed["metadata"]["resourceVersion"].is_string()
    );

    let list = k.json(&["get", "cm", "-l", "app=web"]);
    assert_eq!(list["kind"], "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["app-config"]);

    assert_eq!(
        k.jsonpath(
            &["deploy", "web"],
            "{.spec.template.spec.containers[0].image}"
        ),
        "nginx:1.26"
    );
    let names = k.jsonpath(&["cm"], r#"{range .items[*]}{.metadata.name}{"\n"}{end}"#);
    // kube-root-ca.crt is in every namespace, as on any cluster.
    assert_eq!(
        lines(&names),
        ["app-config", "kube-root-ca.crt", "one", "two"]
    );

    let custom = k.ok(&[
        "get",
        "deploy",
        "-o",
        "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas,IMAGE:.spec.template.spec.containers[*].image",
    ]);
    assert_eq!(
        lines(&custom).into_iter().map(columns).collect::<Vec<_>>(),
        [
            vec!["NAME", "REPLICAS", "IMAGE"],
            vec!["web", "3", "nginx:1.26"]
        ]
    );

    let by_name = k.ok(&["get", "cm,deploy", "-l", "app=web", "-o", "name"]);
    assert_eq!(
        lines(&by_name),
        ["configmap/app-config", "deployment.apps/web"]
    );

    let missing = k.fails(&["get", "deploy", "nothing"], None);
    assert!(
        missing.contains(r#"Error from server (NotFound): deployments.apps "nothing" not found"#),
        "{missing}"
    );
}

fn get_watch_sees_changes(k: &Kubectl) {
    let watch = k.background(&["get", "cm", "-w"]);
    watch.wait_for_line("the initial list", |l| l.starts_with("app-config "));
    k.apply_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata:\n  a: b\n",
    );
    let line = watch.wait_for_line("the new configmap", |l| l.starts_with("watched "));
    assert_eq!(&columns(&line)[..2], ["watched", "1"]);
    k.ok(&[
        "patch",
        "cm",
        "watched",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"c":"d","e":"f"}}"#,
    ]);
    let line = watch.wait_for_line("the changed configmap", |l| {
        l.starts_with("watched ") && columns(l).get(1) == Some(&"3")
    });
    assert_eq!(&columns(&line)[..2], ["watched", "3"]);
    drop(watch);

    // --output-watch-events names the event types.
    let events = k.background(&["get", "cm", "watched", "-w", "--output-watch-events"]);
    events.wait_for_line("the initial event", |l| {
        l.starts_with("ADDED ") && l.contains("watched")
    });
    k.ok(&["delete", "cm", "watched"]);
    events.wait_for_line("the deletion", |l| {
        l.starts_with("DELETED ") && l.contains("watched")
    });
}

fn describe_and_edit(k: &Kubectl) {
    let deploy = k.ok(&["describe", "deploy", "web"]);
    assert_eq!(described(&deploy, "Name"), "web");
    assert_eq!(described(&deploy, "Namespace"), "default");
    assert_eq!(described(&deploy, "Selector"), "app=web");
    // No nodes: nothing is available; the other counts follow the rollout's progress.
    let replicas = described(&deploy, "Replicas");
    let counts: Vec<&str> = replicas.split(" | ").collect();
    assert_eq!(counts.len(), 5, "{replicas}");
    assert_eq!(
        (counts[0], counts[3]),
        ("3 desired", "0 available"),
        "{replicas}"
    );
    assert_eq!(described(&deploy, "StrategyType"), "RollingUpdate");
    assert_eq!(described(&deploy, "Image"), "nginx:1.26");
    assert_eq!(described(&deploy, "MODE"), "blue");

    let cm = k.ok(&["describe", "cm", "app-config"]);
    assert_eq!(described(&cm, "Name"), "app-config");
    let data: Vec<&str> = cm.lines().map(str::trim).collect();
    let at = data
        .iter()
        .position(|l| *l == "greeting:")
        .unwrap_or_else(|| panic!("no greeting key:\n{cm}"));
    assert_eq!(&data[at + 1..at + 3], ["----", "hi"], "{cm}");

    let svc = k.ok(&["describe", "svc", "web"]);
    assert_eq!(described(&svc, "Type"), "ClusterIP");
    assert_eq!(described(&svc, "Port"), "<unset>  80/TCP");
    assert_eq!(described(&svc, "TargetPort"), "80/TCP");

    // kubectl runs the editor through `sh -c` when it has arguments, the file name last.
    let edited = k.ok_with(
        &["edit", "cm", "app-config"],
        None,
        &[("KUBE_EDITOR", "sed -i s/size:.large/size:\\ huge/")],
    );
    assert_eq!(edited.trim(), "configmap/app-config edited");
    assert_eq!(k.jsonpath(&["cm", "app-config"], "{.data.size}"), "huge");

    let unchanged = k.server.kubectl_with(
        &k.bin,
        &["edit", "deploy", "web"],
        None,
        &[("KUBE_EDITOR", "true")],
    );
    assert!(unchanged.status.success());
    assert!(
        String::from_utf8_lossy(&unchanged.stderr).contains("Edit cancelled, no changes made."),
        "{unchanged:?}"
    );

    let edited = k.ok_with(
        &["edit", "deploy", "web"],
        None,
        &[("KUBE_EDITOR", "sed -i s/replicas:.3/replicas:\\ 4/")],
    );
    assert_eq!(edited.trim(), "deployment.apps/web edited");
    assert_eq!(k.jsonpath(&["deploy", "web"], "{.spec.replicas}"), "4");
}

fn patch_label_annotate_scale(k: &Kubectl) {
    // Strategic merge: containers merge by name, env by name.
    let patched = k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"LEVEL","value":"debug"}]}]}}}}"#,
    ]);
    assert_eq!(patched.trim(), "deployment.apps/web patched");
    let deploy = k.json(&["get", "deploy", "web"]);
    let containers = &deploy["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    assert_eq!(containers[0]["image"], "nginx:1.26");
    let env: Vec<&str> = containers[0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(env, ["LEVEL", "MODE"], "strategic merge of env by name");
    let env_before = containers[0]["env"].clone();

    let again = k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"LEVEL","value":"debug"}]}]}}}}"#,
    ]);
    // kubectl says "(no change)" only if nothing else wrote the object meanwhile; the
    // Deployment controller may have updated its status, so the env is what is checked.
    assert!(
        again.trim() == "deployment.apps/web patched (no change)"
            || again.trim() == "deployment.apps/web patched",
        "{again}"
    );
    let env_again = k.json(&["get", "deploy", "web"])["spec"]["template"]["spec"]["containers"][0]
        ["env"]
        .clone();
    assert_eq!(
        env_again, env_before,
        "the same patch again changes nothing"
    );

    // JSON merge patch: null removes.
    let merged = k.ok(&[
        "patch",
        "cm",
        "app-config",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"patched":"yes","size":null}}"#,
    ]);
    assert_eq!(merged.trim(), "configmap/app-config patched");
    let data = k.json(&["get", "cm", "app-config"])["data"].clone();
    assert_eq!(
        data,
        serde_json::json!({"greeting": "hi", "patched": "yes"})
    );

    // JSON patch.
    let json_patched = k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":6},{"op":"add","path":"/metadata/labels/patched","value":"json"}]"#,
    ]);
    assert_eq!(json_patched.trim(), "deployment.apps/web patched");
    assert_eq!(
        k.jsonpath(
            &["deploy", "web"],
            "{.spec.replicas} {.metadata.labels.patched}"
        ),
        "6 json"
    );
    let failed = k.fails(
        &[
            "patch",
            "deploy",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        ],
        None,
    );
    // kube-apiserver's answer (422, no object, the cause) makes kubectl print the reason.
    assert!(
        failed.contains("The request is invalid") && failed.contains("/spec/replicas"),
        "{failed}"
    );

    // Labels.
    let labeled = k.ok(&["label", "deploy", "web", "tier=frontend"]);
    assert_eq!(labeled.trim(), "deployment.apps/web labeled");
    assert_eq!(
        lines(&k.ok(&["get", "deploy", "-l", "tier=frontend", "-o", "name"])),
        ["deployment.apps/web"]
    );
    let refused = k.fails(&["label", "deploy", "web", "tier=backend"], None);
    assert!(
        refused.contains("'tier' already has a value (frontend), and --overwrite is false"),
        "{refused}"
    );
    k.ok(&["label", "deploy", "web", "tier=backend", "--overwrite"]);
    assert_eq!(
        k.jsonpath(&["deploy", "web"], "{.metadata.labels.tier}"),
        "backend"
    );
    let unlabeled = k.ok(&["label", "deploy", "web", "tier-"]);
    assert_eq!(unlabeled.trim(), "deployment.apps/web unlabeled");
    assert!(lines(&k.ok(&["get", "deploy", "-l", "tier", "-o", "name"])).is_empty());

    // Annotations.
    let annotated = k.ok(&["annotate", "cm", "app-config", "owner=team-a"]);
    // kubectl 1.27 prints the verb unconjugated.
    let verb = if k.minor < 28 {
        "annotate"
    } else {
        "annotated"
    };
    assert_eq!(annotated.trim(), format!("configmap/app-config {verb}"));
    assert_eq!(
        k.jsonpath(&["cm", "app-config"], "{.metadata.annotations.owner}"),
        "team-a"
    );
    k.ok(&["annotate", "cm", "app-config", "owner-"]);
    assert_eq!(
        k.jsonpath(&["cm", "app-config"], "{.metadata.annotations.owner}"),
        ""
    );

    // Scale changes the spec only (no controller makes pods).
    let scaled = k.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert_eq!(scaled.trim(), "deployment.apps/web scaled");
    assert_eq!(k.jsonpath(&["deploy", "web"], "{.spec.replicas}"), "5");
    let precondition = k.fails(
        &[
            "scale",
            "deploy",
            "web",
            "--current-replicas=2",
            "--replicas=1",
        ],
        None,
    );
    assert!(
        precondition.contains("Expected replicas to be 2, was 5"),
        "{precondition}"
    );
    k.ok(&[
        "scale",
        "deploy",
        "web",
        "--current-replicas=5",
        "--replicas=1",
    ]);
    assert_eq!(row(&k.ok(&["get", "deploy", "web"]), "web")[1], "0/1");
}

fn configmaps_and_secrets_from_literals(k: &Kubectl) {
    let created = k.ok(&[
        "create",
        "configmap",
        "literal",
        "--from-literal=a=1",
        "--from-literal=b=two words",
    ]);
    assert_eq!(created.trim(), "configmap/literal created");
    assert_eq!(
        k.json(&["get", "cm", "literal"])["data"],
        serde_json::json!({"a": "1", "b": "two words"})
    );

    let created = k.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=username=admin",
        "--from-literal=password=s3cr=t",
    ]);
    assert_eq!(created.trim(), "secret/creds created");
    let secret = k.json(&["get", "secret", "creds"]);
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"]["username"], "YWRtaW4=");
    assert_eq!(secret["data"]["password"], "czNjcj10");
    let table = k.ok(&["get", "secret", "creds"]);
    assert_eq!(
        columns(table.lines().next().expect("header")),
        ["NAME", "TYPE", "DATA", "AGE"]
    );
    assert_eq!(&row(&table, "creds")[..3], ["creds", "Opaque", "2"]);
    let text = k.ok(&["describe", "secret", "creds"]);
    assert_eq!(described(&text, "password"), "6 bytes");
    assert!(!text.contains("s3cr=t"), "describe must not show values");
    let exists = k.fails(
        &["create", "secret", "generic", "creds", "--from-literal=x=y"],
        None,
    );
    assert!(
        exists.contains(r#"secrets "creds" already exists"#),
        "{exists}"
    );

    let created = k.ok(&[
        "create",
        "deployment",
        "gen",
        "--image=nginx:1.25",
        "--replicas=2",
    ]);
    assert_eq!(created.trim(), "deployment.apps/gen created");
    let wide = k.ok(&["get", "deploy", "gen", "-o", "wide"]);
    let gen = row(&wide, "gen");
    assert_eq!(
        (gen[1], gen[5], gen[6], gen[7]),
        ("0/2", "nginx", "nginx:1.25", "app=gen")
    );

    // A zero that Go sends as a pointer survives; the defaults the server fills in apply.
    k.ok(&[
        "create",
        "deployment",
        "none",
        "--image=nginx",
        "--replicas=0",
    ]);
    let none = k.json(&["get", "deploy", "none"]);
    assert_eq!(none["spec"]["replicas"], 0, "{none}");
    assert_eq!(none["spec"]["strategy"]["type"], "RollingUpdate", "{none}");
    assert_eq!(
        none["spec"]["template"]["spec"]["restartPolicy"], "Always",
        "{none}"
    );

    let created = k.ok(&["create", "namespace", "made-by-kubectl"]);
    assert_eq!(created.trim(), "namespace/made-by-kubectl created");
    let created = k.ok(&["create", "serviceaccount", "robot"]);
    assert_eq!(created.trim(), "serviceaccount/robot created");
    let created = k.ok(&["create", "service", "clusterip", "api", "--tcp=80:8080"]);
    assert_eq!(created.trim(), "service/api created");
    let api = k.json(&["get", "svc", "api"]);
    assert_eq!(api["spec"]["ports"][0]["port"], 80, "{api}");
    assert_eq!(api["spec"]["ports"][0]["targetPort"], 8080, "{api}");
    let created = k.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(created.trim(), "cronjob.batch/tick created");
    let tick = k.json(&["get", "cronjob", "tick"]);
    assert_eq!(tick["spec"]["schedule"], "*/5 * * * *", "{tick}");
    assert_eq!(
        tick["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["echo", "hi"]),
        "{tick}"
    );
    let created = k.ok(&["create", "job", "once", "--from=cronjob/tick"]);
    assert_eq!(created.trim(), "job.batch/once created");
    let once = k.json(&["get", "job", "once"]);
    assert_eq!(
        once["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual",
        "{once}"
    );
}

fn delete_with_each_cascade_and_wait(k: &Kubectl) {
    // Background (the default): the object is gone when kubectl returns.
    let deleted = k.ok(&["delete", "deploy", "web", "--cascade=background"]);
    assert_eq!(deleted.trim(), r#"deployment.apps "web" deleted"#);
    let gone = k.fails(&["get", "deploy", "web"], None);
    assert!(
        gone.contains(r#"deployments.apps "web" not found"#),
        "{gone}"
    );

    // Foreground: the garbage collector deletes the dependents, then drops the
    // foregroundDeletion finalizer; kubectl waits for the object to go.
    k.apply_stdin(
        &["create", "-f", "-"],
        &APP.split("---\n")
            .nth(1)
            .expect("deployment")
            .replace("name: web\n  labels", "name: fg\n  labels"),
    );
    let deleted = k.ok(&["delete", "deploy", "fg", "--cascade=foreground"]);
    assert_eq!(deleted.trim(), r#"deployment.apps "fg" deleted"#);
    let gone = k.fails(&["get", "deploy", "fg"], None);
    assert!(
        gone.contains(r#"deployments.apps "fg" not found"#),
        "{gone}"
    );

    // Orphan: the garbage collector strips owner references from dependents, then the
    // orphan finalizer; `wait --for=delete` sees the object go.
    let deleted = k.ok(&["delete", "cm", "one", "--cascade=orphan", "--wait=false"]);
    assert_eq!(deleted.trim(), r#"configmap "one" deleted"#);
    let out = k.ok(&["wait", "--for=delete", "cm/one", "--timeout=30s"]);
    assert!(
        out.trim().is_empty() || out.trim() == "configmap/one condition met",
        "{out}"
    );

    // A finalizer of one's own holds the object; wait sees it go.
    k.ok(&[
        "patch",
        "cm",
        "two",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    k.ok(&["delete", "cm", "two", "--wait=false"]);
    let mut waiting = k.background(&["wait", "--for=delete", "cm/two", "--timeout=60s"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.exited(),
        "wait returned while the object still exists: {}",
        waiting.output()
    );
    k.ok(&[
        "patch",
        "cm",
        "two",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let (ok, out) = waiting.finish();
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "configmap/two condition met");

    // Deleting by label, and what is left.
    k.apply_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n",
    );
    let deleted = k.ok(&["delete", "cm", "-l", "app=web"]);
    assert_eq!(deleted.trim(), r#"configmap "app-config" deleted"#);
    let left = k.ok(&["get", "cm", "-o", "name"]);
    assert_eq!(
        lines(&left),
        ["configmap/keep", "configmap/kube-root-ca.crt"]
    );
}

fn custom_resources(k: &Kubectl) {
    let applied = k.apply_stdin(&["apply", "-f", "-"], CRD);
    assert_eq!(
        applied.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    let established = k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    assert_eq!(
        established.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com condition met"
    );

    let created = k.apply_stdin(&["apply", "-f", "-"], &widget(3));
    assert_eq!(created.trim(), "widget.example.com/w1 created");
    let table = k.ok(&["get", "widgets"]);
    assert_eq!(
        columns(table.lines().next().expect("header")),
        ["NAME", "SIZE", "AGE"]
    );
    assert_eq!(&row(&table, "w1")[..2], ["w1", "3"]);

    // Re-apply (a JSON merge patch for custom resources).
    let configured = k.apply_stdin(&["apply", "-f", "-"], &widget(5));
    assert_eq!(configured.trim(), "widget.example.com/w1 configured");
    assert_eq!(
        k.jsonpath(&["wd", "w1"], "{.spec.size} {.spec.color}"),
        "5 red"
    );
    let unchanged = k.apply_stdin(&["apply", "-f", "-"], &widget(5));
    assert_eq!(unchanged.trim(), "widget.example.com/w1 unchanged");

    let resources = k.ok(&["api-resources", "--api-group=example.com"]);
    assert_eq!(
        row(&resources, "widgets"),
        ["widgets", "wd", "example.com/v1", "true", "Widget"]
    );
    assert!(lines(&k.ok(&["api-versions"])).contains(&"example.com/v1"));

    let explain = k.ok(&["explain", "widget.spec"]);
    assert!(
        explain.contains("What the widget should be."),
        "the CRD schema's description is missing:\n{explain}"
    );
    assert!(explain.contains("How big the widget is."), "{explain}");

    let deleted = k.ok(&["delete", "widget", "w1"]);
    assert_eq!(deleted.trim(), r#"widget.example.com "w1" deleted"#);
    assert!(lines(&k.ok(&["get", "widgets", "-o", "name"])).is_empty());
}
