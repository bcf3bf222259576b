"""Starts real moend binaries on loopback (port 0) for the Python client tests
and reads the addresses they print."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = os.environ.get("MOEND_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))


def binary(env_name, default_name):
    """The binary ctest passes in `env_name`, else build/bin/<default_name>."""
    path = os.environ.get(env_name) or os.path.join(ROOT, "build", "bin", default_name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{default_name} not found at {path}: build it, or set {env_name}")
    return path


class Process:
    """A child process whose stdout+stderr are collected; wait_for(regex)
    returns the first match of a line."""

    def __init__(self, argv, name):
        self.name = name
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pattern, timeout=30.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before "
                                       f"printing /{pattern}/:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.name} printed no /{pattern}/ in {timeout} s:\n"
                                       f"{self.log()}")
                self._cv.wait(min(left, 0.2))

    def log(self):
        with self._cv:
            return "\n".join(self.lines[-50:])

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.proc.returncode


class Stack:
    """moend-registry + moend-router on loopback, each with /metrics."""

    def __init__(self, registry_args=(), router_args=()):
        """`registry_args` and `router_args` are extra flags (TLS, token)."""
        self.dir = tempfile.mkdtemp(prefix="moend_py_")
        self.procs = []
        try:
            self.registry = self._start(
                [binary("MOEND_REGISTRY_BIN", "moend-registry"), "--db",
                 os.path.join(self.dir, "db"), "--listen", "127.0.0.1:0", "--metrics",
                 "127.0.0.1:0", "--lease-seconds", "5", *registry_args], "moend-registry")
            self.registry_addr = self.registry.wait_for(r"listening on (\S+)").group(1)
            self.registry_metrics = self.registry.wait_for(r"metrics on (http://\S+)").group(1)
            self.router = self._start(
                [binary("MOEND_ROUTER_BIN", "moend-router"), "--registry", self.registry_addr,
                 "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--watch-poll-ms", "500",
                 *router_args],
                "moend-router")
            self.router_addr = self.router.wait_for(r"listening on (\S+)").group(1)
            self.router_metrics = self.router.wait_for(r"metrics on (http://\S+)").group(1)
        except Exception:
            self.close()
            raise

    def _start(self, argv, name):
        p = Process(argv, name)
        self.procs.append(p)
        return p

    def start_worker(self, worker_id, threads=2, exit_when_idle=True):
        argv = [binary("MOEND_WORKER_BIN", "moend-worker"), "--registry", self.registry_addr,
                "--id", worker_id, "--models", os.path.join(ROOT, "models"), "--data-dir",
                os.path.join(ROOT, "data"), "--threads", str(threads)]
        if exit_when_idle:
            argv.append("--exit-when-idle")
        return self._start(argv, f"moend-worker {worker_id}")

    def close(self):
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def scrape(url, timeout=5.0):
    """{series name with labels: value} of a Prometheus text exposition."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric_names(samples):
    return {k.split("{", 1)[0] for k in samples}


def make_certs(folder):
    """A test CA and a server certificate for 127.0.0.1 (EC P-256, openssl):
    returns (ca.pem, server.pem, server.key)."""
    def run(*argv):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    j = lambda name: os.path.join(folder, name)  # noqa: E731
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", j("ca.key"))
    run("openssl", "req", "-x509", "-new", "-key", j("ca.key"), "-out", j("ca.pem"), "-days", "2",
        "-subj", "/CN=moend-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", j("server.key"))
    run("openssl", "req", "-new", "-key", j("server.key"), "-out", j("server.csr"), "-subj",
        "/CN=127.0.0.1")
    with open(j("server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", j("server.csr"), "-CA", j("ca.pem"), "-CAkey",
        j("ca.key"), "-CAcreateserial", "-out", j("server.pem"), "-days", "2", "-extfile",
        j("server.ext"))
    return j("ca.pem"), j("server.pem"), j("server.key")
