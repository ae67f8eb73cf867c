"""The package's shape, each checked in a fresh interpreter: imports flow one way (import-linter), and the
command line, the data modules, the model config and the report load neither torch nor Lightning."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glubench.train.results import RunResult

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sweep(tmp_path):
    """A finished sweep of two runs, as the report reads it."""
    for i, (ffn, loss) in enumerate([("relu", 2.0), ("swiglu", 1.9)]):
        RunResult(status="completed", ffn=ffn, seed=0, val_loss=loss,
                  config={"model": {"ffn": ffn}, "seed": 0, "experiment_name": "t"}).write(tmp_path / f"{i}_{ffn}")
    return tmp_path


def test_imports_flow_one_way():
    """import-linter contracts in pyproject.toml: cli > sweep > train > export > data > analysis > nn > core, and
    nn/analysis/core/export import neither Lightning nor Hydra.  A new cycle or upward import fails here."""
    # in a subprocess: import-linter disables every logger that exists when it runs
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_command_line_path_loads_neither_torch_nor_lightning():
    """What `glubench --help` and a one-line config error import: so they stay fast."""
    code = ("import sys, glubench.cli.main, glubench.cli.export, glubench.cli.sample, glubench.train.config_rules, "
            "glubench.sweep.report; "
            "print(sorted(m for m in ('torch', 'lightning', 'wandb', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_data_modules_import_no_torch_or_lightning():
    code = ("import sys, glubench.data.files, glubench.data.sources, glubench.data.tokenizers, glubench.data.cache; "
            "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_config_validates_without_torch():
    """The ``glubench`` command validates a config before importing torch (it must answer in < 2 s)."""
    code = ("import sys; from glubench.nn.config import ModelConfig; "
            "c = ModelConfig(ffn='swiglu', d_model=768, d_ff=3072); "
            "print(c.ffn_hidden, c.gated, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2048", "True", "False"]


def test_report_does_not_import_torch_or_lightning(sweep):
    """The report runs without the training stack: importing it and reporting a folder load
    neither torch nor lightning (a fresh interpreter, so no other test's imports count)."""
    code = ("import sys; from glubench.sweep.report import main; "
            f"code = main([{str(sweep)!r}, '--wandb', 'off', '--no-plots']); "
            "print('heavy:', sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules)); "
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "heavy: []" in proc.stdout
