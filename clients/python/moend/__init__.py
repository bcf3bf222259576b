"""moend: Python client of the moend registry and router.

    from moend import RouterClient, RegistryClient
    with RouterClient("127.0.0.1:7002") as router:
        plan = router.solve_plan("tinycode", ratio=8)

The protobuf modules are generated, not committed: `python3 -m moend.codegen
--out DIR`, then put DIR on PYTHONPATH; `moend.v1` is found there because this
package's path extends over every `moend` folder on sys.path.
"""
import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)  # noqa: F821 - set by the import system

__version__ = "0.1.0"

_CLIENT_NAMES = ("MoendError", "PlanWatch", "RegistryClient", "RouterClient", "budget",
                 "table_from_json")
__all__ = list(_CLIENT_NAMES)


def __getattr__(name):
    # The clients import the generated modules; load them on first use so that
    # `python3 -m moend.codegen` works before anything is generated.
    if name in _CLIENT_NAMES:
        from moend import client
        return getattr(client, name)
    raise AttributeError(f"module 'moend' has no attribute {name!r}")
