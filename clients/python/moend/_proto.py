"""The generated protobuf/gRPC modules, imported lazily with a clear error
when they have not been generated (python3 -m moend.codegen)."""
import importlib

_MISSING = ("moend: the generated protobuf modules (moend.v1.*_pb2) were not found. Generate "
            "them with `python3 -m moend.codegen --out DIR` and put DIR on PYTHONPATH next to "
            "clients/python.")


def load(name):
    """moend.v1.<name>, e.g. load("router_pb2")."""
    try:
        return importlib.import_module(f"moend.v1.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("moend.v1"):
            raise ImportError(_MISSING) from e
        raise
