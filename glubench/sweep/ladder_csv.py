"""A compute ladder from anywhere: ``glubench-report --table runs.csv`` reads one row per run, so published
numbers or another codebase's runs get the same statistics, summary.md, ladder.json and figures.

Columns (header row, any order): ``variant``, ``rung``, ``seed``, ``compute`` (training FLOPs), ``loss``
(final loss, nats/token) are required; optional ``series`` (runs of different series are fitted apart),
``compute_6nd`` (compute under the 6·N·D convention), ``lr`` (runs of one variant and rung that differ in
it are candidates: the lowest mean ``loss`` wins) and ``test_loss`` (then fitted instead of ``loss``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

from glubench.sweep.ladder import Point

REQUIRED = ("variant", "rung", "seed", "compute", "loss")
OPTIONAL = ("series", "compute_6nd", "lr", "test_loss")


def _number(path: Path, line: int, row: dict, key: str, required: bool) -> Optional[float]:
    text = (row.get(key) or "").strip()
    if not text and not required:
        return None
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{path.name} line {line}: {key} = {text!r} is not a finite number > 0")
    return x


def _point(path: Path, line: int, row: dict) -> Point:
    for key in ("variant", "rung", "seed"):
        if not (row.get(key) or "").strip():
            raise ValueError(f"{path.name} line {line}: {key} is empty")
    try:
        seed = int(row["seed"])
    except ValueError:
        raise ValueError(f"{path.name} line {line}: seed = {row['seed']!r} is not an integer") from None
    compute = {"flops": _number(path, line, row, "compute", True)}
    if (c6 := _number(path, line, row, "compute_6nd", False)) is not None:
        compute["6ND"] = c6
    lr_text = (row.get("lr") or "").strip()
    lr = _number(path, line, row, "lr", False) if lr_text else None
    return Point((row.get("series") or "").strip(), row["variant"].strip(), row["rung"].strip(), seed,
                 _number(path, line, row, "loss", True), _number(path, line, row, "test_loss", False), compute,
                 lr_text or None, lr)


def read_table(path: Path) -> list[Point]:
    """The runs of a CSV file as :class:`glubench.sweep.ladder.Point` records.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file, the line (or the missing column) and what is allowed: a
            required column missing, an empty cell, a value that is not a finite number > 0 (compute,
            loss, lr, test_loss) or a seed that is not an integer, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--table {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if missing := [c for c in REQUIRED if c not in columns]:
            raise ValueError(f"{path.name}: missing column {missing[0]!r} (need {', '.join(REQUIRED)}; "
                             f"optional {', '.join(OPTIONAL)})")
        reader.fieldnames = columns
        points = [_point(path, i + 2, row) for i, row in enumerate(reader)]
    if not points:
        raise ValueError(f"{path.name}: no rows under the header")
    cols_6nd = {("6ND" in p.compute) for p in points}
    if len(cols_6nd) > 1:
        raise ValueError(f"{path.name}: compute_6nd is filled on some rows and empty on others (fill all or none)")
    return points
