"""`fuse-local`: a local graph applied to other local graphs' results becomes one graph.

`g2(g1(x))` → `g12(x)`, and more generally `g2(e)` where `e` builds g2's
argument from the results of local-graph calls and other values through
structs and selections (`g2(<g1(x)[0], y>)`), at any depth: the fused graph
takes the other values (`<x, y>`, or the single one), runs the inner graphs'
ops, then g2's ops on their outputs. An inner call written twice runs once.

Bit for bit the same: each op runs on the same arrays as before (the runtime
hands a graph's output arrays to the next graph as they are). The ops are
re-typed from the types they now receive, which can only be narrower (a
known dim where a parameter had `?`); if that fails, nothing is fused.
Only calls nested in place are fused: a graph result bound in a block and
used twice stays shared (`inline-trivial` inlines one used once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.rewriting import with_children
from fedcc.ir import primitives
from fedcc.ir.building_blocks import BuildingBlock, Call, LocalGraph, Selection, Struct
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.types import StructType, TensorType, Type, tensor_leaves


def _is_graph_call(node: BuildingBlock) -> bool:
    return isinstance(node, Call) and isinstance(node.function, LocalGraph)


def _peel(node: BuildingBlock) -> BuildingBlock:
    while isinstance(node, Selection):
        node = node.source
    return node


def _element_leaf_ranges(t: StructType) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for element in t:
        count = len(tensor_leaves(element))
        ranges.append((start, start + count))
        start += count
    return ranges


def argument_leaves(
    argument: BuildingBlock,
) -> tuple[list[BuildingBlock], list[tuple[int, int]]]:
    """How a graph's argument expression is made: the atoms it reads (local-graph calls and
    other values, each once) and, for each tensor leaf of the argument, (atom, leaf of atom).

    Structs are looked through, and selections whose source is (selections of) a struct or
    a local-graph call; anything else is an atom. No recursion: arguments can nest deeply.
    """
    atoms: list[BuildingBlock] = []
    atom_positions: dict[BuildingBlock, int] = {}
    results: list[list[tuple[int, int]]] = []
    stack: list[tuple[bool, BuildingBlock]] = [(False, argument)]
    while stack:
        expanded, node = stack.pop()
        looks_through = isinstance(node, Struct) or (
            isinstance(node, Selection)
            and (isinstance(_peel(node), Struct) or _is_graph_call(_peel(node)))
        )
        if not looks_through:
            if node not in atom_positions:
                atom_positions[node] = len(atoms)
                atoms.append(node)
            position = atom_positions[node]
            count = len(tensor_leaves(node.type_signature))
            results.append([(position, k) for k in range(count)])
        elif not expanded:
            stack.append((True, node))
            stack.extend((False, child) for child in reversed(node.children()))
        elif isinstance(node, Struct):
            count = len(node.elements)
            parts = results[len(results) - count :] if count else []
            del results[len(results) - count :]
            results.append([leaf for part in parts for leaf in part])
        else:
            start, stop = _element_leaf_ranges(node.source.type_signature)[node.index]
            results[-1] = results[-1][start:stop]
    (leaves,) = results
    return atoms, leaves


class _FusedGraph:
    """Appends ops of several graphs into one, with fresh value numbers."""

    def __init__(self, parameter_type: Type | None) -> None:
        self.parameter_type = parameter_type
        leaves = [] if parameter_type is None else tensor_leaves(parameter_type)
        self.types: list[TensorType] = list(leaves)
        self.ops: list[Op] = []

    def inline(self, graph: Graph, inputs: list[int], retype: bool) -> list[int]:
        """Appends `graph`'s ops reading `inputs` for its parameter leaves; returns the new
        numbers of its outputs. `retype`: infer each op's type from its new inputs."""
        mapping = list(inputs)
        for op in graph.ops:
            op_inputs = [mapping[i] for i in op.inputs]
            result_type = op.result_type
            if retype:
                result_type = primitives.infer_result_type(
                    op.primitive, [self.types[i] for i in op_inputs], op.attrs
                )
            self.ops.append(Op(op.primitive, op_inputs, op.attrs, result_type))
            self.types.append(result_type)
            mapping.append(len(self.types) - 1)
        return [mapping[o] for o in graph.outputs]


@dataclass
class _TreeNode:
    """One local-graph call of a fusion tree: its graph and where each argument leaf comes from
    (an inner call's output, or an outside value's leaf)."""

    graph: Graph
    leaves: list[tuple[int, int]]  # (atom of this call's argument, leaf of that atom)
    atoms: list[tuple[str, int]]  # ("call", tree node) or ("outside", part)


@dataclass
class FusionTree:
    """The local-graph calls nested (through structs and selections) in one root call.

    `nodes` come children first, the root last; `outside` are the values the
    calls read that are not local-graph calls, each once: the fused graph's parameter.
    """

    nodes: list[_TreeNode] = field(default_factory=list)
    outside: list[BuildingBlock] = field(default_factory=list)


def fusion_tree(root: Call) -> FusionTree | None:
    """The fusion tree of the local-graph call `root`, or None if it reads no other such call.

    An inner call written twice is one node. No recursion: calls can nest deeply.
    """
    tree = FusionTree()
    node_of: dict[BuildingBlock, int] = {}
    outside_of: dict[BuildingBlock, int] = {}
    pending: dict[BuildingBlock, tuple] = {}
    stack: list[tuple[bool, Call]] = [(False, root)]
    while stack:
        expanded, call = stack.pop()
        if call in node_of:
            continue
        if not expanded:
            has_argument = call.argument is not None
            atoms, leaves = argument_leaves(call.argument) if has_argument else ([], [])
            pending[call] = (atoms, leaves)
            stack.append((True, call))
            stack.extend((False, atom) for atom in reversed(atoms) if _is_graph_call(atom))
            continue
        atoms, leaves = pending.pop(call)
        sources = []
        for atom in atoms:
            if _is_graph_call(atom):
                sources.append(("call", node_of[atom]))
            else:
                if atom not in outside_of:
                    outside_of[atom] = len(tree.outside)
                    tree.outside.append(atom)
                sources.append(("outside", outside_of[atom]))
        node_of[call] = len(tree.nodes)
        tree.nodes.append(_TreeNode(call.function.graph, leaves, sources))
    return tree if len(tree.nodes) > 1 else None


def fused_call(tree: FusionTree, outside: list[BuildingBlock]) -> Call | None:
    """One local-graph call computing the tree's root on `outside` (the tree's outside values,
    maybe rewritten, of the same types); None if an op rejects its narrower input types."""
    types = [value.type_signature for value in outside]
    if not outside:
        parameter_type, argument = None, None
    elif len(outside) == 1:
        parameter_type, argument = types[0], outside[0]
    else:
        parameter_type, argument = StructType(types), Struct(outside)
    fused = _FusedGraph(parameter_type)
    offsets, next_leaf = [], 0
    for t in types:
        offsets.append(next_leaf)
        next_leaf += len(tensor_leaves(t))
    outputs: list[list[int]] = []
    try:
        for node in tree.nodes:
            inputs = []
            for atom, leaf in node.leaves:
                kind, index = node.atoms[atom]
                inputs.append(outputs[index][leaf] if kind == "call" else offsets[index] + leaf)
            outputs.append(fused.inline(node.graph, inputs, retype=True))
        root = tree.nodes[-1].graph
        graph = Graph(parameter_type, fused.ops, outputs[-1], root.result_type)
    except FederatedTypeError:
        return None
    return Call(LocalGraph(graph), argument)


_VISIT, _EXIT, _FUSE = 0, 1, 2


def fuse_local(comp: BuildingBlock) -> BuildingBlock:
    """`comp` with each outermost local-graph call fused with the calls nested in its argument.

    Walks top-down, so a chain of n calls becomes one graph in one step (linear
    in its ops), then goes on into the values the fused graph reads.
    """
    results: list[BuildingBlock] = []
    stack: list[tuple] = [(_VISIT, comp)]
    while stack:
        task = stack.pop()
        kind, node = task[0], task[1]
        if kind == _VISIT:
            tree = fusion_tree(node) if _is_graph_call(node) else None
            if tree is not None:
                stack.append((_FUSE, node, tree))
                stack.extend((_VISIT, value) for value in reversed(tree.outside))
                continue
            children = node.children()
            stack.append((_EXIT, node, len(children)))
            stack.extend((_VISIT, child) for child in reversed(children))
            continue
        count = len(task[2].outside) if kind == _FUSE else task[2]
        children = results[len(results) - count :]
        del results[len(results) - count :]
        if kind == _EXIT:
            results.append(with_children(node, children))
            continue
        fused = fused_call(task[2], children)
        if fused is None:
            # Not fusible as a whole: rewrite inside it as usual.
            stack.append((_EXIT, node, len(node.children())))
            stack.extend((_VISIT, child) for child in reversed(node.children()))
            continue
        results.append(fused)
    (result,) = results
    return result


FUSE_LOCAL = register_pass(
    FunctionPass(
        "fuse-local",
        "fuses a local graph applied to other local graphs' results into one graph",
        fuse_local,
    )
)
