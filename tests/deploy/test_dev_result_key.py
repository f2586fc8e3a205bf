"""`fanflow dev` gives its children one result key: generated per run unless configured,
passed in clear (not pydantic's masked form), the same for the aggregator and every worker."""

from __future__ import annotations

from fanflow_services.dev import _Mesh
from pydantic import SecretStr

from fanflow.mesh.signing import ResultKey
from fanflow.settings import Settings


def keys(mesh: _Mesh) -> dict[str, str]:
    return {child.name: child.env["FANFLOW_RESULT_KEY"] for child in mesh.children}


def test_dev_generates_one_key_per_deployment() -> None:
    first = keys(_Mesh(Settings(), port=1, workers=2))
    second = keys(_Mesh(Settings(), port=1, workers=2))
    assert set(first) == {"trigger", "aggregator", "worker-1", "worker-2"}
    assert len(set(first.values())) == 1 and len(set(second.values())) == 1
    [key] = set(first.values())
    assert key != set(second.values()).pop()  # fresh per run
    assert "*" not in key and len(key) == 64
    ResultKey(key)  # long enough


def test_dev_passes_a_configured_key_through() -> None:
    settings = Settings(result_key=SecretStr("a configured key, long enough"))
    assert set(keys(_Mesh(settings, port=1, workers=1)).values()) == {
        "a configured key, long enough"
    }
