"""The Python client (clients/python, package `moend`) against real
moend-registry, moend-router and moend-worker binaries on loopback.

  PYTHONPATH=clients/python:BUILD/python:tests/python \
  MOEND_REGISTRY_BIN=... MOEND_ROUTER_BIN=... MOEND_WORKER_BIN=... \
  /usr/bin/python3 -m unittest -v test_client
(ctest sets all of this up: ctest -L python)
"""
import json
import os
import shutil
import sys
import tempfile
import time
import unittest

import grpc

import moend_stack as ms
from moend import MoendError, RegistryClient, RouterClient, budget, table_from_json

sys.path.insert(0, os.path.join(ms.ROOT, "tests", "deploy"))
import exported_metrics  # noqa: E402
import test_dashboard_metrics  # noqa: E402

TABLE_JSON = os.path.join(ms.ROOT, "data", "tables", "tinycode_calibration_4096x16.json")
MODEL_DIR = os.path.join(ms.ROOT, "models", "tinycode")


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


class RouterAndRegistryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = ms.Stack()
        cls.registry = RegistryClient(cls.stack.registry_addr)
        cls.router = RouterClient(cls.stack.router_addr)
        cls.registry.register_model("tc-pub", model_dir=MODEL_DIR)
        cls.table = table_from_json(TABLE_JSON, model="tc-pub")
        cls.version = cls.registry.publish_table(cls.table)

    @classmethod
    def tearDownClass(cls):
        cls.router.close()
        cls.registry.close()
        cls.stack.close()

    def test_register_model_reports_shape(self):
        m = self.registry.get_model("tc-pub")
        self.assertEqual((m.shape.num_layers, m.shape.num_kv_heads, m.shape.head_dim), (12, 2, 64))
        self.assertGreaterEqual(m.version, 1)
        self.assertIn("tc-pub", [x.name for x in self.registry.list_models()])

    def test_get_table_returns_the_published_table(self):
        got = self.registry.get_table("tc-pub", self.version)
        self.assertEqual(got.version, self.version)
        self.assertEqual(len(got.table.tuples), 112)
        self.assertEqual(len(got.table.s), 12)
        for want, row in zip(self.table.s, got.table.s):
            self.assertEqual(list(want.s), list(row.s))
        self.assertEqual(self.registry.get_table("tc-pub").version, self.version)

    def test_solve_plan_meets_a_ratio_budget(self):
        greedy = self.router.solve_plan("tc-pub", ratio=8)
        exact = self.router.solve_plan("tc-pub", ratio=8, solver="exact")
        for plan in (greedy, exact):
            self.assertEqual(len(plan.layers), 12)
            self.assertEqual(plan.table_version, self.version)
            self.assertLessEqual(plan.total_bytes, plan.budget_bytes)
            self.assertGreaterEqual(plan.ratio, 8.0 - 1e-9)
            self.assertEqual(plan.total_bytes, sum(l.bytes for l in plan.layers))
            self.assertAlmostEqual(plan.predicted_error,
                                   sum(l.predicted_error for l in plan.layers), places=12)
        self.assertEqual(exact.solver, "exact")
        self.assertLessEqual(exact.predicted_error, greedy.predicted_error + 1e-12)

    def test_solve_plan_meets_a_bytes_budget(self):
        full = self.router.solve_plan("tc-pub", ratio=2).full_bytes
        plan = self.router.solve_plan("tc-pub", bytes=full // 5, context=3840)
        self.assertEqual(plan.budget_bytes, full // 5)
        self.assertLessEqual(plan.total_bytes, full // 5)
        self.assertEqual(plan.context, 3840)

    def test_per_head_tables_give_per_head_plans(self):
        with open(TABLE_JSON, encoding="utf-8") as f:
            d = json.load(f)
        # Head 0 of every layer half as sensitive as the layer, head 1 1.5 times.
        d["s_head"] = [[[v * 0.5 for v in row], [v * 1.5 for v in row]] for row in d["s"]]
        d["signals"] = ["code: test", "recall: test"]
        self.registry.register_model("tc-heads", model_dir=MODEL_DIR)
        version = self.registry.publish_table(table_from_json(d, model="tc-heads"))
        got = self.registry.get_table("tc-heads", version).table
        self.assertEqual(len(got.s_head), 12)
        self.assertEqual(len(got.s_head[0].heads), 2)
        self.assertEqual(list(got.s_head[3].heads[1].s), d["s_head"][3][1])
        self.assertEqual(list(got.signals), d["signals"])

        plan = self.router.solve_plan("tc-heads", ratio=8)
        for layer in plan.layers:
            self.assertEqual(len(layer.heads), 2)
            self.assertEqual(layer.bytes, sum(h.bytes for h in layer.heads))
        self.assertLessEqual(plan.total_bytes, plan.budget_bytes)
        per_layer = self.router.solve_plan("tc-heads", ratio=8, units="layer")
        self.assertTrue(all(len(layer.heads) == 0 for layer in per_layer.layers))
        # The published table without s_head stays per layer.
        plain = self.router.solve_plan("tc-pub", ratio=8)
        self.assertTrue(all(len(layer.heads) == 0 for layer in plain.layers))

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(MoendError) as e:
            self.router.solve_plan("tc-pub", ratio=10000)
        self.assertEqual(e.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("smallest feasible", e.exception.details)
        with self.assertRaises(MoendError) as e:
            self.router.solve_plan("tc-pub", ratio=8, solver="nope")
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(MoendError) as e:
            self.router.solve_plan("no-such-model", ratio=8)
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(ValueError):
            budget(ratio=8, bytes=100, context=10)
        with self.assertRaises(ValueError):
            budget(bytes=100)

    def test_watch_plans_streams_each_newer_table(self):
        self.registry.register_model("tc-watch", model_dir=MODEL_DIR)
        v1 = self.registry.publish_table(table_from_json(TABLE_JSON, model="tc-watch"))
        with self.router.watch_plans("tc-watch", ratio=8) as watch:
            first = watch.next_plan(timeout=10)
            self.assertEqual(first.table_version, v1)
            self.assertEqual(first.model, "tc-watch")
            streams = lambda: ms.scrape(self.stack.router_metrics).get("moend_router_watch_streams")  # noqa: E731
            wait_until(lambda: streams() == 1, what="moend_router_watch_streams == 1")
            # A new calibration lands: layer 0 became far more sensitive.
            table = table_from_json(TABLE_JSON, model="tc-watch")
            table.s[0].s[:] = [x * 1000 for x in table.s[0].s]
            v2 = self.registry.publish_table(table)
            self.assertGreater(v2, v1)
            second = watch.next_plan(timeout=15)
            self.assertEqual(second.table_version, v2)
            self.assertGreater(second.version, first.version)
            self.assertLessEqual(second.total_bytes, second.budget_bytes)
        wait_until(lambda: streams() == 0, what="moend_router_watch_streams back to 0 after cancel")
        with self.assertRaises(StopIteration):
            watch.next_plan(timeout=1)

    def test_watch_of_an_unknown_model_fails(self):
        watch = self.router.watch_plans("no-such-model", ratio=8)
        with self.assertRaises(MoendError) as e:
            watch.next_plan(timeout=10)
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_metrics_the_dashboard_uses_are_served(self):
        # Every registry/router series the dashboard and alert rules query is
        # in the real /metrics output (after a solve, so labelled series exist).
        self.router.solve_plan("tc-pub", ratio=6, solver="greedy")
        served = ms.metric_names(ms.scrape(self.stack.router_metrics)) | ms.metric_names(
            ms.scrape(self.stack.registry_metrics))
        used = set()
        for path in test_dashboard_metrics.DASHBOARDS:
            for _, expr in test_dashboard_metrics.dashboard_queries(test_dashboard_metrics.load(path)):
                used |= exported_metrics.promql_metric_names(expr)
        for _, expr in test_dashboard_metrics.rule_queries():
            used |= exported_metrics.promql_metric_names(expr)
        wanted = {n for n in used if n.startswith(("moend_router_", "moend_registry_"))}
        self.assertGreater(len(wanted), 10)
        self.assertEqual(sorted(wanted - served), [],
                         "queried by the dashboard or rules but not served by the binaries")

    def test_grpc_health_service_for_kubernetes_probes(self):
        # deploy/k8s probes registry and router with `grpc:` probes, which call
        # grpc.health.v1.Health/Check. An empty HealthCheckRequest is b"";
        # the response SERVING is field 1 = 1, i.e. b"\x08\x01".
        for name, addr in (("moend-registry", self.stack.registry_addr),
                           ("moend-router", self.stack.router_addr)):
            with grpc.insecure_channel(addr) as ch:
                check = ch.unary_unary("/grpc.health.v1.Health/Check")
                resp = check(b"", timeout=5)
                self.assertEqual(resp, b"\x08\x01", f"{name} is not SERVING")


class SecureStackTest(unittest.TestCase):
    """TLS and the bearer token: the registry and router serve TLS only and
    require the token (the router on reads too, --auth-reads)."""

    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix="moend_py_pki_")
        cls.ca, cert, key = ms.make_certs(cls.pki)
        cls.token = os.path.join(cls.pki, "token")
        with open(cls.token, "w") as f:
            f.write("s3cret-token\n")
        tls = ["--tls-cert", cert, "--tls-key", key, "--auth-token-file", cls.token]
        cls.stack = ms.Stack(registry_args=tls,
                             router_args=[*tls, "--tls-ca", cls.ca, "--auth-reads"])

    @classmethod
    def tearDownClass(cls):
        cls.stack.close()
        shutil.rmtree(cls.pki, ignore_errors=True)

    def test_tls_and_token_reach_both_servers(self):
        with RegistryClient(self.stack.registry_addr, tls_ca=self.ca,
                            token_file=self.token) as registry:
            registry.register_model("tc-sec", model_dir=MODEL_DIR)
            version = registry.publish_table(table_from_json(TABLE_JSON, model="tc-sec"))
            self.assertEqual(registry.get_model("tc-sec").version, version)
        with RouterClient(self.stack.router_addr, tls_ca=self.ca, token_file=self.token) as router:
            plan = wait_until(lambda: self._solve(router), what="a plan over TLS")
            self.assertEqual(len(plan.layers), 12)
            with router.watch_plans("tc-sec", ratio=8) as watch:
                self.assertEqual(watch.next_plan(timeout=30).table_version, version)

    @staticmethod
    def _solve(router):
        try:
            return router.solve_plan("tc-sec", ratio=8)
        except MoendError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:  # the table not yet seen
                return None
            raise

    def test_without_the_token_calls_are_refused(self):
        with RegistryClient(self.stack.registry_addr, tls_ca=self.ca) as registry:
            with self.assertRaises(MoendError) as e:
                registry.register_model("tc-nope", model_dir=MODEL_DIR)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
        with RouterClient(self.stack.router_addr, tls_ca=self.ca) as router:
            with self.assertRaises(MoendError) as e:
                router.solve_plan("tc-sec", ratio=8)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    def test_plaintext_is_refused_by_a_tls_server(self):
        with RegistryClient(self.stack.registry_addr, token_file=self.token,
                            timeout=3) as registry:
            with self.assertRaises(MoendError) as e:
                registry.list_models()
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_bad_security_arguments_are_clear_errors(self):
        with self.assertRaisesRegex(ValueError, "missing.pem"):
            RouterClient("127.0.0.1:1", tls_ca=os.path.join(self.pki, "missing.pem"))
        with self.assertRaisesRegex(ValueError, "both"):
            RouterClient("127.0.0.1:1", tls_ca=self.ca, tls_client_cert=self.ca)
        empty = os.path.join(self.pki, "empty-token")
        open(empty, "w").close()
        with self.assertRaisesRegex(ValueError, "empty"):
            RegistryClient("127.0.0.1:1", token_file=empty)


class CalibrationTest(unittest.TestCase):
    """RegisterModel + SubmitJob + wait through the client, computed by a real
    moend-worker; a WatchPlans stream sees the new table's plan."""

    @classmethod
    def setUpClass(cls):
        cls.stack = ms.Stack()

    @classmethod
    def tearDownClass(cls):
        cls.stack.close()

    def test_submit_calibration_and_get_its_table(self):
        registry = RegistryClient(self.stack.registry_addr)
        router = RouterClient(self.stack.router_addr)
        self.addCleanup(registry.close)
        self.addCleanup(router.close)
        # A first table, so that a watch can start before the calibration lands.
        registry.register_model("tinycode", model_dir=MODEL_DIR)
        v0 = registry.publish_table(table_from_json(TABLE_JSON))
        watch = router.watch_plans("tinycode", ratio=4)
        self.addCleanup(watch.cancel)
        self.assertEqual(watch.next_plan(timeout=10).table_version, v0)

        job = registry.submit_calibration(MODEL_DIR, seq_len=384, probes=128, num_samples=2,
                                          dataset="calibration.bin", samples_per_shard=1,
                                          layers_per_shard=6, wait=False)
        self.assertEqual(job.shards_total, 4)
        self.assertEqual(job.spec.compression_point, 256)
        worker = self.stack.start_worker("py-w0", threads=2)
        progress = []
        done = registry.wait_job(job.spec.job_id, timeout=300,
                                 on_progress=lambda j: progress.append(j.shards_done))
        self.assertEqual(done.state, 3, "JOB_STATE_DONE")
        self.assertEqual(done.shards_done, 4)
        self.assertEqual(progress[-1], 4)
        self.assertGreater(done.table_version, v0)
        self.assertEqual(worker.proc.wait(timeout=60), 0, worker.log())

        got = registry.get_table("tinycode", done.table_version)
        t = got.table
        self.assertEqual(got.run_id, job.spec.job_id)
        self.assertEqual((t.num_layers, t.samples, t.seq_len, t.compression_point), (12, 2, 384, 256))
        self.assertEqual(len(t.tuples), 112)
        full = [i for i, x in enumerate(t.tuples) if (x.keep, x.kbits, x.vbits) == (1.0, 16, 16)]
        harsh = [i for i, x in enumerate(t.tuples) if (x.keep, x.kbits, x.vbits) == (0.0625, 2, 2)]
        self.assertEqual((len(full), len(harsh)), (1, 1))
        for row in t.s:
            self.assertTrue(all(v >= 0 for v in row.s))
            self.assertEqual(row.s[full[0]], 0.0, "the uncompressed tuple has no error")
            self.assertGreater(row.s[harsh[0]], 0.0)

        plan = watch.next_plan(timeout=20)
        self.assertEqual(plan.table_version, done.table_version)
        self.assertGreaterEqual(plan.ratio, 4.0 - 1e-9)
        self.assertEqual(plan.context, 256)

        metrics = ms.scrape(self.stack.registry_metrics)
        self.assertEqual(metrics['moend_registry_jobs{state="done"}'], 1)
        self.assertEqual(metrics['moend_registry_reports_total{result="accepted"}'], 4)

    def test_wait_job_times_out_without_workers(self):
        with RegistryClient(self.stack.registry_addr) as registry:
            registry.register_model("tc-idle", model_dir=MODEL_DIR)
            job = registry.submit_job("tc-idle", seq_len=384, num_samples=1,
                                      dataset="calibration.bin")
            with self.assertRaises(TimeoutError) as e:
                registry.wait_job(job.spec.job_id, timeout=1.0, poll=0.1)
            self.assertIn("is a moend-worker running", str(e.exception))
            with self.assertRaises(MoendError) as e:
                registry.get_job("no-such-job")
            self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    unittest.main()
