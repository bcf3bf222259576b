"""Static checks of deploy/docker/Dockerfile.* (no Docker engine here), and a
run of deploy/docker/bundle.sh on a real binary.

  python3 tests/deploy/test_dockerfiles.py [-v]
  MOEND_BUNDLE_BIN=build/bin/moend-registry python3 tests/deploy/test_dockerfiles.py
"""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_k8s  # noqa: E402

ROOT = os.environ.get("MOEND_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = os.path.join(ROOT, "deploy", "docker")
DOCKERFILES = sorted(p for p in glob.glob(os.path.join(DOCKER, "Dockerfile.*"))
                     if not p.endswith(".dockerignore"))


# glibc's own libraries: the runtime image provides them (bundle.sh skips them).
GLIBC = ("ld-linux", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libresolv.so",
         "libutil.so")


def cmake_executables(root=ROOT):
    """Names of every add_executable target in the tree's CMakeLists.txt."""
    names = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(("build", ".git"))]
        if "CMakeLists.txt" in filenames:
            with open(os.path.join(dirpath, "CMakeLists.txt"), encoding="utf-8") as f:
                names.update(re.findall(r"add_executable\(\s*([A-Za-z0-9_.+-]+)", f.read()))
    return names


def parse(path):
    """(global ARG names, [stage]) where a stage is {image, name, index, ins}
    and ins is [(INSTRUCTION, arguments)] with continuations joined."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"\\\n", " ", text)
    global_args, stages = set(), []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": parts[0], "name": name, "index": len(stages), "ins": []})
        elif not stages:
            if op != "ARG":
                raise ValueError(f"{path}: {op} before the first FROM")
            global_args.add(rest.split("=")[0].strip())
        else:
            stages[-1]["ins"].append((op, rest.strip()))
    return global_args, stages


def instr(stage, op):
    return [a for o, a in stage["ins"] if o == op]


class DockerfilesTest(unittest.TestCase):
    def setUp(self):
        self.assertTrue(DOCKERFILES, "no Dockerfile in deploy/docker")
        self.targets = cmake_executables()
        self.assertIn("moend-registry", self.targets, "CMake target scan found nothing")

    def each(self):
        for path in DOCKERFILES:
            global_args, stages = parse(path)
            with self.subTest(dockerfile=os.path.basename(path)):
                yield os.path.basename(path), global_args, stages

    def binary_of(self, stages):
        ep = instr(stages[-1], "ENTRYPOINT")
        self.assertEqual(len(ep), 1, "the runtime stage needs one ENTRYPOINT")
        m = re.match(r'\["/opt/moend/bin/([^"]+)"', ep[0])
        self.assertIsNotNone(m, f"ENTRYPOINT {ep[0]} is not /opt/moend/bin/<binary> in exec form")
        return m.group(1)

    def test_syntax_directive_is_the_first_line(self):
        for path in DOCKERFILES:
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.readline().strip(), "# syntax=docker/dockerfile:1", path)

    def test_multi_stage_debian12_build_and_runtime(self):
        for name, _, stages in self.each():
            self.assertGreaterEqual(len(stages), 2, f"{name}: needs a build and a runtime stage")
            self.assertIn(stages[0]["image"], ("debian:12", "debian:bookworm"))
            self.assertEqual(stages[0]["name"], "build")
            self.assertEqual(stages[-1]["name"], "runtime")

    def test_build_stage_installs_the_install_deps_packages(self):
        for name, _, stages in self.each():
            build = stages[0]
            self.assertIn("scripts/install_deps.sh /tmp/install_deps.sh", instr(build, "COPY"),
                          f"{name}: the build stage must install via scripts/install_deps.sh")
            self.assertTrue(any("bash /tmp/install_deps.sh" in r for r in instr(build, "RUN")),
                            f"{name}: the build stage never runs install_deps.sh")

    def test_copy_sources_and_stages_exist(self):
        for name, _, stages in self.each():
            seen = set()
            for st in stages:
                for args in instr(st, "COPY"):
                    words = shlex.split(args)
                    flags = [w for w in words if w.startswith("--")]
                    paths = [w for w in words if not w.startswith("--")]
                    frm = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
                    if frm:
                        self.assertIn(frm[0], seen, f"{name}: COPY --from={frm[0]} names no earlier stage")
                    else:
                        for src in paths[:-1]:
                            self.assertTrue(os.path.exists(os.path.join(ROOT, src)),
                                            f"{name}: COPY source {src} does not exist in the repository")
                seen.update({st["name"], str(st["index"])})

    def test_built_target_is_a_cmake_target_and_the_entrypoint(self):
        for name, _, stages in self.each():
            runs = " ".join(instr(stages[0], "RUN"))
            built = re.findall(r"--target\s+([A-Za-z0-9_.+-]+)", runs)
            self.assertEqual(len(built), 1, f"{name}: build exactly one --target")
            self.assertIn(built[0], self.targets, f"{name}: {built[0]} is not a CMake executable target")
            self.assertIn(f"deploy/docker/bundle.sh /build/bin/{built[0]} /opt/moend", runs,
                          f"{name}: bundle the binary that was built")
            self.assertEqual(self.binary_of(stages), built[0])
            self.assertEqual(name, "Dockerfile." + built[0].removeprefix("moend-"))
            self.assertTrue(any(a.startswith("--from=build /opt/moend")
                                for a in instr(stages[-1], "COPY")),
                            f"{name}: the runtime stage must copy the bundle from the build stage")

    def test_runtime_runs_as_non_root(self):
        for name, _, stages in self.each():
            users = instr(stages[-1], "USER")
            self.assertTrue(users, f"{name}: no USER in the runtime stage")
            uid = users[-1].split(":")[0]
            self.assertTrue(uid.isdigit() and int(uid) != 0,
                            f"{name}: USER must be a numeric non-root uid (runAsNonRoot)")

    def test_worker_is_cuda(self):
        global_args, stages = parse(os.path.join(DOCKER, "Dockerfile.worker"))
        runtime = stages[-1]["image"]
        if runtime.startswith("${"):
            with open(os.path.join(DOCKER, "Dockerfile.worker"), encoding="utf-8") as f:
                m = re.search(r"ARG\s+%s=(\S+)" % re.escape(runtime[2:-1]), f.read())
            self.assertIsNotNone(m)
            runtime = m.group(1)
        self.assertRegex(runtime, r"^nvidia/cuda:[0-9.]+-runtime-")
        runs = " ".join(instr(stages[0], "RUN"))
        self.assertIn("-DMOEND_CUDA=ON", runs)
        self.assertIn("cuda-nvcc-", runs)

    def test_args_used_are_declared(self):
        for name, global_args, stages in self.each():
            for st in stages:
                declared = {a.split("=")[0].strip() for a in instr(st, "ARG")}
                for op, a in st["ins"]:
                    if op in ("RUN", "COPY", "ENV"):
                        for var in re.findall(r"\$\{(\w+)\}", a):
                            if op == "ENV":
                                continue
                            self.assertIn(var, declared, f"{name}: ${{{var}}} used but no ARG in its stage")
                img = st["image"]
                for var in re.findall(r"\$\{(\w+)\}", img):
                    self.assertIn(var, global_args, f"{name}: FROM uses undeclared ${{{var}}}")

    def test_exposed_ports_match_kubernetes(self):
        docs = check_k8s.load_manifests()
        images = {}
        for _, d in docs:
            if d["kind"] in check_k8s.WORKLOADS:
                for c in check_k8s.pod_spec(d)["containers"]:
                    ports = {p["containerPort"] for p in c.get("ports", [])}
                    images[c["image"].split("/")[-1].split(":")[0]] = ports
        dockerfile_binaries = set()
        for name, _, stages in self.each():
            binary = self.binary_of(stages)
            dockerfile_binaries.add(binary)
            exposed = {int(p.split("/")[0]) for e in instr(stages[-1], "EXPOSE") for p in e.split()}
            if binary in images:
                self.assertEqual(exposed, images[binary],
                                 f"{name}: EXPOSE {exposed} but Kubernetes opens {images[binary]}")
        for image in images:
            self.assertIn(image, dockerfile_binaries, f"Kubernetes image {image} has no Dockerfile")

    def test_dockerignore_excludes_build_outputs(self):
        for path in DOCKERFILES:
            with open(path + ".dockerignore", encoding="utf-8") as f:
                lines = f.read().split()
            for pattern in (".git", "build", "build-*"):
                self.assertIn(pattern, lines, f"{path}.dockerignore")


class BundleTest(unittest.TestCase):
    """bundle.sh on a real binary: every library but glibc's lands in the
    bundle and the bundled binary runs from it."""

    def test_bundle_runs(self):
        binary = os.environ.get("MOEND_BUNDLE_BIN")
        if not binary:
            self.skipTest("set MOEND_BUNDLE_BIN to a built binary (ctest does)")
        with tempfile.TemporaryDirectory() as out:
            r = subprocess.run([os.path.join(DOCKER, "bundle.sh"), binary, out, "libz.so*"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            lib = os.path.join(out, "lib")
            bundled = set(os.listdir(lib))
            self.assertTrue(any(b.startswith("libgrpc++") for b in bundled), bundled)
            self.assertFalse(any(b.startswith(GLIBC + ("libz.so",)) for b in bundled),
                             f"glibc or an excluded library was bundled: {bundled}")
            env = dict(os.environ, LD_LIBRARY_PATH=lib)
            exe = os.path.join(out, "bin", os.path.basename(binary))
            ldd = subprocess.run(["ldd", exe], capture_output=True, text=True, env=env).stdout
            for line in ldd.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
                    base = os.path.basename(parts[2])
                    if base.startswith(GLIBC + ("libz.so",)):
                        continue
                    self.assertTrue(parts[2].startswith(lib), f"{base} resolves outside the bundle: {line}")
            r = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("usage:", r.stdout)

    def test_bundle_refuses_a_missing_binary(self):
        with tempfile.TemporaryDirectory() as out:
            r = subprocess.run([os.path.join(DOCKER, "bundle.sh"), os.path.join(out, "nope"), out],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("not an executable", r.stderr)


if __name__ == "__main__":
    unittest.main()
