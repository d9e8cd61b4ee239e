"""The shape the codebase keeps (issue: the orchestration an expert would want to live in):
no function in cdscale/ over 60 lines, and no public function with more than 7 parameters."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cdscale"
MAX_LINES, MAX_PARAMS = 60, 7


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node


def _params(node: ast.FunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


@pytest.mark.parametrize("limit", ["lines", "parameters"])
def test_functions_are_short_and_public_ones_take_few_parameters(limit):
    functions = list(_functions())
    assert len(functions) > 100  # the walk found the package
    if limit == "lines":
        over = [
            f"{where} ({node.end_lineno - node.lineno + 1} lines)"
            for where, node in functions
            if node.end_lineno - node.lineno + 1 > MAX_LINES
        ]
    else:
        over = [
            f"{where} ({_params(node)} parameters)"
            for where, node in functions
            if not node.name.startswith("_") and _params(node) > MAX_PARAMS
        ]
    assert not over, "\n".join(over)
