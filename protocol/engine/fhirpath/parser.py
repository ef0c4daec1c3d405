"""Parsing with fhirpathpy's ANTLR grammar into a tree, and every compile-time check (syntax, functions, arity, literals)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from protocol.engine.fhirpath.context import FhirPathSyntaxError
from protocol.engine.fhirpath.datetimes import _parse_time, _valid_datetime_text
from protocol.engine.fhirpath.functions import ARITIES


class _RaisingErrorListener(ErrorListener):
    """Turns the first lexer/parser error into FhirPathSyntaxError (antlr would recover silently)."""

    def __init__(self, expression: str) -> None:
        self._expression = expression

    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802, N803
        raise FhirPathSyntaxError(f"{msg} at column {column + 1} of {self._expression!r}")


def _parse(expression: str) -> dict:
    """Parse the whole text (fhirpathpy's parse() ignores trailing input and errors) into its AST."""
    if not isinstance(expression, str):
        raise FhirPathSyntaxError(f"expression must be a string, got {type(expression).__name__}")
    listener = _RaisingErrorListener(expression)
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.entireExpression()
    builder = ASTPathListener()
    ParseTreeWalker().walk(builder, tree.expression())
    return builder.parentStack[0]


def _inspect(ast: dict, expression: str) -> frozenset[str]:
    """Collect the %variable names and check every called function exists with a valid arity."""
    names: set[str] = set()
    stack = [ast]
    while stack:
        node = stack.pop()
        kind = node.get("type")
        if kind == "ExternalConstant":
            children = node.get("children")
            if children:
                name = re.sub(r'(^"|"$)', "", children[0]["text"]).replace("`", "")
            else:  # %'name' form: give it an identifier child, as %name has
                name = node["terminalNodeText"][1][1:-1]
                node["children"] = [{"type": "Identifier", "text": name, "terminalNodeText": [name]}]
            names.add(name)
        elif kind == "DateTimeLiteral":
            text = node["text"][1:]
            if not _valid_datetime_text(text[:-1] if text.endswith("T") else text):
                raise FhirPathSyntaxError(
                    f"invalid or unsupported date/time literal {node['text']} in {expression!r}"
                )
        elif kind == "TimeLiteral":
            if _parse_time(node["text"][2:]) is None:
                raise FhirPathSyntaxError(f"invalid time literal {node['text']} in {expression!r}")
        elif kind == "Functn":
            fn_name = node["children"][0]["text"]
            params = node["children"][1].get("children", []) if len(node["children"]) > 1 else []
            if fn_name not in ARITIES:
                raise FhirPathSyntaxError(f"unknown function {fn_name}() (the engine does not have it) in {expression!r}")
            allowed = ARITIES[fn_name]
            if allowed is None:
                if not params:
                    raise FhirPathSyntaxError(f"{fn_name}() takes one or more arguments, got none in {expression!r}")
            elif len(params) not in allowed:
                raise FhirPathSyntaxError(
                    f"{fn_name}() takes {sorted(allowed)} argument(s), got {len(params)} in {expression!r}"
                )
        stack.extend(node.get("children", ()))
    names.discard("ucum")
    return frozenset(names)


def _identifier_text(node: dict) -> str:
    """The name an identifier node stands for (double quotes removed)."""
    return re.sub(r'(^"|"$)', "", node["text"])


def _parse_checked(expression: str) -> tuple[dict, frozenset[str]]:
    """The parse tree of an expression and its %variable names, after every compile-time check.

    A syntax error, an empty expression, a function the engine does not have (named in the message),
    a wrong number of arguments or an invalid date/time literal is a FhirPathSyntaxError.  The tree's
    root node has the expression as only child.
    """
    root = _parse(expression)
    if not root.get("children"):
        raise FhirPathSyntaxError(f"empty expression {expression!r}")
    return root, _inspect(root, expression)


# ---------------------------------------------------------------- literals

_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unescaped(text: str) -> str:
    """The characters a quoted string or identifier stands for (FHIRPath escapes: \\' \\n \\u0041 ...)."""
    def one(match: re.Match) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return _ESCAPE_RE.sub(one, text)


def string_literal(node: dict) -> str:
    """The value of a StringLiteral node."""
    return _unescaped(node["text"][1:-1])


def number_literal(node: dict) -> Any:
    """The value of a NumberLiteral node: an int, or a Decimal when written with a decimal point."""
    text = node["text"]
    return Decimal(text) if "." in text else int(text)


def quantity_literal(node: dict) -> tuple[Decimal, str | None]:
    """(value, unit) of a QuantityLiteral node: the unit a calendar word or a quoted UCUM code as written."""
    quantity = node["children"][0]
    value = Decimal(quantity["terminalNodeText"][0])
    unit_node = quantity["children"][0]
    if unit_node.get("terminalNodeText"):
        unit = unit_node["terminalNodeText"][0]
    elif unit_node.get("children"):
        unit = unit_node["children"][0]["terminalNodeText"][0]
    else:
        unit = None
    if unit is not None and unit.startswith("'"):
        unit = "'" + _unescaped(unit[1:-1]) + "'"
    return value, unit
