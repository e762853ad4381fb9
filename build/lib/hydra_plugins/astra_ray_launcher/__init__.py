"""astra-bench's Hydra Ray launcher (``hydra/launcher=ray``). Hydra instantiates launchers only from the
``hydra_plugins`` namespace package; the code lives in ``harness.cluster``. ``CONFIG`` is what ``harness.config``
stores in Hydra's ConfigStore as ``hydra/launcher/ray``, in place of the Hydra Ray launcher's own."""

CONFIG = {
    "_target_": "hydra_plugins.astra_ray_launcher.ray_launcher.RayLauncher",
    "ray": {
        # null: start a Ray cluster of this machine alone; auto or <head>:6379: join a running one
        "init": {"address": None},
        # ray.remote options for every job (e.g. num_cpus); a Mininet point adds its resource
        "remote": {},
    },
    "mininet_resource": "mininet",  # the custom resource of a machine that can run Mininet points (one each)
    "max_retries": 2,  # a job whose worker dies is run again this many times, then recorded as failed
}
