"""``glubench-data``: prepare (pre-tokenize) a corpus into the token cache, e.g. on a login node.

    glubench-data prepare data=wikitext103 data.tokenizer=bpe data.vocab_size=8192
    glubench-data prepare data=text data.files='corpus/*.txt' data.cache_dir=/scratch/cache

Arguments after ``prepare`` are the same Hydra overrides ``glubench`` takes (composed with
the same ``conf/``), so a later ``glubench`` run with those overrides finds the cache warm.
Prints, per split, tokens, UTF-8 bytes and bytes/token, and the cache folder.
"""

from __future__ import annotations

import sys
import time

USAGE = "usage: glubench-data prepare [data=NAME] [data.KEY=VALUE ...]"


def compose(overrides: list[str]):
    """The composed run config for ``overrides`` (Hydra compose API, the package's ``conf/``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from glubench.core.paths import CONF_DIR
    from glubench.train.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def prepare(overrides: list[str]) -> dict:
    """Prepare the token cache for ``overrides`` and print its counts; returns the sidecar (``meta.json``) plus timing.

    Raises:
        ConfigError: a bad data key or file (before any heavy work); CorpusUnavailable /
            TokenizerUnavailable: see :mod:`glubench.data.hub` and :mod:`glubench.data.tokenizers`.
    """
    from glubench.data.cache import prepare_splits
    from glubench.train.config_rules import validate_config

    cfg = compose(overrides)
    validate_config(cfg)
    t0 = time.perf_counter()
    folder, splits = prepare_splits(cfg.data)
    meta = {**splits.meta, "prepare_seconds": time.perf_counter() - t0, "folder": str(folder)}
    print(f"glubench-data: {meta['corpus']} ({meta['source']}), tokenizer={meta['tokenizer']} "
          f"vocab={meta['vocab_size']}, {meta['prepare_seconds']:.1f}s -> {folder}")
    for split in (s for s in ("train", "val", "test") if s in meta):
        s = meta[split]
        bpt = f"{s['bytes'] / s['tokens']:.3f}" if s["tokens"] else "n/a"
        print(f"glubench-data:   {split:5s} tokens={s['tokens']:,} bytes={s['bytes']:,} bytes/token={bpt} "
              f"documents={s['documents']:,} ({s['dtype']})")
    return meta


def main(argv: list[str] | None = None) -> int:
    """Console entry point; exit 0 on success, 2 on a usage or config error, 1 on a load error."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    if argv[0] != "prepare":
        print(f"glubench-data: error: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from glubench.core.errors import ConfigError, CorpusUnavailable, TokenizerUnavailable
    from glubench.core.logging import configure

    configure()
    usage_errors = (ConfigError, HydraException, OmegaConfBaseException)
    try:
        prepare(argv[1:])
    except (*usage_errors, CorpusUnavailable, TokenizerUnavailable, FileNotFoundError, ValueError) as e:
        print(f"glubench-data: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, usage_errors) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
