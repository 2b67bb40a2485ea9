"""Renders programs as Graphviz DOT: one cluster per computation, one box per node.

Equal subtrees are drawn once (the IR is compared structurally, so a DAG view
shows sharing that the tree text hides). Local graphs are drawn as a box that
lists their ops, one a line.
"""

from __future__ import annotations

import json

from fedcc.ir import building_blocks as bb
from fedcc.ir.program import Program


def _quote(text: str) -> str:
    return json.dumps(text)


def _node_label(node: bb.BuildingBlock) -> str:
    if isinstance(node, bb.Reference):
        head = f"ref {node.name}"
    elif isinstance(node, bb.Lambda):
        head = f"lambda {node.parameter_name or ''}".rstrip()
    elif isinstance(node, bb.Block):
        head = "let " + ", ".join(name for name, _ in node.locals)
    elif isinstance(node, bb.Selection):
        head = f"select [{node.index}]"
    elif isinstance(node, bb.Intrinsic):
        head = node.uri
    elif isinstance(node, bb.Placement):
        head = node.placement.name
    elif isinstance(node, bb.Literal):
        head = f"literal {node.value.tolist()!r}" if node.value.size <= 8 else "literal"
    elif isinstance(node, bb.Data):
        head = f"data {node.uri}"
    elif isinstance(node, bb.LocalGraph):
        lines = [f"%{node.graph.num_parameters + i} = {op.primitive}"
                 for i, op in enumerate(node.graph.ops)]
        head = "graph\\l" + "\\l".join(lines)
    else:
        head = node.kind
    return f"{head}\\n{node.type_signature}"


def _edge_labels(node: bb.BuildingBlock) -> list[str]:
    if isinstance(node, bb.Block):
        return [name for name, _ in node.locals] + ["in"]
    if isinstance(node, bb.Call):
        return ["fn", "arg"]
    if isinstance(node, bb.Struct):
        return [name or str(i) for i, (name, _) in enumerate(node.elements)]
    return [""] * len(node.children())


def to_dot(x: bb.BuildingBlock | Program) -> str:
    """The program (or one building block) as a Graphviz `digraph`."""
    program = x if isinstance(x, Program) else Program({"main": x})
    ids: dict[bb.BuildingBlock, str] = {}
    lines = ["digraph fedcc {", '  node [shape=box, fontname="monospace"];']
    for index, (name, comp) in enumerate(program.computations.items()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_quote(name)};")
        for node in bb.post_order(comp):
            if node in ids:
                continue
            node_id = f"n{len(ids)}"
            ids[node] = node_id
            label = _quote(_node_label(node)).replace("\\\\", "\\")
            lines.append(f"    {node_id} [label={label}];")
            for child, edge in zip(node.children(), _edge_labels(node)):
                attr = f" [label={_quote(edge)}]" if edge else ""
                lines.append(f"    {node_id} -> {ids[child]}{attr};")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
