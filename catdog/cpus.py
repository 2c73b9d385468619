"""How many CPUs this process may use: the affinity mask and the cgroup v2 quota, not the node's core count.

On a 64-core Kubernetes node with a 2-CPU limit, `os.cpu_count()` says 64; starting 64 decode threads and
64 LiteRT threads there thrashes and multiplies decode memory. Every thread pool in catdog sizes itself here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup v2 `cpu.max` of this process's cgroup and its ancestors (the tightest), if any."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return None
    folder = root / relative.lstrip("/")
    limits = []
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max" and float(period) > 0:
                limits.append(float(quota) / float(period))
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2 quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
