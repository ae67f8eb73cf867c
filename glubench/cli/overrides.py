"""One line, with the nearest key, for a command-line override that Hydra would refuse at length.

Hydra composes the config before any glubench code runs, and two mistakes end there in a
paragraph: a mistyped key (``trainer.max_step=20``: Hydra's 6-line "Key 'max_step' not in
'TrainerConfig'", without the "did you mean" that ``+trainer.max_step=20`` gets from
:func:`glubench.train.config_rules.unknown_keys`), and a key under a node the chosen groups leave null
(``logger=csv logger.wandb.tags=[x,y]``: an OmegaConf traceback).  :func:`check_overrides` looks at
the overrides first: against the typed schema (no composing), and only where the schema cannot
tell (an optional node, an open ``dict``) by composing the config with the group choices alone.
Anything it cannot explain is left to Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from glubench.core.paths import CONF_DIR
from glubench.train.schema import Config, EvalConfig

SCHEMAS = {"config": Config, "eval": EvalConfig}
UNSURE = "unsure"  # the schema alone cannot tell whether the key exists


def _parse(argv: list[str]) -> list | None:
    """Hydra's own parse of ``argv`` (flags, then overrides); ``None`` when this is not a plain compose
    (shell completion, another config) or when Hydra would reject the command line itself."""
    try:
        args = get_args_parser().parse_args(argv)
        if args.shell_completion or args.config_name or args.config_path or args.config_dir:
            return None
        return OverridesParser.create().parse_overrides(args.overrides)
    except (Exception, SystemExit):  # noqa: BLE001 - Hydra reports its own parse errors
        return None


def _is_group(key: str) -> bool:
    return "/" in key or (CONF_DIR / key).is_dir()


def _schema_verdict(schema: type, key: str) -> str | tuple[str, str, list[str]]:
    """``"ok"``, :data:`UNSURE`, or ``(parent path, missing key, the parent's keys)`` for a dotted ``key``."""
    node, parts = schema, key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            return ".".join(parts[:i]), part, names
        hint = typing.get_type_hints(node)[part]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) is typing.Union
        inner = args[0] if optional and len(args) == 1 else hint
        if i == len(parts) - 1:
            return "ok"
        if optional or not dataclasses.is_dataclass(inner):
            return UNSURE  # may be null after composing, or an open node (dict, Any)
        node = inner
    return "ok"


def _unknown(line: str, parent: str, key: str, names: list[str]) -> str:
    where = parent or "the config"
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {'.'.join(filter(None, [parent, close[0]]))}?" if close else "glubench --help lists the keys"
    return f"{line}: no key {key!r} in {where}; {hint}"


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def _first(o) -> str:
    """The override as a plain one (a sweep's first value), for composing."""
    return f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line


def _null_parent(cfg, line: str, prefix: str, config_name: str, groups: list[str]) -> str:
    """The message for a key under ``prefix``, which the composed ``cfg`` leaves null: the choices of its
    group that have it (one compose per option of that group), or the choices that made it null."""
    group, choices = prefix.split(".")[0], cfg.hydra.runtime.choices
    choice = choices.get(group)
    if (CONF_DIR / group).is_dir():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem != choice)
        have = [o for o in options
                if OmegaConf.select(_compose(config_name, [*groups, f"{group}={o}"]), prefix) is not None]
        if have:
            why = f"with {group}={choice}" if choice else f"(no {group}= chosen)"
            return f"{line}: {prefix} is null {why}; choose {group}={'|'.join(have)}"
    chosen = ", ".join(f"{g}={choices[g]}" for g in (group, "experiment", "debug") if choices.get(g))
    return f"{line}: {prefix} is null in this config{f' ({chosen})' if chosen else ''}; set it first"


def _composed_verdict(cfg, line: str, key: str, config_name: str, groups: list[str]) -> str | None:
    """The message for ``key`` in the composed ``cfg``: a null parent (:func:`_null_parent`) or a missing key
    (with the nearest one); ``None`` when the key is there."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        node = OmegaConf.select(cfg, prefix)
        if node is None:
            return _null_parent(cfg, line, prefix, config_name, groups)
        if isinstance(node, DictConfig) and parts[i] not in node and i < len(parts) - 1:
            return _unknown(line, prefix, parts[i], [str(k) for k in node])
    parent = OmegaConf.select(cfg, ".".join(parts[:-1])) if len(parts) > 1 else cfg
    if isinstance(parent, DictConfig) and parts[-1] not in parent and OmegaConf.is_struct(parent):
        return _unknown(line, ".".join(parts[:-1]), parts[-1], [str(k) for k in parent])
    return None


def check_overrides(argv: list[str], config_name: str = "config") -> str | None:
    """The one-line error for the first override of ``argv`` that Hydra would refuse with a traceback or a
    multi-line message (an unknown key, a key under a null node), or ``None``.

    Only plain ``key=value`` overrides are checked (``+``, ``++``, ``~`` and ``hydra.*`` ones are Hydra's
    and :func:`glubench.train.config_rules.unknown_keys`'s); composing happens only when the typed schema cannot
    tell, and then once, with the group choices of the command line.
    """
    overrides = _parse(argv)
    if not overrides:
        return None
    values = [o for o in overrides if not (o.is_add() or o.is_force_add() or o.is_delete() or o.package
                                           or o.key_or_group.startswith("hydra") or _is_group(o.key_or_group))]
    unsure = []
    for o in values:
        verdict = _schema_verdict(SCHEMAS[config_name], o.key_or_group)
        if isinstance(verdict, tuple):
            return _unknown(o.input_line, *verdict)
        if verdict == UNSURE:
            unsure.append(o)
    if not unsure:
        return None
    try:
        groups = [_first(o) for o in overrides if o not in values and not o.is_delete()]
        cfg = _compose(config_name, groups)
        return next(filter(None, (_composed_verdict(cfg, o.input_line, o.key_or_group, config_name, groups)
                                  for o in unsure)), None)
    except Exception:  # noqa: BLE001 - whatever else is wrong, Hydra says it
        return None

