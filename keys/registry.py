"""The key registry: every identity's public keys, role and revocation state.

``keys/registry.json`` is public (mode 0644) and written atomically, so the
broker and the Vault can hot-reload it by watching its mtime::

    {"identities": {"vm1": {"role": "machine", "revoked_up_to": 0,
        "keys": [{"version": 2, "curve": "<z85>", "sign": "<hex>",
                  "created": 1764000000, "not_after": null},
                 {"version": 1, ..., "not_after": 1764086400}]}}}

A key is valid while ``not_after`` is null or in the future and its version is
above ``revoked_up_to``. Rotation adds a new version and gives the old ones a
``not_after`` (the grace period); revocation raises ``revoked_up_to`` to the
newest version, so every existing key of that identity stops at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from proto.errors import ConfigError, UnknownIdentity
from proto.wire import check_name

from .files import write_json
from .identity import ROLES, IdentityKeys


@dataclass(frozen=True)
class PublicKey:
    name: str
    role: str
    version: int
    curve: bytes  # z85
    sign: bytes  # 32 bytes
    created: int
    not_after: int | None


class Registry:
    def __init__(self, path, data=None):
        self.path = Path(path)
        self.data = data if data is not None else {"identities": {}}
        self._index()

    @classmethod
    def load(cls, path) -> "Registry":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("identities"), dict):
                raise ValueError("no identities map")
            return cls(path, data)
        except FileNotFoundError:
            raise ConfigError(f"no key registry at {path}: run `dctrl init`") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a valid registry: {type(exc).__name__}: {exc}") from None

    def save(self) -> None:
        write_json(self.path, self.data, mode=0o644)
        self._index()

    def _index(self):
        self._by_curve: dict[bytes, PublicKey] = {}
        self._keys: dict[str, list[PublicKey]] = {}
        for name, ident in self.data["identities"].items():
            keys = [PublicKey(name, ident["role"], k["version"], k["curve"].encode(),
                              bytes.fromhex(k["sign"]), k["created"], k.get("not_after"))
                    for k in ident["keys"]]
            self._keys[name] = keys
            for k in keys:
                self._by_curve[k.curve] = k

    # -- queries -------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.data["identities"])

    def role(self, name) -> str:
        return self._ident(name)["role"]

    def revoked_up_to(self, name) -> int:
        return self._ident(name).get("revoked_up_to", 0)

    def _ident(self, name):
        try:
            return self.data["identities"][name]
        except KeyError:
            raise UnknownIdentity(f"no identity {name!r} in the registry") from None

    def is_valid(self, key: PublicKey, now=None) -> bool:
        now = time.time() if now is None else now
        return (key.version > self.revoked_up_to(key.name)
                and (key.not_after is None or now < key.not_after))

    def by_curve(self, curve_z85: bytes, now=None) -> PublicKey | None:
        """The valid key with this Curve public key (z85), or None."""
        key = self._by_curve.get(curve_z85)
        return key if key is not None and self.is_valid(key, now) else None

    def key(self, name, version, now=None) -> PublicKey:
        for k in self._keys.get(name, ()):
            if k.version == version:
                if not self.is_valid(k, now):
                    raise UnknownIdentity(f"{name}'s key version {version} is revoked or past its grace period")
                return k
        raise UnknownIdentity(f"{name} has no key version {version}")

    def current(self, name) -> PublicKey:
        self._ident(name)
        return max(self._keys[name], key=lambda k: k.version)

    def keys_of(self, name) -> list[PublicKey]:
        self._ident(name)
        return list(self._keys[name])

    def next_expiry(self, now=None) -> float | None:
        """The earliest future ``not_after``: when a rotated key stops being valid."""
        now = time.time() if now is None else now
        ends = [k.not_after for ks in self._keys.values() for k in ks if k.not_after and k.not_after > now]
        return min(ends) if ends else None

    # -- changes (the CLI's) -------------------------------------------------

    def add(self, keys: IdentityKeys, role: str) -> None:
        check_name(keys.name)
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if keys.name in self.data["identities"]:
            raise ConfigError(f"identity {keys.name!r} exists: use `dctrl keys rotate {keys.name}`")
        self.data["identities"][keys.name] = {"role": role, "revoked_up_to": 0, "keys": []}
        self._append_key(keys)

    def _append_key(self, keys: IdentityKeys) -> None:
        self.data["identities"][keys.name]["keys"].append({
            "version": keys.version,
            "curve": keys.curve_public.decode(),
            "sign": keys.sign_public.hex(),
            "created": int(time.time()),
            "not_after": None,
        })
        self._index()

    def rotate(self, name, grace: int, now=None) -> IdentityKeys:
        """New keys for ``name``, valid at once; older keys end after ``grace`` seconds."""
        now = int(time.time() if now is None else now)
        ident = self._ident(name)
        newest = max(k["version"] for k in ident["keys"])
        for k in ident["keys"]:
            if k["not_after"] is None or k["not_after"] > now + grace:
                k["not_after"] = now + grace
        new = IdentityKeys.generate(name, newest + 1)
        self._append_key(new)
        return new

    def revoke(self, name) -> int:
        ident = self._ident(name)
        ident["revoked_up_to"] = max(k["version"] for k in ident["keys"])
        self._index()
        return ident["revoked_up_to"]

    def revocations(self) -> list[dict]:
        return [{"identity": n, "up_to": i["revoked_up_to"]}
                for n, i in sorted(self.data["identities"].items()) if i.get("revoked_up_to", 0) > 0]
