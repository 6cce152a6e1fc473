#!/usr/bin/env python3
"""Writes pipelines/samples/events.json: realistic Kubernetes Events, written for eventflow's
demo and tests (not copied from a cluster). Both API versions, several namespaces, Normal and
Warning, and repeated events whose count grows (same uid, new resourceVersion).

Run: python3 pipelines/samples/generate.py > pipelines/samples/events.json
"""
import datetime, hashlib, json, random

random.seed(7)
BASE = datetime.datetime(2026, 11, 27, 9, 0, 0, tzinfo=datetime.timezone.utc)
rv = [48213000]
out = []


def ts(sec, micro=False):
    t = BASE + datetime.timedelta(seconds=sec)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%06dZ" % (int(sec * 1e6) % 1000000 or 123456)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def uid(seed):
    h = hashlib.sha1(seed.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def name_of(obj, seed):
    return f"{obj}.{hashlib.sha1(seed.encode()).hexdigest()[:16]}"


def next_rv():
    rv[0] += random.randint(1, 40)
    return str(rv[0])


def legacy(ns, kind, obj, reason, msg, typ, comp, host, t0, t1=None, count=1, field=None, key=None):
    key = key or f"{ns}/{obj}/{reason}/{t0}"
    ev = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name_of(obj, key), "namespace": ns, "uid": uid(key),
                     "resourceVersion": next_rv(), "creationTimestamp": ts(t0)},
        "involvedObject": {"kind": kind, "namespace": ns, "name": obj, "uid": uid("obj/" + ns + obj),
                           "apiVersion": "apps/v1" if kind in ("Deployment", "ReplicaSet", "StatefulSet") else "v1",
                           "resourceVersion": str(rv[0] - 7)},
        "reason": reason, "message": msg,
        "source": {"component": comp, **({"host": host} if host else {})},
        "firstTimestamp": ts(t0), "lastTimestamp": ts(t1 if t1 is not None else t0),
        "count": count, "type": typ, "eventTime": None,
        "reportingComponent": comp, "reportingInstance": host or "",
    }
    if field:
        ev["involvedObject"]["fieldPath"] = field
    if kind == "Node":
        ev["involvedObject"].pop("namespace")
        ev["metadata"]["namespace"] = "default"
    return ev


def new_style(ns, kind, obj, reason, note, typ, controller, instance, action, t0, t_last=None, count=None, key=None):
    key = key or f"{ns}/{obj}/{reason}/{t0}"
    ev = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name_of(obj, key), "namespace": ns, "uid": uid(key),
                     "resourceVersion": next_rv(), "creationTimestamp": ts(t0)},
        "eventTime": ts(t0, micro=True),
        "reportingController": controller, "reportingInstance": instance,
        "action": action, "reason": reason,
        "regarding": {"kind": kind, "namespace": ns, "name": obj, "uid": uid("obj/" + ns + obj),
                      "apiVersion": "v1", "resourceVersion": str(rv[0] - 5)},
        "note": note, "type": typ,
    }
    if count is not None:
        ev["series"] = {"count": count, "lastObservedTime": ts(t_last, micro=True)}
    return ev


t = 0
# A rollout in `shop`: deployment and replicaset controllers, then each pod's lifecycle.
out.append(legacy("shop", "Deployment", "web", "ScalingReplicaSet", "Scaled up replica set web-7d4b9c to 3",
                  "Normal", "deployment-controller", None, t))
pods = ["web-7d4b9c-x2x9q", "web-7d4b9c-k8j2m", "web-7d4b9c-pp4rt"]
for i, p in enumerate(pods):
    out.append(legacy("shop", "ReplicaSet", "web-7d4b9c", "SuccessfulCreate", f"Created pod: {p}",
                      "Normal", "replicaset-controller", None, t + 1, key=f"rs/{p}"))
for i, p in enumerate(pods):
    s = 2 + i
    out.append(new_style("shop", "Pod", p, "Scheduled", f"Successfully assigned shop/{p} to worker-{i + 1}",
                         "Normal", "default-scheduler", "default-scheduler-control-plane", "Binding", s))
    for j, (reason, msg) in enumerate([
        ("Pulling", 'Pulling image "registry.example.com/shop/web:1.42.0"'),
        ("Pulled", 'Successfully pulled image "registry.example.com/shop/web:1.42.0" in 2.113s (2.113s including waiting). Image size: 48213377 bytes.'),
        ("Created", "Created container: web"),
        ("Started", "Started container web"),
    ]):
        out.append(legacy("shop", "Pod", p, reason, msg, "Normal", "kubelet", f"worker-{i + 1}", s + 1 + j * 2,
                          field="spec.containers{web}"))

# One pod crash-loops: BackOff and Unhealthy repeat, the same Event object with a growing count.
crash = pods[0]
for n in range(1, 9):
    out.append(legacy("shop", "Pod", crash, "BackOff",
                      f"Back-off restarting failed container web in pod {crash}_shop({uid('obj/shop' + crash)})",
                      "Warning", "kubelet", "worker-1", 60, 60 + n * 40, count=n, field="spec.containers{web}",
                      key="shop/backoff"))
    if n <= 5:
        out.append(legacy("shop", "Pod", crash, "Unhealthy",
                          'Readiness probe failed: Get "http://10.244.1.17:8080/healthz": dial tcp 10.244.1.17:8080: connect: connection refused',
                          "Warning", "kubelet", "worker-1", 55, 55 + n * 10, count=n * 3, field="spec.containers{web}",
                          key="shop/unhealthy"))
out.append(legacy("shop", "Pod", crash, "Killing", "Container web failed liveness probe, will be restarted",
                  "Normal", "kubelet", "worker-1", 400, field="spec.containers{web}"))

# `payments`: an image that cannot be pulled.
for n in range(1, 7):
    out.append(legacy("payments", "Pod", "ledger-5f9c7-2lq8w", "Failed",
                      'Failed to pull image "registry.example.com/payments/ledger:2.0.0-rc1": rpc error: code = NotFound desc = failed to pull and unpack image: not found',
                      "Warning", "kubelet", "worker-3", 100, 100 + n * 30, count=n, field="spec.containers{ledger}",
                      key="payments/failed"))
    out.append(legacy("payments", "Pod", "ledger-5f9c7-2lq8w", "ImagePullBackOff",
                      'Back-off pulling image "registry.example.com/payments/ledger:2.0.0-rc1"',
                      "Normal", "kubelet", "worker-3", 101, 101 + n * 30, count=n, field="spec.containers{ledger}",
                      key="payments/backoff"))
out.append(legacy("payments", "Pod", "ledger-5f9c7-2lq8w", "Failed", "Error: ImagePullBackOff",
                  "Warning", "kubelet", "worker-3", 102, 300, count=11, field="spec.containers{ledger}"))

# `monitoring`: a missing ConfigMap blocks a mount; the series grows.
for n in range(1, 6):
    out.append(legacy("monitoring", "Pod", "prometheus-0", "FailedMount",
                      'MountVolume.SetUp failed for volume "config" : configmap "prometheus-config" not found',
                      "Warning", "kubelet", "worker-2", 30, 30 + n * 64, count=n, key="mon/mount"))
out.append(legacy("monitoring", "StatefulSet", "prometheus", "SuccessfulCreate",
                  "create Pod prometheus-0 in StatefulSet prometheus successful", "Normal", "statefulset-controller",
                  None, 29))

# `batch`: pods that do not fit, reported through events.k8s.io/v1 with a growing series.
for job in ["etl-28861140-7xk2p", "etl-28861140-q9z4d"]:
    for n in [None, 2, 3, 5, 8]:
        out.append(new_style("batch", "Pod", job, "FailedScheduling",
                             "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient memory. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.",
                             "Warning", "default-scheduler", "default-scheduler-control-plane", "Scheduling",
                             200, 200 + (n or 1) * 30, count=n, key=f"batch/{job}"))
out.append(new_style("batch", "Job", "etl-28861140", "SuccessfulCreate", "Created pod: etl-28861140-7xk2p",
                     "Normal", "job-controller", "kube-controller-manager", "Create", 199))
out.append(new_style("batch", "CronJob", "etl", "SuccessfulCreate", "Created job etl-28861140",
                     "Normal", "cronjob-controller", "kube-controller-manager", "Create", 198))

# `kube-system` and nodes.
out.append(legacy("default", "Node", "worker-3", "NodeNotReady", "Node worker-3 status is now: NodeNotReady",
                  "Normal", "node-controller", None, 500))
out.append(legacy("default", "Node", "worker-3", "NodeHasDiskPressure",
                  "Node worker-3 status is now: NodeHasDiskPressure", "Warning", "kubelet", "worker-3", 480))
out.append(legacy("default", "Node", "worker-3", "EvictionThresholdMet",
                  "Attempting to reclaim ephemeral-storage", "Warning", "kubelet", "worker-3", 481, 520, count=4))
for i, p in enumerate(["coredns-5d78c9869d-4kq2x", "coredns-5d78c9869d-zr7lm"]):
    out.append(legacy("kube-system", "Pod", p, "Killing", "Stopping container coredns", "Normal", "kubelet",
                      "worker-3", 505 + i, field="spec.containers{coredns}"))
    out.append(new_style("kube-system", "Pod", p.replace("4kq2x", "b8c2d").replace("zr7lm", "m2n4p"), "Scheduled",
                         f"Successfully assigned kube-system/{p} to worker-1", "Normal", "default-scheduler",
                         "default-scheduler-control-plane", "Binding", 510 + i))
out.append(legacy("kube-system", "Pod", "kube-proxy-9wq2h", "Unhealthy",
                  "Liveness probe failed: HTTP probe failed with statuscode: 503", "Warning", "kubelet", "worker-2",
                  300, 360, count=3, field="spec.containers{kube-proxy}"))

# `shop` again: a second rollout step and an HPA.
out.append(legacy("shop", "HorizontalPodAutoscaler", "web", "SuccessfulRescale",
                  "New size: 5; reason: cpu resource utilization (percentage of request) above target", "Normal",
                  "horizontal-pod-autoscaler", None, 600))
out.append(legacy("shop", "HorizontalPodAutoscaler", "web", "FailedGetResourceMetric",
                  "failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API",
                  "Warning", "horizontal-pod-autoscaler", None, 590, 610, count=6))
for i, p in enumerate(["web-7d4b9c-z7wq9", "web-7d4b9c-h3kd8"]):
    out.append(new_style("shop", "Pod", p, "Scheduled", f"Successfully assigned shop/{p} to worker-{i + 1}",
                         "Normal", "default-scheduler", "default-scheduler-control-plane", "Binding", 601 + i))
    out.append(legacy("shop", "Pod", p, "Pulled",
                      'Container image "registry.example.com/shop/web:1.42.0" already present on machine', "Normal",
                      "kubelet", f"worker-{i + 1}", 603 + i, field="spec.containers{web}"))
    out.append(legacy("shop", "Pod", p, "Started", "Started container web", "Normal", "kubelet",
                      f"worker-{i + 1}", 605 + i, field="spec.containers{web}"))
out.append(legacy("shop", "Pod", "cart-6c8d5-tt2kw", "OOMKilling",
                  "Memory cgroup out of memory: Killed process 4127 (java) total-vm:4821048kB, anon-rss:1048576kB",
                  "Warning", "kernel-monitor", "worker-2", 650))
out.append(legacy("shop", "PersistentVolumeClaim", "cart-data", "ProvisioningFailed",
                  'storageclass.storage.k8s.io "fast-ssd" not found', "Warning", "persistentvolume-controller",
                  None, 640, 700, count=5))

# A message with characters that break naive JSON templates and SQL.
out.append(legacy("shop", "Pod", "cart-6c8d5-tt2kw", "BackOff",
                  'Back-off restarting failed container "cart" \u2014 last log line: {"level":"error","msg":"can\'t connect"}\n\tat Cart.main(Cart.java:42) \U0001F525',
                  "Warning", "kubelet", "worker-2", 660, 700, count=2, field="spec.containers{cart}"))


# `checkout`: a canary rollout whose new version fails its readiness probe, then a rollback.
out.append(legacy("checkout", "Deployment", "api", "ScalingReplicaSet", "Scaled up replica set api-84f6d7 to 4",
                  "Normal", "deployment-controller", None, 700))
for i in range(4):
    p = f"api-84f6d7-{'abcd'[i]}{i}x{i}q"
    s = 702 + i * 3
    out.append(legacy("checkout", "ReplicaSet", "api-84f6d7", "SuccessfulCreate", f"Created pod: {p}",
                      "Normal", "replicaset-controller", None, 701, key=f"checkout/rs/{p}"))
    out.append(new_style("checkout", "Pod", p, "Scheduled", f"Successfully assigned checkout/{p} to worker-{i % 3 + 1}",
                         "Normal", "default-scheduler", "default-scheduler-control-plane", "Binding", s))
    out.append(legacy("checkout", "Pod", p, "Pulled",
                      'Container image "registry.example.com/checkout/api:3.1.0" already present on machine',
                      "Normal", "kubelet", f"worker-{i % 3 + 1}", s + 1, field="spec.containers{api}"))
    out.append(legacy("checkout", "Pod", p, "Started", "Started container api", "Normal", "kubelet",
                      f"worker-{i % 3 + 1}", s + 2, field="spec.containers{api}"))
    for n in (1, 2, 4):
        out.append(legacy("checkout", "Pod", p, "Unhealthy",
                          "Readiness probe failed: HTTP probe failed with statuscode: 500", "Warning", "kubelet",
                          f"worker-{i % 3 + 1}", s + 10, s + 10 + n * 10, count=n, field="spec.containers{api}",
                          key=f"checkout/unhealthy/{p}"))
out.append(legacy("checkout", "Deployment", "api", "ScalingReplicaSet", "Scaled down replica set api-84f6d7 to 0 from 4",
                  "Normal", "deployment-controller", None, 800))

json.dump(out, __import__("sys").stdout, indent=2, ensure_ascii=False)
print()
