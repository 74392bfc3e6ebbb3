import numpy as np
import pytest

from cortex_utils import bias


def naive_delta(a, b):
    """The original's definition, pair by pair."""
    greater = sum(1 for x in a for y in b if x > y)
    less = sum(1 for x in a for y in b if x < y)
    return (greater - less) / (len(a) * len(b))


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, rng.integers(1, 60))  # small integers: many ties, like token counts
    b = rng.integers(0, 8, rng.integers(1, 60))
    assert bias.cliffs_delta(a, b) == pytest.approx(naive_delta(a, b), abs=1e-12)
    x, y = rng.normal(size=37), rng.normal(0.5, size=23)
    assert bias.cliffs_delta(x, y) == pytest.approx(naive_delta(x, y), abs=1e-12)


def test_cliffs_delta_extremes_and_antisymmetry():
    assert bias.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert bias.cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert bias.cliffs_delta([3, 3], [3, 3, 3]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    assert bias.cliffs_delta(a, b) == pytest.approx(-bias.cliffs_delta(b, a))


def test_cliffs_delta_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bias.cliffs_delta([], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        bias.cliffs_delta([1.0, np.nan], [1, 2])


def test_bootstrap_interval_contains_delta_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bias.bootstrap_delta(rng.poisson(3, 40), rng.poisson(2, 40), n_boot=300)
    large = bias.bootstrap_delta(rng.poisson(3, 1000), rng.poisson(2, 1000), n_boot=300)
    for d, lo, hi in (small, large):
        assert lo <= d <= hi
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert large[1] > 0  # a real shift is detected
