"""How many devices a run uses, by Lightning's rules: the one device counter (validation, budgets, estimates).

torch is imported only when a count is asked for (never while the command line is checked for
typos), and CUDA is counted through NVML, as Lightning does, so that asking does not initialise
the CUDA driver in a process that later forks its ranks.
"""

from __future__ import annotations

import os
from typing import Any

from glubench.core.errors import ConfigError


def cuda_count() -> int:
    """Visible CUDA devices (NVML first: ``cudaGetDeviceCount`` would initialise the driver here)."""
    import torch  # here, not at the top: config validation imports this module (see the module docstring)

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
        import torch  # as in cuda_count

        return "MPS", int(torch.backends.mps.is_available())
    if kind == "tpu":
        return "TPU", None
    return "CPU", os.cpu_count() or 1


def parse_devices(devices: Any) -> int | list[int] | None:
    """``trainer.devices`` as Lightning reads it: ``None`` for ``"auto"``, a count (``-1``: all) or
    a list of device indices (a list, ListConfig or ``"0,2"``); a digit string is a count.

    Raises:
        ConfigError: anything else, or a count below 1 other than -1.
    """
    allowed = "a positive count, -1 (all), 'auto' or a list of device indices"
    value = list(devices) if hasattr(devices, "__len__") and not isinstance(devices, str) else devices
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return None
        try:
            value = [int(i) for i in text.split(",") if i.strip()] if "," in text else int(text)
        except ValueError:
            value = None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0 and value != -1:
            raise ConfigError(f"trainer.devices={value} must be {allowed}")
        return value
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    raise ConfigError(f"trainer.devices={devices!r} is not {allowed}")


def devices_per_node(devices: Any, accelerator: str = "auto") -> int:
    """Processes per node for ``trainer.devices`` (:func:`parse_devices`), as Lightning counts them.

    A count is that many (``-1``: all available), a list one per entry, ``"auto"`` every CUDA
    device on a GPU accelerator and 1 on a CPU.
    """
    value = parse_devices(devices)
    if isinstance(value, list):
        return len(value)
    if value is None:
        return max(1, cuda_count()) if resolve_accelerator(accelerator) == "cuda" else 1
    return available_devices(accelerator)[1] or 1 if value == -1 else value


def world_size(trainer: Any) -> int:
    """Processes of a run: :func:`devices_per_node` × ``trainer.num_nodes`` (``trainer``: the ``trainer.*`` config)."""
    return devices_per_node(trainer.devices, str(trainer.accelerator)) * int(trainer.num_nodes)
