import math

import numpy as np
import pytest

from glubench.analysis.regions import (
    ReluLayer,
    count_in_plane,
    count_line_arrangement,
    count_on_segment,
    max_regions_one_layer,
    mlp_layers,
    montufar_lower_bound,
    serra_upper_bound,
)


def test_segment_one_layer_hand_placed_breakpoints():
    # units z_j = x[0] - b_j on the segment (0,0) -> (1,0): breakpoints at t = b_j
    b = np.array([0.1, 0.3, 0.3, 0.7, 1.5, -0.2])
    W = np.array([[1.0, 0.0]] * 6 + [[0.0, 1.0], [-2.0, 0.0]])  # + a unit constant along the path, + t = 0.5
    layers = mlp_layers([W], [np.concatenate([-b, [1.0, 1.0]])])
    # distinct breakpoints inside (0, 1): 0.1, 0.3 (two units at once), 0.5, 0.7 -> 5 pieces
    assert count_on_segment(layers, np.zeros(2), np.array([1.0, 0.0])) == [5]


def _patterns_by_sampling(layers, points):
    """Activation patterns of every point (independent of the exact counter): (N, sum of widths) bools."""
    s, cols = points, []
    for layer in layers:
        z = s @ layer.A.T + layer.c
        cols.append(z > 0)
        h = np.maximum(z, 0)
        s = (s if layer.residual else 0) + (h if layer.U is None else h @ layer.U.T)
    return np.concatenate(cols, axis=1)


def test_segment_deep_net_matches_dense_sampling():
    rng = np.random.default_rng(0)
    layers = mlp_layers([rng.normal(size=(6, 3)), rng.normal(size=(5, 6)), rng.normal(size=(4, 5))],
                        [rng.normal(size=6), rng.normal(size=5), rng.normal(size=4)])
    x0, x1 = rng.normal(size=3) * 3, rng.normal(size=3) * 3
    counts = count_on_segment(layers, x0, x1)
    t = np.linspace(0, 1, 200_001)[:, None]
    pats = _patterns_by_sampling(layers, x0 + t * (x1 - x0))
    changes = np.any(pats[1:] != pats[:-1], axis=1).sum()
    assert counts[-1] == changes + 1
    assert counts == sorted(counts) and counts[-1] <= serra_upper_bound(1, [6, 5, 4])


def _tangent_lines(k):
    """k tangents to the unit circle at angles j·pi/k: no two parallel, no three concurrent."""
    th = np.pi * np.arange(k) / k
    return np.stack([np.cos(th), np.sin(th)], axis=1), -np.ones(k)  # cos·u + sin·v - 1 = 0


BIG = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_plane_k_lines_in_general_position_reach_the_maximum(k):
    G, g = _tangent_lines(k)  # every crossing is within 1/sin(pi/2k) <= 5.1 of the origin, inside BIG
    expected = 1 + k + k * (k - 1) // 2
    assert max_regions_one_layer(k, 2) == expected
    part = count_in_plane(mlp_layers([G], [g]), np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]), BIG)
    assert part.counts == [expected]
    assert len(set(part.patterns)) == expected
    assert sum(map(_area, part.polygons)) == pytest.approx(400.0)
    assert count_line_arrangement(G, g, BIG) == expected


def _area(p):
    from glubench.analysis.regions import polygon_area

    return polygon_area(p)


def test_plane_random_lines_at_most_the_maximum_and_concurrency():
    rng = np.random.default_rng(1)
    for k in (3, 7, 12):
        G, g = rng.normal(size=(k, 2)), rng.normal(size=k) * 0.5
        n = count_in_plane(mlp_layers([G], [g]), np.zeros(2), np.eye(2)[0], np.eye(2)[1]).counts[0]
        assert n <= 1 + k + k * (k - 1) // 2
        assert n == count_line_arrangement(G, g)
    # three concurrent lines through (0.5, 0.5): 6 regions, not 7
    G = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = -G @ np.array([0.5, 0.5])
    assert count_in_plane(mlp_layers([G], [g]), np.zeros(2), np.eye(2)[0], np.eye(2)[1]).counts == [6]
    assert count_line_arrangement(G, g) == 6


def test_plane_deep_net_patterns_match_sampling():
    rng = np.random.default_rng(2)
    layers = mlp_layers([rng.normal(size=(5, 2)), rng.normal(size=(4, 5))], [rng.normal(size=5), rng.normal(size=4)])
    domain = np.array([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]])
    part = count_in_plane(layers, np.zeros(2), np.eye(2)[0], np.eye(2)[1], domain)
    uv = np.stack(np.meshgrid(np.linspace(-2, 2, 801), np.linspace(-2, 2, 801)), -1).reshape(-1, 2)
    sampled = {tuple(int(b) for b in row) for row in _patterns_by_sampling(layers, uv)}
    assert sampled <= set(part.patterns)
    assert part.counts[-1] == len(set(part.patterns)) <= serra_upper_bound(2, [5, 4])
    assert part.counts[-1] - len(sampled) <= 1  # only a sliver could hide between grid points


def test_residual_layer_is_counted():
    # s -> s + relu(s - 0.5) (1-D): the breakpoint is at 0.5; a second block's at s + relu(s - 0.5) = 1 -> s = 0.75
    block = ReluLayer(np.array([[1.0]]), np.array([-0.5]), U=np.array([[1.0]]), residual=True)
    block2 = ReluLayer(np.array([[1.0]]), np.array([-1.0]), U=np.array([[1.0]]), residual=True)
    assert count_on_segment([block, block2], np.array([0.0]), np.array([1.0])) == [2, 3]


def test_bounds():
    assert serra_upper_bound(2, [7]) == 1 + 7 + 21
    assert serra_upper_bound(1, [2, 2]) == 9 and serra_upper_bound(1, [3, 4, 5]) == 4 * 5 * 6
    assert serra_upper_bound(2, [4, 4]) <= max_regions_one_layer(4, 2) ** 2
    assert montufar_lower_bound(2, [4, 4]) == 2 ** 2 * 11
    assert montufar_lower_bound(1, [3]) == 4 == math.comb(3, 0) + math.comb(3, 1)
