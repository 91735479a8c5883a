"""``policy.toml``: who may publish and subscribe which topics, and read which secrets.

Grants are topic prefixes matched segment by segment: ``machine.{self}``
grants ``machine.vm1`` and everything under it, never ``machine.vm10``.
``{self}`` is the identity's own name; ``""`` grants everything. An
identity's grants are the union of ``[all]``, ``[role.ROLE]`` and
``[identity.NAME]``::

    [all]
    publish = ["health.{self}", "error.{self}", "vault.req.{self}"]
    subscribe = ["vault.token.{self}", "vault.secret.{self}", "vault.revoked"]

    [role.machine]
    publish = ["machine.{self}"]
    subscribe = ["cmd.machine.{self}"]

    [identity.vault]
    publish = ["vault"]
    subscribe = ["vault.req"]

    [secrets]
    smtp_password = ["member_mail"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from proto.errors import ConfigError, DctrlError, ProtocolError
from proto.wire import prefix_frame

from .schema import POLICY, check


@dataclass(frozen=True)
class Grants:
    publish: tuple[bytes, ...]
    subscribe: tuple[bytes, ...]

    def may_publish(self, topic_frame: bytes) -> bool:
        return any(topic_frame.startswith(g) for g in self.publish)

    def subscription(self, prefix: bytes) -> tuple[bytes, ...]:
        """The prefixes to apply for a requested subscription ``prefix``.

        A request inside a grant is applied as asked; a request broader than
        the grants (``b""``) is narrowed to the grants it contains; anything
        else gets ``()`` (denied).
        """
        if any(prefix.startswith(g) for g in self.subscribe):
            return (prefix,)
        return tuple(g for g in self.subscribe if g.startswith(prefix))


class Policy:
    def __init__(self, data: dict, source="policy"):
        self.source = source
        self.data = data
        for section in ("all", "role", "identity", "secrets"):
            if not isinstance(data.get(section, {}), dict):
                raise ConfigError(f"{source}: [{section}] must be a table")
        for section in ("role", "identity"):
            for key, table in data.get(section, {}).items():
                if not isinstance(table, dict):
                    raise ConfigError(f"{source}: [{section}.{key}] must be a table")
        self._cache: dict[tuple[str, str], Grants] = {}
        # Validate every grant now so a typo fails the reload, not a message later.
        for table in [data.get("all", {}), *data.get("role", {}).values(), *data.get("identity", {}).values()]:
            self._expand(table, "x")
        for secret, readers in data.get("secrets", {}).items():
            if not isinstance(readers, list) or not all(isinstance(r, str) for r in readers):
                raise ConfigError(f"{source}: secrets.{secret} must be a list of identity names")
        # Then the rest: a section, role or key that means nothing here is a typo, not a no-op.
        check(data, POLICY, source)

    @classmethod
    def load(cls, path) -> "Policy":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                return cls(tomllib.load(f), str(path))
        except FileNotFoundError:
            raise ConfigError(f"no policy at {path}: run `dctrl init`") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def _expand(self, table, name, key=None):
        keys = (key,) if key else ("publish", "subscribe")
        out = []
        for k in keys:
            grants = table.get(k, [])
            if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
                raise ConfigError(f"{self.source}: {k} must be a list of topic prefixes")
            for g in grants:
                try:
                    out.append(prefix_frame(g.replace("{self}", name)))
                except ProtocolError as exc:
                    raise ConfigError(f"{self.source}: bad grant {g!r}: {exc}") from None
        return out

    def grants(self, name: str, role: str) -> Grants:
        cached = self._cache.get((name, role))
        if cached is None:
            tables = [self.data.get("all", {}), self.data.get("role", {}).get(role, {}),
                      self.data.get("identity", {}).get(name, {})]
            pub = tuple(dict.fromkeys(g for t in tables for g in self._expand(t, name, "publish")))
            sub = tuple(dict.fromkeys(g for t in tables for g in self._expand(t, name, "subscribe")))
            cached = self._cache[(name, role)] = Grants(pub, sub)
        return cached

    def secret_readers(self, secret: str) -> frozenset[str]:
        return frozenset(self.data.get("secrets", {}).get(secret, ()))


def load_registry_and_policy(registry_path, policy_path) -> tuple:
    """``(registry, policy, None)``, or ``(None, None, why)`` naming each file that cannot be
    applied: ``"policy.toml not applied (the previous one is in force): <reason>"``. The broker
    and the Vault then keep what they have, and say why in their heartbeat (``dctrl status``)."""
    from .registry import Registry

    problems, loaded = [], []
    for what, load, path in (("registry.json", Registry.load, registry_path), ("policy.toml", Policy.load, policy_path)):
        try:
            loaded.append(load(path))
        except DctrlError as exc:
            problems.append(f"{what} not applied (the previous one is in force): {exc}")
    return (None, None, "; ".join(problems)[:500]) if problems else (*loaded, None)
