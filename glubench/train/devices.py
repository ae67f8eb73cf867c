"""How many devices a run uses, by Lightning's rules: the one device counter (validation, budgets, estimates).

torch is imported only when a count is asked for (never while the command line is checked for
typos), and CUDA is counted through NVML, as Lightning does, so that asking does not initialise
the CUDA driver in a process that later forks its ranks.
"""

from __future__ import annotations

import os
from typing import Any


def cuda_count() -> int:
    """Visible CUDA devices (NVML first: ``cudaGetDeviceCount`` would initialise the driver here)."""
    import torch

    count = getattr(torch.cuda, "_device_count_nvml", lambda: -1)() if torch.version.cuda else -1
    return count if count >= 0 else torch.cuda.device_count()


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``; ``gpu`` -> ``cuda``."""
    if accelerator == "auto":
        return "cuda" if cuda_count() > 0 else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def available_devices(accelerator: str) -> tuple[str, int | None]:
    """``(kind, count)`` of the devices ``trainer.accelerator`` would use; count ``None``: unknown (TPU)."""
    kind = resolve_accelerator(accelerator)
    if kind == "cuda":
        return "CUDA GPU", cuda_count()
    if kind == "mps":
        import torch

        return "MPS", int(torch.backends.mps.is_available())
    if kind == "tpu":
        return "TPU", None
    return "CPU", os.cpu_count() or 1


def devices_per_node(devices: Any, accelerator: str = "auto") -> int:
    """Processes per node for ``trainer.devices``, as Lightning counts them.

    An int or a digit string is that many (``-1``: all available), a list (or ``"0,2"``) is one
    per entry, ``"auto"`` is every CUDA device on a GPU accelerator and 1 on a CPU.
    """
    if hasattr(devices, "__len__") and not isinstance(devices, str):  # list or ListConfig of ids
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([i for i in text.split(",") if i.strip()])
    if text == "auto":
        return max(1, cuda_count()) if resolve_accelerator(accelerator) == "cuda" else 1
    n = int(text)
    if n == -1:
        return available_devices(accelerator)[1] or 1
    return n


def world_size(trainer: Any) -> int:
    """Processes of a run: :func:`devices_per_node` × ``trainer.num_nodes`` (``trainer``: the ``trainer.*`` config)."""
    return devices_per_node(trainer.devices, str(trainer.accelerator)) * int(trainer.num_nodes)
