"""Output scripts the way Bitcoin Core shows them: asm, type, address, descriptor, dust.

Regtest only: base58 prefixes 0x6f/0xc4 and bech32 hrp ``bcrt``. Addresses are
decoded and encoded with embit; the disassembly follows Core's ScriptToAsmStr
(pushes of up to 4 bytes print as numbers, ``[ALL]`` sighash decoding in
scriptSigs) and descriptors follow InferDescriptor without key information
(``addr()``, ``pk()``, ``multi()``, ``rawtr()``, ``raw()``) with the checksum.
"""

from __future__ import annotations

from embit import base58, bech32
from embit.descriptor.checksum import add_checksum
from embit.networks import NETWORKS

NET = NETWORKS["regtest"]
HRP = NET["bech32"]

OP_0, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4 = 0x00, 0x4C, 0x4D, 0x4E
OP_1NEGATE, OP_1, OP_16 = 0x4F, 0x51, 0x60
OP_RETURN, OP_CHECKSIG, OP_CHECKMULTISIG = 0x6A, 0xAC, 0xAE

_NAMES = {
    0x4C: "OP_PUSHDATA1", 0x4D: "OP_PUSHDATA2", 0x4E: "OP_PUSHDATA4", 0x4F: "-1", 0x50: "OP_RESERVED",
    0x61: "OP_NOP", 0x62: "OP_VER", 0x63: "OP_IF", 0x64: "OP_NOTIF", 0x65: "OP_VERIF", 0x66: "OP_VERNOTIF",
    0x67: "OP_ELSE", 0x68: "OP_ENDIF", 0x69: "OP_VERIFY", 0x6A: "OP_RETURN", 0x6B: "OP_TOALTSTACK",
    0x6C: "OP_FROMALTSTACK", 0x6D: "OP_2DROP", 0x6E: "OP_2DUP", 0x6F: "OP_3DUP", 0x70: "OP_2OVER",
    0x71: "OP_2ROT", 0x72: "OP_2SWAP", 0x73: "OP_IFDUP", 0x74: "OP_DEPTH", 0x75: "OP_DROP", 0x76: "OP_DUP",
    0x77: "OP_NIP", 0x78: "OP_OVER", 0x79: "OP_PICK", 0x7A: "OP_ROLL", 0x7B: "OP_ROT", 0x7C: "OP_SWAP",
    0x7D: "OP_TUCK", 0x7E: "OP_CAT", 0x7F: "OP_SUBSTR", 0x80: "OP_LEFT", 0x81: "OP_RIGHT", 0x82: "OP_SIZE",
    0x83: "OP_INVERT", 0x84: "OP_AND", 0x85: "OP_OR", 0x86: "OP_XOR", 0x87: "OP_EQUAL",
    0x88: "OP_EQUALVERIFY", 0x89: "OP_RESERVED1", 0x8A: "OP_RESERVED2", 0x8B: "OP_1ADD", 0x8C: "OP_1SUB",
    0x8D: "OP_2MUL", 0x8E: "OP_2DIV", 0x8F: "OP_NEGATE", 0x90: "OP_ABS", 0x91: "OP_NOT",
    0x92: "OP_0NOTEQUAL", 0x93: "OP_ADD", 0x94: "OP_SUB", 0x95: "OP_MUL", 0x96: "OP_DIV", 0x97: "OP_MOD",
    0x98: "OP_LSHIFT", 0x99: "OP_RSHIFT", 0x9A: "OP_BOOLAND", 0x9B: "OP_BOOLOR", 0x9C: "OP_NUMEQUAL",
    0x9D: "OP_NUMEQUALVERIFY", 0x9E: "OP_NUMNOTEQUAL", 0x9F: "OP_LESSTHAN", 0xA0: "OP_GREATERTHAN",
    0xA1: "OP_LESSTHANOREQUAL", 0xA2: "OP_GREATERTHANOREQUAL", 0xA3: "OP_MIN", 0xA4: "OP_MAX",
    0xA5: "OP_WITHIN", 0xA6: "OP_RIPEMD160", 0xA7: "OP_SHA1", 0xA8: "OP_SHA256", 0xA9: "OP_HASH160",
    0xAA: "OP_HASH256", 0xAB: "OP_CODESEPARATOR", 0xAC: "OP_CHECKSIG", 0xAD: "OP_CHECKSIGVERIFY",
    0xAE: "OP_CHECKMULTISIG", 0xAF: "OP_CHECKMULTISIGVERIFY", 0xB0: "OP_NOP1",
    0xB1: "OP_CHECKLOCKTIMEVERIFY", 0xB2: "OP_CHECKSEQUENCEVERIFY", 0xB3: "OP_NOP4", 0xB4: "OP_NOP5",
    0xB5: "OP_NOP6", 0xB6: "OP_NOP7", 0xB7: "OP_NOP8", 0xB8: "OP_NOP9", 0xB9: "OP_NOP10",
    0xBA: "OP_CHECKSIGADD",
}
_SIGHASH_NAMES = {0x01: "ALL", 0x81: "ALL|ANYONECANPAY", 0x02: "NONE", 0x82: "NONE|ANYONECANPAY",
                  0x03: "SINGLE", 0x83: "SINGLE|ANYONECANPAY"}

ANCHOR_PROGRAM = bytes.fromhex("4e73")


def op_name(op: int) -> str:
    if op == OP_0:
        return "0"
    if OP_1 <= op <= OP_16:
        return str(op - OP_1 + 1)
    return _NAMES.get(op, "OP_UNKNOWN")


def iter_ops(script: bytes):
    """Yield (opcode, pushed bytes or None); yields (None, None) on a truncated push."""
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op <= OP_PUSHDATA4:
            if op < OP_PUSHDATA1:
                size = op
            else:
                width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
                if i + width > n:
                    yield None, None
                    return
                size = int.from_bytes(script[i:i + width], "little")
                i += width
            if i + size > n:
                yield None, None
                return
            yield op, script[i:i + size]
            i += size
        else:
            yield op, None


def _scriptnum(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _is_der_signature(sig: bytes) -> bool:
    """BIP66 strict DER plus a hashtype byte (Core's IsValidSignatureEncoding)."""
    if len(sig) < 9 or len(sig) > 73 or sig[0] != 0x30 or sig[1] != len(sig) - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= len(sig):
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != len(sig) or sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    if len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80:
        return False
    return True


def asm(script: bytes, sighash_decode: bool = False) -> str:
    """Core's ScriptToAsmStr()."""
    parts = []
    unspendable = is_unspendable(script)
    for op, data in iter_ops(script):
        if op is None:
            parts.append("[error]")
            break
        if op <= OP_PUSHDATA4:
            if len(data) <= 4:
                parts.append(str(_scriptnum(data)))
            elif sighash_decode and not unspendable and _is_der_signature(data) \
                    and data[-1] in _SIGHASH_NAMES:
                parts.append(data[:-1].hex() + f"[{_SIGHASH_NAMES[data[-1]]}]")
            else:
                parts.append(data.hex())
        else:
            parts.append(op_name(op))
    return " ".join(parts)


def is_unspendable(script: bytes) -> bool:
    return (len(script) > 0 and script[0] == OP_RETURN) or len(script) > 10_000


def is_push_only(script: bytes) -> bool:
    for op, _ in iter_ops(script):
        if op is None or op > OP_16:
            return False
    return True


def witness_program(script: bytes):
    """(version, program) for a witness program script, else None."""
    if len(script) < 4 or len(script) > 42:
        return None
    if script[0] != OP_0 and not OP_1 <= script[0] <= OP_16:
        return None
    if script[1] + 2 != len(script):
        return None
    return (0 if script[0] == OP_0 else script[0] - OP_1 + 1), script[2:]


def _is_pubkey(data: bytes) -> bool:
    return (len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)


def classify(script: bytes):
    """Core's Solver(): (type name as GetTxnOutputType prints it, solutions)."""
    if len(script) == 23 and script[0] == 0xA9 and script[1] == 0x14 and script[22] == 0x87:
        return "scripthash", [script[2:22]]
    wp = witness_program(script)
    if wp is not None:
        ver, prog = wp
        if ver == 0 and len(prog) == 20:
            return "witness_v0_keyhash", [prog]
        if ver == 0 and len(prog) == 32:
            return "witness_v0_scripthash", [prog]
        if ver == 1 and len(prog) == 32:
            return "witness_v1_taproot", [prog]
        if ver == 1 and prog == ANCHOR_PROGRAM:
            return "anchor", []
        if ver != 0:
            return "witness_unknown", [bytes([ver]), prog]
        return "nonstandard", []
    if script[:1] == bytes([OP_RETURN]) and is_push_only(script[1:]):
        return "nulldata", []
    ops = list(iter_ops(script))
    if len(ops) == 2 and ops[0][1] is not None and _is_pubkey(ops[0][1]) and ops[1][0] == OP_CHECKSIG:
        return "pubkey", [ops[0][1]]
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash", [script[3:23]]
    if len(ops) >= 4 and ops[-1][0] == OP_CHECKMULTISIG and all(o is not None for o, _ in ops):
        m, n = ops[0][0], ops[-2][0]
        keys = [d for _, d in ops[1:-2]]
        if OP_1 <= m <= OP_16 and OP_1 <= n <= OP_16 and all(k is not None and _is_pubkey(k) for k in keys):
            m, n = m - OP_1 + 1, n - OP_1 + 1
            if len(keys) == n and 1 <= m <= n:
                return "multisig", [bytes([m]), *keys, bytes([n])]
    return "nonstandard", []


def address(script: bytes):
    """Core's ExtractDestination + EncodeDestination for regtest, or None."""
    kind, sol = classify(script)
    if kind == "pubkeyhash":
        return base58.encode_check(NET["p2pkh"] + sol[0])
    if kind == "scripthash":
        return base58.encode_check(NET["p2sh"] + sol[0])
    if kind == "pubkey":
        from embit.hashes import hash160

        return base58.encode_check(NET["p2pkh"] + hash160(sol[0]))
    wp = witness_program(script)
    if wp is not None and kind != "nonstandard":
        return bech32.encode(HRP, wp[0], wp[1])
    return None


class InvalidAddress(ValueError):
    pass


def decode_address(addr: str) -> bytes:
    """scriptPubKey of a regtest address; raises InvalidAddress for anything else."""
    if not isinstance(addr, str) or not addr:
        raise InvalidAddress("Invalid address")
    if addr.lower().startswith(HRP + "1"):
        try:
            ver, prog = bech32.decode(HRP, addr.lower() if addr.isupper() else addr)
        except Exception:
            ver, prog = None, None
        if ver is None:
            raise InvalidAddress("Invalid Bech32 address")
        return bytes([0 if ver == 0 else OP_1 + ver - 1, len(prog)]) + bytes(prog)
    try:
        data = base58.decode_check(addr)
    except Exception:
        raise InvalidAddress("Invalid or unsupported Segwit (Bech32) or Base58 encoding.") from None
    if len(data) == 21 and data[:1] == NET["p2pkh"]:
        return b"\x76\xa9\x14" + data[1:] + b"\x88\xac"
    if len(data) == 21 and data[:1] == NET["p2sh"]:
        return b"\xa9\x14" + data[1:] + b"\x87"
    raise InvalidAddress("Invalid or unsupported Base58-encoded address.")


_P = 2**256 - 2**32 - 977


def _xonly_valid(x: bytes) -> bool:
    v = int.from_bytes(x, "big")
    if v >= _P:
        return False
    y2 = (pow(v, 3, _P) + 7) % _P
    return y2 == 0 or pow(y2, (_P - 1) // 2, _P) == 1


def descriptor(script: bytes) -> str:
    """Core's InferDescriptor() with no key information, with its checksum."""
    kind, sol = classify(script)
    if kind == "pubkey":
        desc = f"pk({sol[0].hex()})"
    elif kind == "multisig" and all(len(k) == 33 for k in sol[1:-1]):
        desc = f"multi({sol[0][0]},{','.join(k.hex() for k in sol[1:-1])})"
    elif kind == "witness_v1_taproot" and _xonly_valid(sol[0]):
        desc = f"rawtr({sol[0].hex()})"
    else:
        addr = address(script) if kind not in ("nulldata", "nonstandard", "multisig") else None
        desc = f"addr({addr})" if addr else f"raw({script.hex()})"
    return add_checksum(desc)


def script_pubkey_json(script: bytes) -> dict:
    """Core's ScriptToUniv(include_hex=True, include_address=True)."""
    kind, _ = classify(script)
    out = {"asm": asm(script), "desc": descriptor(script), "hex": script.hex()}
    addr = address(script)
    if addr is not None and kind != "pubkey":
        out["address"] = addr
    out["type"] = kind
    return out


def dust_threshold(script: bytes, dust_relay_fee: int = 3000) -> int:
    """Core's GetDustThreshold() with -dustrelayfee (sat/kvB)."""
    if is_unspendable(script):
        return 0
    size = 8 + len(_compact(len(script))) + len(script)
    size += (32 + 4 + 1 + 107 // 4 + 4) if witness_program(script) else (32 + 4 + 1 + 107 + 4)
    return size * dust_relay_fee // 1000


def _compact(n: int) -> bytes:
    from embit import compact

    return compact.to_bytes(n)


def is_standard_output(script: bytes) -> bool:
    kind, _ = classify(script)
    if kind == "nonstandard":
        return False
    if kind == "nulldata":
        return len(script) <= 83
    return True
