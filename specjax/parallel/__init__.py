"""Device meshes: `make_mesh` (mesh.py), the logical -> mesh axis table (rules.py), multi-host start-up (hosts.py)."""
from specjax.parallel.mesh import make_mesh, parse_mesh

__all__ = ["make_mesh", "parse_mesh"]
