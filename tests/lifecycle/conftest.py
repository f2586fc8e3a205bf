"""Lifecycle fixtures: the mesh's clusters and the trigger's servers."""

from tests.mesh.conftest import make_cluster
from tests.trigger.conftest import start_server

__all__ = ["make_cluster", "start_server"]
