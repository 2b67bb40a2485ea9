"""`simplify-federated-projections`: placed values taken apart and put back together, removed.

Tracing `state["model"]` on a placed value gives `federated_apply(<(m -> m[0]), state>)`
(a *projection*: a map or apply whose function only selects a path from its parameter),
and building a placed struct gives `federated_zip(<...>)`. These rules undo the pairs:

- `ProjectionOfZip`: `apply(<(x -> x[i]...), federated_zip(<a_0, ..., a_n>)>)` → `a_i`
  (a longer path keeps the rest as a projection of `a_i`); the same for `federated_map`.
  The zip places the struct `<a_0, ..., a_n>` as it is, and selecting field i of it is
  `a_i`'s value, not a copy computed anew: the same bits. At CLIENTS each client's
  zipped value holds its own `a_i`, so the selection gives back `a_i` client by client.
- `IdentityProjection`: `apply(<(x -> x), v>)` → `v`: the function returns its argument.
- `ZipOfProjections`: `federated_zip(<p_0(v), ..., p_n(v)>)` → `v` when `p_i` selects
  field i of the same `v`, in order, covering all of `v`'s fields: zipping the fields
  back rebuilds `v`'s value element for element.
- `ZipOfServerProjections`: at SERVER, a zip holding two or more projections (of one or
  several values) becomes one apply of a function of selections over the zip of the
  values read: `zip(<a=apply(<(x -> x[0]), s>), b=t, c=apply(<(x -> x[2]), s>)>)` →
  `apply(<(p -> <a=p[0][0], b=p[1], c=p[0][2]>), zip(<s, t>)>)`. Each field is the same
  selection from the same value as before, only made inside one apply instead of one
  apply each. (At CLIENTS `merge-parallel-maps` already runs the maps inside a zip as one.)

A projection of a projection needs no rule here: `merge-chained-maps` composes
`apply(<(x -> x[i]), apply(<(y -> y[j]), v>)>)` into `apply(<(a -> a[j][i]), v>)`.

Every rule moves data only, and applies only when the replacement's type is the node's
type exactly (names and all-equal flags included): a lambda whose parameter type is wider
than its argument's (`float32[?]` taking `float32[3]`), or an all-equal field taken out
of a zip that is not all-equal, stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.passes.federated_maps import apply_function, intrinsic_call_parts
from fedcc.compiler.rewriting import RewriteContext, RewritePattern
from fedcc.ir.building_blocks import (
    BuildingBlock,
    Call,
    Lambda,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.types import SERVER, FederatedType, Type

PROJECTING_INTRINSICS = ("federated_apply", "federated_map")


@dataclass(frozen=True)
class Projection:
    """`uri(<(x -> x[path]), source>)`: the parts of a projection of a placed value."""

    uri: str
    parameter_name: str
    path: tuple[int, ...]
    source: BuildingBlock
    parameter_type: Type

    def takes_its_source_exactly(self) -> bool:
        """Whether the function's parameter type is the source's member type (not a wider
        one): then selecting the path from the source gives the projection's type."""
        return self.parameter_type == self.source.type_signature.member


def selection_path(function: BuildingBlock) -> tuple[int, ...] | None:
    """The indices `function` selects from its parameter, outermost first: `(i, j)` for
    `(x -> x[i][j])`, `()` for `(x -> x)`; None for any other function."""
    if not isinstance(function, Lambda) or function.parameter_name is None:
        return None
    path: list[int] = []
    node = function.result
    while isinstance(node, Selection):
        path.append(node.index)
        node = node.source
    if not isinstance(node, Reference) or node.name != function.parameter_name:
        return None
    return tuple(reversed(path))


def projection_parts(node: BuildingBlock) -> Projection | None:
    """The parts of `node` if it is a projection (see `Projection`), else None."""
    parts = intrinsic_call_parts(node, PROJECTING_INTRINSICS)
    if parts is None or len(parts[1]) != 2:
        return None
    uri, ((_, function), (_, source)) = parts
    path = selection_path(function)
    if path is None:
        return None
    return Projection(uri, function.parameter_name, path, source, function.parameter_type)


def select(node: BuildingBlock, path: Sequence[int]) -> BuildingBlock:
    """`node[path[0]][path[1]]...`."""
    for index in path:
        node = Selection(node, index)
    return node


def project(uri: str, source: BuildingBlock, path: Sequence[int], name: str) -> BuildingBlock:
    """`uri(<(name -> name[path]), source>)`, or `source` itself for the empty path."""
    if not path:
        return source
    member = source.type_signature.member
    function = Lambda(name, member, select(Reference(name, member), path))
    return call_intrinsic(uri, Struct([function, source]))


def _same_type(replacement: BuildingBlock, node: BuildingBlock) -> BuildingBlock | None:
    # The rules hold for values; the types must match too, exactly, or the node stays.
    return replacement if replacement.type_signature == node.type_signature else None


def _zip_elements(node: BuildingBlock) -> tuple | None:
    parts = intrinsic_call_parts(node, ("federated_zip",))
    return None if parts is None else parts[1]


class ProjectionOfZip(RewritePattern):
    """`apply(<(x -> x[i]...), federated_zip(<a_0, ..., a_n>)>)` → `a_i` (or a projection
    of `a_i` for a longer path); `federated_map` alike."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        projection = projection_parts(node)
        if projection is None or not projection.path:
            return None
        elements = _zip_elements(projection.source)
        if elements is None:
            return None
        first, *rest = projection.path
        element = elements[first][1]
        return _same_type(project(projection.uri, element, rest, projection.parameter_name), node)


class IdentityProjection(RewritePattern):
    """`apply(<(x -> x), v>)` → `v`; `federated_map` alike."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        projection = projection_parts(node)
        if projection is None or projection.path:
            return None
        return _same_type(projection.source, node)


class ZipOfProjections(RewritePattern):
    """`federated_zip(<v[0], ..., v[n]>)` → `v`, each `v[i]` a projection of field i of the
    same `v` (by apply or map), in order and covering all of `v`'s fields."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        elements = _zip_elements(node)
        if not elements:
            return None
        source = None
        for index, (_, element) in enumerate(elements):
            projection = projection_parts(element)
            if projection is None or projection.path != (index,):
                return None
            if source is None:
                source = projection.source
            elif projection.source is not source and projection.source != source:
                return None
        member = source.type_signature.member
        if len(member) != len(elements):
            return None
        # The zip's type holds its element names and all-equal flag: equal types mean the
        # zip rebuilds exactly `v`'s struct, names included.
        return _same_type(source, node)


@dataclass(frozen=True)
class _ZippedProjections:
    """A zip at SERVER seen as selections from the values it reads: for each element, its
    name, its source (a projection's value, or the element itself) and the path selected
    from the source (empty for an element that is not a projection)."""

    fields: tuple[tuple[str | None, BuildingBlock, tuple[int, ...]], ...]
    sources: dict[BuildingBlock, int]  # each distinct source -> its position
    projections: int

    @classmethod
    def of(cls, node: BuildingBlock) -> _ZippedProjections | None:
        elements = _zip_elements(node)
        t = node.type_signature
        if not elements or not isinstance(t, FederatedType) or t.placement is not SERVER:
            return None
        fields = []
        projections = 0
        # Only a projection whose function takes exactly its source's member type counts:
        # then the path selected from the source has the projection's type.
        for name, element in elements:
            projection = projection_parts(element)
            if projection is None or not projection.takes_its_source_exactly():
                fields.append((name, element, ()))
            else:
                projections += 1
                fields.append((name, projection.source, projection.path))
        sources: dict[BuildingBlock, int] = {}
        for _, source, _ in fields:
            sources.setdefault(source, len(sources))
        return cls(tuple(fields), sources, projections)

    def zipped(self) -> BuildingBlock:
        """The sources, zipped (the one source itself when there is one)."""
        values = list(self.sources)
        return values[0] if len(values) == 1 else call_intrinsic("federated_zip", Struct(values))

    def gather(self, parameter: Reference) -> Struct:
        """`<name=p[k][path], ...>`: the zip's value per element, from `parameter`, the
        value of `zipped()` (`p[path]` when there is one source)."""
        single = len(self.sources) == 1

        def source_part(source: BuildingBlock) -> BuildingBlock:
            return parameter if single else Selection(parameter, self.sources[source])

        return Struct(
            [(name, select(source_part(source), path)) for name, source, path in self.fields]
        )

    def apply(
        self, function_of_gathered: Callable[[Struct], BuildingBlock], parameter_name: str
    ) -> BuildingBlock:
        """`apply(<(p -> function_of_gathered(gather(p))), zipped()>)`."""
        zipped = self.zipped()
        parameter = Reference(parameter_name, zipped.type_signature.member)
        body = function_of_gathered(self.gather(parameter))
        function = Lambda(parameter_name, parameter.type_signature, body)
        return call_intrinsic("federated_apply", Struct([function, zipped]))


def _rewrite_with_fresh_name(
    node: BuildingBlock, build: Callable[[str], BuildingBlock], context: RewriteContext
) -> BuildingBlock | None:
    """`build(name)` for a fresh name, if its type is `node`'s. It is built once under a
    placeholder name first: types do not depend on names, and a context-free pattern takes
    a fresh name only for a rewrite it makes."""
    if build("fields").type_signature != node.type_signature:
        return None
    return build(context.names.fresh("fields"))


class ZipOfServerProjections(RewritePattern):
    """At SERVER: `zip(<a=apply(<(x -> x[0]), s>), b=t, c=apply(<(x -> x[2]), s>)>)` →
    `apply(<(p -> <a=p[0][0], b=p[1], c=p[0][2]>), zip(<s, t>)>)`, for two or more
    projections (one apply instead of one each)."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        zipped = _ZippedProjections.of(node)
        if zipped is None or zipped.projections < 2:
            return None
        return _rewrite_with_fresh_name(
            node, lambda name: zipped.apply(lambda gathered: gathered, name), context
        )


class ApplyOfZippedProjections(RewritePattern):
    """`apply(<f, zip(<a=apply(<(x -> x[2]), s>), b=t>)>)` →
    `apply(<(p -> f(<a=p[0][2], b=p[1]>)), zip(<s, t>)>)`: `f` gets the same struct, with
    the selections made inside its apply instead of in one apply each."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        parts = intrinsic_call_parts(node, ("federated_apply",))
        if parts is None or len(parts[1]) != 2:
            return None
        (_, function), (_, value) = parts[1]
        zipped = _ZippedProjections.of(value)
        if zipped is None or zipped.projections < 1:
            return None
        # `f` gets the gathered struct at the zip's member type exactly: each field selects,
        # from its source, the path its projection selected from a parameter of exactly the
        # source's member type (`takes_its_source_exactly`).
        return _rewrite_with_fresh_name(
            node,
            lambda name: zipped.apply(lambda gathered: apply_function(function, gathered), name),
            context,
        )


SIMPLIFY_FEDERATED_PROJECTIONS = register_pass(
    PatternPass(
        "simplify-federated-projections",
        "removes placed values taken apart and zipped back: apply(x -> x[i], zip(<a,b>)) -> a",
        (
            ProjectionOfZip(),
            IdentityProjection(),
            ZipOfProjections(),
            ZipOfServerProjections(),
            ApplyOfZippedProjections(),
        ),
    )
)
