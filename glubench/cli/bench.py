"""Training-throughput benchmark: glubench under Lightning, in a plain loop, and Hugging Face peers.

``glubench-bench`` (and ``scripts/bench_throughput.py``): the flags are :class:`glubench.bench.config.BenchConfig`'s
fields, the model's sizes those of :class:`glubench.nn.config.ModelConfig`; the engine is :mod:`glubench.bench`
(method and results: BENCHMARKS.md).  torch loads only after the flags have been checked, so ``--help`` and a
bad flag answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from dataclasses import fields
from pathlib import Path

from glubench.bench.config import CONTENDERS, MODEL_SIZES, BenchConfig
from glubench.core.logging import configure as configure_logging
from glubench.nn.config import ModelConfig

log = logging.getLogger("glubench.cli.bench")  # also under python -m (where __name__ is __main__)

HELP = {
    "ffns": "FFN variants (model.ffn names)",
    "contenders": f"subset of {', '.join(CONTENDERS)}",
    "compile": "torch.compile every model (compile time is in warmup)",
    "bf16": "bf16 autocast (Lightning: precision=bf16-mixed)",
    "device": "auto | cpu | cuda",
    "threads": "torch CPU threads (default: torch's choice)",
    "peak_flops": "device peak FLOP/s for MFU (default: lookup)",
    "progress_bar": "keep Lightning's progress bar on",
}
"""Help of the flags that have one, by field name."""


def _flag(parser: argparse.ArgumentParser, name: str, hint: typing.Any) -> None:
    """Add ``--<name>`` for a dataclass field of type ``hint``: ``bool`` a switch, ``list[T]`` one or more
    ``T``, ``T | None`` a ``T``.  ``ffns`` is ``--ffn`` (one name per variant)."""
    flag, kwargs = "--" + name.replace("_", "-"), {"dest": name, "help": HELP.get(name)}
    if name == "ffns":
        flag, kwargs["metavar"] = "--ffn", "FFN"
    if hint is bool:
        kwargs["action"] = "store_true"
    elif typing.get_origin(hint) is list:
        kwargs.update(nargs="+", type=typing.get_args(hint)[0])
    else:
        kwargs["type"] = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    parser.add_argument(flag, **kwargs)


def parser() -> argparse.ArgumentParser:
    """The command line, generated from :class:`BenchConfig` and :class:`ModelConfig` (defaults: theirs)."""
    p = argparse.ArgumentParser(prog="glubench-bench", description=__doc__.split("\n\n")[0])
    bench, model = typing.get_type_hints(BenchConfig), typing.get_type_hints(ModelConfig)
    defaults = BenchConfig().as_dict()
    for f in fields(BenchConfig):
        if f.name == "model":
            for name in MODEL_SIZES:
                _flag(p, name, model[name])
        else:
            _flag(p, f.name, bench[f.name])
        if f.name == "contenders":
            p.add_argument("--split-gated", action="store_true", help="add the plain-split contender (unfused W, V)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md")
    p.set_defaults(**defaults)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path]:
    """The :class:`BenchConfig` and the output folder from the command line.

    Raises:
        ValueError: the model's sizes are inconsistent (:class:`ModelConfig`'s one-line message).
    """
    args = vars(parser().parse_args(argv))
    out, split_gated = args.pop("out"), args.pop("split_gated")
    if split_gated and "plain-split" not in args["contenders"]:
        args["contenders"].append("plain-split")
    model = ModelConfig(**{name: args.pop(name) for name in MODEL_SIZES})
    return BenchConfig(model=model, **args), out


def main(argv: list[str] | None = None) -> int:
    """``glubench-bench`` / ``scripts/bench_throughput.py``: run the benchmark and print the markdown table.

    Returns 0, or 2 after one ``glubench-bench: error: ...`` line on a bad flag (before torch loads).
    """
    configure_logging()
    try:
        cfg, out = parse_args(argv)
        cfg.check()
    except ValueError as e:
        print(f"glubench-bench: error: {e}", file=sys.stderr)
        return 2
    from glubench.bench.engine import benchmark  # the one lazy boundary: torch, Lightning
    from glubench.bench.results import markdown

    result = benchmark(cfg, out)
    print(markdown(result), end="")
    log.info(f"glubench-bench: wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
