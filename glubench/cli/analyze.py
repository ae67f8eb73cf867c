"""``glubench-analyze``: activation diagnostics that need no training run of their own.

    glubench-analyze init [--ffn relu,swiglu] [--init scaled_normal,fan_in] [OVERRIDES...]
    glubench-analyze regions [--run-dir DIR] [--out DIR] [OVERRIDES...]

OVERRIDES are Hydra overrides of the training config (``model=small``, ``model.ffn=relu``, ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

SMALL_MLP_WIDTHS = (16, 16)

log = logging.getLogger(__name__)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from glubench.core.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _probe(cfg, batch: int):
    """Fixed probe token ids ``(B, T)`` from the configured corpus's validation split."""
    from glubench.analysis.dead_units import probe_batch
    from glubench.data.cache import prepare_splits

    _, splits = prepare_splits(cfg.data, seq_len=cfg.model.seq_len)
    return probe_batch(splits.val, cfg.model.seq_len, batch), splits.vocab_size


def _split(value: str, valid, key: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    bad = [v for v in names if v not in valid]
    if bad:
        raise SystemExit(f"glubench-analyze: error: {key}={','.join(bad)} is not known; valid: {', '.join(valid)}")
    return names


# ---------------------------------------------------------------------------- init


def cmd_init(args) -> int:
    import torch

    from glubench.analysis.init_variance import he_relu_stack, transformer_profile
    from glubench.nn.config import FFN_VARIANTS, INIT_SCHEMES
    from glubench.nn.transformer import Transformer
    from glubench.train.validate import ConfigError, model_config

    ffns = _split(args.ffn, list(FFN_VARIANTS), "--ffn")
    inits = _split(args.init, INIT_SCHEMES, "--init")
    cfg = _compose(args.overrides)
    try:
        model_config(cfg)
    except ConfigError as e:
        raise SystemExit(f"glubench-analyze: error: {e}") from None

    print("He-init check (He et al. 2015, eq. 10): z = W x, W ~ N(0, 2/fan_in), x ~ N(0, 1) of width "
          f"{args.he_width}; claim: Var(z_l) = 2·E[x_(l-1)²] = 2 at every depth and E[relu(z_l)²] = 1")
    he = he_relu_stack(width=args.he_width, depth=6, n=args.he_width, seed=args.seed)
    print("  layer  Var(z)  E[relu(z)^2]")
    for i, r in enumerate(he):
        print(f"  {i:5d}  {r['var_z']:6.3f}  {r['second_moment_out']:12.3f}")
    worst = max(abs(r["var_z"] / 2 - 1) for r in he[:2])
    print(f"  largest deviation of Var(z) from 2 in layers 0-1: {worst:.2%} "
          f"({'holds' if worst <= 0.05 else 'FAILS'} within 5%); deeper layers drift by O(sqrt(depth/width))\n")

    probe, vocab = _probe(cfg, args.batch)
    print(f"Transformer at initialization on {probe.numel():,} real tokens ({cfg.data.name}, validation split), "
          f"d_model={cfg.model.d_model} n_layers={cfg.model.n_layers}.  Per layer: resid = Var of the residual "
          "stream entering the block; z = Var of the FFN pre-activations x·W1 (gated: the gate x·W).")
    rows = []
    for ffn in ffns:
        for init in inits:
            cfg.model.ffn, cfg.model.init = ffn, init
            mc = model_config(cfg, vocab_size=vocab)
            torch.manual_seed(args.seed)
            prof = transformer_profile(Transformer(mc), probe)
            rows.append({"ffn": ffn, "init": init, "layers": prof})
            resid = " ".join(f"{p['resid_var']:.3g}" for p in prof)
            z = " ".join(f"{p['ffn_z_var']:.3g}" for p in prof if "ffn_z_var" in p)
            print(f"  {ffn:9s} {init:13s} resid: {resid:40s} z: {z}")
    print("\nRMS at initialization: ffn_out = sqrt(mean(FFN(x)²)), what each FFN adds to the residual stream; "
          "resid = RMS of the residual stream entering each block (last: after the final block).  "
          f"scaled_normal/normal use model.init_std={cfg.model.init_std}.")
    print(f"  {'ffn':9s} {'init':13s} {'ffn_out (mean)':>14s}  {'ffn_out per layer':30s} resid per layer")
    for r in rows:
        out = [p["ffn_out_rms"] for p in r["layers"] if "ffn_out_rms" in p]
        per = " ".join(f"{x:.3g}" for x in out)
        resid = " ".join(f"{p['resid_rms']:.3g}" for p in r["layers"])
        print(f"  {r['ffn']:9s} {r['init']:13s} {sum(out) / len(out):14.4g}  {per:30s} {resid}")
    if args.json:
        from glubench.core.io import atomic_write_json

        atomic_write_json(Path(args.json), {"he_check": he, "profiles": rows})
        log.info("wrote %s", args.json)
    return 0


# ---------------------------------------------------------------------------- regions


def tiny_2d_mlp(seed: int, steps: int):
    """A 2-16-16-1 ReLU MLP (He init) before and after ``steps`` Adam steps fitting
    ``sin(πu)·cos(πv)`` on [-1, 1]²; returns the two weight lists ``[(W, b), ...]`` of the hidden layers."""
    import torch

    torch.manual_seed(seed)
    widths = (2, *SMALL_MLP_WIDTHS)
    net = torch.nn.Sequential()
    for a, b in zip(widths[:-1], widths[1:]):
        lin = torch.nn.Linear(a, b)
        torch.nn.init.normal_(lin.weight, std=math.sqrt(2 / a))
        torch.nn.init.normal_(lin.bias, std=0.1)
        net.extend([lin, torch.nn.ReLU()])
    net.append(torch.nn.Linear(widths[-1], 1))

    def weights():
        return [(m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
                for m in list(net)[:-1] if isinstance(m, torch.nn.Linear)]

    before = weights()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(256, 2, generator=g) * 2 - 1
        y = torch.sin(math.pi * x[:, :1]) * torch.cos(math.pi * x[:, 1:])
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, weights(), loss.item()


def plot_partitions(parts: list, titles: list[str], path: Path) -> None:
    """Draw each :class:`~glubench.analysis.regions.PlanePartition` as coloured polygons into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 5.2))
    for ax, part, title in zip(np.atleast_1d(axes), parts, titles):
        rng = np.random.default_rng(0)
        coll = PolyCollection(part.polygons, facecolors=rng.uniform(0.25, 1.0, (len(part.polygons), 3)),
                              edgecolors="k", linewidths=0.3)
        ax.add_collection(coll)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("input 1")
        ax.set_ylabel("input 2")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def load_run(run_dir: Path):
    """``(model_cfg, trained Transformer, seed, run config)`` from a run dir's ``results.json`` and
    ``checkpoints/last.ckpt``."""
    import torch
    from omegaconf import OmegaConf

    from glubench.nn.transformer import Transformer
    from glubench.train.results import RESULTS_FILE, RunResult
    from glubench.train.validate import model_config

    res, ckpt_path = run_dir / RESULTS_FILE, run_dir / "checkpoints" / "last.ckpt"
    for p in (res, ckpt_path):
        if not p.is_file():
            raise SystemExit(f"glubench-analyze: error: --run-dir={run_dir}: {p.name} not found")
    result = RunResult.read(res)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    run_cfg = OmegaConf.create(result.config)
    mc = model_config(run_cfg, vocab_size=state["tok_emb.weight"].shape[0])
    model = Transformer(mc)
    model.load_state_dict(state)
    return mc, model, result.seed, run_cfg


def cmd_regions(args) -> int:
    import os

    import torch

    from glubench.analysis.ffn_regions import PATTERN_VARIANTS, region_counts
    from glubench.analysis.regions import (
        count_in_plane,
        count_on_segment,
        max_regions_one_layer,
        mlp_layers,
        montufar_lower_bound,
        serra_upper_bound,
    )
    from glubench.core.io import atomic_write_json
    from glubench.nn.transformer import Transformer

    out = Path(args.out or f"regions-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    # 1) the tiny 2-input MLP: exact partition of [-1, 1]², before and after training
    before, after, loss = tiny_2d_mlp(args.seed, args.mlp_steps)
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    widths = list(SMALL_MLP_WIDTHS)
    upper, lower = serra_upper_bound(2, widths), montufar_lower_bound(2, widths)
    parts, titles, mlp_rows = [], [], []
    for label, wb in (("init", before), (f"trained {args.mlp_steps} steps (mse {loss:.3g})", after)):
        layers = mlp_layers([w for w, _ in wb], [b for _, b in wb])
        part = count_in_plane(layers, np.zeros(2), np.eye(2)[0], np.eye(2)[1], square)
        diag = count_on_segment(layers, square[0], square[2])
        parts.append(part)
        titles.append(f"2-{'-'.join(map(str, widths))} ReLU MLP, {label}\n{part.counts[-1]} regions in [-1,1]² "
                      f"(layer 1: {part.counts[0]}); upper bound {upper}")
        mlp_rows.append({"state": label.split()[0], "plane_cumulative": part.counts, "diagonal_cumulative": diag})
    png = out / "partition.png"
    plot_partitions(parts, titles, png)
    summary["small_mlp"] = {"widths": widths, "input_dim": 2, "domain": "[-1,1]^2", "rows": mlp_rows,
                            "bound_one_layer_2d": max_regions_one_layer(widths[0], 2),
                            "serra_upper_bound_2d": upper, "montufar_max_lower_bound_2d": lower,
                            "bound_line": math.prod(n + 1 for n in widths)}
    print(f"Small MLP 2-{'-'.join(map(str, widths))} (exact cells in [-1,1]², PNG: {png})")
    print(f"  bounds for input dim 2: one layer of {widths[0]}: {max_regions_one_layer(widths[0], 2)}; whole net: "
          f"Serra et al. 2018 upper {upper}, Montúfar et al. 2014 lower bound on the maximum {lower}; "
          f"on a line: at most {math.prod(n + 1 for n in widths)}")
    for r in mlp_rows:
        print(f"  {r['state']:8s} plane: after layer 1 {r['plane_cumulative'][0]:4d}, after layer 2 "
              f"{r['plane_cumulative'][1]:5d};  diagonal segment: {r['diagonal_cumulative']}")

    # 2) a trained transformer: load a run, or train a tiny ReLU one briefly
    if args.run_dir:
        mc, trained, seed, run_cfg = load_run(Path(args.run_dir))
        run_dir = Path(args.run_dir)
    else:
        from glubench.train.task import run

        overrides = ["experiment=ci", "model.ffn=relu", "logger=none", f"trainer.max_steps={args.steps}",
                     f"trainer.val_check_interval={args.steps}", *args.overrides]
        cfg = _compose(overrides)
        run_dir = out / "run"
        run_dir.mkdir(exist_ok=True)
        cwd = os.getcwd()
        os.chdir(run_dir)  # outside a Hydra job, train writes into the current directory
        try:
            res = run(cfg)
        finally:
            os.chdir(cwd)
        if res.status != "completed":
            raise SystemExit(f"glubench-analyze: error: the training run {res.status}: {res.error}")
        mc, trained, seed, run_cfg = load_run(run_dir)
    if mc.ffn not in PATTERN_VARIANTS:
        raise SystemExit(f"glubench-analyze: error: model.ffn={mc.ffn!r}: linear regions need one of "
                         f"{', '.join(PATTERN_VARIANTS)}")
    torch.manual_seed(seed)
    initial = Transformer(mc)  # train.py seeds torch once before building the model: same init
    probe, _ = _probe(run_cfg, args.batch)  # the run's own corpus and tokenizer
    counts = {"before": region_counts(initial, probe, args.paths, args.seed),
              "after": region_counts(trained, probe, args.paths, args.seed)}
    summary["transformer"] = {"run_dir": str(run_dir), "ffn": mc.ffn, "d_model": mc.d_model,
                              "n_layers": mc.n_layers, "ffn_hidden": mc.ffn_hidden, **counts}
    print(f"\nTransformer ffn={mc.ffn} d_model={mc.d_model} n_layers={mc.n_layers} ffn_hidden={mc.ffn_hidden} "
          f"({run_dir}); mean over {args.paths} random token pairs (segments) / triples (triangles)")
    print(f"  {'layer':>5s} {'segment before':>15s} {'segment after':>14s} {'plane before':>13s} {'plane after':>12s}"
          f"  (max on a segment {mc.ffn_hidden + 1}, in a plane {max_regions_one_layer(mc.ffn_hidden, 2)})")
    for b, a in zip(counts["before"]["per_layer"], counts["after"]["per_layer"]):
        print(f"  {b['layer']:5d} {b['segment_mean']:15.1f} {a['segment_mean']:14.1f} {b['plane_mean']:13.1f}"
              f" {a['plane_mean']:12.1f}")
    if counts["after"]["stack"]:
        sb, sa = counts["before"]["stack"], counts["after"]["stack"]
        print(f"  FFN stack (surrogate: LayerNorm scale frozen, attention left out), pieces on a segment: "
              f"before {sb['segment_mean']:.1f} "
              f"(cumulative by layer {[round(c, 1) for c in sb['per_layer_cumulative']]}), "
              f"after {sa['segment_mean']:.1f} ({[round(c, 1) for c in sa['per_layer_cumulative']]})")
    atomic_write_json(out / "regions.json", summary)
    log.info("wrote %s", out / "regions.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glubench-analyze`` console script."""
    from glubench.core.logging import configure
    from glubench.nn.config import FFN_VARIANTS

    configure()
    p = argparse.ArgumentParser(prog="glubench-analyze", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("init", help="variance of the residual stream and FFN pre-activations at initialization")
    pi.add_argument("--ffn", default=",".join(FFN_VARIANTS))
    pi.add_argument("--init", default="scaled_normal,fan_in,normal,kaiming")
    pi.add_argument("--batch", type=int, default=8, help="probe windows of model.seq_len")
    pi.add_argument("--he-width", type=int, default=2048)
    pi.add_argument("--seed", type=int, default=0)
    pi.add_argument("--json", help="also write the numbers to this JSON file")
    pi.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=small")
    pr = sub.add_parser("regions", help="exact linear-region counts and a PNG of a 2-D partition")
    pr.add_argument("--run-dir", help="a finished relu/reglu/relu2 run (results.json + checkpoints/last.ckpt); "
                                      "default: train a tiny ReLU model briefly")
    pr.add_argument("--out", help="output folder (default ./regions-<time>)")
    pr.add_argument("--steps", type=int, default=200, help="training steps when no --run-dir is given")
    pr.add_argument("--mlp-steps", type=int, default=500)
    pr.add_argument("--paths", type=int, default=16, help="random segments / triangles per layer")
    pr.add_argument("--batch", type=int, default=4, help="probe windows")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("overrides", nargs="*", help="Hydra overrides for the training run (no --run-dir)")
    args = p.parse_args(argv)
    for key in ("batch", "paths", "steps", "mlp_steps", "he_width"):
        if getattr(args, key, 1) is not None and getattr(args, key, 1) <= 0:
            p.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be a positive integer")
    return cmd_init(args) if args.cmd == "init" else cmd_regions(args)


if __name__ == "__main__":
    sys.exit(main())
