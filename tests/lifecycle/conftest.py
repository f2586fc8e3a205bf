"""Lifecycle fixtures: the mesh's clusters and the trigger's servers."""

from tests.mesh.conftest import make_cluster
from tests.trigger.conftest import mesh, start_server

__all__ = ["make_cluster", "mesh", "start_server"]
