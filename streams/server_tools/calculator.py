"""calculator: arithmetic a model gets wrong, done exactly. Parsed with `ast` and walked node by node: only
numbers, + - * / // % **, parentheses and a fixed set of math functions and constants exist; no name, attribute,
call or literal outside that set is ever evaluated (no `eval`). Sizes are bounded before they are computed, so
`9**9**9` is refused instead of eating the worker's CPU."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from streams.server_tools.base import Tool, ToolContext, ToolError

# Held by the grammar too (the schema's maxLength): a small model that runs on inside the string is stopped here.
# SmolLM2-135M was seen writing "12 * 7 = 84. 12 * 7 is 84. ..." into the expression until a 500-character
# bound; 120 characters hold any expression a person would type on a calculator line.
MAX_CHARS = 120
MAX_NODES = 200
MAX_MAGNITUDE = 10**100  # integers beyond this are refused (floats overflow to inf, also refused)
MAX_EXPONENT = 1000

BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or not 0 <= n <= 170:
        raise ToolError("factorial takes a whole number from 0 to 170")
    return math.factorial(n)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "floor": math.floor, "ceil": math.ceil, "round": round, "abs": abs, "min": min, "max": max,
    "factorial": _factorial}


def evaluate(expression: str) -> int | float:
    """The value of `expression`; ToolError saying what is not allowed or cannot be computed."""
    if len(expression) > MAX_CHARS:
        raise ToolError(f"the expression is longer than {MAX_CHARS} characters")
    if not expression.strip():
        raise ToolError("the expression is empty: write one, such as 12*7")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"the expression has more than {MAX_NODES} parts")
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (ValueError, OverflowError, TypeError) as exc:
        raise ToolError(f"cannot compute: {exc}") from None
    return _checked(value)


def _checked(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    if isinstance(value, int) and abs(value) > MAX_MAGNITUDE:
        raise ToolError("the result is too large")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return _checked(UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or
                                             (abs(left) > 1 and abs(right) * math.log10(abs(left)) > 100)):
            raise ToolError("the power is too large")
        return _checked(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords and len(node.args) <= 4:
        return _checked(FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
    what = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else \
        node.id if isinstance(node, ast.Name) else type(node).__name__
    raise ToolError(f"{what!s} is not allowed: only numbers, + - * / // % ** ^, parentheses, "
                    f"{', '.join(sorted(FUNCTIONS))} and {', '.join(sorted(CONSTANTS))}")


async def _run(_ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"expression": args["expression"], "value": evaluate(args["expression"])}


TOOL = Tool(
    name="calculator",
    description="Evaluates an arithmetic expression exactly: numbers, + - * / // % ** (or ^), parentheses, "
                "sqrt, exp, log(x[, base]), log10, log2, sin, cos, tan, asin, acos, atan, floor, ceil, round, "
                "abs, min, max, factorial, and the constants pi, e, tau.",
    # minLength: the grammar then holds a model to writing something (SmolLM2 otherwise sends "" at times).
    parameters={"type": "object", "properties": {"expression": {"type": "string", "minLength": 1,
                                                                "maxLength": MAX_CHARS}},
                "required": ["expression"], "additionalProperties": False},
    handler=_run, timeout_s=2.0)
