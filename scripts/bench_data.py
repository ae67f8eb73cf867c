"""Data-pipeline benchmark: token-cache preparation (cold and warm) and train-dataloader tokens/s.

    python scripts/bench_data.py data=text data.files=../shared/data/wikitext-2-tokenized/valid.txt
    python scripts/bench_data.py data=tinyshakespeare data.files=../shared/data/tinyshakespeare/input.txt \
        data.tokenizer=bpe --batches 2000 --out bench_data.json

Arguments other than ``--batches``/``--repeats``/``--out`` are ``glubench`` overrides.  Cold
preparation uses a fresh, empty cache folder (so it includes corpus loading, tokenizer training
and tokenization, but not Python imports); warm preparation reuses it as a new process would
(the in-process file-hash cache is cleared first, so it includes hashing the files once).
Both go through :func:`glubench.data.cache.prepare_splits`.  Dataloader throughput
iterates ``LMDataModule.train_dataloader()`` alone (no model), as training would: tokens/s =
batches × batch_size × seq_len / seconds, median over repeats.  Prints one JSON object (and
writes it atomically to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=1000, help="train batches per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args, overrides = p.parse_known_args(argv)

    from omegaconf import OmegaConf

    from glubench.cli.data import compose
    from glubench.core.io import atomic_write_json
    from glubench.data.cache import prepare_splits
    from glubench.data.datamodule import LMDataModule
    from glubench.data.files import clear_hash_cache
    from glubench.train.config_rules import validate_config

    cache = tempfile.mkdtemp(prefix="glubench-bench-data-")
    cfg = compose([*overrides, f"data.cache_dir={cache}"])
    model_cfg = validate_config(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)

    def prepared() -> float:
        clear_hash_cache()
        t = time.perf_counter()
        prepare_splits(data, seq_len=model_cfg.seq_len)
        return time.perf_counter() - t

    cold = prepared()
    warm = prepared()
    dm = LMDataModule(data, seq_len=model_cfg.seq_len, num_batches=args.batches, seed=cfg.seed)
    dm.setup()  # the warm cache again
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        n = 0
        for x, _y in dm.train_dataloader():
            n += x.numel()
        rates.append(n / (time.perf_counter() - t))
    meta = dm.splits.meta
    result = {
        "overrides": overrides,
        "source": meta["source"],
        "tokenizer": meta["tokenizer"],
        "vocab_size": meta["vocab_size"],
        "train_tokens": meta["train"]["tokens"],
        "val_tokens": meta["val"]["tokens"],
        "bytes_per_token": meta["train"]["bytes_per_token"],
        "prepare_cold_s": cold,
        "prepare_warm_s": warm,
        "batch_size": dm.data["batch_size"],
        "seq_len": dm.seq_len,
        "num_workers": dm.data["num_workers"],
        "dataloader_tokens_per_sec_median": statistics.median(rates),
        "dataloader_tokens_per_sec": rates,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
