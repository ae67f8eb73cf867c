"""Exact linear-region counting for ReLU networks along a line segment and inside a 2-D plane.

A ReLU network is piecewise linear: on each set of inputs that share an *activation pattern*
(which units are on) it is one affine map, and each such set is a convex polyhedron, so a line
crosses it at most once.  Counting the distinct patterns met along a segment, or inside a
polygon of a plane, counts the linear pieces there (Montúfar, Pascanu, Cho & Bengio 2014,
"On the Number of Linear Regions of Deep Neural Networks", NeurIPS; Serra, Tjandraatmadja &
Ramalingam 2018, arXiv 1711.02114).

Method (exact, no sampling): restricted to a segment ``x(t) = x0 + t·(x1 - x0)`` or a plane
``x(u, v) = x0 + u·d1 + v·d2``, every pre-activation of layer 1 is an affine function of the
path coordinates, so its breakpoint (or boundary line) is found in closed form.  Cells (intervals,
or convex polygons) are refined layer by layer: each cell is split at the breakpoints/lines of
the units that change sign inside it, each sub-cell gets its pattern from its interior point, and
inside a sub-cell the next layer is again affine in the coordinates, so its breakpoints are
again exact.  This is the "walk from breakpoint to breakpoint", done for all pieces of a layer
at once; polygons are cut with exact half-plane clipping.  Floating point is the only
approximation: breakpoints closer than ``tol`` (relative to the domain) are merged and pieces
thinner than that are dropped.

A network is a list of :class:`ReluLayer` (plain MLP layers or residual FFN blocks), so the
same code counts a small MLP and a stack of transformer FFNs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np


@dataclass
class ReluLayer:
    """``s -> (s if residual else 0) + relu(A s + c) @ U.T + e`` (``U`` None: identity, ``e`` None: 0).

    Shapes: ``A (n, d_in)``, ``c (n,)``, ``U (d_out, n)``, ``e (d_out,)``; ``residual`` needs
    ``d_out == d_in``.  A plain MLP layer is ``ReluLayer(W, b)``; a bias-free transformer FFN
    block with residual is ``ReluLayer(W1 @ L, 0, U=W2, residual=True)`` for a linear map ``L``.
    """

    A: np.ndarray
    c: np.ndarray
    U: np.ndarray | None = None
    e: np.ndarray | None = None
    residual: bool = False

    @property
    def width(self) -> int:
        return self.A.shape[0]

    def forward_affine(self, M: np.ndarray, m: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The layer's output as an affine map of the coordinates, given the pattern ``on`` ``(n,)``.

        ``M (d_in, k)``, ``m (d_in,)``: the input ``s = M p + m`` of coordinates ``p (k,)``.
        """
        zM, zm = self.A @ M, self.A @ m + self.c
        hM, hm = zM * on[:, None], zm * on
        if self.U is not None:
            hM, hm = self.U @ hM, self.U @ hm
        if self.e is not None:
            hm = hm + self.e
        if self.residual:
            hM, hm = hM + M, hm + m
        return hM, hm


def mlp_layers(weights: list[np.ndarray], biases: list[np.ndarray]) -> list[ReluLayer]:
    """Plain ReLU MLP hidden layers ``s -> relu(W s + b)`` (the linear read-out adds no regions)."""
    return [ReluLayer(np.asarray(W, float), np.asarray(b, float)) for W, b in zip(weights, biases)]


# ---------------------------------------------------------------------------- 1-D: a segment


def count_on_segment(layers: list[ReluLayer], x0: np.ndarray, x1: np.ndarray, tol: float = 1e-9) -> list[int]:
    """Linear pieces of the network on the segment ``x0 -> x1`` (both ``(d_in,)``), cumulatively per layer.

    Returns ``counts[l]`` = the number of distinct activation patterns of layers ``1..l+1``
    crossed by the segment; ``counts[-1]`` is the number of linear pieces of the whole network
    there.  Exact up to merging breakpoints closer than ``tol`` (in units of the segment length).
    """
    x0, x1 = np.asarray(x0, float), np.asarray(x1, float)
    cells = [(0.0, 1.0, (x1 - x0)[:, None], x0)]  # (t0, t1, M (d, 1), m (d,)): s = M t + m
    counts = []
    for layer in layers:
        new = []
        for t0, t1, M, m in cells:
            g1, g0 = (layer.A @ M)[:, 0], layer.A @ m + layer.c  # z(t) = g1 t + g0
            with np.errstate(divide="ignore", invalid="ignore"):
                roots = -g0 / g1
            roots = np.sort(roots[np.isfinite(roots) & (roots > t0 + tol) & (roots < t1 - tol)])
            if roots.size:
                roots = roots[np.concatenate([[True], np.diff(roots) > tol])]
            edges = np.concatenate([[t0], roots, [t1]])
            for a, b in zip(edges[:-1], edges[1:]):
                mid = 0.5 * (a + b)
                on = (g1 * mid + g0 > 0).astype(float)
                hM, hm = layer.forward_affine(M, m, on)
                new.append((a, b, hM, hm))
        cells = new
        counts.append(len(cells))
    return counts


# ---------------------------------------------------------------------------- 2-D: a plane


def _clip(poly: np.ndarray, a: float, b: float, c: float, keep_positive: bool) -> np.ndarray:
    """The part of the convex polygon ``poly (V, 2)`` where ``a u + b v + c`` is > 0 (or < 0)."""
    s = poly @ np.array([a, b]) + c
    if not keep_positive:
        s = -s
    out = []
    V = len(poly)
    for i in range(V):
        p, q, sp, sq = poly[i], poly[(i + 1) % V], s[i], s[(i + 1) % V]
        if sp >= 0:
            out.append(p)
        if (sp > 0 > sq) or (sp < 0 < sq):
            out.append(p + (sp / (sp - sq)) * (q - p))
    return np.array(out) if out else np.zeros((0, 2))


def polygon_area(poly: np.ndarray) -> float:
    """Area of a simple polygon ``(V, 2)`` (shoelace formula)."""
    if len(poly) < 3:
        return 0.0
    u, v = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(u, np.roll(v, -1)) - np.dot(v, np.roll(u, -1))))


@dataclass
class PlanePartition:
    """The result of :func:`count_in_plane`: ``counts[l]`` regions after layer ``l+1`` (cumulative),
    and the final cells as polygons in plane coordinates with their full activation patterns."""

    counts: list[int]
    polygons: list[np.ndarray]
    patterns: list[tuple[int, ...]]


def count_in_plane(layers: list[ReluLayer], origin: np.ndarray, d1: np.ndarray, d2: np.ndarray,
                   domain: np.ndarray | None = None, tol: float = 1e-9, max_cells: int = 200_000) -> PlanePartition:
    """Linear regions of the network inside a convex polygon of the plane ``origin + u·d1 + v·d2``.

    Args:
        layers: the network.
        origin, d1, d2: ``(d_in,)`` each; the plane's origin and directions.
        domain: convex polygon ``(V, 2)`` in ``(u, v)``, counter-clockwise; default the unit square.
        tol: pieces with area below ``tol · area(domain)`` are dropped (numerical slivers).
        max_cells: stop with ``RuntimeError`` beyond this many cells (the count can grow
            exponentially with depth).

    Returns:
        :class:`PlanePartition`; cells are exact: every unit's boundary inside a cell is a line
        (the network is affine there), found in closed form.

    Raises:
        RuntimeError: more than ``max_cells`` cells.
    """
    if domain is None:
        domain = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    min_area = tol * polygon_area(domain)
    M0 = np.stack([np.asarray(d1, float), np.asarray(d2, float)], axis=1)
    cells = [(np.asarray(domain, float), M0, np.asarray(origin, float), ())]
    counts = []
    for layer in layers:
        new = []
        for poly, M, m, pattern in cells:
            G, g = layer.A @ M, layer.A @ m + layer.c  # z(u, v) = G @ (u, v) + g
            vals = poly @ G.T + g  # (V, n)
            cutting = np.nonzero((vals.max(axis=0) > 0) & (vals.min(axis=0) < 0))[0]
            pieces = [poly]
            for j in cutting:
                a, b, c = G[j, 0], G[j, 1], g[j]
                nxt = []
                for piece in pieces:
                    s = piece @ np.array([a, b]) + c
                    if s.min() >= 0 or s.max() <= 0:
                        nxt.append(piece)
                        continue
                    for keep in (True, False):
                        part = _clip(piece, a, b, c, keep)
                        if polygon_area(part) > min_area:
                            nxt.append(part)
                pieces = nxt
            for piece in pieces:
                centre = piece.mean(axis=0)
                on = (G @ centre + g > 0).astype(float)
                hM, hm = layer.forward_affine(M, m, on)
                new.append((piece, hM, hm, pattern + tuple(int(o) for o in on)))
            if len(new) > max_cells:
                raise RuntimeError(f"more than max_cells={max_cells} linear regions; shrink the domain")
        cells = new
        counts.append(len(cells))
    return PlanePartition(counts, [c[0] for c in cells], [c[3] for c in cells])


def count_line_arrangement(G: np.ndarray, g: np.ndarray, domain: np.ndarray | None = None) -> int:
    """Regions cut out of a convex polygon by the lines ``G[j] · (u, v) + g[j] = 0``, in O(k²).

    Each added line adds one region per segment it is cut into inside the domain by the lines
    before it, so regions = 1 + Σ_j (1 + distinct crossings of line j with earlier lines inside the
    domain), over the lines that cross the domain.  Exact for one layer (straight lines); used for
    wide layers where :func:`count_in_plane`'s polygon clipping would be slow.
    """
    if domain is None:
        domain = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    vals = domain @ G.T + g
    crosses = np.nonzero((vals.max(axis=0) > 0) & (vals.min(axis=0) < 0))[0]
    G, g = G[crosses], g[crosses]
    edges = [(domain[i], domain[(i + 1) % len(domain)]) for i in range(len(domain))]
    regions = 1
    scale = float(np.abs(domain).max()) or 1.0
    for j in range(len(G)):
        regions += 1
        if j == 0:
            continue
        det = G[:j, 0] * G[j, 1] - G[:j, 1] * G[j, 0]
        ok = np.abs(det) > 1e-12
        u = (G[:j, 1] * g[j] - G[j, 1] * g[:j])[ok] / det[ok]
        v = (G[j, 0] * g[:j] - G[:j, 0] * g[j])[ok] / det[ok]
        pts = np.stack([u, v], axis=1)
        inside = np.ones(len(pts), bool)
        for p, q in edges:  # strictly inside the counter-clockwise convex domain
            cross = (q[0] - p[0]) * (pts[:, 1] - p[1]) - (q[1] - p[1]) * (pts[:, 0] - p[0])
            inside &= cross > 1e-12 * scale
        pts = pts[inside]
        if len(pts):
            regions += len(np.unique(np.round(pts / (1e-9 * scale)), axis=0))
    return regions


# ---------------------------------------------------------------------------- theory


def max_regions_one_layer(k: int, n0: int) -> int:
    """Most regions ``k`` ReLUs (hyperplanes) can cut ``R^n0`` into: ``Σ_{j<=n0} C(k, j)``
    (Zaslavsky 1975; general position).  ``n0 = 2``: ``1 + k + k(k-1)/2``."""
    return sum(math.comb(k, j) for j in range(min(n0, k) + 1))


def serra_upper_bound(n0: int, widths: list[int]) -> int:
    """Upper bound on the regions of a ReLU MLP with input dim ``n0`` and hidden ``widths``
    (Serra, Tjandraatmadja & Ramalingam 2018, Theorem 1):
    ``Σ_{(j_1..j_L) ∈ J} Π_l C(n_l, j_l)``, ``J = {0 <= j_l <= min(n0, n_1 - j_1, ..., n_{l-1} - j_{l-1}, n_l)}``.
    Equal to :func:`max_regions_one_layer` for one layer."""
    total = 0
    for js in product(*(range(min(n0, n) + 1) for n in widths)):
        if all(js[l] <= min([n0, widths[l]] + [widths[i] - js[i] for i in range(l)]) for l in range(len(widths))):
            total += math.prod(math.comb(n, j) for n, j in zip(widths, js))
    return total


def montufar_lower_bound(n0: int, widths: list[int]) -> int:
    """A lower bound on the *maximal* number of regions (some weights reach it) for widths
    ``n_l >= n0``: ``(Π_{l<L} floor(n_l / n0)^n0) · Σ_{j<=n0} C(n_L, j)`` (Montúfar et al. 2014, Thm. 4)."""
    head = math.prod((n // n0) ** n0 for n in widths[:-1])
    return head * max_regions_one_layer(widths[-1], n0)
