"""Shared test setup and fixtures.

An isolated token cache (and Hugging Face modules cache) and W&B offline for every test (and the subprocesses
they start), plus the helpers more than one test file needs: composing the real config (:func:`compose_cfg`), a
seconds-long training run (:func:`ci_run`), reading offline W&B runs (:func:`wandb_history`),
markdown tables (:func:`markdown_table`), a prepared data module (:func:`make_dm`) and the synthetic sweep
losses (:func:`sweep_losses`).

Unit tests live in ``tests/unit/``: no training run, no Lightning ``Trainer``, no subprocess.  Everything
else is in ``tests/integration/``.  Markers (pyproject.toml, ``--strict-markers``): ``heavy``, the end-to-end
runs over ~20 s; ``slow``, the longer ones.  ``pytest`` runs neither, ``pytest -m heavy`` the heavy ones,
``pytest -m "not slow"`` both the default and the heavy ones (CI), ``pytest -m slow`` the slow ones.
"""

import json
import os
import struct
import tempfile
import time
from pathlib import Path

import pytest

# Set before anything imports glubench or wandb, and inherited by subprocess tests.
os.environ.setdefault("GLUBENCH_CACHE", tempfile.mkdtemp(prefix="glubench-test-cache-"))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# transformers copies an export's own modeling file (trust_remote_code) here: not into ~/.cache
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="glubench-test-hf-modules-"))

from glubench.core.paths import CONF_DIR  # noqa: E402
from glubench.train.schema import register_configs  # noqa: E402

register_configs()  # the typed config schema and resolvers for hydra.compose, as each command registers them

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _compose(overrides=(), hydra: bool = False, config_name: str = "config"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg(overrides, hydra=False, config_name="config")``: the composed glubench config, as the CLI
    builds it (``hydra=True`` keeps the ``hydra`` node)."""
    return _compose


@pytest.fixture
def ci_run(monkeypatch):
    """``ci_run(path, *overrides)``: a seconds-long ``experiment=ci`` run (no logger unless overridden) in the
    folder ``path`` (created); returns its :class:`~glubench.train.results.RunResult`."""
    from glubench.train.task import run

    def _run(path: Path, *overrides: str):
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(path)  # outside Hydra the run dir is the current dir
        return run(_compose(["experiment=ci", "logger=none", *overrides]))

    return _run


@pytest.fixture
def make_dm(compose_cfg):
    """``make_dm(overrides, cache, setup=True, seq_len=32, **kw)``: the :class:`LMDataModule` of the composed
    config's data section with ``data.cache_dir=cache``, set up unless ``setup=False``."""
    from omegaconf import OmegaConf

    from glubench.data.datamodule import LMDataModule

    def make(overrides, cache, setup=True, seq_len=32, **kw) -> LMDataModule:
        cfg = compose_cfg([f"data.cache_dir={cache}", *overrides])
        dm = LMDataModule(OmegaConf.to_container(cfg.data, resolve=True), seq_len=seq_len, **kw)
        if setup:
            dm.setup()
        return dm

    return make


def _wandb_records(path: Path, timeout_s: float = 30.0) -> list:
    """Records of an offline W&B ``.wandb`` file, once W&B has written the run's ``exit`` record.

    ``wandb.finish()`` returns before W&B's service process has written the whole offline file (a
    command waits for it when it exits; a test reading the file in the same process must wait too),
    so the file is read again until its ``exit`` record is there, or ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(_read_wandb_file(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _read_wandb_file(path: Path):
    """Records of an offline W&B ``.wandb`` file, as they are now.

    The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks
    with a 7-byte ``crc32, length, type`` header; types FULL=1, FIRST=2, MIDDLE=3, LAST=4)
    whose payloads are ``wandb_internal_pb2.Record`` protobufs.  wandb ships no public reader.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield pb.Record.FromString(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield pb.Record.FromString(buf + chunk)


def _wandb_rows(run_dir: Path, record_type: str = "history") -> list[dict]:
    rows = []
    for rec in _wandb_records(next(run_dir.glob("*.wandb"))):
        if rec.WhichOneof("record_type") == record_type:
            items = rec.history.item if record_type == "history" else rec.summary.update
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return rows


@pytest.fixture(scope="session")
def wandb_records():
    """``wandb_records(path)``: the protobuf records of one offline ``.wandb`` file (``run``, ``history``, ...)."""
    return _wandb_records


@pytest.fixture(scope="session")
def wandb_history():
    """``wandb_history(run_dir, record_type="history")``: the rows (``{key: value}``) an offline W&B run folder
    logged; ``record_type="summary"`` gives its summary updates instead."""
    return _wandb_rows


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (CI provides ../shared/data)")
    return SHARED_DATA


def _markdown_rows(md: str, title_prefix: str = "|  | variant") -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table in ``md`` whose header line starts
    with ``title_prefix`` (default: glubench-report's summary table)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_prefix))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture
def markdown_table():
    """The markdown-table reader: ``markdown_table(md, title_prefix="|  | variant") -> rows``."""
    return _markdown_rows


@pytest.fixture
def glubench_console_logging():
    """For tests that call a command's ``main`` (which runs :func:`glubench.core.logging.configure`):
    undo that configuration afterwards, so its handlers, bound to this test's captured stdout and
    stderr, do not outlive the test."""
    import logging

    logger = logging.getLogger("glubench")
    before = (list(logger.handlers), logger.level, logger.propagate, getattr(logger, "_glubench_configured", False))
    yield
    logger.handlers[:] = before[0]
    logger.setLevel(before[1])
    logger.propagate = before[2]
    logger._glubench_configured = before[3]


@pytest.fixture
def sweep_losses() -> dict[str, list[float]]:
    """Final val losses per variant and seed of the synthetic sweeps (test_report.py, test_tuned.py).

    relu and bilinear have equal sample variances, so Welch's degrees of freedom are exactly
    n1 + n2 - 2 = 4 and the t quantile is from a table (:func:`t_975_df4`).
    """
    return {
        "relu": [2.0, 2.2, 2.4],      # mean 2.2, sample std 0.2
        "swiglu": [1.9, 2.0, 2.1],    # mean 2.0, sample std 0.1
        "bilinear": [1.8, 2.0, 2.2],  # mean 2.0, sample std 0.2
        "gelu": [2.9, 3.0, 3.1],      # mean 3.0, sample std 0.1
    }


@pytest.fixture
def t_975_df4() -> float:
    """t_{0.975, 4}, from a t table."""
    return 2.7764451051977987
