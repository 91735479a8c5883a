"""A small declarative validator for message bodies (msgpack-decoded values).

Schemas are built from a few node types and checked strictly: unknown keys
are refused unless a map allows them, ints are never floats, and every
string and list has a bound. A failure raises :class:`SchemaError` whose
message names the path (``body.items[2].sats: expected int``).
"""

from __future__ import annotations

import re

from .errors import SchemaError


class Node:
    def check(self, value, path):  # pragma: no cover - interface
        raise NotImplementedError

    def fail(self, path, what):
        raise SchemaError(f"{path}: {what}")


class Int(Node):
    def __init__(self, min=None, max=None):
        self.min, self.max = min, max

    def check(self, value, path):
        if type(value) is not int:
            self.fail(path, f"expected int, got {type(value).__name__}")
        if self.min is not None and value < self.min:
            self.fail(path, f"{value} < {self.min}")
        if self.max is not None and value > self.max:
            self.fail(path, f"{value} > {self.max}")


class Str(Node):
    def __init__(self, max=256, pattern=None, choices=None):
        self.max = max
        self.pattern = re.compile(pattern) if pattern else None
        self.choices = frozenset(choices) if choices else None

    def check(self, value, path):
        if not isinstance(value, str):
            self.fail(path, f"expected str, got {type(value).__name__}")
        if len(value) > self.max:
            self.fail(path, f"string longer than {self.max}")
        if self.pattern and not self.pattern.fullmatch(value):
            self.fail(path, f"{value[:40]!r} does not match {self.pattern.pattern}")
        if self.choices is not None and value not in self.choices:
            self.fail(path, f"{value[:40]!r} not one of {sorted(self.choices)}")


class Bytes(Node):
    def __init__(self, max=4096, size=None):
        self.max, self.size = max, size

    def check(self, value, path):
        if not isinstance(value, bytes):
            self.fail(path, f"expected bytes, got {type(value).__name__}")
        if self.size is not None and len(value) != self.size:
            self.fail(path, f"expected {self.size} bytes, got {len(value)}")
        if len(value) > self.max:
            self.fail(path, f"more than {self.max} bytes")


class Bool(Node):
    def check(self, value, path):
        if type(value) is not bool:
            self.fail(path, f"expected bool, got {type(value).__name__}")


class List(Node):
    def __init__(self, item: Node, max=256):
        self.item, self.max = item, max

    def check(self, value, path):
        if not isinstance(value, list):
            self.fail(path, f"expected list, got {type(value).__name__}")
        if len(value) > self.max:
            self.fail(path, f"more than {self.max} items")
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")


class Opt(Node):
    """An optional map field; ``None`` is also accepted as a value."""

    def __init__(self, node: Node):
        self.node = node

    def check(self, value, path):
        if value is not None:
            self.node.check(value, path)


class Any(Node):
    """Any msgpack value of bounded nesting (for free-form debug bodies)."""

    def __init__(self, depth=8):
        self.depth = depth

    def check(self, value, path, depth=0):
        if depth > self.depth:
            self.fail(path, f"nested deeper than {self.depth}")
        if isinstance(value, dict):
            for k, v in value.items():
                self.check(v, f"{path}.{k}", depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.check(v, f"{path}[{i}]", depth + 1)
        elif isinstance(value, float):
            self.fail(path, "floats are not allowed (use integer units or a decimal string)")


class Map(Node):
    def __init__(self, fields: dict[str, Node], extra: Node | None = None, max=64):
        self.fields, self.extra, self.max = fields, extra, max
        self.required = {k for k, v in fields.items() if not isinstance(v, Opt)}

    def check(self, value, path="body"):
        if not isinstance(value, dict):
            self.fail(path, f"expected map, got {type(value).__name__}")
        if len(value) > self.max:
            self.fail(path, f"more than {self.max} keys")
        missing = self.required - value.keys()
        if missing:
            self.fail(path, f"missing {sorted(missing)}")
        for key, val in value.items():
            node = self.fields.get(key, self.extra)
            if node is None:
                self.fail(path, f"unexpected key {str(key)[:40]!r}")
            node.check(val, f"{path}.{key}")


class Registry:
    """Maps topic families to body schemas.

    A family is a whole-segment prefix (``"vault.req"`` covers ``vault.req.vm1``);
    ``*`` stands for exactly one segment (``"machine.*.vend.ack"``). The family
    with the most segments wins.
    """

    def __init__(self):
        self._families: list[tuple[tuple[str, ...], Map]] = []

    def register(self, family: str, schema: Map) -> None:
        segments = tuple(family.strip(".").split("."))
        self._families = [(f, s) for f, s in self._families if f != segments] + [(segments, schema)]
        self._families.sort(key=lambda fs: -len(fs[0]))

    def schema_for(self, topic: str) -> Map | None:
        parts = topic.split(".")
        for family, schema in self._families:
            if len(family) <= len(parts) and all(f in ("*", p) for f, p in zip(family, parts)):
                return schema
        return None

    def families(self):
        return sorted((".".join(f), s) for f, s in self._families)
