"""The treasury: a k-of-n ``wsh(sortedmulti(...))`` descriptor, watch-only (issue 13).

The server holds only public keys. ``[treasury] descriptor`` in config.toml is either the
multipath form Bitcoin Core and Sparrow export::

    wsh(sortedmulti(2,[fp1/48h/1h/0h/2h]tpub.../<0;1>/*,[fp2/...]tpub.../<0;1>/*,...))#checksum

or a receive descriptor (``.../0/*``) with ``[treasury] change_descriptor`` (``.../1/*``) beside it.
What is refused, each with a reason: anything but ``wsh(sortedmulti(k, ...))`` (other scripts
would be wallets co-signers cannot set up identically), a private key, a key without its origin
or with the fingerprint 00000000 (co-signers' wallets then cannot tell the key is theirs:
"No open wallet can sign", sparrowwallet/sparrow#1856), the same key twice, a threshold of 0 or
above n, keys of another network, and a change descriptor that is not the receive one with
branch 1.

Exports for co-signers (``dctrl treasury export``): the descriptor with its checksum (multipath
and the two single-branch ones, for wallets that take no ``<0;1>``), a Caravan wallet
configuration (JSON, which Sparrow also imports) and a Coldcard multisig setup file (which
Sparrow and Coldcard import). Each holds the same keys, fingerprints and paths, so every
co-signer sets up the identical wallet.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from embit import script
from embit.descriptor import Descriptor
from embit.descriptor.checksum import add_checksum

from actors.chain.addresses import NETWORK_NAMES, network, parse_descriptor
from proto.errors import ConfigError

RECEIVE, CHANGE = 0, 1
MAX_KEYS = 15  # wsh multisig: what standardness allows and wallets support
CARAVAN_NETWORKS = {"main": "mainnet", "test": "testnet", "signet": "testnet", "regtest": "regtest"}


@dataclass(frozen=True)
class Cosigner:
    """One key of the descriptor: its master fingerprint (hex), origin path and account xpub."""
    fingerprint: str
    path: str          # "m/48h/1h/0h/2h"
    xpub: str

    @property
    def path_apostrophe(self) -> str:
        """The path as Caravan and Coldcard write it ("m/48'/1'/0'/2'")."""
        return self.path.replace("h", "'")


def _path(indexes) -> str:
    return "m" + "".join(f"/{i - 0x80000000}h" if i >= 0x80000000 else f"/{i}" for i in indexes)


class Treasury:
    """The treasury's public derivation material and what co-signers need to set up its wallet."""

    def __init__(self, spec: str, network_name: str, change_spec: str | None = None):
        self.network_name = network_name
        self.net = network(network_name)
        d = parse_descriptor(spec, "[treasury] descriptor")
        if not d.wsh or d.sh or type(d.miniscript).__name__ != "Sortedmulti":
            raise ConfigError("[treasury] descriptor must be wsh(sortedmulti(k, ...)): the one multisig "
                              "form Electrum, Sparrow, Caravan and hardware wallets all set up identically")
        if not d.is_wildcard:
            raise ConfigError("[treasury] descriptor must end in /* (a range of addresses)")
        self.threshold = int(str(d.miniscript.args[0]))
        keys = d.keys
        if not 1 <= self.threshold <= len(keys) or len(keys) > MAX_KEYS:
            raise ConfigError(f"[treasury] descriptor: {self.threshold} of {len(keys)} keys; "
                              f"need 1 <= k <= n <= {MAX_KEYS}")
        cosigners = []
        for i, k in enumerate(keys, 1):
            if k.is_private:
                raise ConfigError(f"[treasury] descriptor key {i} is a private key: give the xpub only "
                                  "(the server never holds a private key)")
            if k.origin is None or not k.origin.derivation:
                raise ConfigError(f"[treasury] descriptor key {i} has no origin ([fingerprint/path]): "
                                  "co-signers' wallets need it to recognise their key")
            if k.origin.fingerprint == bytes(4):
                raise ConfigError(f"[treasury] descriptor key {i} has the fingerprint 00000000: give the "
                                  "master key's real fingerprint (wallets cannot sign for a zero one)")
            if k.key.version not in (self.net["xpub"], self.net.get("Zpub"), self.net.get("Ypub")):
                raise ConfigError(f"[treasury] descriptor key {i} is not a {network_name} key")
            cosigners.append(Cosigner(k.origin.fingerprint.hex(), _path(k.origin.derivation),
                                      k.key.to_string(version=self.net["xpub"])))
        if len({c.xpub for c in cosigners}) != len(cosigners):
            raise ConfigError("[treasury] descriptor names the same key twice")
        self.cosigners = tuple(cosigners)
        branches = d.num_branches
        if branches == 2:
            if change_spec:
                raise ConfigError("[treasury] change_descriptor is for a receive descriptor ending in /0/*; "
                                  "this one has both branches (/<0;1>/*)")
            if any(k.allowed_derivation.indexes[0] != [0, 1] for k in keys):
                raise ConfigError("[treasury] descriptor: the branches must be <0;1> (receive; change)")
            self._branches = (lambda i: d.derive(i, branch_index=0), lambda i: d.derive(i, branch_index=1))
        elif branches == 1:
            if not change_spec:
                raise ConfigError("[treasury] descriptor has one branch: give the change branch too, as "
                                  "/<0;1>/* or in [treasury] change_descriptor (/1/*)")
            c = parse_descriptor(change_spec, "[treasury] change_descriptor")
            if self._branchless(c) != self._branchless(d) or not self._ends_in(d, 0) or not self._ends_in(c, 1):
                raise ConfigError("[treasury] change_descriptor must be the descriptor with /1/* "
                                  "where the receive one has /0/*")
            self._branches = (d.derive, c.derive)
        else:
            raise ConfigError("[treasury] descriptor: two branches at most (/<0;1>/*)")
        self._multipath = self._with_branch(d, "<0;1>")

    @staticmethod
    def _ends_in(d: Descriptor, branch: int) -> bool:
        return all(k.allowed_derivation.indexes[:-1] == [branch] for k in d.keys)

    @staticmethod
    def _branchless(d: Descriptor) -> str:
        return str(d).split("#")[0].replace("/0/*", "/*").replace("/1/*", "/*").replace("/<0;1>/*", "/*")

    @classmethod
    def _with_branch(cls, d: Descriptor, branch: str) -> str:
        return cls._branchless(d).replace("/*", f"/{branch}/*")

    # -- addresses ----------------------------------------------------------------------------

    def derived(self, index: int, change: bool = False) -> Descriptor:
        """The descriptor at ``index`` of a branch (derived once: BIP32 derivation is most of the
        cost of building a payout; the last 4,096 are kept)."""
        if not 0 <= index < 2**31:
            raise ValueError("index out of range")
        return self._derived(index, bool(change))

    @functools.lru_cache(maxsize=4096)
    def _derived(self, index: int, change: bool) -> Descriptor:
        return self._branches[CHANGE if change else RECEIVE](index)

    def address(self, index: int, change: bool = False) -> tuple[str, str]:
        """(address, scriptPubKey hex) at ``index`` of the receive or change branch."""
        spk = self.derived(index, change).script_pubkey()
        return spk.address(self.net), spk.data.hex()

    def witness_script(self, index: int, change: bool = False) -> script.Script:
        return self.derived(index, change).witness_script()

    # -- exports ------------------------------------------------------------------------------

    @property
    def quorum(self) -> str:
        return f"{self.threshold} of {len(self.cosigners)}"

    def descriptors(self) -> dict:
        """The descriptor with its checksum: multipath, and the receive and change ones."""
        return {"multipath": add_checksum(self._multipath),
                "receive": add_checksum(self._multipath.replace("/<0;1>/*", "/0/*")),
                "change": add_checksum(self._multipath.replace("/<0;1>/*", "/1/*"))}

    def caravan(self, name: str) -> str:
        """A Caravan wallet configuration (JSON), which Sparrow imports too."""
        return json.dumps({
            "name": name,
            "addressType": "P2WSH",
            "network": CARAVAN_NETWORKS[NETWORK_NAMES[self.network_name]],
            "client": {"type": "public"},
            "quorum": {"requiredSigners": self.threshold, "totalSigners": len(self.cosigners)},
            "extendedPublicKeys": [{"name": f"cosigner {i} ({c.fingerprint})", "bip32Path": c.path_apostrophe,
                                    "xpub": c.xpub, "xfp": c.fingerprint}
                                   for i, c in enumerate(self.cosigners, 1)],
            "startingAddressIndex": 0,
        }, indent=2) + "\n"

    def coldcard(self, name: str) -> str:
        """A Coldcard multisig setup file, which Coldcard and Sparrow import."""
        lines = ["# Coldcard Multisig setup file (exported by dctrl)", f"Name: {name[:20]}",
                 f"Policy: {self.quorum}", "Format: P2WSH", ""]
        for c in self.cosigners:
            lines += [f"Derivation: {c.path_apostrophe}", f"{c.fingerprint.upper()}: {c.xpub}", ""]
        return "\n".join(lines)

