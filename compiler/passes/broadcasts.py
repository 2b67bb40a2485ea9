"""`dedupe-broadcasts`: each server value is sent to the clients once.

- In each block, equal `federated_broadcast` (or `federated_value_at_clients`)
  calls become one, bound once; every use reads that one.
- A zip of several broadcasts becomes one broadcast of the (distinct) server
  values zipped at the server: `federated_zip(<federated_broadcast(a),
  federated_broadcast(b), d>)` → `federated_map(<(p -> <p[0][0], p[0][1],
  p[1]>), federated_zip(<federated_broadcast(federated_zip(<a, b>)), d>)>)`
  (with `d` absent and a, b distinct, just the broadcast). Names of the zip's
  elements are kept. Broadcasts bound to names count too, read through the names.

The clients see the same values, so every result is the same bits. Equal
calls are found in blocks whose local names are distinct and shadow nothing
(what `uniquify-names` makes).
"""

from __future__ import annotations

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.passes._block_dataflow import Region, extract_calls, rewrite_regions
from fedcc.compiler.passes.federated_maps import intrinsic_call_parts
from fedcc.compiler.rewriting import (
    RewriteContext,
    RewritePattern,
    apply_patterns,
    substitute,
)
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Lambda,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.types import CLIENTS, SERVER, FederatedType

BROADCASTS = ("federated_broadcast", "federated_value_at_clients")


def is_broadcast(node: BuildingBlock) -> bool:
    """A call sending one value to every client."""
    return (
        isinstance(node, Call)
        and getattr(node.function, "uri", None) in BROADCASTS
        and node.argument is not None
    )


def dedupe_equal_broadcasts(node: BuildingBlock, context: RewriteContext):
    """`node` (a block or an expression) with equal broadcasts bound once, or None."""
    region = Region.of(node, context.analyses)
    if region is None:
        return None
    region = extract_calls(region, is_broadcast, context.names, "broadcast")
    first_of: dict[BuildingBlock, str] = {}
    replacements: dict[str, BuildingBlock] = {}
    kept: list[tuple[str, BuildingBlock]] = []
    for name, value in region.locals:
        value = substitute(value, replacements, context.analyses, context.names)
        if is_broadcast(value) and value in first_of:
            replacements[name] = Reference(first_of[value], value.type_signature)
            continue
        if is_broadcast(value):
            first_of[value] = name
        kept.append((name, value))
    if not replacements:
        return None
    result = substitute(region.result, replacements, context.analyses, context.names)
    return Block(kept, result)


def _zip(values: list[BuildingBlock]) -> Call:
    return call_intrinsic("federated_zip", Struct(values))


def _broadcast(server_values: Struct) -> Call:
    return call_intrinsic("federated_broadcast", call_intrinsic("federated_zip", server_values))


class ZipOfBroadcasts(RewritePattern):
    """`federated_zip(<broadcast(a), broadcast(b), d>)` → one broadcast of `<a, b>`."""

    node_types = (Call,)

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        parts = intrinsic_call_parts(node, ("federated_zip",))
        t = node.type_signature
        if parts is None or not isinstance(t, FederatedType) or t.placement is not CLIENTS:
            return None
        elements = parts[1]
        sent = [self._sent_value(value, context) for _, value in elements]
        if sum(value is not None for value in sent) < 2:
            return None
        distinct: dict[BuildingBlock, int] = {}
        for value in sent:
            if value is not None:
                distinct.setdefault(value, len(distinct))
        others = [value for (_, value), s in zip(elements, sent, strict=True) if s is None]
        if not others and len(distinct) == len(elements):
            # Distinct broadcasts only: one broadcast of the same struct, names and all.
            named = [(name, s) for (name, _), s in zip(elements, sent, strict=True)]
            return _broadcast(Struct(named))
        server = list(distinct)
        broadcast = call_intrinsic(
            "federated_broadcast", server[0] if len(server) == 1 else _zip(server)
        )
        zipped = _zip([broadcast, *others]) if others else broadcast
        parameter_name = context.names.fresh("sent")
        parameter = Reference(parameter_name, zipped.type_signature.member)
        from_server = Selection(parameter, 0) if others else parameter
        rebuilt, from_clients = [], 1
        for (name, _), value in zip(elements, sent, strict=True):
            if value is None:
                rebuilt.append((name, Selection(parameter, from_clients)))
                from_clients += 1
            elif len(server) == 1:
                rebuilt.append((name, from_server))
            else:
                rebuilt.append((name, Selection(from_server, distinct[value])))
        restructure = Lambda(parameter_name, parameter.type_signature, Struct(rebuilt))
        return call_intrinsic("federated_map", Struct([restructure, zipped]))

    @staticmethod
    def _sent_value(value: BuildingBlock, context: RewriteContext) -> BuildingBlock | None:
        """The server value a zip element broadcasts (directly or through a name), or None."""
        call, binding = value, None
        if isinstance(value, Reference):
            binding = context.lookup(value.name)
            call = None if binding is None else binding.value
        if call is None or not is_broadcast(call):
            return None
        argument = call.argument
        if call.function.uri == "federated_value_at_clients":
            argument = call_intrinsic("federated_value_at_server", argument)
        if not isinstance(argument.type_signature, FederatedType):
            return None
        if argument.type_signature.placement is not SERVER:
            return None
        free = context.analyses.free_names(argument)
        if binding is not None and not context.means_the_same_as_at(free, binding):
            return None
        return argument


def dedupe_broadcasts(comp: BuildingBlock) -> BuildingBlock:
    """Sends each server value once (see the module docstring)."""
    comp = apply_patterns(comp, (ZipOfBroadcasts(),))
    return rewrite_regions(comp, "DedupeEqualBroadcasts", dedupe_equal_broadcasts)


DEDUPE_BROADCASTS = register_pass(
    FunctionPass(
        "dedupe-broadcasts",
        "sends each server value to the clients once: equal and zipped broadcasts become one",
        dedupe_broadcasts,
    )
)
