"""How many CPUs this process may use: the affinity mask and the cgroup CPU quota, not the node's core count.

On a 64-core Kubernetes node with a 2-CPU limit, `os.cpu_count()` says 64; starting 64 decode threads and
64 LiteRT threads there thrashes and multiplies decode memory. Every thread pool in catdog sizes itself here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _tightest(root: Path, relative: str, read) -> float | None:
    """The smallest limit `read(folder)` gives for the cgroup folder `relative` under `root` and its ancestors."""
    folder = root / relative.lstrip("/")
    limits = []
    while True:
        try:
            limit = read(folder)
            if limit is not None:
                limits.append(limit)
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


def _v2_limit(folder: Path) -> float | None:
    quota, period = (folder / "cpu.max").read_text().split()[:2]
    return None if quota == "max" or float(period) <= 0 else float(quota) / float(period)


def _v1_limit(folder: Path) -> float | None:
    quota = float((folder / "cpu.cfs_quota_us").read_text())
    period = float((folder / "cpu.cfs_period_us").read_text())
    return None if quota <= 0 or period <= 0 else quota / period


def cgroup_quota(root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by this process's cgroup and its ancestors (the tightest): cgroup v2 `cpu.max`, or
    cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (older Docker engines); None when unlimited."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, relative = line.split(":", 2)
        if line.startswith("0::"):
            limits.append(_tightest(root, relative, _v2_limit))
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                if (root / mount).is_dir():
                    limits.append(_tightest(root / mount, relative, _v1_limit))
                    break
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup CPU quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
