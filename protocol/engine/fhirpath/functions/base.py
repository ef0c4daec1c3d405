"""Builders shared by the function library: functions of their input alone, of typed arguments, of a collection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.engine.fhirpath.runtime import (
    Compiling,
    _folded,
    _integer_argument,
    _number_argument,
    _Run,
    _State,
    _string_argument,
)

#: A function's builder: (the compiler, its parameter nodes) -> its closure run(input, state).
Builder = Callable[[Compiling, list], _Run]
#: A library entry: the builder and the numbers of arguments the function takes (None: one or more).
Entry = tuple[Builder, "frozenset[int] | None"]


def arities(*counts: int) -> frozenset[int]:
    """The numbers of arguments a function takes."""
    return frozenset(counts)


def _fn_simple(compute: Callable[[list], list]) -> Callable[[Compiling, list], _Run]:
    """A function without arguments computing its result from its input."""

    def build(compiler: Compiling, params: list) -> _Run:
        return lambda data, st: compute(data)

    return build


def _fn_nullable(compute: Callable[..., list], *kinds: str) -> Callable[[Compiling, list], _Run]:
    """A function of one input string-ish value: empty input gives empty; typed arguments."""
    converters = {"String": _string_argument, "Integer": _integer_argument, "Number": _number_argument}

    def build(compiler: Compiling, params: list) -> _Run:
        runs = [compiler.compile(p) for p in params]
        folded = [_folded(converters[kinds[i]], run) for i, run in enumerate(runs)]
        if all(ok for ok, _ in folded):
            constants = [value for _, value in folded]

            def with_constants(data: list, st: _State) -> list:
                if not data:
                    return []
                return compute(data, *constants)

            return with_constants
        arguments = [(run, converters[kinds[i]]) for i, run in enumerate(runs)]

        def run(data: list, st: _State) -> list:
            if not data:
                return []
            values = [convert(arg(st.this, st)) for arg, convert in arguments]
            return compute(data, *values)

        return run

    return build


def _fn_with_collection(compute: Callable[[list, list], list]) -> Callable[[Compiling, list], _Run]:
    """A function of its input and one collection argument (union, intersect ...)."""

    def build(compiler: Compiling, params: list) -> _Run:
        other = compiler.value(params[0])
        return lambda data, st: compute(data, other(st))

    return build


def _fn_with_integer(compute: Callable[[list, Any], list]) -> Callable[[Compiling, list], _Run]:
    def build(compiler: Compiling, params: list) -> _Run:
        argument = compiler.value(params[0])
        return lambda data, st: compute(data, _integer_argument(argument(st)))

    return build
