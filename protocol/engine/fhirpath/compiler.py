"""The compiler: a parse tree turned once into closures over plain JSON values, and the evaluator built on it.

The parse tree (protocol.engine.fhirpath.parser) is compiled once into closures ``run(input, state) -> list``.
``%name`` reads the caller's mapping when it is reached (``name in env`` then ``env[name]``, at every read),
``and``/``or``/``implies`` do not evaluate their right operand when the left one decides, and three-valued
logic, empty propagation and singleton evaluation follow FHIRPath 2.0.

What keeps an evaluation cheap: one element is navigated straight from its JSON (the usual case inside
``where()``), and consecutive member names (``clinicalStatus.coding``) run as one step; ``name = 'text'``
and ``path.exists()``/``path.empty()`` read the JSON directly when the element's type allows; chains of
``and``/``or`` run as one loop; literal arguments and operands are converted once; the type of a member is
looked up once per parent type, ``ofType()`` once per type; date arithmetic and date comparison keys are
remembered.  Each of these gives the same result as the general path, which remains for every other case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhirpathpy.models import models

from protocol.engine.fhirpath.context import (
    CompiledExpression,
    EvaluationContext,
    EvaluationTimeout,
    FhirPathEvaluationError,
    FhirPathSyntaxError,
)
from protocol.engine.fhirpath.functions import BUILDERS
from protocol.engine.fhirpath.membership import _distinct
from protocol.engine.fhirpath.navigation import (
    _is_capitalized,
    _member_equals_text,
    _member_exists,
    _members,
    _resource_type_of,
    _type_filter,
)
from protocol.engine.fhirpath.operators import (
    _OPERATORS,
    _logical_chain,
    _op_equal_text,
)
from protocol.engine.fhirpath.parser import (
    _identifier_text,
    _parse_checked,
    number_literal,
    quantity_literal,
    string_literal,
)
from protocol.engine.fhirpath.runtime import (
    _data,
    _EnvFailure,
    _is_extension_only,
    _is_number,
    _Run,
    _State,
    _Undefined,
)
from protocol.engine.fhirpath.types import _type_specifier, _Types
from protocol.engine.fhirpath.values import (
    UCUM,
    DateTime,
    Node,
    Quantity,
    Time,
    _to_json,
    _type_name,
)

_new = object.__new__
# ---------------------------------------------------------------- the compiler


def _strip_quotes(node: dict) -> str:
    return _identifier_text(node).replace("`", "")


class _Compiler:
    """Turns a parse tree into closures (see the module docstring)."""

    def __init__(self, model: dict, types: _Types) -> None:
        self.model = model
        self.types = types

    def compile(self, node: dict) -> _Run:
        builder = self._BUILDERS.get(node.get("type"))
        if builder is None:
            raise FhirPathSyntaxError(f"unsupported expression {node.get('text')!r} ({node.get('type')})")
        return builder(self, node)

    # -- terms

    def _pass_through(self, node: dict) -> _Run:
        return self.compile(node["children"][0])

    def _literal_term(self, node: dict) -> _Run:
        children = node.get("children") or []
        if children and children[0]:
            return self.compile(children[0])
        value = node["text"]
        return lambda data, st: [value]

    def _constant(self, node: dict) -> _Run:
        kind = node["type"]
        if kind == "StringLiteral":
            value: Any = string_literal(node)
        elif kind == "NumberLiteral":
            value = number_literal(node)
        else:
            value = node["text"] == "true"
        run = lambda data, st: [value]  # noqa: E731
        run.constant = value  # type: ignore[attr-defined]  (read by operators and functions: see _constant_of)
        return run

    def _null(self, node: dict) -> _Run:
        return lambda data, st: []

    def _quantity(self, node: dict) -> _Run:
        value = Quantity(*quantity_literal(node))
        return lambda data, st: [value]

    def _datetime_literal(self, node: dict) -> _Run:
        value = DateTime(node["text"][1:])
        return lambda data, st: [value]

    def _time_literal(self, node: dict) -> _Run:
        value = Time(node["text"][2:])
        return lambda data, st: [value]

    def _this(self, node: dict) -> _Run:
        return lambda data, st: st.this

    def _index(self, node: dict) -> _Run:
        def index(data: list, st: _State) -> list:
            if st.index is None:
                raise KeyError("$index")
            return [st.index]

        return index

    def _total(self, node: dict) -> _Run:
        def total(data: list, st: _State) -> list:
            if st.total is None:
                raise KeyError("$total")
            return st.total

        return total

    def _external_constant(self, node: dict) -> _Run:
        name = _strip_quotes(node["children"][0]["children"][0])

        def variable(data: list, st: _State) -> list:
            env = st.env
            try:
                if name in env:
                    value = env[name]
                elif name == "context":
                    value = st.focus
                elif name == "ucum":
                    value = UCUM
                else:
                    raise _Undefined(name)
            except (_Undefined, EvaluationTimeout):
                raise
            except Exception as exc:
                raise _EnvFailure(exc) from exc
            if value is None:
                return []
            if type(value) is list:
                return value
            if isinstance(value, list):
                return list(value)
            return [value]

        return variable

    # -- paths

    def _invocation_expression(self, node: dict) -> _Run:
        """a.b.c(): the steps in order, consecutive member names followed together."""
        steps: list[dict] = []
        while node.get("type") == "InvocationExpression":
            steps.append(node["children"][1])
            node = node["children"][0]
        steps.append(node)
        steps.reverse()
        runs: list[_Run] = []
        keys: list[str] = []
        for step in steps:
            key = self._member_key(step)
            if key is not None and not _is_capitalized(key):
                keys.append(key)
                continue
            if keys:
                members = _members(self.model, keys)
                keys = []
                test = self._function_name(step)
                if test in ("exists", "empty"):
                    runs.append(_member_exists(members, negate=test == "empty"))
                    continue
                runs.append(members)
            runs.append(self.compile(step))
        if keys:
            runs.append(_members(self.model, keys))
        if len(runs) == 1:
            return runs[0]
        if len(runs) == 2:
            first, second = runs

            def chain2(data: list, st: _State) -> list:
                return second(first(data, st), st)

            return chain2
        if len(runs) == 3:
            first, second, third = runs

            def chain3(data: list, st: _State) -> list:
                return third(second(first(data, st), st), st)

            return chain3

        def chain(data: list, st: _State) -> list:
            for run in runs:
                data = run(data, st)
            return data

        return chain

    @staticmethod
    def _function_name(node: dict) -> str | None:
        """The name of a function step called without arguments (``exists`` in ``code.exists()``), else None."""
        if node.get("type") != "FunctionInvocation":
            return None
        functn = node["children"][0]
        parts = functn.get("children") or []
        if functn.get("type") != "Functn" or len(parts) != 1 or parts[0].get("type") != "Identifier":
            return None
        return _identifier_text(parts[0])

    @staticmethod
    def _member_key(node: dict) -> str | None:
        """The name of a member step (``code`` in ``code.coding``), or None for another kind of step."""
        while node.get("type") in ("TermExpression", "InvocationTerm"):
            node = node["children"][0]
        if node.get("type") != "MemberInvocation":
            return None
        identifier = node["children"][0]
        if identifier.get("type") != "Identifier":
            return None
        return _strip_quotes(identifier)

    def _member_invocation(self, node: dict) -> _Run:
        identifier = node["children"][0]
        if identifier.get("type") != "Identifier":
            raise FhirPathSyntaxError(f"unsupported member {identifier.get('text')!r}")
        key = _strip_quotes(identifier)
        return _type_filter(self.model, key) if _is_capitalized(key) else _members(self.model, [key])

    def _indexer(self, node: dict) -> _Run:
        collection, index = (self.compile(child) for child in node["children"][:2])

        def indexer(data: list, st: _State) -> list:
            items = collection(data, st)
            position = index(data, st)
            if not position:
                return []
            number = int(_data(position[0]))
            if 0 <= number < len(items):
                return [items[number]]
            return []

        return indexer

    def _polarity(self, node: dict) -> _Run:
        sign = node["terminalNodeText"][0]
        operand = self.compile(node["children"][0])

        def polarity(data: list, st: _State) -> list:
            values = operand(data, st)
            if len(values) != 1:
                raise ValueError(f"Unary {sign} can only be applied to an individual number.")
            value = values[0]
            if not _is_number(value):
                raise ValueError(f"Unary {sign} can only be applied to a number.")
            return [-value] if sign == "-" else [value]

        return polarity

    # -- operators

    def _operator(self, node: dict) -> _Run:
        op = node["terminalNodeText"][0]
        builder = _OPERATORS.get(op)
        if builder is None:
            raise FhirPathSyntaxError(f"unsupported operator {op}")
        left, right = node["children"][:2]
        if op in ("and", "or"):
            operands = [right]
            while left.get("type") == node["type"] and left["terminalNodeText"][0] == op:
                left, right = left["children"][:2]
                operands.append(right)
            operands.append(left)
            operands.reverse()
            return _logical_chain([self.compile(operand) for operand in operands], op == "and")
        if op in ("=", "!=") and self._string_literal(right) is not None:
            operand = self.compile(left)
            if getattr(operand, "member", None) is not None:
                return _member_equals_text(operand, self._string_literal(right), op == "!=")
            return _op_equal_text(operand, self._string_literal(right), op == "!=")
        if op in ("is", "as"):
            namespace, name = _type_specifier(right["text"])
            return builder(self.compile(left), namespace, name, self.types)
        return builder(self.compile(left), self.compile(right))

    @staticmethod
    def _string_literal(node: dict) -> str | None:
        """The value of a string literal operand, or None for another kind of operand."""
        while node.get("type") in ("TermExpression", "LiteralTerm") and node.get("children"):
            node = node["children"][0]
        if node.get("type") != "StringLiteral":
            return None
        return string_literal(node)

    def _union(self, node: dict) -> _Run:
        left, right = (self.compile(child) for child in node["children"][:2])

        def union(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            return _distinct(a + b)

        return union

    # -- functions

    def _function(self, node: dict) -> _Run:
        functn = node["children"][0]
        parts = functn["children"]
        name = _identifier_text(parts[0])
        params = parts[1]["children"] if len(parts) > 1 and "children" in parts[1] else []
        builder = BUILDERS.get(name)
        if builder is None:
            raise FhirPathSyntaxError(f"unknown function {name}() (the engine does not have it)")
        return builder(self, params)

    def value(self, node: dict) -> Callable[[_State], list]:
        """An argument evaluated on $this (the current item of the enclosing iteration, or the input)."""
        run = self.compile(node)
        return lambda st: run(st.this, st)

    def expression(self, node: dict) -> _Run:
        """An argument evaluated per item (or on the function's input): the caller sets $this to its input."""
        return self.compile(node)

    _BUILDERS: dict[str, Callable[[_Compiler, dict], _Run]] = {}


_Compiler._BUILDERS = {
    "TermExpression": _Compiler._pass_through,
    "InvocationTerm": _Compiler._pass_through,
    "ParenthesizedTerm": _Compiler._pass_through,
    "LiteralTerm": _Compiler._literal_term,
    "NumberLiteral": _Compiler._constant,
    "StringLiteral": _Compiler._constant,
    "BooleanLiteral": _Compiler._constant,
    "NullLiteral": _Compiler._null,
    "QuantityLiteral": _Compiler._quantity,
    "DateTimeLiteral": _Compiler._datetime_literal,
    "TimeLiteral": _Compiler._time_literal,
    "ThisInvocation": _Compiler._this,
    "IndexInvocation": _Compiler._index,
    "TotalInvocation": _Compiler._total,
    "ExternalConstantTerm": _Compiler._external_constant,
    "InvocationExpression": _Compiler._invocation_expression,
    "MemberInvocation": _Compiler._member_invocation,
    "FunctionInvocation": _Compiler._function,
    "IndexerExpression": _Compiler._indexer,
    "PolarityExpression": _Compiler._polarity,
    "UnionExpression": _Compiler._union,
    "InequalityExpression": _Compiler._operator,
    "AdditiveExpression": _Compiler._operator,
    "MultiplicativeExpression": _Compiler._operator,
    "EqualityExpression": _Compiler._operator,
    "MembershipExpression": _Compiler._operator,
    "TypeExpression": _Compiler._operator,
    "AndExpression": _Compiler._operator,
    "OrExpression": _Compiler._operator,
    "XorExpression": _Compiler._operator,
    "ImpliesExpression": _Compiler._operator,
}


# ---------------------------------------------------------------- compiled expressions and the evaluator


class _Expression:
    """An expression compiled to closures: evaluated per request without parsing again."""

    __slots__ = ("source", "variables", "_run")

    def __init__(self, source: str, variables: frozenset[str], run: _Run) -> None:
        self.source = source
        self.variables = variables
        self._run = run

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r})"

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results.

        An error of the expression (a wrong operand, an undefined %variable, a failing read of ``env``) is a
        FhirPathEvaluationError naming the expression; EvaluationTimeout goes through unchanged.
        """
        if focus is None:
            root: list = []
        elif isinstance(focus, list):
            root = focus
        else:
            root = [focus]
        st = _new(_State)
        st.env = env
        st.focus = focus
        st.ctx = ctx
        st.this = root
        st.index = st.total = st._offset = st.members = None
        try:
            result = self._run(root, st)
        except _Undefined as exc:
            raise FhirPathEvaluationError(
                f"{self.source!r}: ValueError: Attempting to access an undefined environment variable: {exc}"
            ) from None
        except _EnvFailure as exc:
            error = exc.error
            if isinstance(error, FhirPathEvaluationError):
                raise error from None
            raise FhirPathEvaluationError(f"{self.source!r}: {type(error).__name__}: {error}") from error
        except EvaluationTimeout:
            raise
        except FhirPathEvaluationError:
            raise
        except Exception as exc:
            raise FhirPathEvaluationError(f"{self.source!r}: {type(exc).__name__}: {exc}") from exc
        for item in result:
            if type(item) is Node and type(item.data) is dict and "extension" in item.data:
                return [item for item in result if not _is_extension_only(item)]
        return list(result)


class FhirPathEvaluator:
    """The FHIRPath engine: compiles expressions to closures over plain JSON values (R4 model by default)."""

    def __init__(self, model: dict | None = None) -> None:
        self._model = models["r4"] if model is None else model
        self._types = _Types(self._model)

    def compile(self, expression: str) -> CompiledExpression:
        """Parse once with every compile-time check (FhirPathSyntaxError, naming an unsupported function) and compile."""
        root, variables = _parse_checked(expression)
        try:
            run = _Compiler(self._model, self._types).compile(root["children"][0])
        except FhirPathSyntaxError as exc:
            raise FhirPathSyntaxError(f"{exc} in {expression!r}") from None
        except (ValueError, KeyError) as exc:
            raise FhirPathSyntaxError(f"{exc} in {expression!r}") from exc
        return _Expression(expression, variables, run)

    def node(self, resource: dict) -> Any:
        """Wrap a resource dict as a typed value (its type comes from resourceType)."""
        if type(resource) is Node:
            return resource
        return Node(resource, _resource_type_of(resource))

    def to_json(self, value: Any) -> Any:
        """One raw result item as plain JSON (Quantity dicts, FHIR date/time strings, int/float numbers)."""
        return _to_json(value)

    def type_name(self, value: Any) -> str | None:
        """FHIR type of one raw result item (to fill a choice element such as medication[x])."""
        return _type_name(value)
