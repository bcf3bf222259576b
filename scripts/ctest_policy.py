#!/usr/bin/env python3
"""What scripts/test.sh (CI) demands of the ctest suite beyond "passed".

  ctest_policy.py config BUILD_DIR
      Before the run: every test has a TIMEOUT (seconds, at most 3600); every
      test labelled "fuzz" is RUN_SERIAL (a fuzzer keeps a core busy, so no
      timing-sensitive test runs beside one); when BUILD_DIR was configured
      with MOEND_FUZZ=ON, the fuzz tests are there.
  ctest_policy.py skips JUNIT_XML
      After the run (ctest --output-junit JUNIT_XML): prints every skipped test
      with the reason its output gives, and fails when a test skipped without
      a reason or for a reason that does not hold on this machine. The
      reasons allowed, each only where its probe says so (ALLOWED_SKIPS):
      "no CUDA device" where no GPU is visible, "a CUDA device is present"
      where one is, and no private mount namespace where `unshare --mount`
      fails. MOEND_POLICY_GPU=0|1 and MOEND_POLICY_MOUNT_NS=0|1 override the
      probes (tests of this script).

Exit status 0 when the policy holds, 1 with one line per violation when not,
2 for bad usage.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

MAX_TIMEOUT_S = 3600


def _probe(env_name, command):
    forced = os.environ.get(env_name)
    if forced in ("0", "1"):
        return forced == "1"
    if shutil.which(command[0]) is None:
        return False
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def gpu_visible():
    return _probe("MOEND_POLICY_GPU", ["nvidia-smi", "-L"])


def mount_namespace_possible():
    return _probe("MOEND_POLICY_MOUNT_NS", ["unshare", "--mount", "true"])


# (reason pattern, what must hold here for it to be a legitimate skip, probe)
ALLOWED_SKIPS = [
    (re.compile(r"^no CUDA device"), "no GPU is visible (nvidia-smi -L)",
     lambda: not gpu_visible()),
    (re.compile(r"^a CUDA device is present"), "a GPU is visible (nvidia-smi -L)", gpu_visible),
    (re.compile(r"private mount namespace|read-only mount is read-only"),
     "this machine cannot make a mount namespace (unshare --mount true fails)",
     lambda: not mount_namespace_possible()),
]


def skip_reason(output):
    """The reason a skipped test's output gives, or ""."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        # gtest: "file.cc:40: Skipped" then the message, then "[  SKIPPED ]".
        if re.search(r":\d+: Skipped$", line):
            reason = []
            for follow in lines[i + 1:]:
                if follow.startswith("[  SKIPPED ]") or follow.startswith("[ "):
                    break
                reason.append(follow.strip())
            return " ".join(r for r in reason if r)
        # unittest -v: "test_x (module.Class) ... skipped 'reason'"
        m = re.search(r"\.\.\. skipped '(.*)'$", line)
        if m:
            return m.group(1)
    return ""


def check_skips(junit_path):
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError) as e:
        return [f"cannot read the ctest JUnit file {junit_path}: {e}"]
    violations = []
    skipped = 0
    for case in root.iter("testcase"):
        if case.find("skipped") is None:
            continue
        skipped += 1
        name = case.get("name", "?")
        out = case.find("system-out")
        reason = skip_reason(out.text if out is not None and out.text else "")
        print(f"SKIPPED {name}: {reason or '(no reason given)'}")
        if not reason:
            violations.append(f"{name} skipped without saying why")
            continue
        for pattern, condition, holds in ALLOWED_SKIPS:
            if pattern.search(reason):
                if not holds():
                    violations.append(f"{name} skipped ({reason}), but on this machine it should "
                                      f"run: that skip is allowed only where {condition}")
                break
        else:
            violations.append(f"{name} skipped for a reason not on the allow-list of "
                              f"scripts/ctest_policy.py: {reason}")
    print(f"ctest_policy: {skipped} skipped tests, {len(violations)} not allowed here")
    return violations


def cache_value(build_dir, name):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.rstrip("\n").split("=", 1)[1]
    except OSError:
        pass
    return None


def check_config(build_dir, tests=None):
    if tests is None:
        listed = subprocess.run(["ctest", "--test-dir", build_dir, "--show-only=json-v1"],
                                capture_output=True, text=True, timeout=600)
        if listed.returncode != 0:
            return [f"ctest --show-only failed: {listed.stderr.strip()}"]
        tests = json.loads(listed.stdout).get("tests", [])
    violations = []
    fuzz_tests = 0
    for test in tests:
        name = test.get("name", "?")
        props = {p["name"]: p["value"] for p in test.get("properties", [])}
        timeout = props.get("TIMEOUT")
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
            violations.append(f"{name}: TIMEOUT is {timeout!r}; every test needs one in "
                              f"(0, {MAX_TIMEOUT_S}] s")
        labels = props.get("LABELS") or []
        if "fuzz" in labels:
            fuzz_tests += 1
            if not props.get("RUN_SERIAL"):
                violations.append(f"{name}: a fuzz test must be RUN_SERIAL (nothing beside it)")
    if build_dir and cache_value(build_dir, "MOEND_FUZZ") == "ON" and fuzz_tests == 0:
        violations.append("MOEND_FUZZ=ON but no test is labelled fuzz")
    print(f"ctest_policy: {len(tests)} tests, {fuzz_tests} fuzz tests, "
          f"{len(violations)} violations")
    return violations


def main(argv):
    if len(argv) == 2 and argv[0] == "config":
        violations = check_config(argv[1])
    elif len(argv) == 2 and argv[0] == "skips":
        violations = check_skips(argv[1])
    elif len(argv) == 2 and argv[0] == "config-json":  # a saved --show-only=json-v1
        with open(argv[1]) as f:
            violations = check_config(None, json.load(f).get("tests", []))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for v in violations:
        print("POLICY VIOLATION: " + v)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
