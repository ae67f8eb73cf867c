"""``glubench-analyze``: activation diagnostics that need no training run of their own.

    glubench-analyze init [--ffn relu,swiglu] [--init scaled_normal,fan_in] [OVERRIDES...]
    glubench-analyze regions [--run-dir DIR] [--out DIR] [OVERRIDES...]

OVERRIDES are Hydra overrides of the training config (``model=small``, ``model.ffn=relu``, ...).
``regions`` writes into ``outputs/analyze/regions/<date>/<time>/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from glubench.cli.data import compose

SMALL_MLP_WIDTHS = (16, 16)

log = logging.getLogger(__name__)


DESCRIPTION = ("Activation diagnostics that need no training run of their own: the variance of a transformer's "
               "residual stream and FFN pre-activations at initialization (init), and exact linear-region counts "
               "of ReLU networks before and after training (regions).")


def default_out(command: str) -> Path:
    """``outputs/analyze/<command>/<date>/<time>/`` under the current directory, like a training run's
    ``outputs/<experiment>/<date>/<time>/`` (nothing is written outside ``outputs/``)."""
    return Path("outputs") / "analyze" / command / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")


def _probe(cfg, batch: int):
    """Fixed probe token ids ``(B, T)`` from the configured corpus's validation split, and the vocabulary size."""
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


def _g(values) -> str:
    return " ".join(f"{v:.3g}" for v in values)


def cmd_init(args) -> int:
    """``glubench-analyze init``: print He et al.'s variance check, then per ``--ffn`` × ``--init`` the
    per-layer variances and RMS of a :class:`Transformer` at initialization on real probe tokens
    (``--json``: also write them); returns the exit status.  Raises SystemExit on a bad flag or config."""
    import torch

    from glubench.analysis.init_variance import he_relu_stack, transformer_profile
    from glubench.core.errors import ConfigError
    from glubench.nn.config import FFN_VARIANTS, INIT_SCHEMES
    from glubench.nn.transformer import Transformer
    from glubench.train.config_rules import model_config

    ffns = _split(args.ffn, list(FFN_VARIANTS), "--ffn")
    inits = _split(args.init, INIT_SCHEMES, "--init")
    cfg = compose(args.overrides)
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
    rows, rms_lines = [], []
    for ffn in ffns:
        for init in inits:
            cfg.model.ffn, cfg.model.init = ffn, init
            torch.manual_seed(args.seed)
            prof = transformer_profile(Transformer(model_config(cfg, vocab_size=vocab)), probe)
            rows.append({"ffn": ffn, "init": init, "layers": prof})
            z = _g(p["ffn_z_var"] for p in prof if "ffn_z_var" in p)
            print(f"  {ffn:9s} {init:13s} resid: {_g(p['resid_var'] for p in prof):40s} z: {z}")
            out = [p["ffn_out_rms"] for p in prof if "ffn_out_rms" in p]
            rms_lines.append(f"  {ffn:9s} {init:13s} {sum(out) / len(out):14.4g}  {_g(out):30s} "
                             f"{_g(p['resid_rms'] for p in prof)}")
    print("\nRMS at initialization: ffn_out = sqrt(mean(FFN(x)²)), what each FFN adds to the residual stream; "
          "resid = RMS of the residual stream entering each block (last: after the final block).  "
          f"scaled_normal/normal use model.init_std={cfg.model.init_std}.")
    print(f"  {'ffn':9s} {'init':13s} {'ffn_out (mean)':>14s}  {'ffn_out per layer':30s} resid per layer")
    print("\n".join(rms_lines))
    if args.json:
        from glubench.core.io import atomic_write_json

        atomic_write_json(Path(args.json), {"he_check": he, "profiles": rows})
        log.info("wrote %s", args.json)
    return 0


def tiny_2d_mlp(seed: int, steps: int):
    """A 2-16-16-1 ReLU MLP (He init) before and after ``steps`` Adam steps fitting ``sin(πu)·cos(πv)`` on
    [-1, 1]²: the hidden layers' ``[(W, b), ...]`` (float64 arrays) before and after, and the last MSE."""
    import torch

    torch.manual_seed(seed)
    hidden = []
    for a, b in zip((2, *SMALL_MLP_WIDTHS), SMALL_MLP_WIDTHS):
        hidden.append(torch.nn.Linear(a, b))
        torch.nn.init.normal_(hidden[-1].weight, std=math.sqrt(2 / a))
        torch.nn.init.normal_(hidden[-1].bias, std=0.1)
    net = torch.nn.Sequential(*(m for lin in hidden for m in (lin, torch.nn.ReLU())),
                              torch.nn.Linear(SMALL_MLP_WIDTHS[-1], 1))

    def weights():
        return [(lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()) for lin in hidden]

    before = weights()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(256, 2, generator=g) * 2 - 1
        loss = torch.nn.functional.mse_loss(net(x), torch.sin(math.pi * x[:, :1]) * torch.cos(math.pi * x[:, 1:]))
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

    from glubench.core.io import atomic_write

    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 5.2))
    for ax, part, title in zip(np.atleast_1d(axes), parts, titles):
        colours = np.random.default_rng(0).uniform(0.25, 1.0, (len(part.polygons), 3))
        ax.add_collection(PolyCollection(part.polygons, facecolors=colours, edgecolors="k", linewidths=0.3))
        ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", xlabel="input 1", ylabel="input 2")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def load_run(run_dir: Path):
    """``(model_cfg, trained Transformer, seed, run config)`` from a run dir's ``results.json`` and
    ``checkpoints/last.ckpt``."""
    import torch
    from omegaconf import OmegaConf

    from glubench.nn.transformer import Transformer
    from glubench.train.config_rules import model_config
    from glubench.train.results import RESULTS_FILE, RunResult
    from glubench.train.resume import last_checkpoint

    res, ckpt_path = run_dir / RESULTS_FILE, last_checkpoint(run_dir)
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


def small_mlp_regions(seed: int, steps: int, png: Path) -> dict:
    """Exact linear regions of :func:`tiny_2d_mlp` in [-1, 1]², before and after training, with the bounds for
    its widths (Serra et al. 2018 upper, Montúfar et al. 2014 lower on the maximum); draws both partitions
    into ``png``.  Returns regions.json's ``small_mlp`` entry: per state the cumulative cell counts by layer
    in the square (``plane_cumulative``) and on its diagonal (``diagonal_cumulative``)."""
    from glubench.analysis import regions as R

    before, after, loss = tiny_2d_mlp(seed, steps)
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    widths, arch = list(SMALL_MLP_WIDTHS), "2-" + "-".join(map(str, SMALL_MLP_WIDTHS))
    mlp = {"widths": widths, "input_dim": 2, "domain": "[-1,1]^2", "rows": [],
           "bound_one_layer_2d": R.max_regions_one_layer(widths[0], 2),
           "serra_upper_bound_2d": R.serra_upper_bound(2, widths),
           "montufar_max_lower_bound_2d": R.montufar_lower_bound(2, widths),
           "bound_line": math.prod(n + 1 for n in widths)}
    parts, titles = [], []
    for label, wb in (("init", before), (f"trained {steps} steps (mse {loss:.3g})", after)):
        layers = R.mlp_layers([w for w, _ in wb], [b for _, b in wb])
        parts.append(R.count_in_plane(layers, np.zeros(2), np.eye(2)[0], np.eye(2)[1], square))
        titles.append(f"{arch} ReLU MLP, {label}\n{parts[-1].counts[-1]} regions in [-1,1]² "
                      f"(layer 1: {parts[-1].counts[0]}); upper bound {mlp['serra_upper_bound_2d']}")
        mlp["rows"].append({"state": label.split()[0], "plane_cumulative": parts[-1].counts,
                            "diagonal_cumulative": R.count_on_segment(layers, square[0], square[2])})
    plot_partitions(parts, titles, png)
    return mlp


def print_small_mlp(mlp: dict, png: Path) -> None:
    """Print :func:`small_mlp_regions`' counts and bounds as a table."""
    widths = mlp["widths"]
    print(f"Small MLP 2-{'-'.join(map(str, widths))} (exact cells in [-1,1]², PNG: {png})")
    print(f"  bounds for input dim 2: one layer of {widths[0]}: {mlp['bound_one_layer_2d']}; whole net: "
          f"Serra et al. 2018 upper {mlp['serra_upper_bound_2d']}, Montúfar et al. 2014 lower bound on the maximum "
          f"{mlp['montufar_max_lower_bound_2d']}; on a line: at most {mlp['bound_line']}")
    for r in mlp["rows"]:
        print(f"  {r['state']:8s} plane: after layer 1 {r['plane_cumulative'][0]:4d}, after layer 2 "
              f"{r['plane_cumulative'][1]:5d};  diagonal segment: {r['diagonal_cumulative']}")


def train_relu_run(run_dir: Path, steps: int, overrides: list[str]) -> None:
    """Train a tiny ReLU transformer (``experiment=ci`` plus ``overrides``) for ``steps`` steps into ``run_dir``.
    Raises SystemExit when the run does not complete."""
    from glubench.train.task import run

    cfg = compose(["experiment=ci", "model.ffn=relu", "logger=none", f"trainer.max_steps={steps}",
                   f"trainer.val_check_interval={steps}", *overrides])
    run_dir.mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run_dir)  # outside a Hydra job, train writes into the current directory
    try:
        res = run(cfg)
    finally:
        os.chdir(cwd)
    if res.status != "completed":
        raise SystemExit(f"glubench-analyze: error: the training run {res.status}: {res.error}")


def transformer_regions(run_dir: Path, paths: int, batch: int, seed: int) -> dict:
    """Mean linear-region counts of a run's FFNs on ``paths`` random segments / triangles through its own probe
    tokens, at its initialization (same seed) and trained (:func:`~glubench.analysis.ffn_regions.region_counts`).
    Returns regions.json's ``transformer`` entry.  Raises SystemExit when the run's FFN has no linear regions."""
    import torch

    from glubench.analysis.ffn_regions import PATTERN_VARIANTS, region_counts
    from glubench.nn.transformer import Transformer

    mc, trained, run_seed, run_cfg = load_run(run_dir)
    if mc.ffn not in PATTERN_VARIANTS:
        raise SystemExit(f"glubench-analyze: error: model.ffn={mc.ffn!r}: linear regions need one of "
                         f"{', '.join(PATTERN_VARIANTS)}")
    torch.manual_seed(run_seed)
    initial = Transformer(mc)  # training seeds torch once before building the model: same init
    probe, _ = _probe(run_cfg, batch)  # the run's own corpus and tokenizer
    return {"run_dir": str(run_dir), "ffn": mc.ffn, "d_model": mc.d_model, "n_layers": mc.n_layers,
            "ffn_hidden": mc.ffn_hidden, "before": region_counts(initial, probe, paths, seed),
            "after": region_counts(trained, probe, paths, seed)}


def print_transformer(t: dict, paths: int) -> None:
    """Print :func:`transformer_regions`' counts per layer, and of the FFN stack, as a table."""
    from glubench.analysis.regions import max_regions_one_layer

    print(f"\nTransformer ffn={t['ffn']} d_model={t['d_model']} n_layers={t['n_layers']} ffn_hidden={t['ffn_hidden']} "
          f"({t['run_dir']}); mean over {paths} random token pairs (segments) / triples (triangles)")
    print(f"  {'layer':>5s} {'segment before':>15s} {'segment after':>14s} {'plane before':>13s} {'plane after':>12s}"
          f"  (max on a segment {t['ffn_hidden'] + 1}, in a plane {max_regions_one_layer(t['ffn_hidden'], 2)})")
    for b, a in zip(t["before"]["per_layer"], t["after"]["per_layer"]):
        print(f"  {b['layer']:5d} {b['segment_mean']:15.1f} {a['segment_mean']:14.1f} {b['plane_mean']:13.1f}"
              f" {a['plane_mean']:12.1f}")
    if t["after"]["stack"]:
        sb, sa = t["before"]["stack"], t["after"]["stack"]
        print(f"  FFN stack (surrogate: each norm's scale frozen, attention left out), pieces on a segment: "
              f"before {sb['segment_mean']:.1f} "
              f"(cumulative by layer {[round(c, 1) for c in sb['per_layer_cumulative']]}), "
              f"after {sa['segment_mean']:.1f} ({[round(c, 1) for c in sa['per_layer_cumulative']]})")


def cmd_regions(args) -> int:
    """``glubench-analyze regions``: exact linear-region counts of a tiny 2-input ReLU MLP (with a PNG of its
    partition) and of a trained transformer's FFNs (``--run-dir``, else a briefly trained one), before and
    after training; writes ``regions.json`` into ``--out`` and returns the exit status.  Raises SystemExit
    when the run failed or its FFN has no linear regions."""
    from glubench.core.io import atomic_write_json

    out = Path(args.out or default_out("regions")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mlp = small_mlp_regions(args.seed, args.mlp_steps, out / "partition.png")
    print_small_mlp(mlp, out / "partition.png")
    run_dir = Path(args.run_dir) if args.run_dir else out / "run"
    if not args.run_dir:
        train_relu_run(run_dir, args.steps, args.overrides)
    transformer = transformer_regions(run_dir, args.paths, args.batch, args.seed)
    print_transformer(transformer, args.paths)
    atomic_write_json(out / "regions.json", {"small_mlp": mlp, "transformer": transformer})
    log.info("wrote %s", out / "regions.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``glubench-analyze`` argument parser (subcommands ``init`` and ``regions``)."""
    from glubench.nn.config import FFN_VARIANTS

    p = argparse.ArgumentParser(prog="glubench-analyze", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("init", help="variance of the residual stream and FFN pre-activations at initialization")
    pi.add_argument("--ffn", default=",".join(FFN_VARIANTS),
                    help="comma-separated FFN variants (model.ffn) to profile (default: all)")
    pi.add_argument("--init", default="scaled_normal,fan_in,normal,kaiming",
                    help="comma-separated initialization schemes (model.init) to profile, each with every --ffn")
    pi.add_argument("--batch", type=int, default=8, help="probe windows of model.seq_len")
    pi.add_argument("--he-width", type=int, default=2048,
                    help="width (and sample count) of the plain ReLU stack of the He et al. check")
    pi.add_argument("--seed", type=int, default=0, help="seed of the weights and of the He-check inputs")
    pi.add_argument("--json", help="also write the numbers to this JSON file")
    pi.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=small")
    pr = sub.add_parser("regions", help="exact linear-region counts and a PNG of a 2-D partition")
    pr.add_argument("--run-dir", help="a finished relu/reglu/relu2 run (results.json + checkpoints/last.ckpt); "
                                      "default: train a tiny ReLU model briefly")
    pr.add_argument("--out", help="output folder (default outputs/analyze/regions/<date>/<time>)")
    pr.add_argument("--steps", type=int, default=200, help="training steps when no --run-dir is given")
    pr.add_argument("--mlp-steps", type=int, default=500,
                    help="Adam steps of the small 2-16-16-1 ReLU MLP between its 'before' and 'after' partitions")
    pr.add_argument("--paths", type=int, default=16, help="random segments / triangles per layer")
    pr.add_argument("--batch", type=int, default=4, help="probe windows")
    pr.add_argument("--seed", type=int, default=0, help="seed of the small MLP and of the random segments")
    pr.add_argument("overrides", nargs="*", help="Hydra overrides for the training run (no --run-dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glubench-analyze`` console script."""
    from glubench.core.logging import configure

    configure()
    p = build_parser()
    args = p.parse_args(argv)
    for key in ("batch", "paths", "steps", "mlp_steps", "he_width"):
        if getattr(args, key, 1) <= 0:
            p.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be a positive integer")
    return cmd_init(args) if args.cmd == "init" else cmd_regions(args)


if __name__ == "__main__":
    sys.exit(main())
