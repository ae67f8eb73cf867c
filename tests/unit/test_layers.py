"""The package's shape: imports flow one way, the command line loads no torch; unknown keys get a close match."""

import subprocess
import sys

from glubench.train.schema import unknown_keys

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


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
    code = ("import sys, glubench.cli.main, glubench.cli.export, glubench.cli.sample, glubench.train.validate, "
            "glubench.sweep.report; "
            "print(sorted(m for m in ('torch', 'lightning', 'wandb', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_keys_name_the_key_and_a_close_match(compose_cfg):
    cfg = compose_cfg(["experiment=ci", "+trainer.max_step=20", "+optim.lr_decay=2", "+nonsense=1"])
    found = unknown_keys(cfg)
    assert "trainer.max_step (did you mean trainer.max_steps?)" in found
    assert any(f.startswith("optim.lr_decay") for f in found) and "nonsense" in found
    assert unknown_keys(compose_cfg(["experiment=ci", "+callbacks.mine={_target_: x.Y}"])) == []  # open node
