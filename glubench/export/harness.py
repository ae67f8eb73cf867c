"""lm-evaluation-harness (``lm_eval``, the optional ``[eval]`` extra) on an exported folder.

:func:`evaluate_folder` is what ``lm_eval --model hf --model_args pretrained=<folder>`` runs: the harness's
``hf`` model (``HFLM``) loads the folder with ``transformers`` in float32 and scores the tasks; task YAMLs
beyond the harness's own are read from ``include_path``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from glubench.core.errors import ConfigError


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """The harness's ``TaskManager``, with the task YAMLs of ``include_path`` (a folder) added; built once per
    process (it indexes every task YAML the harness ships, several seconds)."""
    from lm_eval.tasks import TaskManager  # optional: the [eval] extra (lm-eval)

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def check_tasks(tasks: list[str], include_path: str | None) -> None:
    """Raises:
        ConfigError: ``lm_eval`` is not installed, ``include_path`` is not a folder, or a task (or group) is
            unknown to the harness (one line naming it).
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"tasks={list(tasks)} needs lm-evaluation-harness: pip install 'glubench[eval]'")
    if include_path and not Path(include_path).expanduser().is_dir():
        raise ConfigError(f"harness.include_path={include_path!r} is not a folder of task YAMLs")
    known = set(task_manager(include_path).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"tasks: {', '.join(unknown)} not known to lm-evaluation-harness "
                          "(a local task needs harness.include_path=<folder of task YAMLs>)")


def evaluate_folder(folder: Path, tasks: list[str], *, include_path: str | None = None,
                    num_fewshot: int | None = None, limit: float | None = None, batch_size: int = 1,
                    device: str = "cpu", trust_remote_code: bool = False) -> dict:
    """``lm_eval.simple_evaluate`` of the folder on ``tasks``; returns the harness's results as plain JSON values
    (its ``results``, ``versions``, ``n-shot``, ``config``, ...; no per-sample logs)."""
    import lm_eval  # optional: the [eval] extra (lm-eval)
    from lm_eval.utils import handle_non_serializable

    model_args = {"pretrained": str(folder), "dtype": "float32", "trust_remote_code": trust_remote_code}
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot,
                                  limit=limit, batch_size=batch_size, device=device, log_samples=False,
                                  task_manager=task_manager(include_path))
    return json.loads(json.dumps(out, default=handle_non_serializable))


def summarize(results: dict) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from the harness's ``results``: its key ``"acc,none"`` becomes ``acc``, a filtered
    one ``"exact_match,strict-match"`` ``exact_match/strict-match``; standard errors and non-numbers are left out."""
    summary: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not metric.endswith("_stderr"):
                name = metric if filt in ("", "none") else f"{metric}/{filt}"
                summary.setdefault(task, {})[name] = float(value)
    return summary
