"""The SecAgg+ neighbour graph: symmetric, regular, public and seed-dependent."""

import pytest

from fedalign.crypto.hazmat.graph import neighbours


@pytest.mark.parametrize("n,k", [(10, 3), (10, 4), (11, 3), (11, 4), (30, 9), (5, 2)])
def test_regular_symmetric_irreflexive(n, k):
    ids = [f"s{i:02d}" for i in range(n)]
    g = neighbours(ids, k, b"seed")
    degree = k + 1 if (k % 2 and n % 2) else k
    for u, vs in g.items():
        assert u not in vs and len(vs) == degree
        assert all(u in g[v] for v in vs)


def test_complete_when_k_is_none_or_large():
    ids = ["a", "b", "c", "d"]
    for k in (None, 3, 10):
        assert neighbours(ids, k, b"x") == {u: frozenset(ids) - {u} for u in ids}


def test_same_seed_same_graph_other_seed_other_graph():
    ids = [f"s{i}" for i in range(20)]
    assert neighbours(ids, 4, b"a") == neighbours(list(reversed(ids)), 4, b"a")
    assert neighbours(ids, 4, b"a") != neighbours(ids, 4, b"b")
