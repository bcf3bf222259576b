"""scripts/ctest_policy.py on made-up ctest output: each rule refuses what it
is there to refuse, and lets through what is legitimate."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.environ.get("MOEND_SOURCE_DIR", os.path.join(os.path.dirname(__file__),
                                                                         "..", "..")),
                      "scripts", "ctest_policy.py")

GTEST_SKIP = """[ RUN      ] CudaTest.ScoresAgree
../tests/kernels/cuda_test.cc:40: Skipped
{reason}
[  SKIPPED ] CudaTest.ScoresAgree (0 ms)
[  PASSED  ] 0 tests.
"""
GTEST_SKIP_NO_REASON = """[ RUN      ] T.Quiet
../t.cc:3: Skipped

[  SKIPPED ] T.Quiet (0 ms)
"""
UNITTEST_SKIP = "test_bundle (test_dockerfiles.T) ... skipped 'set MOEND_BUNDLE_BIN'\n"


def junit(cases):
    """cases: (name, skipped, output)."""
    body = []
    for name, skipped, out in cases:
        status = "notrun" if skipped else "run"
        skip = '<skipped message="SKIP_REGULAR_EXPRESSION_MATCHED"/>' if skipped else ""
        out = out.replace("&", "&amp;").replace("<", "&lt;")
        body.append(f'<testcase name="{name}" status="{status}">{skip}'
                    f'<system-out>{out}</system-out></testcase>')
    return f'<?xml version="1.0"?><testsuite tests="{len(cases)}">{"".join(body)}</testsuite>'


def run(args, env_overrides, content, suffix):
    with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False) as f:
        f.write(content)
    try:
        env = dict(os.environ, **env_overrides)
        return subprocess.run([sys.executable, SCRIPT] + args + [f.name], env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)


def skips(cases, gpu, mount_ns):
    return run(["skips"], {"MOEND_POLICY_GPU": gpu, "MOEND_POLICY_MOUNT_NS": mount_ns},
               junit(cases), ".xml")


class SkipPolicyTest(unittest.TestCase):
    def test_no_cuda_device_is_allowed_only_without_a_gpu(self):
        cases = [("CudaTest.ScoresAgree", True, GTEST_SKIP.format(reason="no CUDA device: none"))]
        ok = skips(cases, gpu="0", mount_ns="1")
        self.assertEqual(ok.returncode, 0, ok.stdout)
        self.assertIn("SKIPPED CudaTest.ScoresAgree: no CUDA device: none", ok.stdout)
        bad = skips(cases, gpu="1", mount_ns="1")
        self.assertEqual(bad.returncode, 1, bad.stdout)
        self.assertIn("should run", bad.stdout)

    def test_device_present_skip_is_allowed_only_with_a_gpu(self):
        cases = [("Cpu.Only", True, GTEST_SKIP.format(reason="a CUDA device is present"))]
        self.assertEqual(skips(cases, gpu="1", mount_ns="1").returncode, 0)
        self.assertEqual(skips(cases, gpu="0", mount_ns="1").returncode, 1)

    def test_mount_namespace_skip_is_allowed_only_where_unshare_fails(self):
        reason = ("cannot make a private mount namespace for a real full disk: "
                  "unshare(CLONE_NEWNS): Operation not permitted (needs CAP_SYS_ADMIN)")
        cases = [("FaultTest.FullDisk", True, GTEST_SKIP.format(reason=reason))]
        self.assertEqual(skips(cases, gpu="0", mount_ns="0").returncode, 0)
        bad = skips(cases, gpu="0", mount_ns="1")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("FaultTest.FullDisk skipped", bad.stdout)

    def test_unknown_reasons_and_silent_skips_fail(self):
        cases = [("T.Other", True, GTEST_SKIP.format(reason="flaky on Tuesdays")),
                 ("T.Quiet", True, GTEST_SKIP_NO_REASON),
                 ("py.bundle", True, UNITTEST_SKIP)]
        bad = skips(cases, gpu="0", mount_ns="0")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("T.Other skipped for a reason not on the allow-list", bad.stdout)
        self.assertIn("T.Quiet skipped without saying why", bad.stdout)
        self.assertIn("SKIPPED py.bundle: set MOEND_BUNDLE_BIN", bad.stdout)
        self.assertIn("3 skipped tests, 3 not allowed here", bad.stdout)

    def test_tests_that_ran_are_not_skips(self):
        cases = [("A.Ran", False, "[  PASSED  ] 1 test.\n")]
        ok = skips(cases, gpu="1", mount_ns="1")
        self.assertEqual(ok.returncode, 0)
        self.assertIn("0 skipped tests", ok.stdout)

    def test_unreadable_junit_fails(self):
        bad = run(["skips"], {}, "not xml", ".xml")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("cannot read the ctest JUnit file", bad.stdout)


def show_only(tests):
    return json.dumps({"kind": "ctestInfo", "tests": [
        {"name": n, "properties": [{"name": k, "value": v} for k, v in props.items()]}
        for n, props in tests]})


class ConfigPolicyTest(unittest.TestCase):
    def config(self, tests):
        return run(["config-json"], {}, show_only(tests), ".json")

    def test_every_test_needs_a_timeout(self):
        ok = self.config([("a", {"TIMEOUT": 300.0}), ("b", {"TIMEOUT": 60.0, "LABELS": ["x"]})])
        self.assertEqual(ok.returncode, 0, ok.stdout)
        bad = self.config([("a", {"TIMEOUT": 300.0}), ("b", {"LABELS": ["x"]}),
                           ("c", {"TIMEOUT": 0.0}), ("d", {"TIMEOUT": 1e7})])
        self.assertEqual(bad.returncode, 1)
        for name in ("b", "c", "d"):
            self.assertIn(f"POLICY VIOLATION: {name}: TIMEOUT", bad.stdout)
        self.assertNotIn("VIOLATION: a:", bad.stdout)

    def test_fuzz_tests_must_run_alone(self):
        ok = self.config([("fuzz_plan", {"TIMEOUT": 200.0, "LABELS": ["reliability", "fuzz"],
                                         "RUN_SERIAL": True})])
        self.assertEqual(ok.returncode, 0, ok.stdout)
        bad = self.config([("fuzz_plan", {"TIMEOUT": 200.0, "LABELS": ["fuzz"]})])
        self.assertEqual(bad.returncode, 1)
        self.assertIn("fuzz_plan: a fuzz test must be RUN_SERIAL", bad.stdout)


if __name__ == "__main__":
    unittest.main()
