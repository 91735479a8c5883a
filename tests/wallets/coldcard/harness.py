"""Coldcard's own multisig-file import code, run on the desktop (tests/test_payout_coldcard.py).

Loads ``shared/multisig.py`` of a checkout of github.com/Coldcard/firmware (MicroPython) under
CPython, unchanged, with the modules it needs around it:

- Coldcard's own, unchanged: ``multisig``, ``utils``, ``chains``, ``descriptor``, ``wallet``,
  ``serializations``, ``opcodes``, ``block_height`` and ``public_constants`` (the
  ckcc-protocol submodule's ``ckcc/constants.py``);
- MicroPython's standard modules as CPython's (``ustruct`` is ``struct``, ``ure`` is ``re``, ...),
  the ``const()`` builtin as the identity, and in ``utils`` MicroPython's ``str(text, "ascii")``
  (the text; a TypeError in CPython);
- ``ngu`` (Coldcard's C library: BIP-32 nodes, hashes, base58 and bech32), written here over
  embit, and ``stash`` (the device's secret) as one co-signer's seed (embit derives from it), so
  the file is imported as that co-signer's Coldcard would import it (``settings`` holds its
  fingerprint and the chain): the only stand-ins that compute anything;
- the user interface, files, menus (``ux``, ``files``, ``menu``, ...): inert, never called by the
  import path (``MultisigWallet.from_file``) or by ``yield_addresses``.
"""

from __future__ import annotations

import asyncio
import binascii
import builtins
import collections
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import struct
import sys
import time
import types
from pathlib import Path

from embit import base58, bech32, bip32

SHARED = ("opcodes", "block_height", "serializations", "chains", "utils", "descriptor", "wallet", "multisig")


class _Node:
    """libngu's ``ngu.hdnode.HDNode`` (the part these modules use), over embit."""

    def __init__(self, key: bip32.HDKey | None = None):
        self._k = key

    def deserialize(self, text: str) -> int:
        raw = base58.decode_check(text)
        self._k = bip32.HDKey.parse(raw)
        return int.from_bytes(raw[:4], "big")

    def serialize(self, version: int, private: bool) -> str:
        k = self._k if private or not self._k.is_private else self._k.to_public()
        return k.to_string(version=version.to_bytes(4, "big"))

    def copy(self) -> "_Node":
        return _Node(self._k)

    def derive(self, index: int, hardened: bool) -> "_Node":
        self._k = self._k.derive([index | (0x80000000 if hardened else 0)])
        return self

    def pubkey(self) -> bytes:
        return self._k.get_public_key().sec()

    def privkey(self):
        return self._k.secret if self._k.is_private else None

    def depth(self) -> int:
        return self._k.depth

    def parent_fp(self) -> int:
        return int.from_bytes(self._k.parent_fingerprint, "big")

    def child_number(self) -> tuple[int, bool]:
        n = self._k.child_number
        return n & 0x7FFFFFFF, bool(n & 0x80000000)

    def my_fp(self) -> int:
        return int.from_bytes(self._k.my_fingerprint, "big")


def _ngu() -> types.ModuleType:
    ngu = types.ModuleType("ngu")
    ngu.hdnode = types.SimpleNamespace(HDNode=_Node)
    ngu.hash = types.SimpleNamespace(
        sha256s=lambda b: hashlib.sha256(b).digest(),
        sha256d=lambda b: hashlib.sha256(hashlib.sha256(b).digest()).digest(),
        ripemd160=lambda b: hashlib.new("ripemd160", b).digest(),
        hash160=lambda b: hashlib.new("ripemd160", hashlib.sha256(b).digest()).digest())
    ngu.codecs = types.SimpleNamespace(
        b58_encode=base58.encode_check, b58_decode=base58.decode_check,
        segwit_encode=lambda hrp, version, program: bech32.encode(
            hrp, version, program))
    return ngu


class _InertType(type):
    def __getattr__(cls, attr):
        return cls


class _Inert(metaclass=_InertType):
    """Any name of the device's UI, files and menus: a class, callable, with every attribute."""
    def __init__(self, *a, **kw):
        pass

    def __call__(self, *a, **kw):
        return self

    def __getattr__(self, attr):
        return self


def _inert(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__getattr__ = lambda attr: _Inert
    return m


@contextlib.contextmanager
def device(firmware: Path, seed_root: bip32.HDKey, chain: str = "XRT"):
    """Coldcard's ``multisig`` module from ``firmware``, on a device holding ``seed_root``
    set to ``chain`` (``XRT`` regtest, ``XTN`` testnet, ``BTC``); usable inside the ``with``."""
    shared = Path(firmware) / "shared"
    constants = Path(firmware) / "external" / "ckcc-protocol" / "ckcc" / "constants.py"
    if not (shared / "multisig.py").is_file() or not constants.is_file():
        raise FileNotFoundError(f"{firmware} is not a Coldcard firmware checkout with its "
                                "ckcc-protocol submodule (shared/multisig.py, external/ckcc-protocol)")
    my_xfp = struct.unpack("<I", seed_root.my_fingerprint)[0]  # as Coldcard keeps it (utils.str2xfp)

    class Settings(dict):
        def get(self, key, default=None):
            return super().get(key, default)

    class SensitiveValues:
        """The device's secret: derive_path and get_xfp on the seed."""
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def derive_path(self, path, **kw):
            return _Node(seed_root.derive(path))

        def get_xfp(self):
            return my_xfp

    mods = {
        "ustruct": struct, "ure": re, "uio": io, "uos": os, "ujson": json, "ubinascii": binascii,
        "uhashlib": hashlib, "ucollections": collections, "utime": time, "uasyncio": asyncio,
        "ngu": _ngu(),
        "stash": types.SimpleNamespace(SensitiveValues=SensitiveValues),
        "glob": types.SimpleNamespace(settings=Settings(xfp=my_xfp, chain=chain)),
    }
    for name in ("version", "ux", "files", "menu", "charcodes", "exceptions", "callgate", "bip39",
                 "pincodes", "sigheader", "font_iosevka"):
        mods[name] = _inert(name)
    saved = {name: sys.modules.get(name) for name in [*mods, "public_constants", *SHARED]}
    had_const = hasattr(builtins, "const")
    try:
        builtins.const = lambda x: x
        sys.modules.update({k: (v if isinstance(v, types.ModuleType) else _as_module(k, v))
                            for k, v in mods.items()})
        _import("public_constants", constants)
        for name in SHARED:
            _import(name, shared / f"{name}.py")
        yield sys.modules["multisig"]
    finally:
        for name, old in saved.items():  # nothing of Coldcard's stays importable afterwards
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        if not had_const:
            del builtins.const


def _as_module(name: str, ns) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(vars(ns))
    return m


def _micropython_str(obj="", encoding=None, errors="strict"):
    """MicroPython's str(): str(text, "ascii") is the text (it has the buffer protocol); in
    CPython it is a TypeError. utils.cleanup_deriv_path relies on it."""
    if encoding is None:
        return builtins.str(obj)
    if isinstance(obj, builtins.str):
        return obj
    return builtins.str(obj, encoding, errors)


def _import(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if name == "utils":
        module.str = _micropython_str
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
