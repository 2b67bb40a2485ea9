"""The rewrite infrastructure every pass is built on: patterns, one walker, analyses, fresh names.

In the manner of xDSL's pattern rewriter:

- A `RewritePattern` says what it rewrites (`node_types`, for dispatch) and
  `match_and_rewrite(node, context)` returns the replacement node, or None
  when it does not apply. A pattern must keep the node's type exactly.
- `apply_patterns(root, patterns)` is the one walker: it applies the patterns
  bottom-up (children before parents, so a pattern sees children already
  rewritten), each node to a local fixed point, rebuilding the parents of
  changed nodes, and sweeps the whole tree again until a sweep changes
  nothing. It walks with explicit worklists, so programs of any depth work.
- The `RewriteContext` a pattern receives knows where the node is: the
  binders in scope (name, type, the value a block bound, how old the binding
  is, how many lambdas enclose it), the `Analyses` and the `NameSupply`.
- `Analyses` computes how often each free name is used in a node (in total,
  and outside lambdas), cached by node identity: nodes are immutable, so a
  result stays true for as long as the node lives.
- `NameSupply` hands out names that no binder or reference of the program
  uses, and takes back those of a rewrite abandoned (`rollback`);
  `substitute` replaces free references without capturing names.
- Every change is recorded in a `RewriteLog` (for `--stats` and debugging).

A pass that needs a whole-program view (CSE, call-dominant form) walks with
`ScopedRebuilder` or its own explicit worklist, and uses the same analyses.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from operator import is_
from typing import Any, ClassVar

from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Intrinsic,
    Lambda,
    Literal,
    Placement,
    Reference,
    Selection,
    Struct,
    walk,
)
from fedcc.ir.errors import FedccError
from fedcc.ir.types import Type, is_valid_variable_name


class RewriteError(FedccError):
    """A pattern or pass broke the rewriting contract (changed a type, did not converge)."""


# ---------------------------------------------------------------------------
# Rebuilding a node from new children.


def _rebuild_lambda(node: Lambda, children: Sequence[BuildingBlock]) -> BuildingBlock:
    return Lambda(node.parameter_name, node.parameter_type, children[0])


def _rebuild_block(node: Block, children: Sequence[BuildingBlock]) -> BuildingBlock:
    names = [name for name, _ in node.locals]
    return Block(zip(names, children[:-1], strict=True), children[-1])


def _rebuild_call(node: Call, children: Sequence[BuildingBlock]) -> BuildingBlock:
    return Call(children[0], children[1] if len(children) > 1 else None)


def _rebuild_struct(node: Struct, children: Sequence[BuildingBlock]) -> BuildingBlock:
    return Struct(list(zip((name for name, _ in node.elements), children, strict=True)))


def _rebuild_selection(node: Selection, children: Sequence[BuildingBlock]) -> BuildingBlock:
    return Selection(children[0], node.index)


_REBUILDERS: dict[type, Callable[[Any, Sequence[BuildingBlock]], BuildingBlock]] = {
    Lambda: _rebuild_lambda,
    Block: _rebuild_block,
    Call: _rebuild_call,
    Struct: _rebuild_struct,
    Selection: _rebuild_selection,
}


def with_children(node: BuildingBlock, children: Sequence[BuildingBlock]) -> BuildingBlock:
    """`node` with its children replaced by `children` (the same object if none changed)."""
    return _with_new_children(node, node.children(), children)


def _with_new_children(
    node: BuildingBlock, old: Sequence[BuildingBlock], new: Sequence[BuildingBlock]
) -> BuildingBlock:
    """`with_children` for a caller that holds `node`'s children `old` already (walkers do):
    they are not made again, and compared by identity in C (`map(is_, ...)`)."""
    if len(old) == len(new) and all(map(is_, old, new)):
        return node
    return _REBUILDERS[type(node)](node, new)


# ---------------------------------------------------------------------------
# Analyses: free-name use counts, cached by node identity.

_EMPTY: dict[str, int] = {}


def _merge(parts: Iterable[Mapping[str, int]]) -> Mapping[str, int]:
    # Share a child's dict when it is the only one with entries: chains of nodes that add
    # no names (the common case in deep programs) then cost no memory per node.
    nonempty = [p for p in parts if p]
    if not nonempty:
        return _EMPTY
    if len(nonempty) == 1:
        return nonempty[0]
    total: Counter = Counter()
    for part in nonempty:
        total.update(part)
    return dict(total)


def _without(counts: Mapping[str, int], name: str | None) -> Mapping[str, int]:
    if name is None or name not in counts:
        return counts
    return {k: v for k, v in counts.items() if k != name}


class Analyses:
    """Free-name use counts of nodes, computed bottom-up once per node and cached by identity.

    `use_counts(node)`: free name -> number of references to it in `node`.
    `exposed_use_counts(node)`: the same, counting only references not inside
    a lambda of `node` (a use inside a lambda may run many times, or never).
    """

    def __init__(self) -> None:
        # id(node) -> (node, all uses, uses outside lambdas); the node is kept so ids stay valid.
        self._memo: dict[int, tuple[BuildingBlock, Mapping[str, int], Mapping[str, int]]] = {}

    def use_counts(self, node: BuildingBlock) -> Mapping[str, int]:
        """Free name -> how many references to it `node` holds."""
        return self._uses(node)[1]

    def exposed_use_counts(self, node: BuildingBlock) -> Mapping[str, int]:
        """Free name -> how many references to it `node` holds outside its lambdas."""
        return self._uses(node)[2]

    def free_names(self, node: BuildingBlock) -> Mapping[str, int]:
        """The names `node` uses without binding them (a mapping; use it as a set)."""
        return self._uses(node)[1]

    def _uses(self, root: BuildingBlock) -> tuple[BuildingBlock, Mapping, Mapping]:
        memo = self._memo
        found = memo.get(id(root))
        if found is not None:
            return found
        stack: list[tuple[BuildingBlock, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in memo:
                continue
            children = node.children()
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in memo)
                continue
            memo[id(node)] = (node, *self._combine(node, [memo[id(c)] for c in children]))
        return memo[id(root)]

    @staticmethod
    def _combine(node: BuildingBlock, children: list[tuple]) -> tuple[Mapping, Mapping]:
        if isinstance(node, Reference):
            counts = {node.name: 1}
            return counts, counts
        if isinstance(node, Lambda):
            return _without(children[0][1], node.parameter_name), _EMPTY
        if isinstance(node, Block):
            return _block_uses(node, children, 1), _block_uses(node, children, 2)
        return _merge(c[1] for c in children), _merge(c[2] for c in children)


def _block_uses(node: Block, children: list[tuple], which: int) -> Mapping[str, int]:
    """free(let x1=v1,...,xn=vn in r) = free(v1) + (free(let x2.. in r) - x1), from the end,
    in one dict updated in place: copying it at each local would cost locals x names."""
    counts: Mapping[str, int] = children[-1][which]
    owned = False  # whether `counts` is a dict of our own (children's dicts are shared)
    for (name, _), child in zip(reversed(node.locals), reversed(children[:-1])):
        value_counts = child[which]
        if name not in counts and not value_counts:
            continue
        if not owned:
            counts = dict(counts)
            owned = True
        counts.pop(name, None)
        for free_name, count in value_counts.items():
            counts[free_name] = counts.get(free_name, 0) + count
    return counts if counts else _EMPTY


@dataclass
class _PipelineMemo:
    """What the passes of one pipeline share: analyses, and per pattern set the nodes it
    has settled (see `apply_patterns`)."""

    analyses: Analyses = field(default_factory=Analyses)
    settled: dict[tuple, dict[int, BuildingBlock]] = field(default_factory=dict)


_PIPELINE_MEMO: ContextVar[_PipelineMemo | None] = ContextVar("pipeline_memo", default=None)


def pipeline_analyses() -> Analyses:
    """The `Analyses` shared by every pass of the pipeline running now (see
    `sharing_analyses`), or a new one outside a pipeline."""
    memo = _PIPELINE_MEMO.get()
    return memo.analyses if memo is not None else Analyses()


@contextmanager
def sharing_analyses() -> Iterator[None]:
    """Within the block, passes share what they learn about nodes: one `Analyses` (a pass
    reads the use counts of the nodes an earlier pass left as they were instead of walking
    them again), and for each context-free pattern set the subtrees it found nothing to
    rewrite in (a later run skips them). Both are per node identity, and nodes are
    immutable, so what was true of a node stays true."""
    token = _PIPELINE_MEMO.set(_PipelineMemo())
    try:
        yield
    finally:
        _PIPELINE_MEMO.reset(token)


# ---------------------------------------------------------------------------
# Fresh names.

_NUMBERED = re.compile(r"(.*?)_[0-9]+\Z")


def all_names(root: BuildingBlock) -> set[str]:
    """Every name `root` binds or references."""
    names: set[str] = set()
    for node in walk(root):
        if isinstance(node, Reference):
            names.add(node.name)
        elif isinstance(node, Lambda) and node.parameter_name is not None:
            names.add(node.parameter_name)
        elif isinstance(node, Block):
            names.update(name for name, _ in node.locals)
    return names


class NameSupply:
    """Hands out variable names that nothing in the program uses, and never the same twice."""

    def __init__(self, *roots: BuildingBlock) -> None:
        # The names are collected on first need: most pass runs hand out no name at all,
        # and collecting them walks the whole program.
        self._roots: tuple[BuildingBlock, ...] | None = roots
        self._names: set[str] = set()
        self._next: Counter = Counter()
        # Every name handed out or reserved, with its stem's count before, so that `rollback`
        # can forget the names of a rewrite that was abandoned.
        self._journal: list[tuple[str | None, int, str]] = []

    @property
    def _used(self) -> set[str]:
        if self._roots is not None:
            for root in self._roots:
                self._names |= all_names(root)
            self._roots = None
        return self._names

    def reserve(self, name: str) -> None:
        """Marks `name` as taken."""
        if name not in self._used:
            self._names.add(name)
            self._journal.append((None, 0, name))

    def is_used(self, name: str) -> bool:
        return name in self._used

    def fresh(self, base: str = "v") -> str:
        """A new name like `base_1`, used nowhere in the program and not handed out before."""
        match = _NUMBERED.match(base)
        stem = match.group(1) if match and match.group(1) else base
        if not is_valid_variable_name(stem):
            stem = "v"
        before = self._next[stem]
        while True:
            self._next[stem] += 1
            name = f"{stem}_{self._next[stem]}"
            if name not in self._used:
                self._names.add(name)
                self._journal.append((stem, before, name))
                return name

    def checkpoint(self) -> int:
        """A mark to `rollback` to."""
        return len(self._journal)

    def rollback(self, checkpoint: int) -> None:
        """Forgets the names handed out and reserved since `checkpoint`, as if they never
        were: the next names are those they would have been. For a rewrite that took names
        and then found nothing to change (the names must appear nowhere)."""
        journal = self._journal
        while len(journal) > checkpoint:
            stem, count_before, name = journal.pop()
            if stem is not None:
                self._next[stem] = count_before
            self._names.discard(name)


# ---------------------------------------------------------------------------
# Scope-aware rebuilding: substitution and renaming without capture.

_VISIT, _EXIT = 0, 1


class ScopedRebuilder:
    """Rebuilds a tree top-down with an environment of replacements for free references.

    `env` maps a name to the node that replaces references to it. At each
    binder, `rename_binder(name, type, env)` may give the binder a new name
    (its references then follow); otherwise the binder shadows `name` and
    the replacement stops applying below it. A subtree that uses none of the
    names in `env` is kept as it is when `skip_unaffected` is set.
    Walks with an explicit stack; rebuilds only what changed.
    """

    skip_unaffected = True

    def __init__(self, analyses: Analyses, names: NameSupply) -> None:
        self.analyses = analyses
        self.names = names

    def rename_binder(
        self, name: str, binder_type: Type, env: Mapping[str, BuildingBlock]
    ) -> str | None:
        """The new name of a binder, or None to keep it."""
        return None

    def _enter(self, name: str, binder_type: Type, env: dict) -> tuple[str, dict]:
        new_name = self.rename_binder(name, binder_type, env)
        if new_name is not None and new_name != name:
            return new_name, {**env, name: Reference(new_name, binder_type)}
        if name in env:
            env = dict(env)
            del env[name]
        return name, env

    def rebuild(self, root: BuildingBlock, env: Mapping[str, BuildingBlock]) -> BuildingBlock:
        """`root` with the replacements of `env` made and binders renamed as decided."""
        results: list[BuildingBlock] = []
        stack: list[tuple] = [(_VISIT, root, dict(env))]
        while stack:
            task = stack.pop()
            if task[0] == _EXIT:
                _, node, new_names, count = task
                children = results[-count:] if count else []
                if count:
                    del results[-count:]
                results.append(self._finish(node, new_names, children))
                continue
            _, node, env_here = task
            if self.skip_unaffected and (not env_here or not self._affected(node, env_here)):
                results.append(node)
            elif isinstance(node, Reference):
                results.append(self._replace(node, env_here))
            elif isinstance(node, Lambda):
                self._push_lambda(stack, node, env_here)
            elif isinstance(node, Block):
                self._push_block(stack, node, env_here)
            else:
                children = node.children()
                stack.append((_EXIT, node, None, len(children)))
                stack.extend((_VISIT, c, env_here) for c in reversed(children))
        (result,) = results
        return result

    def _affected(self, node: BuildingBlock, env: Mapping[str, BuildingBlock]) -> bool:
        free = self.analyses.free_names(node)
        if len(env) < len(free):
            return any(name in free for name in env)
        return any(name in env for name in free)

    @staticmethod
    def _replace(node: Reference, env: Mapping[str, BuildingBlock]) -> BuildingBlock:
        replacement = env.get(node.name)
        if replacement is None:
            return node
        if replacement.type_signature != node.type_signature:
            raise RewriteError(
                f"cannot replace reference {node.name!r} of type {node.type_signature} "
                f"by a node of type {replacement.type_signature}"
            )
        return replacement

    def _push_lambda(self, stack: list, node: Lambda, env: dict) -> None:
        if node.parameter_name is None:
            stack.append((_EXIT, node, None, 1))
            stack.append((_VISIT, node.result, env))
            return
        new_name, inner = self._enter(node.parameter_name, node.parameter_type, env)
        stack.append((_EXIT, node, (new_name,), 1))
        stack.append((_VISIT, node.result, inner))

    def _push_block(self, stack: list, node: Block, env: dict) -> None:
        visits = []
        new_names = []
        for name, value in node.locals:
            visits.append((_VISIT, value, env))
            new_name, env = self._enter(name, value.type_signature, env)
            new_names.append(new_name)
        visits.append((_VISIT, node.result, env))
        stack.append((_EXIT, node, tuple(new_names), len(visits)))
        stack.extend(reversed(visits))

    @staticmethod
    def _finish(
        node: BuildingBlock, new_names: tuple[str, ...] | None, children: list[BuildingBlock]
    ) -> BuildingBlock:
        if isinstance(node, Lambda) and new_names and new_names[0] != node.parameter_name:
            return Lambda(new_names[0], node.parameter_type, children[0])
        if isinstance(node, Block) and new_names != tuple(name for name, _ in node.locals):
            return Block(zip(new_names, children[:-1], strict=True), children[-1])
        return with_children(node, children)


class _Substituter(ScopedRebuilder):
    """Renames a binder only when it would capture a free name of a replacement."""

    def __init__(self, analyses: Analyses, names: NameSupply, capturable: set[str]) -> None:
        super().__init__(analyses, names)
        self.capturable = capturable

    def rename_binder(
        self, name: str, binder_type: Type, env: Mapping[str, BuildingBlock]
    ) -> str | None:
        if name in self.capturable and any(key != name for key in env):
            return self.names.fresh(name)
        return None


def substitute(
    root: BuildingBlock,
    replacements: Mapping[str, BuildingBlock],
    analyses: Analyses,
    names: NameSupply,
) -> BuildingBlock:
    """`root` with its free references to each name replaced by that name's node.

    Capture-avoiding: a binder inside `root` that would capture a free name of
    a replacement is renamed to a fresh name. Each replacement must have
    exactly the type of the references it replaces.
    """
    free = analyses.free_names(root)
    # Only the replacements of names `root` uses matter (cheap when `replacements` is large).
    if len(replacements) <= len(free):
        relevant = {name: node for name, node in replacements.items() if name in free}
    else:
        relevant = {name: replacements[name] for name in free if name in replacements}
    if not relevant:
        return root
    capturable: set[str] = set()
    for value in relevant.values():
        capturable.update(analyses.free_names(value))
    return _Substituter(analyses, names, capturable).rebuild(root, relevant)


# ---------------------------------------------------------------------------
# What counts as cheap to copy.

# A literal this small may be copied to every use; a larger one only to a single use.
SMALL_LITERAL_BYTES = 64


def is_reference_path(node: BuildingBlock) -> bool:
    """Whether `node` is a reference, or selections from one (`x`, `x[0][1]`)."""
    while isinstance(node, Selection):
        node = node.source
    return isinstance(node, Reference)


def is_trivial(node: BuildingBlock) -> bool:
    """Whether `node` is as cheap to copy as a name: a reference path, a small literal,
    a placement or an intrinsic. Passes copy trivial values freely and never bind them
    for sharing, so inlining and CSE cannot undo each other."""
    if isinstance(node, Literal):
        return node.value.nbytes <= SMALL_LITERAL_BYTES
    return isinstance(node, (Placement, Intrinsic)) or is_reference_path(node)


# ---------------------------------------------------------------------------
# Scope, as patterns see it.


@dataclass(frozen=True, slots=True)
class Binding:
    """One name in scope: who bound it, at which type, with what value (block locals)."""

    name: str
    type_signature: Type
    value: BuildingBlock | None  # the value of a block local; None for a lambda parameter
    serial: int  # bindings made later have larger serials
    lambda_depth: int  # how many lambdas enclose the binder


class RewriteContext:
    """What a pattern knows about where the node it looks at is, plus shared services."""

    def __init__(self, analyses: Analyses, names: NameSupply) -> None:
        self.analyses = analyses
        self.names = names
        self.lambda_depth = 0
        self._scope: dict[str, list[Binding]] = {}
        self._serial = 0

    def lookup(self, name: str) -> Binding | None:
        """The innermost binding of `name` in scope, or None if it is free here."""
        bindings = self._scope.get(name)
        return bindings[-1] if bindings else None

    def means_the_same_as_at(self, names: Iterable[str], binding: Binding) -> bool:
        """Whether each of `names` refers here to what it referred to where `binding` was made
        (none of them is rebound in between), so a value from there can be copied here."""
        for name in names:
            current = self.lookup(name)
            if current is not None and current.serial > binding.serial:
                return False
        return True

    def bind(self, name: str, binder_type: Type, value: BuildingBlock | None) -> None:
        self._serial += 1
        binding = Binding(name, binder_type, value, self._serial, self.lambda_depth)
        self._scope.setdefault(name, []).append(binding)

    def unbind(self, name: str) -> None:
        self._scope[name].pop()


# ---------------------------------------------------------------------------
# Patterns, the change log, the walker.


class RewritePattern:
    """A local rewrite: `match_and_rewrite(node, context)` returns the replacement or None.

    Subclasses set `node_types` to the node classes they look at; the walker
    calls them only for those. The replacement must have the node's exact type.
    """

    node_types: ClassVar[tuple[type[BuildingBlock], ...]] = (BuildingBlock,)
    # Whether the pattern decides from the node alone (and analyses of it), never from the
    # scope (`context.lookup`), and keeps no fresh name unless it rewrites: then a subtree
    # where it found nothing to rewrite stays so wherever it is, and walks may skip it.
    context_free: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def match_and_rewrite(
        self, node: BuildingBlock, context: RewriteContext
    ) -> BuildingBlock | None:
        raise NotImplementedError


@dataclass
class RewriteLog:
    """Every rewrite made: which pattern, on what kind of node, giving what kind of node."""

    changes: list[tuple[str, str, str]] = field(default_factory=list)
    sweeps: int = 0

    def record(self, pattern: str, before: BuildingBlock, after: BuildingBlock) -> None:
        self.changes.append((pattern, before.kind, after.kind))

    def counts(self) -> dict[str, int]:
        """How many rewrites each pattern made."""
        return dict(sorted(Counter(pattern for pattern, _, _ in self.changes).items()))


# A pattern that keeps rewriting one node this many times is taken to loop.
MAX_REWRITES_PER_NODE = 1000
# A fixed point not reached after this many sweeps is a bug in the patterns.
MAX_SWEEPS = 1000

_BIND_PARAMETER, _ENTER_LAMBDA, _BIND_LOCAL, _UNBIND, _LEAVE_LAMBDA = 2, 3, 4, 5, 6


class _Walker:
    def __init__(
        self,
        patterns: Sequence[RewritePattern],
        context: RewriteContext,
        log: RewriteLog,
    ) -> None:
        self.context = context
        self.log = log
        self._patterns = tuple(patterns)
        self._by_type: dict[type, tuple[RewritePattern, ...]] = {}
        # id -> node for the subtrees in which no pattern applied: with context-free
        # patterns, a walk skips them (and keeps no scope, which no pattern reads).
        self.settled: dict[int, BuildingBlock] | None = None

    def patterns_for(self, node_type: type) -> tuple[RewritePattern, ...]:
        found = self._by_type.get(node_type)
        if found is None:
            found = tuple(p for p in self._patterns if issubclass(node_type, p.node_types))
            self._by_type[node_type] = found
        return found

    def rewrite_here(self, node: BuildingBlock) -> BuildingBlock:
        """Applies the patterns to `node` until none applies."""
        by_type = self._by_type
        for _ in range(MAX_REWRITES_PER_NODE):
            patterns = by_type.get(type(node))
            if patterns is None:
                patterns = self.patterns_for(type(node))
            for pattern in patterns:
                replacement = pattern.match_and_rewrite(node, self.context)
                if replacement is None or replacement is node:
                    continue
                if replacement.type_signature != node.type_signature:
                    raise RewriteError(
                        f"pattern {pattern.name} rewrote a {node.kind} of type "
                        f"{node.type_signature} into a {replacement.kind} of type "
                        f"{replacement.type_signature}"
                    )
                self.log.record(pattern.name, node, replacement)
                node = replacement
                break
            else:
                return node
        raise RewriteError(
            f"the patterns keep rewriting a {node.kind} after {MAX_REWRITES_PER_NODE} rewrites"
        )

    def _rewrite_if_matched(self, node: BuildingBlock) -> BuildingBlock:
        # Most nodes are of a kind no pattern looks at: settle them without a call.
        patterns = self._by_type.get(type(node))
        if patterns is None:
            patterns = self.patterns_for(type(node))
        return self.rewrite_here(node) if patterns else node

    def sweep_settled(
        self, root: BuildingBlock, settled: dict[int, BuildingBlock]
    ) -> BuildingBlock:
        """`sweep` for context-free patterns: skips settled subtrees, keeps no scope."""
        results: list[BuildingBlock] = []
        # (node, None) visits a node; (node, its children) rebuilds and rewrites it once its
        # children are done.
        stack: list[tuple[BuildingBlock, tuple[BuildingBlock, ...] | None]] = [(root, None)]
        while stack:
            original, children = stack.pop()
            if children is None:
                if settled.get(id(original)) is original:
                    results.append(original)
                    continue
                children = original.children()
                if children:
                    stack.append((original, children))
                    stack.extend([(child, None) for child in reversed(children)])
                    continue
                node = original
            else:
                count = len(children)
                node = _with_new_children(original, children, results[-count:])
                del results[-count:]
            rewritten = self._rewrite_if_matched(node)
            if rewritten is original:
                # Nothing applied here nor below (a change below makes a new node).
                settled[id(original)] = original
            results.append(rewritten)
        (result,) = results
        return result

    def sweep(self, root: BuildingBlock) -> BuildingBlock:
        """One bottom-up pass over the tree, with the scope kept up to date."""
        if self.settled is not None:
            return self.sweep_settled(root, self.settled)
        context = self.context
        results: list[BuildingBlock] = []
        stack: list[tuple] = [(_VISIT, root)]
        while stack:
            task = stack.pop()
            kind = task[0]
            if kind == _VISIT:
                node = task[1]
                if isinstance(node, (Lambda, Block)):
                    self._push_binder(stack, node)
                    continue
                children = node.children()
                if children:
                    stack.append((_EXIT, node, children))
                    stack.extend([(_VISIT, c) for c in reversed(children)])
                else:
                    # A leaf: nothing to walk below, no scope to change.
                    results.append(self._rewrite_if_matched(node))
            elif kind == _EXIT:
                node, children = task[1], task[2]
                count = len(children)
                node = _with_new_children(node, children, results[-count:])
                del results[-count:]
                results.append(self._rewrite_if_matched(node))
            elif kind == _BIND_LOCAL:
                # The local's value was just rewritten: later locals see the new one.
                context.bind(task[1], results[-1].type_signature, results[-1])
            elif kind == _BIND_PARAMETER:
                context.lambda_depth += 1
                context.bind(task[1], task[2], None)
            elif kind == _ENTER_LAMBDA:
                context.lambda_depth += 1
            elif kind == _UNBIND:
                context.unbind(task[1])
            else:  # _LEAVE_LAMBDA
                context.lambda_depth -= 1
        (result,) = results
        return result

    @staticmethod
    def _push_binder(stack: list[tuple], node: Lambda | Block) -> None:
        if isinstance(node, Lambda):
            stack.append((_EXIT, node, (node.result,)))
            if node.parameter_name is None:
                stack.append((_LEAVE_LAMBDA,))
                stack.append((_VISIT, node.result))
                stack.append((_ENTER_LAMBDA,))
            else:
                stack.append((_LEAVE_LAMBDA,))
                stack.append((_UNBIND, node.parameter_name))
                stack.append((_VISIT, node.result))
                stack.append((_BIND_PARAMETER, node.parameter_name, node.parameter_type))
        else:
            stack.append((_EXIT, node, node.children()))
            stack.extend((_UNBIND, name) for name, _ in node.locals)
            stack.append((_VISIT, node.result))
            for name, value in reversed(node.locals):
                stack.append((_BIND_LOCAL, name))
                stack.append((_VISIT, value))


def apply_patterns(
    root: BuildingBlock,
    patterns: Sequence[RewritePattern],
    *,
    context: RewriteContext | None = None,
    log: RewriteLog | None = None,
) -> BuildingBlock:
    """`root` rewritten by `patterns` to a fixed point: bottom-up sweeps until one changes nothing.

    When every pattern is `context_free`, a sweep skips the subtrees in which no
    pattern applied before (in an earlier sweep, or, within `sharing_analyses`,
    an earlier run of the same patterns): the result is the same, found sooner.
    Returns `root` itself when no pattern applies anywhere. Raises
    `RewriteError` if a pattern changes a node's type or the rewrites do not
    converge.
    """
    if context is None:
        context = RewriteContext(pipeline_analyses(), NameSupply(root))
    walker = _Walker(patterns, context, log if log is not None else RewriteLog())
    if all(pattern.context_free for pattern in patterns):
        memo = _PIPELINE_MEMO.get()
        key = tuple(patterns)
        walker.settled = {} if memo is None else memo.settled.setdefault(key, {})
    current = root
    for _ in range(MAX_SWEEPS):
        walker.log.sweeps += 1
        swept = walker.sweep(current)
        if swept is current:
            return current
        current = swept
    raise RewriteError(f"the patterns did not reach a fixed point in {MAX_SWEEPS} sweeps")
