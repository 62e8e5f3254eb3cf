#!/usr/bin/env python3
"""The official Python `kubernetes` client (PyPI) against a running `cluster server`.

Usage: python3 tests/python/client_test.py KUBECONFIG

Creates, lists, watches and deletes a ConfigMap and a Deployment through the client's typed
models, so every response is deserialized the way Python users see it. Each watch starts at a
known resourceVersion and must see a change made after it started. Exits 0 when everything
matched, 1 with a message naming the step on the first mismatch, 2 on bad usage. Run by
tests/python_client.rs.
"""

import sys
import threading
import time
import uuid

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NAMESPACE = "default"
WATCH_TIMEOUT = 15  # seconds; the server ends the watch after this many (timeoutSeconds)


class Mismatch(Exception):
    """A response that differs from what the Kubernetes API promises."""


def expect(condition, message):
    if not condition:
        raise Mismatch(message)


def expect_not_found(call, what):
    try:
        call()
    except ApiException as err:
        expect(err.status == 404, f"{what}: expected 404, got {err.status}: {err.body}")
        return
    raise Mismatch(f"{what}: expected 404, the call succeeded")


def watch_for(list_call, resource_version, name, wanted, change, accept=lambda obj: True, **kwargs):
    """Watches from `resource_version`, makes `change()` once the watch is open, and returns
    the first event of type `wanted` for object `name` whose object satisfies `accept` (other
    writers, such as the controllers, may modify the object too)."""
    w = watch.Watch()
    stream = w.stream(
        list_call,
        NAMESPACE,
        resource_version=resource_version,
        timeout_seconds=WATCH_TIMEOUT,
        **kwargs,
    )
    # The request is sent on the first next(); make the change from a thread shortly after, so
    # that it happens after the watch has started.
    errors = []

    def later():
        time.sleep(0.5)
        try:
            change()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=later)
    thread.start()
    seen = []
    found = None
    deadline = time.monotonic() + WATCH_TIMEOUT + 5
    try:
        for event in stream:
            kind = event["type"]
            obj = event["object"]
            obj_name = obj.metadata.name if hasattr(obj, "metadata") else None
            seen.append((kind, obj_name))
            if kind == "ERROR":
                raise Mismatch(f"watch from {resource_version}: ERROR event {event['raw_object']}")
            if kind == wanted and obj_name == name and accept(obj):
                found = obj
                break
            if time.monotonic() > deadline:
                break
    finally:
        w.stop()
        thread.join()
    if errors:
        raise errors[0]
    expect(
        found is not None,
        f"watch from {resource_version}: no {wanted} event for {name!r} (saw {seen})",
    )
    return found


def config_maps(core):
    name = f"py-cm-{uuid.uuid4().hex[:8]}"
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels={"suite": "python"}),
        data={"greeting": "hello"},
    )
    created = core.create_namespaced_config_map(NAMESPACE, body)
    meta = created.metadata
    expect(meta.name == name, f"configmap create: name {meta.name!r}")
    expect(meta.namespace == NAMESPACE, f"configmap create: namespace {meta.namespace!r}")
    expect(meta.uid, "configmap create: no uid")
    expect(meta.resource_version, "configmap create: no resourceVersion")
    expect(meta.creation_timestamp is not None, "configmap create: no creationTimestamp")
    expect(created.data == {"greeting": "hello"}, f"configmap create: data {created.data}")
    try:
        core.create_namespaced_config_map(NAMESPACE, body)
        raise Mismatch("configmap create twice: the second create succeeded")
    except ApiException as err:
        expect(err.status == 409, f"configmap create twice: {err.status} {err.body}")

    got = core.read_namespaced_config_map(name, NAMESPACE)
    expect(got.metadata.uid == meta.uid, "configmap get: a different uid")
    expect(got.data == {"greeting": "hello"}, f"configmap get: data {got.data}")

    listed = core.list_namespaced_config_map(NAMESPACE, label_selector="suite=python")
    names = [item.metadata.name for item in listed.items]
    expect(names == [name], f"configmap list by label: {names}")
    expect(listed.metadata.resource_version, "configmap list: no resourceVersion")
    rv = listed.metadata.resource_version

    def update():
        got.data = {"greeting": "bonjour"}
        core.replace_namespaced_config_map(name, NAMESPACE, got)

    modified = watch_for(
        core.list_namespaced_config_map, rv, name, "MODIFIED", update,
        label_selector="suite=python",
    )
    expect(modified.data == {"greeting": "bonjour"}, f"configmap watch: data {modified.data}")
    expect(
        modified.metadata.resource_version != meta.resource_version,
        "configmap watch: resourceVersion did not change",
    )

    # A watch across the deletion sees DELETED with the last state.
    rv = core.list_namespaced_config_map(NAMESPACE).metadata.resource_version
    deleted = watch_for(
        core.list_namespaced_config_map, rv, name, "DELETED",
        lambda: core.delete_namespaced_config_map(name, NAMESPACE),
    )
    expect(deleted.data == {"greeting": "bonjour"}, f"configmap delete event: data {deleted.data}")
    expect_not_found(lambda: core.read_namespaced_config_map(name, NAMESPACE), "configmap get after delete")
    listed = core.list_namespaced_config_map(NAMESPACE, label_selector="suite=python")
    expect(listed.items == [], f"configmap list after delete: {[i.metadata.name for i in listed.items]}")
    print(f"ok: configmap {name}: create, get, list, watch (MODIFIED, DELETED), delete")


def deployments(apps):
    name = f"py-deploy-{uuid.uuid4().hex[:8]}"
    labels = {"app": name}
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={"suite": "python"}),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="web",
                            image="nginx:1.27",
                            ports=[client.V1ContainerPort(container_port=80)],
                        )
                    ]
                ),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(NAMESPACE, body)
    meta = created.metadata
    expect(meta.name == name, f"deployment create: name {meta.name!r}")
    expect(meta.uid and meta.resource_version, "deployment create: no uid or resourceVersion")
    expect(created.spec.replicas == 2, f"deployment create: replicas {created.spec.replicas}")
    container = created.spec.template.spec.containers[0]
    expect(container.image == "nginx:1.27", f"deployment create: image {container.image!r}")
    # Defaults the API server applies, as kube-apiserver does.
    expect(
        created.spec.strategy is not None and created.spec.strategy.type == "RollingUpdate",
        f"deployment create: strategy {created.spec.strategy}",
    )

    got = apps.read_namespaced_deployment(name, NAMESPACE)
    expect(got.metadata.uid == meta.uid, "deployment get: a different uid")

    listed = apps.list_namespaced_deployment(NAMESPACE, label_selector="suite=python")
    names = [item.metadata.name for item in listed.items]
    expect(names == [name], f"deployment list by label: {names}")
    rv = listed.metadata.resource_version
    expect(rv, "deployment list: no resourceVersion")

    def scale():
        apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"replicas": 3}})

    # The Deployment controller writes the status too: wait for the scaled object.
    modified = watch_for(
        apps.list_namespaced_deployment, rv, name, "MODIFIED", scale,
        accept=lambda d: d.spec.replicas == 3,
    )
    expect(modified.spec.replicas == 3, f"deployment watch: replicas {modified.spec.replicas}")
    expect(
        modified.metadata.generation is not None and modified.metadata.generation > (meta.generation or 0),
        f"deployment watch: generation {meta.generation} -> {modified.metadata.generation}",
    )

    rv = apps.list_namespaced_deployment(NAMESPACE).metadata.resource_version
    watch_for(
        apps.list_namespaced_deployment, rv, name, "DELETED",
        lambda: apps.delete_namespaced_deployment(name, NAMESPACE),
    )
    expect_not_found(lambda: apps.read_namespaced_deployment(name, NAMESPACE), "deployment get after delete")
    print(f"ok: deployment {name}: create, get, list, watch (MODIFIED, DELETED), delete")


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} KUBECONFIG", file=sys.stderr)
        return 2
    config.load_kube_config(config_file=argv[1])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    try:
        # The client asks for /version/ (with the slash), as kube-apiserver serves it.
        version = client.VersionApi().get_code()
        expect(version.git_version and version.major, f"version: {version}")
        print(f"ok: server version {version.git_version}")
        config_maps(core)
        deployments(apps)
    except Mismatch as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    except ApiException as err:
        print(f"FAIL: unexpected API error {err.status} {err.reason}: {err.body}", file=sys.stderr)
        return 1
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
