"""Offline structure check of the Kubernetes manifests in deploy/k8s.

No cluster and no schema download: the rules below are the ones that break a
real rollout when violated (selectors that select nothing, probes on ports the
container does not open, a worker without a GPU, a registry without a volume).

  python3 tests/deploy/check_k8s.py                # check, print problems, exit 1 on any
  python3 tests/deploy/check_k8s.py --write-prometheusrule
                                                   # regenerate deploy/k8s/prometheusrule.yaml
                                                   # from deploy/prometheus/rules/moend.rules.yml
"""
import argparse
import glob
import os
import re
import sys

import yaml

ROOT = os.environ.get("MOEND_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules", "moend.rules.yml")

API_VERSIONS = {
    "Namespace": "v1", "Service": "v1", "PersistentVolumeClaim": "v1", "ConfigMap": "v1",
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Servers must be probed through the gRPC health service.
GRPC_SERVERS = ("Deployment", "StatefulSet")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_manifests(directory=K8S):
    """[(file, doc)] of every manifest (kustomization.yaml excluded)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((os.path.basename(path), doc))
    return docs


def name_of(doc):
    return f'{doc.get("kind")}/{doc.get("metadata", {}).get("name")}'


def pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def template_labels(doc):
    return doc["spec"]["template"].get("metadata", {}).get("labels", {}) or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_ports(doc):
    """{name or number: number} over the pod's containers."""
    ports = {}
    for c in pod_spec(doc).get("containers", []):
        for p in c.get("ports", []) or []:
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def probe_port(probe):
    for kind in ("grpc", "httpGet", "tcpSocket"):
        if kind in probe:
            return kind, probe[kind].get("port")
    return None, None


def check(docs, rules_path=RULES, kustomization=os.path.join(K8S, "kustomization.yaml")):
    """Every problem found, as a list of messages (empty = fine)."""
    errs = []
    by_kind = {}
    for fname, doc in docs:
        where = f"{fname}: {name_of(doc)}"
        kind = doc.get("kind")
        if not doc.get("apiVersion") or not kind or not doc.get("metadata", {}).get("name"):
            errs.append(f"{fname}: a document lacks apiVersion, kind or metadata.name")
            continue
        if kind not in API_VERSIONS:
            errs.append(f"{where}: kind {kind} is not one this check knows")
        elif doc["apiVersion"] != API_VERSIONS[kind]:
            errs.append(f"{where}: apiVersion {doc['apiVersion']}, expected {API_VERSIONS[kind]}")
        if not DNS_LABEL.match(doc["metadata"]["name"]):
            errs.append(f"{where}: metadata.name is not a DNS-1123 label")
        by_kind.setdefault(kind, []).append((fname, doc))

    workloads = [(f, d) for k in WORKLOADS for f, d in by_kind.get(k, [])]
    services = by_kind.get("Service", [])
    pvcs = {d["metadata"]["name"] for _, d in by_kind.get("PersistentVolumeClaim", [])}

    for fname, doc in workloads:
        where = f"{fname}: {name_of(doc)}"
        kind = doc["kind"]
        try:
            spec = pod_spec(doc)
        except (KeyError, TypeError):
            errs.append(f"{where}: no spec.template.spec")
            continue
        labels = template_labels(doc)
        sel = (doc["spec"].get("selector") or {}).get("matchLabels")
        if kind != "Job" or sel:
            if not sel:
                errs.append(f"{where}: no spec.selector.matchLabels")
            elif not selects(sel, labels):
                errs.append(f"{where}: selector {sel} does not match template labels {labels}")
        containers = spec.get("containers") or []
        if not containers:
            errs.append(f"{where}: no containers")
        volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
        vct = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", []) or []}
        ports = container_ports(doc)
        for c in containers:
            cw = f"{where} container {c.get('name')}"
            image = c.get("image", "")
            if not image:
                errs.append(f"{cw}: no image")
            elif ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                errs.append(f"{cw}: image {image} needs a pinned tag")
            cports = c.get("ports") or []
            if not cports:
                errs.append(f"{cw}: no ports")
            names = [p.get("name") for p in cports if p.get("name")]
            if len(names) != len(set(names)):
                errs.append(f"{cw}: duplicate port names")
            for p in cports:
                if not isinstance(p.get("containerPort"), int):
                    errs.append(f"{cw}: containerPort must be an integer")
                if len(p.get("name", "")) > 15:
                    errs.append(f"{cw}: port name {p['name']} longer than 15 characters")
            if "resources" not in c:
                errs.append(f"{cw}: no resources")
            # Probes.
            probes = {k: c[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in c}
            if kind in GRPC_SERVERS:
                for k in ("livenessProbe", "readinessProbe"):
                    if k not in c:
                        errs.append(f"{cw}: no {k}")
                    elif "grpc" not in c[k]:
                        errs.append(f"{cw}: {k} must use the grpc probe type (gRPC health service)")
            elif "livenessProbe" not in c:
                errs.append(f"{cw}: no livenessProbe")
            for k, probe in probes.items():
                ptype, port = probe_port(probe)
                if ptype is None:
                    errs.append(f"{cw}: {k} has no grpc/httpGet/tcpSocket action")
                elif ptype == "grpc" and not isinstance(port, int):
                    errs.append(f"{cw}: {k} grpc.port must be a number")
                elif port not in ports:
                    errs.append(f"{cw}: {k} probes port {port}, which the container does not open")
            # Flags that name ports must agree with the declared ports.
            env = {e["name"] for e in c.get("env", []) or []}
            for a in (c.get("args") or []) + (c.get("command") or []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(a)):
                    if var not in env:
                        errs.append(f"{cw}: argument {a} uses $({var}), not defined in env")
                m = re.match(r"--(listen|metrics)=[^:]*:(\d+)$", str(a))
                if m:
                    want = "grpc" if m.group(1) == "listen" else "metrics"
                    if ports.get(want) != int(m.group(2)):
                        errs.append(f"{cw}: {a} but the port named {want} is {ports.get(want)}")
                m = re.match(r"--(registry|router)=([^:/]+):(\d+)$", str(a))
                if m:
                    svc = [d for _, d in services if d["metadata"]["name"] == m.group(2)]
                    if not svc:
                        errs.append(f"{cw}: {a} names Service {m.group(2)}, which is not defined")
                    elif int(m.group(3)) not in [p["port"] for p in svc[0]["spec"].get("ports", [])]:
                        errs.append(f"{cw}: {a}: Service {m.group(2)} has no port {m.group(3)}")
            # Volumes.
            for vm in c.get("volumeMounts", []) or []:
                if vm["name"] not in volumes and vm["name"] not in vct:
                    errs.append(f"{cw}: mounts {vm['name']}, which is neither a volume nor a claim template")
        for vname, v in volumes.items():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in pvcs:
                errs.append(f"{where}: volume {vname} claims {claim}, which is not defined")
        mounted = {vm["name"] for c in containers for vm in c.get("volumeMounts", []) or []}
        for t in vct:
            if t not in mounted:
                errs.append(f"{where}: volumeClaimTemplate {t} is mounted by no container")

        comp = labels.get("app.kubernetes.io/component")
        if kind == "StatefulSet":
            if not vct:
                errs.append(f"{where}: a StatefulSet of the registry needs a volumeClaimTemplate")
            for t in doc["spec"].get("volumeClaimTemplates", []) or []:
                if not t.get("spec", {}).get("resources", {}).get("requests", {}).get("storage"):
                    errs.append(f"{where}: claim template {t['metadata']['name']} requests no storage")
            gov = [d for _, d in services if d["metadata"]["name"] == doc["spec"].get("serviceName")]
            if not gov:
                errs.append(f"{where}: serviceName {doc['spec'].get('serviceName')} is not a Service here")
            elif gov[0]["spec"].get("clusterIP") != "None":
                errs.append(f"{where}: governing Service {gov[0]['metadata']['name']} must be headless")
        if kind == "Job":
            if doc["spec"].get("completionMode") != "Indexed":
                errs.append(f"{where}: calibration runs as an Indexed Job (completionMode: Indexed)")
            if spec.get("restartPolicy") not in ("OnFailure", "Never"):
                errs.append(f"{where}: a Job's restartPolicy must be OnFailure or Never")
        if comp == "worker":
            for c in containers:
                limits = c.get("resources", {}).get("limits", {}) or {}
                gpus = limits.get("nvidia.com/gpu")
                if not isinstance(gpus, int) or gpus < 1:
                    errs.append(f"{where} container {c.get('name')}: workers need "
                                f"resources.limits nvidia.com/gpu >= 1")
                req = c.get("resources", {}).get("requests", {}) or {}
                if "nvidia.com/gpu" in req and req["nvidia.com/gpu"] != gpus:
                    errs.append(f"{where}: GPU request and limit differ")

    # Every Service selects some workload, and its target ports exist there.
    for fname, svc in services:
        where = f"{fname}: {name_of(svc)}"
        sel = svc["spec"].get("selector")
        targets = [(f, d) for f, d in workloads if selects(sel, template_labels(d))]
        if not targets:
            errs.append(f"{where}: selector {sel} selects no workload")
            continue
        for p in svc["spec"].get("ports", []) or []:
            tp = p.get("targetPort", p.get("port"))
            for _, d in targets:
                if tp not in container_ports(d):
                    errs.append(f"{where}: targetPort {tp} is not a port of {name_of(d)}")

    for fname, hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        hits = [d for _, d in workloads if d["kind"] == ref["kind"]
                and d["metadata"]["name"] == ref["name"]]
        if not hits:
            errs.append(f"{fname}: {name_of(hpa)} scales {ref['kind']}/{ref['name']}, which is not defined")
        elif "replicas" in hits[0]["spec"]:
            errs.append(f"{fname}: {name_of(hits[0])} sets replicas, which fights its autoscaler")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            errs.append(f"{fname}: {name_of(hpa)} minReplicas > maxReplicas")

    for fname, pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, template_labels(d)) for _, d in workloads):
            errs.append(f"{fname}: {name_of(pdb)} selects no workload")

    for fname, sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        chosen = [d for _, d in services if selects(sel, d["metadata"].get("labels", {}))]
        if not chosen:
            errs.append(f"{fname}: {name_of(sm)} selects no Service")
        for ep in sm["spec"].get("endpoints", []):
            for d in chosen:
                if ep["port"] not in [p.get("name") for p in d["spec"].get("ports", [])]:
                    errs.append(f"{fname}: {name_of(sm)} scrapes port {ep['port']}, "
                                f"which {name_of(d)} does not name")
        for comp in ("registry", "router", "worker"):
            if not any(d["metadata"]["labels"].get("app.kubernetes.io/component") == comp
                       for d in chosen):
                errs.append(f"{fname}: no scraped Service for the {comp}")

    rules = by_kind.get("PrometheusRule", [])
    if rules_path:
        with open(rules_path, encoding="utf-8") as f:
            groups = yaml.safe_load(f)["groups"]
        if not rules:
            errs.append("no PrometheusRule: the alert rules are not deployed")
        for fname, r in rules:
            if r["spec"].get("groups") != groups:
                errs.append(f"{fname}: {name_of(r)} differs from {os.path.relpath(rules_path, ROOT)}; "
                            f"regenerate: python3 tests/deploy/check_k8s.py --write-prometheusrule")

    if kustomization:
        with open(kustomization, encoding="utf-8") as f:
            k = yaml.safe_load(f)
        listed = set(k.get("resources", []))
        present = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))} - {
            "kustomization.yaml"}
        for missing in sorted(present - listed):
            errs.append(f"kustomization.yaml: resources do not list {missing}")
        for extra in sorted(listed - present):
            errs.append(f"kustomization.yaml: lists {extra}, which does not exist")
        images = {i["name"] for i in k.get("images", [])}
        for _, d in workloads:
            for c in pod_spec(d).get("containers", []):
                if c.get("image") and c["image"].rsplit(":", 1)[0] not in images:
                    errs.append(f"kustomization.yaml: image {c['image']} has no images: entry")
    return errs


def write_prometheusrule():
    with open(RULES, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "moend", "labels": {"app.kubernetes.io/name": "moend",
                                                  "app.kubernetes.io/part-of": "moend"}},
        "spec": {"groups": groups},
    }
    out = os.path.join(K8S, "prometheusrule.yaml")
    with open(out, "w", encoding="utf-8") as f:
        f.write("# Generated from deploy/prometheus/rules/moend.rules.yml by\n"
                "# python3 tests/deploy/check_k8s.py --write-prometheusrule; do not edit.\n")
        f.write("# yamllint disable rule:line-length\n---\n")
        yaml.safe_dump(doc, f, sort_keys=False, width=100, default_flow_style=False,
                       allow_unicode=True)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-prometheusrule", action="store_true")
    args = ap.parse_args()
    if args.write_prometheusrule:
        write_prometheusrule()
        return 0
    docs = load_manifests()
    errs = check(docs)
    kinds = sorted({d["kind"] for _, d in docs})
    if errs:
        print(f"deploy/k8s: {len(errs)} problem(s):", file=sys.stderr)
        for e in errs:
            print("  " + e, file=sys.stderr)
        return 1
    print(f"deploy/k8s: {len(docs)} manifests ({', '.join(kinds)}) pass the structure check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
