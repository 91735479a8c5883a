"""An identity's secret keys: a CurveZMQ keypair and an Ed25519 signing key.

The secret file ``keys/NAME.key`` (mode 0600, refused otherwise) holds::

    {"name": "vm1", "version": 2, "curve_public": "<z85>", "curve_secret": "<z85>",
     "sign_seed": "<hex>"}

Public halves go to the registry (keys/registry.json); see :mod:`keys.registry`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import zmq

from proto.errors import ConfigError
from proto.wire import check_name

from .files import read_secret_file, write_json

ROLES = ("actor", "machine", "admin")


@dataclass(frozen=True)
class IdentityKeys:
    name: str
    version: int
    curve_public: bytes  # z85
    curve_secret: bytes  # z85
    sign_seed: bytes  # 32 bytes

    def __repr__(self):  # never print secrets
        return f"IdentityKeys({self.name!r}, v{self.version}, curve={self.curve_public.decode()})"

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.sign_seed)

    @property
    def sign_public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @classmethod
    def generate(cls, name: str, version: int = 1) -> "IdentityKeys":
        check_name(name)
        public, secret = zmq.curve_keypair()
        return cls(name, version, public, secret, bytes(nacl.signing.SigningKey.generate()))

    def save(self, path) -> None:
        write_json(path, {
            "name": self.name,
            "version": self.version,
            "curve_public": self.curve_public.decode(),
            "curve_secret": self.curve_secret.decode(),
            "sign_seed": self.sign_seed.hex(),
        }, mode=0o600)

    @classmethod
    def load(cls, path) -> "IdentityKeys":
        path = Path(path)
        try:
            raw = read_secret_file(path)
        except FileNotFoundError:
            raise ConfigError(f"no key file {path}: create it with `dctrl keys add NAME --role ROLE`") from None
        try:
            d = json.loads(raw)
            keys = cls(check_name(d["name"]), int(d["version"]), d["curve_public"].encode(),
                       d["curve_secret"].encode(), bytes.fromhex(d["sign_seed"]))
            if len(keys.sign_seed) != 32 or zmq.curve_public(keys.curve_secret) != keys.curve_public:
                raise ValueError("keys do not match")
        except (ValueError, KeyError, TypeError, AttributeError, zmq.ZMQError) as exc:
            raise ConfigError(f"{path} is not a valid key file: {type(exc).__name__}") from None
        return keys
