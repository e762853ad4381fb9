"""The class Hydra instantiates for ``hydra/launcher=ray`` (see ``harness.cluster``). Defined only when the cluster
extra (Ray and the Hydra Ray launcher) is installed, so that Hydra's plugin scan finds nothing to complain about
without it."""

import importlib.util

if importlib.util.find_spec("ray") is not None and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher"):
    from harness.sweep.cluster import AstraRayLauncher

    class RayLauncher(AstraRayLauncher):
        """Sweeps over a Ray cluster with per-point resources, whole-sweep progress and recorded failures."""
