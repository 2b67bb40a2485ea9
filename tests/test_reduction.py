"""The canonical reduction order over clients: one fixed tree, the same bits for any sharding."""

from __future__ import annotations

import numpy as np
import pytest

from fedcc.ir.errors import BackendError
from fedcc.runtimes.reduction import (
    Subtree,
    combine_partials,
    pairwise_reduce,
    reduce_shard,
    root_level,
    shard_subtrees,
    tree_reduce,
)
from fedcc.runtimes.shard import split_contiguous

SHARD_COUNTS = (1, 2, 3, 7)


def canonical_tree(values, merge):
    """The tree as the module defines it, written recursively from the definition."""
    n = len(values)

    def node(level, index):
        start = index << level
        if level == 0:
            return values[start]
        left = node(level - 1, 2 * index)
        if (2 * index + 1) << (level - 1) >= n:
            return left
        return merge(left, node(level - 1, 2 * index + 1))

    return node(root_level(n), 0)


def shape(a, b):
    # A merge that records the exact tree shape it was applied in.
    return f"({a} {b})"


def sharded(values, merge, shards):
    n = len(values)
    partials = []
    for start, stop in split_contiguous(n, shards):
        partials.extend(reduce_shard(n, start, stop, values[start:stop], merge))
    return combine_partials(n, partials, merge)


def test_root_level_is_the_height_of_the_smallest_covering_tree():
    assert [root_level(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000)] == [0, 1, 2, 2, 3, 3, 4, 10]


def test_the_tree_pairs_neighbours_and_passes_an_odd_last_value_up():
    assert tree_reduce("abcde", shape) == "(((a b) (c d)) e)"
    assert tree_reduce("abcdefg", shape) == "(((a b) (c d)) ((e f) g))"
    assert tree_reduce("a", shape) == "a"


@pytest.mark.parametrize("n", range(1, 40))
def test_tree_reduce_matches_the_definition(n):
    values = [str(i) for i in range(n)]
    assert tree_reduce(values, shape) == canonical_tree(values, shape)


def test_shard_subtrees_are_maximal_aligned_and_tile_the_shard():
    for n in range(1, 50):
        for start in range(n):
            for stop in range(start + 1, n + 1):
                subtrees = shard_subtrees(n, start, stop)
                position = start
                for subtree in subtrees:
                    assert subtree.start == position
                    assert subtree.start % (1 << subtree.level) == 0
                    position = subtree.stop(n)
                    parent = Subtree(subtree.level + 1, subtree.index // 2)
                    # Maximal: the parent covers a client outside the shard, or is above the root.
                    assert (
                        subtree.level == root_level(n)
                        or parent.start < start
                        or parent.stop(n) > stop
                    )
                assert position == stop


def test_a_shard_of_one_aligned_block_is_one_subtree():
    assert shard_subtrees(16, 8, 16) == (Subtree(3, 1),)
    assert shard_subtrees(10, 8, 10) == (Subtree(3, 1),)  # [8, 16) clipped to 10 clients
    assert shard_subtrees(16, 3, 9) == (Subtree(0, 3), Subtree(2, 1), Subtree(0, 8))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 31, 64, 100])
def test_every_sharding_gives_the_same_tree_shape(n):
    values = [str(i) for i in range(n)]
    expected = canonical_tree(values, shape)
    for shards in SHARD_COUNTS:
        assert sharded(values, shape, shards) == expected


def test_irregular_shardings_give_the_same_tree_shape():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        draws = rng.integers(1, n, size=int(rng.integers(0, 6))) if n > 1 else []
        cuts = sorted(set(int(c) for c in draws))
        bounds = list(zip([0, *cuts], [*cuts, n]))
        values = [str(i) for i in range(n)]
        partials = []
        for start, stop in bounds:
            partials.extend(reduce_shard(n, start, stop, values[start:stop], shape))
        rng.shuffle(partials)  # the order shards answer in does not matter
        assert combine_partials(n, partials, shape) == canonical_tree(values, shape)


def test_float32_sums_of_very_different_magnitudes_are_bit_identical_for_any_sharding():
    rng = np.random.default_rng(1)
    n = 257
    values = [
        (rng.standard_normal(16) * 10.0 ** rng.integers(-8, 9, size=16)).astype(np.float32)
        for _ in range(n)
    ]
    sequential = values[0]
    for v in values[1:]:
        sequential = sequential + v
    results = [sharded(values, np.add, shards) for shards in SHARD_COUNTS]
    for result in results[1:]:
        assert result.dtype == np.float32
        assert result.tobytes() == results[0].tobytes()
    # The data is order-sensitive: a different order would give other bits.
    assert sequential.tobytes() != results[0].tobytes()
    assert np.allclose(results[0], np.sum(np.stack(values).astype(np.float64), axis=0), rtol=1e-3)


def test_a_non_associative_merge_is_bit_identical_for_any_sharding():
    rng = np.random.default_rng(2)
    values = [rng.standard_normal(4).astype(np.float32) for _ in range(100)]

    def accumulate_then_merge(a, b):
        return a * np.float32(0.5) + b

    expected = canonical_tree(values, accumulate_then_merge)
    for shards in SHARD_COUNTS:
        assert sharded(values, accumulate_then_merge, shards).tobytes() == expected.tobytes()


def test_reduce_shard_streams_its_leaves_lazily():
    consumed = []

    def leaves():
        for i in range(8):
            consumed.append(i)
            yield str(i)

    partials = reduce_shard(8, 0, 8, leaves(), shape)
    assert consumed == list(range(8))
    assert partials == [(Subtree(3, 0), "(((0 1) (2 3)) ((4 5) (6 7)))")]


def test_pairwise_reduce_needs_a_leaf():
    with pytest.raises(ValueError, match="at least one leaf"):
        pairwise_reduce([], shape)


def test_reduce_shard_checks_the_leaf_count_and_the_shard():
    with pytest.raises(ValueError, match="too few leaves"):
        reduce_shard(8, 0, 4, ["a", "b"], shape)
    with pytest.raises(ValueError, match="more leaves"):
        reduce_shard(8, 0, 2, ["a", "b", "c"], shape)
    with pytest.raises(ValueError, match="non-empty range"):
        reduce_shard(8, 4, 4, [], shape)
    with pytest.raises(ValueError, match="non-empty range"):
        shard_subtrees(8, 0, 9)


def test_combine_partials_refuses_partials_that_do_not_tile_the_clients():
    with pytest.raises(BackendError, match="are missing"):
        combine_partials(4, [(Subtree(1, 0), "a")], shape)
    with pytest.raises(BackendError, match="are missing"):
        combine_partials(4, [(Subtree(0, 0), "a"), (Subtree(1, 1), "b")], shape)
    with pytest.raises(BackendError, match="repeat"):
        overlapping = [(Subtree(1, 0), "a"), (Subtree(0, 1), "b"), (Subtree(1, 1), "c")]
        combine_partials(4, overlapping, shape)
    with pytest.raises(BackendError, match="not a subtree"):
        combine_partials(4, [(Subtree(3, 0), "a")], shape)
    with pytest.raises(ValueError, match="zero clients"):
        combine_partials(0, [], shape)


def test_a_partial_on_the_ragged_edge_may_name_any_node_with_the_same_clients():
    # With 5 clients, client 4 alone is node (0,4), (1,2) and (2,1): all combine alike.
    left = (Subtree(2, 0), "(((0 1) (2 3))")
    for last in (Subtree(0, 4), Subtree(1, 2), Subtree(2, 1)):
        assert combine_partials(5, [left, (last, "4")], shape) == "((((0 1) (2 3)) 4)"


def test_split_contiguous_makes_near_equal_non_empty_shards():
    assert split_contiguous(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_contiguous(2, 7) == [(0, 1), (1, 2)]
    assert split_contiguous(0, 4) == []
    with pytest.raises(ValueError):
        split_contiguous(5, 0)
