"""The canonical order of every reduction over clients (DESIGN §8, Determinism).

All clients' values are combined along one fixed binary tree over client
indices [0, n): the node at `level` k and `index` j covers the clients
[j * 2**k, (j + 1) * 2**k), clipped to n. A node's value is
`merge(left child, right child)`, or its left child's value when the right
child covers no client (the ragged right edge of the tree). The root is the
node at the smallest level whose single node covers every client.

Because the tree depends only on n, never on how clients are spread over
workers, any contiguous shard [start, stop) can compute the complete subtrees
inside it (`shard_subtrees`, `reduce_shard`), and the server combines those
partials into exactly the root value the whole tree gives (`combine_partials`):
bit for bit, for any sharding, even when `merge` is not associative.

Reductions stream: a shard holds O(log n) partial values at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from fedcc.ir.errors import BackendError

Value = TypeVar("Value")
Merge = Callable[[Value, Value], Value]


@dataclass(frozen=True, order=True)
class Subtree:
    """The node of the canonical tree at `level` (leaves are level 0) and position `index`."""

    level: int
    index: int

    @property
    def start(self) -> int:
        """The first client this subtree covers."""
        return self.index << self.level

    def stop(self, num_clients: int) -> int:
        """One past the last client this subtree covers, for a tree over `num_clients` clients."""
        return min((self.index + 1) << self.level, num_clients)


def root_level(num_clients: int) -> int:
    """The level of the root of the tree over `num_clients` clients (0 for one client)."""
    return max(num_clients - 1, 0).bit_length()


def shard_subtrees(num_clients: int, start: int, stop: int) -> tuple[Subtree, ...]:
    """The maximal complete subtrees inside the shard [start, stop), in client order.

    Together they cover the shard exactly; a shard computes one partial value
    for each, and nothing else.
    """
    _check_shard(num_clients, start, stop)
    top = root_level(num_clients)
    subtrees: list[Subtree] = []
    position = start
    while position < stop:
        # The largest aligned node that starts here and ends inside the shard.
        level = min(top, _trailing_zeros(position) if position else top)
        while min(position + (1 << level), num_clients) > stop:
            level -= 1
        subtrees.append(Subtree(level, position >> level))
        position = min(position + (1 << level), num_clients)
    return tuple(subtrees)


def pairwise_reduce(leaves: Iterable[Value], merge: Merge) -> Value:
    """The value of one canonical subtree whose leaves, in client order, are `leaves`.

    `leaves` must start at a position aligned to the subtree (as every subtree
    from `shard_subtrees` does); then pairing neighbours level by level, with an
    odd last value passed up unchanged, is exactly the canonical tree.
    """
    stack: list[tuple[int, Value]] = []
    for leaf in leaves:
        level, value = 0, leaf
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = merge(left, value)
            level += 1
        stack.append((level, value))
    if not stack:
        raise ValueError("pairwise_reduce needs at least one leaf")
    return _fold_right_edge(stack, merge)


def reduce_shard(
    num_clients: int,
    start: int,
    stop: int,
    leaves: Iterable[Value],
    merge: Merge,
) -> list[tuple[Subtree, Value]]:
    """The partial values a shard [start, stop) contributes: one per subtree of `shard_subtrees`.

    `leaves` yields the leaf value of each client of the shard in order
    (client `start` first); it is consumed lazily.
    """
    iterator = iter(leaves)
    partials = []
    for subtree in shard_subtrees(num_clients, start, stop):
        count = subtree.stop(num_clients) - subtree.start
        partials.append((subtree, pairwise_reduce(_take(iterator, count, start), merge)))
    if next(iterator, _END) is not _END:
        raise ValueError(f"more leaves than the {stop - start} clients of shard [{start}, {stop})")
    return partials


def combine_partials(
    num_clients: int, partials: Iterable[tuple[Subtree, Value]], merge: Merge
) -> Value:
    """The root of the canonical tree from shard partials that tile [0, num_clients).

    The partials may come in any order; they must be canonical subtrees (as
    `shard_subtrees` gives) covering every client exactly once, else a
    `BackendError` says which clients are missing or repeated.
    """
    if num_clients <= 0:
        raise ValueError("there is no reduction over zero clients")
    ordered = sorted(partials, key=lambda item: item[0].start)
    stack: list[tuple[int, Value]] = []
    covered = 0
    for subtree, value in ordered:
        if subtree.start != covered:
            what = "repeat" if subtree.start < covered else "are missing"
            raise BackendError(
                f"shard partials do not tile the {num_clients} clients: clients from "
                f"{min(covered, subtree.start)} {what} (next subtree starts at {subtree.start})"
            )
        if subtree.level > root_level(num_clients) or subtree.start >= num_clients:
            raise BackendError(f"{subtree} is not a subtree of the tree over {num_clients} clients")
        # A partial at the ragged right edge may stand for a higher node with the same clients.
        level = subtree.level
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = merge(left, value)
            level += 1
        stack.append((level, value))
        covered = subtree.stop(num_clients)
    if covered != num_clients:
        raise BackendError(
            f"shard partials cover clients [0, {covered}) of {num_clients}: the rest are missing"
        )
    return _fold_right_edge(stack, merge)


def tree_reduce(leaves: Iterable[Value], merge: Merge) -> Value:
    """The canonical tree over all clients at once: one shard holding every client."""
    return pairwise_reduce(leaves, merge)


_END = object()


def _fold_right_edge(stack: list[tuple[int, Value]], merge: Merge) -> Value:
    # What is left are the nodes along the ragged right edge, higher levels first;
    # each pending right part is the (only) right child of the node to its left.
    _, value = stack.pop()
    while stack:
        _, left = stack.pop()
        value = merge(left, value)
    return value


def _take(iterator: Iterator[Value], count: int, start: int) -> Iterator[Value]:
    for _ in range(count):
        value = next(iterator, _END)
        if value is _END:
            raise ValueError(f"too few leaves for the shard starting at client {start}")
        yield value


def _trailing_zeros(position: int) -> int:
    return (position & -position).bit_length() - 1


def _check_shard(num_clients: int, start: int, stop: int) -> None:
    if not 0 <= start < stop <= num_clients:
        raise ValueError(
            f"a shard is a non-empty range [start, stop) within [0, {num_clients}), "
            f"found [{start}, {stop})"
        )
