"""deploy/k8s passes the structure check of check_k8s.py, and the check
catches each kind of mistake it is meant to catch (each mutation below must be
reported). Run: python3 tests/deploy/test_k8s.py [-v]
"""
import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_k8s  # noqa: E402


def find(docs, kind, name=None):
    for _, d in docs:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise KeyError(f"{kind}/{name}")


def container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


class ManifestsTest(unittest.TestCase):
    def setUp(self):
        self.docs = check_k8s.load_manifests()

    def test_manifests_pass(self):
        errs = check_k8s.check(self.docs)
        self.assertEqual(errs, [], "\n".join(errs))

    def test_the_issue_objects_exist(self):
        kinds = {(d["kind"], d["metadata"]["name"]) for _, d in self.docs}
        for k in [("Deployment", "moend-router"), ("HorizontalPodAutoscaler", "moend-router"),
                  ("StatefulSet", "moend-registry"), ("Job", "moend-calibration"),
                  ("Service", "moend-router"), ("Service", "moend-registry"),
                  ("ServiceMonitor", "moend"), ("PrometheusRule", "moend")]:
            self.assertIn(k, kinds)
        sm = find(self.docs, "ServiceMonitor")
        self.assertEqual(sm["apiVersion"], "monitoring.coreos.com/v1")


class CheckCatchesMistakesTest(unittest.TestCase):
    """Each mutation of the real manifests must produce a matching error."""

    def setUp(self):
        self.base = check_k8s.load_manifests()

    def expect_error(self, mutate, fragment):
        docs = copy.deepcopy(self.base)
        mutate(docs)
        errs = check_k8s.check(docs)
        self.assertTrue(any(fragment in e for e in errs),
                        f"expected an error containing {fragment!r}, got {errs}")

    def test_worker_without_gpu_limit(self):
        def m(docs):
            del container(find(docs, "Job"))["resources"]["limits"]["nvidia.com/gpu"]
        self.expect_error(m, "nvidia.com/gpu")

    def test_registry_without_volume(self):
        def m(docs):
            sts = find(docs, "StatefulSet")
            del sts["spec"]["volumeClaimTemplates"]
            container(sts)["volumeMounts"] = []
        self.expect_error(m, "volumeClaimTemplate")

    def test_selector_not_matching_template(self):
        def m(docs):
            find(docs, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "x"
        self.expect_error(m, "does not match template labels")

    def test_service_selecting_nothing(self):
        def m(docs):
            find(docs, "Service", "moend-router")["spec"]["selector"]["app.kubernetes.io/component"] = "rooter"
        self.expect_error(m, "selects no workload")

    def test_probe_on_unopened_port(self):
        def m(docs):
            container(find(docs, "Deployment"))["readinessProbe"]["grpc"]["port"] = 7999
        self.expect_error(m, "does not open")

    def test_missing_probe(self):
        def m(docs):
            del container(find(docs, "StatefulSet"))["livenessProbe"]
        self.expect_error(m, "no livenessProbe")

    def test_http_probe_on_grpc_server(self):
        def m(docs):
            container(find(docs, "Deployment"))["livenessProbe"] = {
                "httpGet": {"path": "/metrics", "port": "metrics"}}
        self.expect_error(m, "grpc probe type")

    def test_container_without_image_or_ports(self):
        def m(docs):
            c = container(find(docs, "Deployment"))
            del c["image"]
            del c["ports"]
        self.expect_error(m, "no image")
        self.expect_error(m, "no ports")

    def test_listen_flag_and_port_disagree(self):
        def m(docs):
            args = container(find(docs, "StatefulSet"))["args"]
            args[args.index("--listen=0.0.0.0:7001")] = "--listen=0.0.0.0:7005"
        self.expect_error(m, "the port named grpc is 7001")

    def test_registry_address_names_no_service(self):
        def m(docs):
            args = container(find(docs, "Deployment"))["args"]
            args[args.index("--registry=moend-registry:7001")] = "--registry=registry:7001"
        self.expect_error(m, "not defined")

    def test_claim_of_undefined_pvc(self):
        def m(docs):
            docs[:] = [(f, d) for f, d in docs if d["kind"] != "PersistentVolumeClaim"]
        self.expect_error(m, "claims moend-models")

    def test_job_not_indexed(self):
        def m(docs):
            del find(docs, "Job")["spec"]["completionMode"]
        self.expect_error(m, "Indexed")

    def test_servicemonitor_port_missing(self):
        def m(docs):
            find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] = "prom"
        self.expect_error(m, "scrapes port prom")

    def test_prometheusrule_drift(self):
        def m(docs):
            find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["for"] = "9m"
        self.expect_error(m, "differs from")

    def test_hpa_target_missing_and_replicas_fight(self):
        def m(docs):
            find(docs, "Deployment")["spec"]["replicas"] = 3
        self.expect_error(m, "fights its autoscaler")

    def test_undefined_env_in_args(self):
        def m(docs):
            container(find(docs, "Job"))["args"].append("--id=$(NOPE)")
        self.expect_error(m, "$(NOPE)")

    def test_missing_kind(self):
        def m(docs):
            del find(docs, "Namespace")["kind"]
        self.expect_error(m, "lacks apiVersion, kind or metadata.name")


if __name__ == "__main__":
    unittest.main()
