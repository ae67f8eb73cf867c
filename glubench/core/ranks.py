"""Which process this is: the global rank from the launcher's environment (no torch)."""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's global rank, from the variables a launcher sets (Lightning's order), else 0.

    ``RANK`` (torchrun, Lightning's launcher, submitit after :func:`glubench.sweep.cluster.export_submitit_ranks`),
    ``LOCAL_RANK`` (single node), ``SLURM_PROCID`` (srun), ``JSM_NAMESPACE_RANK`` (LSF).
    """
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def is_global_zero() -> bool:
    """Whether this process is global rank 0: the one that writes ``results.json`` and logs to W&B."""
    return global_rank() == 0
