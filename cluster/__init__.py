"""Execution backends with workers outside the server's process (see ``engine.backends``).

- :mod:`cluster.worker`: what a worker is (one registry, model cache and executor) and how
  its messages cross a process boundary;
- :mod:`cluster.local`: ``--workers N``, N worker processes on this machine;
- :mod:`cluster.ray_backend`: ``--ray ADDRESS``, one Ray actor per worker (``pip install
  -e '.[ray]'``; ray is imported only there).

The engine defines the interface and never imports this package; ``main.py`` and the
command modules pick a backend at start-up.
"""

from __future__ import annotations



import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from engine.backends import Backend
    from engine.registry import NodeRegistry
    from engine.settings import Settings


def backend_for(build_registry: Callable[..., "NodeRegistry"], settings: "Settings", custom_nodes: Path | None, *,
                workers: int | None = None, ray_address: str | None = None,
                worker_files: str | None = None) -> "Backend":
    """The backend for ``--workers N`` (local processes) or ``--ray ADDRESS`` (Ray actors;
    ``local`` starts a Ray instance in this process). ``build_registry`` must pickle by name
    (a module-level function such as ``main.build_registry``). ``worker_files``
    (``--worker-files``, :mod:`cluster.files`): ``send`` (Ray's default) or ``shared``
    (the default of local processes)."""
    from cluster.files import WORKER_FILES
    from cluster.worker import WorkerSetup

    files = worker_files or ("send" if ray_address is not None else "shared")
    if files not in WORKER_FILES:
        raise ValueError(f"--worker-files must be one of {', '.join(WORKER_FILES)}, got {worker_files!r}")
    if ray_address is not None:
        from cluster.ray_backend import RayWorkers

        return RayWorkers(WorkerSetup(build_registry, settings, custom_nodes, threads=1, files=files), ray_address,
                          count=workers)
    if not workers or workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    from cluster.local import LocalWorkers

    threads = max(1, (os.cpu_count() or 1) // workers)  # N workers share the cores, not fight over them
    return LocalWorkers(WorkerSetup(build_registry, settings, custom_nodes, threads=threads, files=files), workers)
