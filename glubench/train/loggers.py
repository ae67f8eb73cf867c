"""The experiment trackers of ``conf/logger/``: Lightning's W&B and CSV loggers with glubench's defaults.

Both continue a resumed run instead of starting over: the W&B run keeps its id (stored in the run
dir) and the CSV keeps the rows written before the checkpoint.  Secrets never reach W&B: the
config, the tags and the command line it records are redacted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from glubench.core.secrets import redact, wandb_mode
from glubench.train.resume import keep_csv_history, wandb_run_id

log = logging.getLogger(__name__)


class GlubenchWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with glubench's run identity.

    Args:
        project, entity, group, name, job_type: as ``wandb.init``.
        mode: ``online`` | ``offline`` | ``disabled``; ``None``: :func:`wandb_mode`.
        tags: extra tags after ``default_tags`` (both redacted).
        save_dir: the run dir; ``<save_dir>/wandb/`` holds the run.
        resume_step: the checkpoint step a resumed run starts from, or ``None`` for a fresh run;
            a resumed run reuses the id in ``<save_dir>/wandb_run_id`` (``resume="allow"``), so
            a requeued job continues its curves.
        run_config: W&B's ``config``: the run's resolved config, redacted by the caller (the training
            task and ``glubench-eval`` redact it once per run).
        verbose: W&B prints its banner and, at the end, the run's history and summary (``verbose=true``);
            otherwise it runs with ``settings.silent`` (its warnings and errors still print, and
            :func:`describe` gives the one line glubench prints instead).
    """

    def __init__(self, project: str = "glubench", entity: str | None = None, group: str | None = None,
                 name: str | None = None, mode: str | None = None, tags: Sequence[str] = (),
                 job_type: str = "train", save_dir: str | os.PathLike = ".", resume_step: int | None = None,
                 run_config: dict | None = None, default_tags: Sequence[str] = (), verbose: bool = False,
                 **kwargs: Any) -> None:
        all_tags = list(dict.fromkeys([*default_tags, *tags]))
        # ~40 lines per run (banner, history sparklines, summary) that repeat results.json and csv/.
        settings = {**({} if verbose else {"silent": True}), **(kwargs.pop("settings", None) or {})}
        super().__init__(project=project, entity=entity, group=group, name=name, save_dir=str(save_dir),
                         mode=wandb_mode(mode), job_type=job_type, tags=redact(all_tags) or None,
                         config=run_config, settings=settings,
                         id=wandb_run_id(Path(save_dir), resuming=resume_step is not None), resume="allow", **kwargs)
        # Lightning always hands wandb.init anonymous=None, and W&B (0.19+) warns "The anonymous setting
        # has no effect" for any value but its unset default: leave the argument out.
        self._wandb_init.pop("anonymous", None)

    def describe(self) -> str:
        """Where this run's W&B data goes, in one line: the run's URL, or the offline folder and the command
        that uploads it (``wandb sync``).  Starts the W&B run if it has not started."""
        run = self.experiment
        if getattr(run, "offline", False):
            return f"W&B offline (upload: wandb sync {run.settings.sync_dir})"
        return f"W&B {run.url}" if run.url else "W&B disabled"


class GlubenchCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` writing ``<save_dir>/<name>/metrics.csv`` (no version folder).

    A resumed run (``resume_step`` set) keeps the rows logged up to that step
    (:func:`glubench.train.resume.keep_csv_history`).
    """

    def __init__(self, save_dir: str | os.PathLike = ".", name: str = "csv", resume_step: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=str(save_dir), name=name, version="", **kwargs)
        if resume_step is not None:
            keep_csv_history(self, resume_step)
