"""Runs a command after checking that what it needs is installed, so that a
missing tool fails the test with a message saying how to install it (rather
than a bare "command not found" or a silent skip).

  require_tool.py [--python-module MOD]... -- COMMAND [ARGS...]
"""
import os
import shutil
import sys

# Debian package of each tool and module the Python tests use; all are
# in scripts/install_deps.sh.
PACKAGES = {
    "promtool": "prometheus", "yamllint": "yamllint", "yaml": "python3-yaml",
    "grpc": "python3-grpcio", "google.protobuf": "python3-protobuf",
    "grpc_tools": "python3-grpc-tools", "numpy": "python3-numpy",
}


def main(argv):
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    modules = [opts[i + 1] for i, o in enumerate(opts) if o == "--python-module"]
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(f"Python module {m} for {sys.executable} "
                           f"(Debian package {PACKAGES.get(m, '?')})")
    if not cmd:
        print("require_tool.py: no command after --", file=sys.stderr)
        return 2
    exe = cmd[0] if os.path.isabs(cmd[0]) else shutil.which(cmd[0])
    if not exe or not os.access(exe, os.X_OK):
        missing.append(f"the command {cmd[0]} (Debian package {PACKAGES.get(cmd[0], '?')})")
    if missing:
        print("MISSING TOOL: this test needs " + "; ".join(missing) +
              ". Install with: bash scripts/install_deps.sh", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os.execv(exe, [exe] + cmd[1:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
