"""The typed config: every config file composes, unknown keys and wrong types are refused, with a close match."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from glubench.core.paths import CONF_DIR
from glubench.train.config_rules import unknown_keys

CONF = Path(str(CONF_DIR))
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def test_unknown_keys_name_the_key_and_a_close_match(compose_cfg):
    cfg = compose_cfg(["experiment=ci", "+trainer.max_step=20", "+optim.lr_decay=2", "+nonsense=1"])
    found = unknown_keys(cfg)
    assert "trainer.max_step (did you mean trainer.max_steps?)" in found
    assert any(f.startswith("optim.lr_decay") for f in found) and "nonsense" in found
    assert unknown_keys(compose_cfg(["experiment=ci", "+callbacks.mine={_target_: x.Y}"])) == []  # open node


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_config_composes(group, option, compose_cfg):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "text"):
        overrides.append("data.files=README.md")
    cfg = compose_cfg(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_schema_rejects_unknown_keys_and_types(compose_cfg):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(["model.d_modle=64"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["model.n_layers=four"])
