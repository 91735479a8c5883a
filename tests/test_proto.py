"""The wire protocol without sockets: envelope, schemas, tokens and the AuthProxy.

Everything uses real keys (IdentityKeys.generate, nacl); nothing is mocked.
The one injected thing is the clock, a plain callable.
"""

from __future__ import annotations

import json
import os
import stat

import msgpack
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.files import atomic_write
from keys.identity import IdentityKeys
from proto import token as tokens
from proto import wire
from proto.authproxy import AuthProxy, NoToken, ReplayGuard, describe_rejection
from proto.errors import (AuthError, BadSignature, BadToken, DctrlError, DecodeError, FrameError,
                          NotGranted, ProtocolError, Replayed, SchemaError, TokenExpired, TokenRevoked,
                          TooLarge, UnknownTopic)
from proto.topics import REGISTRY

T0 = 1_700_000_000  # a fixed "now" in unix seconds
VAULT = nacl.signing.SigningKey.generate()  # the Vault's token key, pinned by every proxy below
A = IdentityKeys.generate("alice")
B = IdentityKeys.generate("bob")
VAULT_ID = IdentityKeys.generate("vault")
SIG0 = b"\x00" * wire.SIG_LEN


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def make_token(keys, *, publish=(b"",), subscribe=(b"",), issued_at=T0, lifetime=900, vault=VAULT,
               identity=None, key_version=None, role="actor"):
    return tokens.issue(vault, identity=identity or keys.name, role=role, key=keys.sign_public,
                        key_version=keys.version if key_version is None else key_version,
                        publish=publish, subscribe=subscribe, issued_at=issued_at, lifetime=lifetime)


def make_proxy(keys, boot=1, *, clock=None, token=True, **kw):
    p = AuthProxy(keys, VAULT.verify_key, boot, clock=clock or Clock(), **kw)
    if token is True:
        p.set_token(make_token(keys))
    elif token:
        p.set_token(token)
    return p


def health_body(name="alice", pid=1):
    return {"name": name, "role": "actor", "version": "0.1.0", "pid": pid, "uptime": 0, "interval": 5,
            "token_exp": None, "status": "ok", "detail": None, "counters": {"sent": 3}}


def header(**over):
    """A valid decoded payload map; a value of DROP removes the key."""
    h = {"v": 1, "id": b"\x01" * 16, "src": "alice", "boot": 1, "seq": 1, "ts": T0 * 1000,
         "tok": None, "body": {}}
    for k, v in over.items():
        if v is DROP:
            h.pop(k)
        else:
            h[k] = v
    return h


DROP = object()


def raw_frames(payload: dict | bytes, topic=b"debug.x.", sig=SIG0):
    """Frames around an arbitrary payload with a (not verified by decode) signature."""
    if not isinstance(payload, bytes):
        payload = msgpack.packb(payload, use_bin_type=True)
    return [topic, payload + sig]


def signed_frames(keys=A, topic="debug.x", body=None, **kw):
    payload = wire.pack_payload(keys.name, kw.pop("boot", 1), kw.pop("seq", 1), kw.pop("token", None),
                                {} if body is None else body, **kw)
    return wire.seal(keys.signing_key, topic, payload)


def assert_only_protocol_error(frames):
    """decode() either returns a Message or raises a ProtocolError subclass, nothing else."""
    try:
        msg = wire.decode(frames)
    except DctrlError as exc:
        assert isinstance(exc, ProtocolError), f"{type(exc).__name__} is not a ProtocolError"
        return None
    assert isinstance(msg, wire.Message)
    return msg


# ---------------------------------------------------------------------------
# envelope: seal, decode, verify
# ---------------------------------------------------------------------------

def test_seal_decode_verify_round_trip_every_field():
    tok = make_token(A)
    body = {"n": 7, "s": "x", "b": b"\x00\xff", "l": [1, None, True], "m": {"k": -1}}
    payload = wire.pack_payload("alice", 7, 42, tok, body, msg_id=b"I" * 16, ts_ms=123456789)
    frames = wire.seal(A.signing_key, "chain.tx.seen", payload)

    assert frames[0] == b"chain.tx.seen."
    assert frames[1][:-wire.SIG_LEN] == payload and len(frames[1]) == len(payload) + wire.SIG_LEN
    msg = wire.decode(frames)
    assert msg.topic == "chain.tx.seen"
    assert msg.topic_bytes == b"chain.tx.seen."
    assert msg.sender == "alice"
    assert (msg.boot, msg.seq, msg.ts) == (7, 42, 123456789)
    assert msg.msg_id == b"I" * 16 and msg.id_hex == (b"I" * 16).hex()
    assert msg.token == tok
    assert msg.body == body
    assert msg.payload == payload and msg.signature == frames[1][-wire.SIG_LEN:]
    assert msg.user_id is None
    wire.verify_signature(A.signing_key.verify_key, msg)
    # another identity's key does not verify it
    with pytest.raises(BadSignature):
        wire.verify_signature(B.signing_key.verify_key, msg)


def test_pack_payload_defaults_random_id_and_current_time():
    p1 = msgpack.unpackb(wire.pack_payload("alice", 1, 1, None, {}), raw=False)
    p2 = msgpack.unpackb(wire.pack_payload("alice", 1, 1, None, {}), raw=False)
    assert len(p1["id"]) == wire.MSG_ID_LEN and p1["id"] != p2["id"]
    assert set(p1) == wire.HEADER_KEYS and p1["v"] == wire.VERSION
    assert type(p1["ts"]) is int and p1["ts"] > T0 * 1000


def test_decode_accepts_bytearray_and_memoryview_frames():
    frames = signed_frames()
    msg = wire.decode([bytearray(frames[0]), memoryview(frames[1])])
    assert msg.topic == "debug.x"
    wire.verify_signature(A.signing_key.verify_key, msg)


@pytest.mark.parametrize("topic, frame", [
    ("a", b"a."), ("chain.tx.seen", b"chain.tx.seen."), ("A-b_9.x", b"A-b_9.x."),
])
def test_topic_frame_is_dot_terminated_and_inverts(topic, frame):
    assert wire.topic_frame(topic) == frame
    assert wire.frame_topic(frame) == topic


@pytest.mark.parametrize("topic", [
    "", ".", "a.", ".a", "a..b", "a b", " a", "a\tb", "caf\u00e9", "\u0661", "a/b", "a.*", "a\x00", 7, None, b"a",
])
def test_topic_frame_refuses_bad_topics(topic):
    with pytest.raises(ProtocolError):
        wire.topic_frame(topic)


@pytest.mark.parametrize("frame", [
    b"", b".", b"a", b"ab", b"a.bc", b"a.b", b"a..", b"a..b.", b".a.", b"a b.", b"caf\xc3\xa9.", b"\xff.", b"a\x00.", b"a.*.",
])
def test_frame_topic_refuses_bad_frames(frame):
    with pytest.raises(FrameError):
        wire.frame_topic(frame)


@pytest.mark.parametrize("call", ["topic_frame", "frame_topic", "check_name", "decode_src"])
def test_trailing_newline_is_not_a_valid_topic_or_name(call):
    with pytest.raises(ProtocolError):
        if call == "topic_frame":
            wire.topic_frame("a.b\n")
        elif call == "frame_topic":
            wire.frame_topic(b"a.b\n.")
        elif call == "check_name":
            wire.check_name("vm1\n")
        else:
            wire.decode(raw_frames(header(src="alice\n")))


def test_topic_length_limit():
    longest = "a" * (wire.MAX_TOPIC - 1)  # plus the dot: exactly MAX_TOPIC bytes
    assert len(wire.topic_frame(longest)) == wire.MAX_TOPIC
    assert wire.frame_topic(longest.encode() + b".") == longest
    with pytest.raises(TooLarge):
        wire.topic_frame(longest + "a")
    with pytest.raises(TooLarge):
        wire.frame_topic(longest.encode() + b"a.")
    with pytest.raises(TooLarge):
        wire.decode([longest.encode() + b"a.", wire.pack_payload("alice", 1, 1, None, {}) + SIG0])


@pytest.mark.parametrize("prefix, frame", [
    ("", b""), (".", b""), ("  ", b""), ("machine", b"machine."), ("machine.", b"machine."),
    (" vault.req ", b"vault.req."),
])
def test_prefix_frame(prefix, frame):
    assert wire.prefix_frame(prefix) == frame


@pytest.mark.parametrize("prefix", ["a b", "a..b", "caf\u00e9", "*"])
def test_prefix_frame_refuses_bad_prefixes(prefix):
    with pytest.raises(ProtocolError):
        wire.prefix_frame(prefix)


# -- tampering ---------------------------------------------------------------

def test_every_flipped_payload_byte_is_refused_as_protocol_error_or_bad_signature():
    frames = signed_frames(body={"n": 5, "s": "hello"}, token=make_token(A))
    vk = A.signing_key.verify_key
    payload_len = len(frames[1]) - wire.SIG_LEN
    outcomes = set()
    for i in range(payload_len):
        for mask in (0x01, 0x80, 0xFF):
            env = bytearray(frames[1])
            env[i] ^= mask
            msg = assert_only_protocol_error([frames[0], bytes(env)])
            if msg is None:
                outcomes.add("protocol")
                continue
            with pytest.raises(BadSignature):
                wire.verify_signature(vk, msg)
            outcomes.add("signature")
    assert outcomes == {"protocol", "signature"}  # both refusal paths were exercised


def test_every_flipped_signature_byte_is_a_bad_signature():
    frames = signed_frames()
    vk = A.signing_key.verify_key
    for i in range(len(frames[1]) - wire.SIG_LEN, len(frames[1])):
        env = bytearray(frames[1])
        env[i] ^= 0x01
        msg = wire.decode([frames[0], bytes(env)])
        with pytest.raises(BadSignature):
            wire.verify_signature(vk, msg)


@pytest.mark.parametrize("topic", [b"debug.y.", b"debug.x.y.", b"debug.", b"Debug.x."])
def test_changed_topic_frame_breaks_the_signature(topic):
    frames = signed_frames(topic="debug.x")
    msg = wire.decode([topic, frames[1]])
    with pytest.raises(BadSignature):
        wire.verify_signature(A.signing_key.verify_key, msg)


@pytest.mark.parametrize("topic", [b"debug.x", b"debug.xx", b"debug..x.", b"debug x.", b"\xffdebug.x."])
def test_malformed_topic_frame_is_a_protocol_error(topic):
    frames = signed_frames(topic="debug.x")
    with pytest.raises(ProtocolError):
        wire.decode([topic, frames[1]])


def test_signature_moved_to_another_envelope_fails():
    f1 = signed_frames(seq=1)
    f2 = signed_frames(seq=2)
    spliced = [f1[0], f1[1][:-wire.SIG_LEN] + f2[1][-wire.SIG_LEN:]]
    with pytest.raises(BadSignature):
        wire.verify_signature(A.signing_key.verify_key, wire.decode(spliced))


# -- decode refusals -----------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 5])
def test_decode_wrong_frame_count(n):
    frames = signed_frames()
    with pytest.raises(FrameError):
        wire.decode((frames * 3)[:n])


@pytest.mark.parametrize("size", [0, 1, wire.SIG_LEN - 1, wire.SIG_LEN])
def test_decode_envelope_too_short(size):
    with pytest.raises(FrameError):
        wire.decode([b"debug.x.", b"\x80" * size])


def test_decode_envelope_size_limit_is_exact():
    base = len(wire.pack_payload("alice", 1, 1, None, {"x": b""}, msg_id=b"I" * 16, ts_ms=1))
    # find a blob length putting the envelope at exactly MAX_ENVELOPE bytes (bin header grows with size)
    for n in range(wire.MAX_ENVELOPE - base - wire.SIG_LEN - 8, wire.MAX_ENVELOPE):
        payload = wire.pack_payload("alice", 1, 1, None, {"x": b"z" * n}, msg_id=b"I" * 16, ts_ms=1)
        if len(payload) + wire.SIG_LEN == wire.MAX_ENVELOPE:
            break
    else:  # pragma: no cover
        pytest.fail("no exact size found")
    frames = wire.seal(A.signing_key, "debug.x", payload)
    assert len(frames[1]) == wire.MAX_ENVELOPE
    wire.verify_signature(A.signing_key.verify_key, wire.decode(frames))
    with pytest.raises(TooLarge):
        wire.decode([frames[0], frames[1] + b"\x00"])
    with pytest.raises(TooLarge):
        wire.decode([frames[0], b"\x00" * (10 * wire.MAX_ENVELOPE)])
    # seal refuses to build what decode would refuse
    big = wire.pack_payload("alice", 1, 1, None, {"x": b"z" * (n + 1)}, msg_id=b"I" * 16, ts_ms=1)
    with pytest.raises(TooLarge):
        wire.seal(A.signing_key, "debug.x", big)


@pytest.mark.parametrize("payload", [None, 1, -1, "str", b"bin", [], [1, 2], True, 1.5],
                         ids=repr)
def test_decode_payload_not_a_map(payload):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(msgpack.packb(payload, use_bin_type=True)))


@pytest.mark.parametrize("key", sorted(wire.HEADER_KEYS))
def test_decode_missing_header_key(key):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(header(**{key: DROP})))


@pytest.mark.parametrize("extra", [{"x": 1}, {"V": 1}, {"sig": b""}])
def test_decode_extra_header_key(extra):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames({**header(), **extra}))


def test_decode_header_keys_as_bytes_are_refused():
    h = {k.encode(): v for k, v in header().items()}
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(h))


def test_decode_non_string_map_keys_are_refused():
    payload = msgpack.packb({**header(), 1: 2}, use_bin_type=True, strict_types=False)
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(payload))


BAD_HEADER_VALUES = [
    ("v", 0), ("v", 2), ("v", "1"), ("v", None), ("v", b"\x01"),
    ("id", "I" * 16), ("id", b"I" * 15), ("id", b"I" * 17), ("id", b""), ("id", None), ("id", 1),
    ("src", "Alice"), ("src", ""), ("src", "1abc"), ("src", "a" * 33), ("src", b"alice"), ("src", 1),
    ("src", "al ice"), ("src", None),
    ("boot", -1), ("boot", 1.0), ("boot", True), ("boot", "1"), ("boot", 2**63), ("boot", None),
    ("seq", 1.5), ("seq", -1), ("seq", False), ("seq", 2**64 - 1), ("seq", b"1"),
    ("ts", -1), ("ts", 1.0e12), ("ts", "now"), ("ts", [1]),
    ("tok", "token"), ("tok", 1), ("tok", []), ("tok", {}), ("tok", False),
    ("body", None), ("body", []), ("body", "x"), ("body", b"x"), ("body", 1), ("body", [{}]),
]


@pytest.mark.parametrize("key, value", BAD_HEADER_VALUES, ids=[f"{k}={v!r}"[:40] for k, v in BAD_HEADER_VALUES])
def test_decode_bad_header_value(key, value):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(header(**{key: value})))


def test_decode_accepts_boundary_header_values():
    msg = wire.decode(raw_frames(header(boot=0, seq=2**63 - 1, ts=0, tok=b"", src="a" * 32)))
    assert (msg.boot, msg.seq, msg.ts, msg.token, msg.sender) == (0, 2**63 - 1, 0, b"", "a" * 32)


@pytest.mark.parametrize("v", [True, 1.0])
def test_decode_version_must_be_the_int_1(v):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(header(v=v)))


def _splice(placeholder_body, raw):
    """A packed valid header whose body value "@@@@" is replaced by the raw msgpack bytes ``raw``."""
    packed = msgpack.packb(header(body=placeholder_body), use_bin_type=True)
    marker = msgpack.packb("@@@@")
    assert packed.count(marker) == 1
    return packed.replace(marker, raw)


@pytest.mark.parametrize("raw", [
    b"\x91" * 5000 + b"\xc0",  # nesting far beyond any stack
    b"\x81\xa1k" * 3000 + b"\xc0",  # nested maps
    b"\xd4\x01\x00",  # ext type
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext
    b"\xc1",  # never-used byte
    b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
    b"\xdf\xff\xff\xff\xff",  # map claiming 4 billion items
    b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GB
    b"\xdb\x00\x01\x00\x00" + b"a" * 10,  # str longer than the data
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8 in a str
], ids=lambda r: r[:6].hex())
def test_decode_nested_garbage_in_body(raw):
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(_splice({"x": "@@@@"}, raw)))


def test_decode_trailing_bytes_after_the_map():
    payload = msgpack.packb(header(), use_bin_type=True)
    with pytest.raises(DecodeError):
        wire.decode(raw_frames(payload + b"\xc0"))


def test_decode_every_truncated_payload():
    payload = wire.pack_payload("alice", 3, 9, make_token(A), health_body())
    sig = A.signing_key.sign(b"x").signature
    assert wire.decode([b"health.alice.", payload + sig]).body == health_body()
    for n in range(len(payload)):
        with pytest.raises(ProtocolError):
            wire.decode([b"health.alice.", payload[:n] + sig])


# -- fuzzing -------------------------------------------------------------------

VALID_FRAMES = signed_frames(topic="health.alice", body=health_body(), token=make_token(A))

frame_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(VALID_FRAMES),
    st.builds(lambda data, i, b: data[:i] + bytes([b]) + data[i + 1:],
              st.sampled_from(VALID_FRAMES), st.integers(0, 400), st.integers(0, 255)),
    st.builds(lambda data, n: data[:n], st.sampled_from(VALID_FRAMES), st.integers(0, 400)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(frame_bytes, max_size=4))
def test_fuzz_decode_arbitrary_frames_raises_only_protocol_errors(frames):
    assert_only_protocol_error(frames)


@settings(max_examples=300, deadline=None)
@given(frame_bytes, frame_bytes)
def test_fuzz_decode_two_arbitrary_frames(topic, envelope):
    msg = assert_only_protocol_error([topic, envelope])
    if msg is not None:
        assert msg.topic_bytes == topic and msg.payload + msg.signature == envelope


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=24),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=4)), inner,
                                            max_size=4)),
    max_leaves=24,
)
TOPICS = sorted(p.replace("*", "alice").rstrip(".") + ".alice" for p, _ in REGISTRY.families()) + ["nope.alice", "vault.alice"]


def _mutated_body(draw):
    family = draw(st.sampled_from(sorted(EXAMPLES)))
    body = dict(EXAMPLES[family]["body"])
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "set" and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(values)
        else:
            body[draw(st.text(max_size=8))] = draw(values)
    return family, body


@st.composite
def fuzzed_message(draw):
    """A payload map mixing valid and arbitrary header values and bodies."""
    if draw(st.booleans()):
        family, body = _mutated_body(draw)
        topic = family.replace("*", "alice") + ".alice"  # a concrete topic of that family
    else:
        body = draw(st.dictionaries(st.text(max_size=8), values, max_size=5) | values)
        topic = draw(st.sampled_from(TOPICS))
    pick = lambda valid: draw(st.one_of(st.just(valid), values)) if draw(st.integers(0, 9)) == 0 else valid
    h = {"v": pick(1), "id": pick(os.urandom(16)), "src": pick("alice"), "boot": pick(1),
         "seq": pick(draw(st.integers(1, 2**63 - 1))), "ts": pick(T0 * 1000),
         "tok": pick(FUZZ_TOKEN), "body": body}
    if draw(st.integers(0, 9)) == 0:
        h.pop(draw(st.sampled_from(sorted(h))))
    if draw(st.integers(0, 9)) == 0:
        h[draw(st.text(max_size=4))] = draw(values)
    if draw(st.integers(0, 19)) == 0:
        h = draw(values)
    payload = msgpack.packb(h, use_bin_type=True)
    return wire.seal(A.signing_key, topic, payload)


FUZZ_TOKEN = make_token(A)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_message())
def test_fuzz_structured_payloads_decode_and_schema_raise_only_protocol_errors(frames):
    msg = assert_only_protocol_error(frames)
    if msg is None:
        return
    schema = REGISTRY.schema_for(msg.topic)
    if schema is None:
        return
    try:
        schema.check(msg.body)
    except DctrlError as exc:
        assert isinstance(exc, SchemaError), type(exc)


FUZZ_RECEIVER = make_proxy(B)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_message())
def test_fuzz_authproxy_open_raises_only_dctrl_errors(frames):
    try:
        msg = FUZZ_RECEIVER.open(frames)
    except DctrlError as exc:
        code, reason = describe_rejection(exc)
        assert code == exc.code and reason
        return
    assert msg.sender == "alice" and msg.token == FUZZ_TOKEN


# ---------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------

RID = bytes(range(16))
CHAIN_OUTPUT = {"event_id": "ee" * 32, "txid": "ab" * 32, "vout": 0, "address": "bcrt1qexample",
                "script": "0014" + "11" * 20, "sats": 12345, "label": "invoice 7"}

CMD = {"id": RID, "expires": T0}  # every command's header

EXAMPLES = {
    "health": dict(body=health_body(), required="name", int=("pid",), range=(("interval",), 3601),
                   long=(("version",), 33)),
    "error": dict(body={"kind": "rejected", "topic": "machine.vm1", "sender": "vm1", "code": "bad_body",
                        "reason": "why", "suppressed": 0},
                  required="code", int=("suppressed",), range=(("suppressed",), -1), long=(("reason",), 513)),
    "broker.denied": dict(body={"identity": "vm1", "direction": "publish", "topic": "cmd.x", "code": "not_granted",
                                "reason": "no", "suppressed": 2},
                          required="direction", int=("suppressed",), range=(("suppressed",), -1),
                          long=(("identity",), 65)),
    "vault.req": dict(body={"rid": RID, "op": "token", "key_version": 1, "secret": None},
                      required="rid", int=("key_version",), range=(("key_version",), 0), long=(("secret",), 65)),
    "vault.token": dict(body={"rid": RID, "token": b"t" * 100, "exp": T0, "code": None, "reason": None},
                        required="rid", int=("exp",), range=(("exp",), -1), long=(("reason",), 513)),
    "vault.secret": dict(body={"rid": RID, "secret": "smtp_password", "sealed": b"s" * 80, "code": None,
                               "reason": None},
                         required="secret", int=None, range=None, long=(("secret",), 65)),
    "vault.revoked": dict(body={"revocations": [{"identity": "vm1", "up_to": 2}, {"identity": "vm2", "up_to": 1}]},
                          required="revocations", int=("revocations", 1, "up_to"),
                          range=(("revocations", 0, "up_to"), -1), long=(("revocations", 1, "identity"), 33)),
    "events.gap": dict(body={"sender": "vm1", "boot": 3, "expected": 5, "got": 9, "missing": 4},
                       required="missing", int=("got",), range=(("missing",), 0), long=(("sender",), 33)),
    "debug": dict(body={"n": 7, "nested": {"l": [1, "x", b"y", None, True]}}, required=None, int=None,
                  range=None, long=None),
    "price.btc_cad": dict(body={"cad_per_btc": "128400.12", "used": 3, "as_of": T0 * 1000,
                                "sources": [{"name": "kraken", "fresh": True, "price": "128430.00", "age_s": 3,
                                             "error": None, "used": True}]},
                          required="cad_per_btc", int=("used",), range=(("used",), 1),
                          long=(("sources", 0, "name"), 33)),
    "price.stale": dict(body={"reason": "1 fresh source, 2 needed", "fresh": 1, "needed": 2, "sources": []},
                        required="needed", int=("fresh",), range=(("needed",), 0), long=(("reason",), 513)),
    "chain.tx.seen": dict(body={**CHAIN_OUTPUT, "rbf": False}, required="txid", int=("sats",),
                          range=(("vout",), -1), long=(("address",), 101)),
    "chain.tx.confirmed": dict(body={**CHAIN_OUTPUT, "confirmations": 1, "height": 101, "block": "ab" * 32},
                               required="confirmations", int=("height",), range=(("confirmations",), 0),
                               long=(("label",), 65)),
    "chain.tx.replaced": dict(body={**CHAIN_OUTPUT, "by": "cd" * 32}, required="sats", int=("sats",),
                              range=(("sats",), -1), long=(("by",), 65)),
    "chain.tx.removed": dict(body={**CHAIN_OUTPUT, "reason": "reorg"}, required="reason", int=("vout",),
                             range=(("sats",), -1), long=(("reason",), 513)),
    "chain.block": dict(body={"height": 101, "hash": "ab" * 32, "prev": "cd" * 32, "time": T0},
                        required="hash", int=("height",), range=(("height",), -1), long=(("hash",), 65)),
    "cmd.chain.watch": dict(body={"id": RID, "expires": T0, "address": "bcrt1qexample", "label": None},
                            required="address", int=("expires",), range=(("expires",), -1), long=(("label",), 65)),
    "cmd.chain.discover": dict(body={"id": RID, "expires": T0, "book": "invoices", "start": 0, "gap": 20},
                               required="book", int=("gap",), range=(("gap",), 1001), long=(("book",), 33)),
    "chain.discover.ack": dict(body={"id": RID, "book": "invoices", "status": "done", "reason": None,
                                     "highest": 7, "scanned": 40},
                               required="scanned", int=("highest",), range=(("highest",), -1),
                               long=(("reason",), 513)),
    "chain.watch.ack": dict(body={"id": RID, "address": "bcrt1qexample", "script": "0014" + "11" * 20,
                                  "status": "watching", "reason": None},
                            required="status", int=None, range=None, long=(("address",), 101)),
    "cmd.machine.*.vend": dict(body={"id": RID, "expires": T0, "slot": 1, "invoice": "inv-1", "pulse_ms": None},
                        required="slot", int=("slot",), range=(("slot",), 256), long=(("invoice",), 65)),
    "machine.*.vend.ack": dict(body={"id": RID, "status": "vended", "slot": 1, "invoice": "inv-1", "reason": None,
                          "pulsed_ms": 500},
                    required="status", int=("slot",), range=(("slot",), -1), long=(("invoice",), 65)),
    "machine.*.button": dict(body={"slot": 1, "pressed_at": T0 * 1000}, required="slot", int=("slot",),
                             range=(("slot",), 256), long=None),
    "machine.*.coin": dict(body={"pulses": 3, "total": 12}, required="pulses", int=("pulses",),
                           range=(("pulses",), 0), long=None),
    "machine.*.door": dict(body={"open": True}, required="open", int=None, range=None, long=None),
    "machine.*.drop": dict(body={"slot": None, "at": T0 * 1000}, required="at", int=("at",), range=(("at",), -1),
                           long=None),
    "machine.*.sensor": dict(body={"name": "temp", "value": "-5.125", "unit": "C"}, required="value", int=None,
                             range=None, long=(("unit",), 17)),
    "chain.reorg": dict(body={"fork_height": 99, "depth": 2, "old_tip": "ab" * 32, "new_tip": "cd" * 32},
                        required="depth", int=("depth",), range=(("depth",), 0), long=(("old_tip",), 65)),
    "cmd.business.machine.add": dict(body={"id": RID, "expires": T0, "name": "vm1", "location": "front door"},
                                     required="name", int=("expires",), range=(("expires",), -1),
                                     long=(("location",), 129)),
    "cmd.business.slot.set": dict(body={"id": RID, "expires": T0, "machine": "vm1", "slot": 3, "product": "cola",
                                        "price_cad": "3.50", "relay": "gpio:17", "stock": 10},
                                  required="slot", int=("slot",), range=(("slot",), 256),
                                  long=(("product",), 65)),
    "cmd.business.slot.rm": dict(body={"id": RID, "expires": T0, "machine": "vm1", "slot": 3},
                                 required="slot", int=("slot",), range=(("slot",), 256), long=None),
    "cmd.business.machine.set": dict(body={"id": RID, "expires": T0, "name": "vm1", "location": "back door"},
                                     required="name", int=("expires",), range=(("expires",), -1),
                                     long=(("location",), 129)),
    "cmd.business.machine.rm": dict(body={"id": RID, "expires": T0, "name": "vm1"},
                                    required="name", int=("expires",), range=(("expires",), -1), long=None),
    "business.machine.changed": dict(body={"name": "vm1", "location": "back door", "created": T0,
                                           "event_id": "ee" * 32},
                                     required="name", int=("created",), range=(("created",), -1),
                                     long=(("location",), 129)),
    "business.machine.removed": dict(body={"name": "vm1", "event_id": "ee" * 32},
                                     required="event_id", int=None, range=None, long=None),
    "business.slot.removed": dict(body={"machine": "vm1", "slot": 3, "event_id": "ee" * 32},
                                  required="slot", int=("slot",), range=(("slot",), 256), long=None),
    "cmd.business.policy.set": dict(body={"id": RID, "expires": T0, "key": "invoice_lifetime_s", "value": "900"},
                                    required="key", int=("expires",), range=(("expires",), -1),
                                    long=(("value",), 65)),
    "business.ack": dict(body={"id": RID, "status": "done", "reason": None},
                         required="status", int=None, range=None, long=(("reason",), 513)),
    "business.machine.added": dict(body={"name": "vm1", "location": None, "created": T0, "event_id": "ee" * 32},
                                   required="name", int=("created",), range=(("created",), -1),
                                   long=(("location",), 129)),
    "business.slot.changed": dict(body={"machine": "vm1", "slot": 3, "product": "cola", "price_cents": 350,
                                        "relay": "i2c:0x20:3", "stock": None, "event_id": "ee" * 32,
                                        "sticker_address": "bcrt1qexampleexample"},
                                  required="price_cents", int=("price_cents",), range=(("price_cents",), -1),
                                  long=(("product",), 65)),
    "business.policy.changed": dict(body={"key": "confirmations_required", "value": "2", "version": 7,
                                          "event_id": "ee" * 32},
                                    required="version", int=("version",), range=(("version",), 0),
                                    long=(("key",), 65)),
    "invoice.opened": dict(body={"event_id": "ee" * 32, "invoice": "7", "mode": "invoice", "machine": "vm1",
                                 "slot": 1, "product": "cola", "price_cents": 350, "items": 1,
                                 "cad_per_btc": "128400.00", "sats": 2726, "address": "bcrt1qexample",
                                 "uri": "bitcoin:bcrt1qexample?amount=0.00002726", "expires": T0,
                                 "zero_conf": True, "confirmations": 1},
                           required="address", int=("sats",), range=(("sats",), -1), long=(("product",), 65)),
    "invoice.changed": dict(body={"event_id": "ee" * 32, "invoice": "7", "state": "overpaid",
                                  "previous": "vending", "machine": "vm1", "slot": 1, "sats": 2726,
                                  "received_sats": 5452, "late_sats": 0, "credit_sats": 2726, "lost_sats": 0,
                                  "items": 1, "vended": 1, "reason": None},
                            required="state", int=("credit_sats",), range=(("late_sats",), -1),
                            long=(("reason",), 513)),
    "invoice.refused": dict(body={"machine": "vm1", "slot": 1, "reason": "no sale at a stale price"},
                            required="reason", int=("slot",), range=(("slot",), 256), long=(("reason",), 513)),
    # members (MemberData) and their mail (MemberMail)
    "cmd.members.add": dict(body={**CMD, "handle": "ada", "personal": b"sealed" * 8, "plan": "regular",
                                  "joined": "2026-12-01"},
                            required="personal", int=("expires",), range=(("expires",), -1), long=(("handle",), 33)),
    "cmd.members.set": dict(body={**CMD, "handle": "ada", "personal": b"sealed" * 8},
                            required="personal", int=("expires",), range=(("expires",), -1), long=(("handle",), 33)),
    "cmd.members.pay": dict(body={**CMD, "handle": "ada", "cad": "40.00", "method": "cash", "note": "at the door",
                                  "on": None, "txid_vout": None},
                            required="cad", int=("expires",), range=(("expires",), -1), long=(("note",), 257)),
    "cmd.members.adjust": dict(body={**CMD, "handle": "ada", "cad": "-10.00", "note": "waived", "on": None,
                                     "reverses": 3},
                               required="note", int=("reverses",), range=(("reverses",), 0), long=(("cad",), 33)),
    "cmd.members.plan": dict(body={**CMD, "handle": "ada", "plan": "student", "from": "2027-01-01"},
                             required="from", int=("expires",), range=(("expires",), -1), long=(("plan",), 33)),
    "cmd.members.leave": dict(body={**CMD, "handle": "ada", "on": "2027-01-31"},
                              required="handle", int=("expires",), range=(("expires",), -1), long=(("handle",), 33)),
    "cmd.members.rejoin": dict(body={**CMD, "handle": "ada", "on": None},
                               required="handle", int=("expires",), range=(("expires",), -1), long=(("handle",), 33)),
    "cmd.members.group": dict(body={**CMD, "handle": "ada", "group": "keys", "action": "add"},
                              required="action", int=("expires",), range=(("expires",), -1), long=(("group",), 33)),
    "cmd.members.forget": dict(body={**CMD, "handle": "ada"},
                               required="handle", int=("expires",), range=(("expires",), -1), long=(("handle",), 33)),
    "cmd.members.plan_set": dict(body={**CMD, "name": "regular", "cad": "40.00", "period": "month", "grace_days": 30,
                                       "confirmations": 2},
                                 required="period", int=("grace_days",), range=(("confirmations",), 0),
                                 long=(("cad",), 33)),
    "members.ack": dict(body={"id": RID, "status": "refused", "reason": "no plan student"},
                        required="status", int=None, range=None, long=(("reason",), 513)),
    "member.changed": dict(body={"event_id": "ee" * 32, "handle": "ada", "kind": "paid", "ref": 7, "on": "2026-12-01"},
                           required="kind", int=("ref",), range=(("ref",), 0), long=(("handle",), 33)),
    "member.plan.changed": dict(body={"event_id": "ee" * 32, "name": "regular", "version": 2, "cents": 4000,
                                      "period": "month", "grace_days": 30, "confirmations": 2},
                                required="cents", int=("cents",), range=(("cents",), -1), long=(("name",), 33)),
    "mail.sent": dict(body={"id": 5, "kind": "welcome", "handle": "ada"},
                      required="kind", int=("id",), range=(("id",), 0), long=(("handle",), 33)),
    "mail.failed": dict(body={"id": 5, "kind": "receipt", "handle": "ada"},
                        required="kind", int=("id",), range=(("id",), 0), long=(("handle",), 33)),
    "mail.held": dict(body={"id": 5, "kind": "test", "handle": None},
                      required="id", int=("id",), range=(("id",), 0), long=None),
    "cmd.mail.retry": dict(body={**CMD, "row": 5}, required="row", int=("row",), range=(("row",), 0), long=None),
    "cmd.mail.send_test": dict(body={**CMD, "to": "me@example.org"},
                               required="to", int=("expires",), range=(("expires",), -1), long=None),
    "mail.ack": dict(body={"id": RID, "status": "done", "reason": None, "row": 5},
                     required="status", int=("row",), range=(("row",), 0), long=(("reason",), 513)),
    # the Reporter (actors/reporter/actor.py)
    "member.status": dict(body={"event_id": "ab" * 32, "handle": "ada", "status": "overdue", "previous": "due",
                                "on": "2027-01-22"},
                          required="status", int=(), range=(), long=(("handle",), 33)),
    "cmd.report.run": dict(body={"id": b"\x01" * 16, "expires": 1, "as_of": "2027-01-22"},
                           required="expires", int=("expires",), range=(("expires",), -1), long=()),
    "cmd.report.member": dict(body={"id": b"\x01" * 16, "expires": 1, "handle": "ada", "as_of": None},
                              required="handle", int=("expires",), range=(("expires",), -1),
                              long=(("handle",), 33)),
    "report.ack": dict(body={"id": b"\x01" * 16, "status": "done", "reason": None, "result": {"members": 3}},
                       required="status", int=(), range=(), long=(("reason",), 513)),
    "report.members": dict(body={"event_id": "ab" * 32, "as_of": "2027-01-22", "members": 3,
                                 "counts": {"current": 2, "due": 1}, "balance_cents": -4000},
                           required="counts", int=("members",), range=(("members",), -1), long=()),
    "report.income": dict(body={"event_id": "ab" * 32, "as_of": "2027-01-22",
                                "months": [{"month": "2027-01", "dues_cents": 4000, "dues_sats": 0,
                                            "sales_cents": 350, "sales_sats": 3900}]},
                          required="months", int=("months", 0, "sales_sats"),
                          range=(("months", 0, "sales_sats"), -1), long=()),
    "report.activity": dict(body={"event_id": "ab" * 32, "as_of": "2027-01-22",
                                  "months": [{"month": "2026-12", "active": 40, "joins": 3, "leaves": 1,
                                              "retention_permille": None},
                                             {"month": "2027-01", "active": 41, "joins": 2, "leaves": 0,
                                              "retention_permille": 975}]},
                            required="months", int=("months", 1, "active"), range=(("months", 1, "joins"), -1),
                            long=()),
    "report.groups": dict(body={"event_id": "ab" * 32, "as_of": "2027-01-22",
                                "groups": [{"name": "keys", "kind": "explicit", "members": 12},
                                           {"name": "keyholders", "kind": "rule", "members": 10}]},
                          required="groups", int=("groups", 0, "members"), range=(("groups", 1, "members"), -1),
                          long=(("groups", 0, "name"), 33)),
    # PayoutMgr (actors/payout_mgr)
    "cmd.payouts.request": dict(body={**CMD, "to": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "sats": 5000,
                                      "cad": None, "kind": "manual", "reason": "revenue share"},
                                required="reason", int=("sats",), range=(("sats",), 0), long=(("reason",), 513)),
    "cmd.payouts.refund": dict(body={**CMD, "invoice": 7, "to": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
                                     "rate": "then", "reason": None},
                               required="invoice", int=("invoice",), range=(("invoice",), 0), long=(("to",), 101)),
    **{f"cmd.payouts.{verb}": dict(body={**CMD, "payout": 3, "reason": "why"}, required="payout", int=("payout",),
                                   range=(("payout",), 0), long=(("reason",), 513))
       for verb in ("approve", "reject", "cancel")},
    "cmd.payouts.import": dict(body={**CMD, "payout": 3, "psbt": "cHNidP8BAA=="}, required="psbt",
                               int=("payout",), range=(("payout",), 0), long=(("psbt",), 60_001)),
    "cmd.payouts.bump": dict(body={**CMD, "payout": 3, "feerate": "12.5"}, required="feerate", int=("payout",),
                             range=(("payout",), 0), long=None),
    "payouts.ack": dict(body={"id": RID, "status": "done", "reason": None, "payout": 3, "state": "requested"},
                        required="status", int=("payout",), range=(("payout",), 0), long=(("reason",), 513)),
    **{f"payout.{state}": dict(body={"event_id": "ab" * 32, "payout": 3, "state": "broadcast", "kind": "refund",
                                     "sats": 5000, "txid": "cd" * 32, "by": None, "reason": None, "signers": 2,
                                     "needed": 2},
                               required="payout", int=("sats",), range=(("sats",), 0), long=(("reason",), 513))
       for state in ("requested", "awaiting_signatures", "signed", "broadcast", "confirmed", "cancelled", "expired",
                     "invalidated", "replaced", "signature")},
}


def _path(keys):
    return "body" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)


def _with(body, keys, value):
    body = json_copy(body)
    target = body
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return body


def json_copy(v):
    if isinstance(v, dict):
        return {k: json_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_copy(x) for x in v]
    return v


def schema(family):
    s = REGISTRY.schema_for(family + ".vm1")
    assert s is not None
    return s


def refused(family, body):
    with pytest.raises(SchemaError) as info:
        schema(family).check(body)
    return str(info.value)


def test_examples_cover_every_topic_family():
    assert set(EXAMPLES) == {p.rstrip(".") for p, _ in REGISTRY.families()}


@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_family_accepts_its_example(family):
    schema(family).check(json_copy(EXAMPLES[family]["body"]))
    assert REGISTRY.schema_for(family) is schema(family)  # the family's own topic too


@pytest.mark.parametrize("family", [f for f in sorted(EXAMPLES) if EXAMPLES[f]["required"]])
def test_family_refuses_a_missing_required_key(family):
    body = json_copy(EXAMPLES[family]["body"])
    key = EXAMPLES[family]["required"]
    del body[key]
    msg = refused(family, body)
    assert msg.startswith("body:") and key in msg


@pytest.mark.parametrize("family", [f for f in sorted(EXAMPLES) if f != "debug"])
def test_family_refuses_an_unexpected_key(family):
    body = {**json_copy(EXAMPLES[family]["body"]), "surprise": 1}
    msg = refused(family, body)
    assert msg.startswith("body:") and "surprise" in msg


@pytest.mark.parametrize("family", [f for f in sorted(EXAMPLES) if EXAMPLES[f]["int"]])
@pytest.mark.parametrize("value, typename", [(1.0, "float"), (2.5, "float"), (True, "bool"), (False, "bool"),
                                             ("1", "str"), (b"1", "bytes")])
def test_family_refuses_non_int_where_int_expected(family, value, typename):
    keys = EXAMPLES[family]["int"]
    msg = refused(family, _with(EXAMPLES[family]["body"], keys, value))
    assert msg.startswith(_path(keys) + ":") and f"expected int, got {typename}" in msg


@pytest.mark.parametrize("family", [f for f in sorted(EXAMPLES) if EXAMPLES[f]["long"]])
def test_family_refuses_an_over_long_string(family):
    keys, length = EXAMPLES[family]["long"]
    ok = _with(EXAMPLES[family]["body"], keys, "a" * (length - 1))
    schema(family).check(ok)  # the bound itself is accepted
    msg = refused(family, _with(EXAMPLES[family]["body"], keys, "a" * length))
    assert msg.startswith(_path(keys) + ":")


@pytest.mark.parametrize("family", [f for f in sorted(EXAMPLES) if EXAMPLES[f]["range"]])
def test_family_refuses_an_out_of_range_int(family):
    keys, value = EXAMPLES[family]["range"]
    msg = refused(family, _with(EXAMPLES[family]["body"], keys, value))
    assert msg.startswith(_path(keys) + ":") and str(value) in msg


def test_debug_refuses_floats_anywhere_and_deep_nesting():
    msg = refused("debug", {"x": [1, {"y": 1.5}]})
    assert msg.startswith("body.x[1].y:") and "float" in msg
    deep = 1
    for _ in range(10):
        deep = [deep]
    assert "nested deeper" in refused("debug", {"x": deep})


def test_schema_details():
    # Opt fields accept None; Bytes has an exact size; choices are enforced; maps of ints.
    s = schema("health")
    s.check(_with(health_body(), ("token_exp",), T0))
    assert refused("health", _with(health_body(), ("status",), "fine")).startswith("body.status:")
    assert refused("health", _with(health_body(), ("counters",), {"x": -1})).startswith("body.counters.x:")
    assert refused("health", _with(health_body(), ("counters",), {"x": 1.0})).startswith("body.counters.x:")
    assert refused("health", _with(health_body(), ("name",), "Vm1")).startswith("body.name:")
    assert refused("vault.req", _with(EXAMPLES["vault.req"]["body"], ("rid",), b"x" * 15)).startswith("body.rid:")
    assert refused("vault.req", _with(EXAMPLES["vault.req"]["body"], ("rid",), "x" * 16)).startswith("body.rid:")
    assert refused("vault.req", _with(EXAMPLES["vault.req"]["body"], ("op",), "delete")).startswith("body.op:")
    assert refused("vault.revoked", {"revocations": {"vm1": 1}}).startswith("body.revocations:")
    with pytest.raises(SchemaError):
        s.check([health_body()])


def test_registry_longest_whole_segment_prefix():
    assert REGISTRY.schema_for("vault.req.vm1") is not REGISTRY.schema_for("vault.token.vm1")
    for topic in ("vault", "vault.other.vm1", "healthy.vm1", "broker", "broker.deniedx", "events", "nope"):
        assert REGISTRY.schema_for(topic) is None, topic
    assert REGISTRY.schema_for("broker.denied") is not None
    assert REGISTRY.schema_for("debug.a.b.c") is schema("debug")


# ---------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------

def test_token_issue_parse_round_trip():
    raw = make_token(A, publish=(b"health.alice.", b"machine.alice."), subscribe=(b"cmd.alice.",),
                     issued_at=T0, lifetime=600, role="machine", key_version=3)
    tok = tokens.parse(raw, VAULT.verify_key)
    assert tok.identity == "alice" and tok.role == "machine"
    assert tok.key == A.sign_public and bytes(tok.verify_key()) == A.sign_public
    assert tok.key_version == 3
    assert tok.publish == (b"health.alice.", b"machine.alice.") and tok.subscribe == (b"cmd.alice.",)
    assert (tok.issued_at, tok.expires_at) == (T0, T0 + 600)
    assert len(tok.tid) == 16 and tok.raw == raw
    assert tokens.parse(make_token(A), VAULT.verify_key).tid != tokens.parse(make_token(A), VAULT.verify_key).tid


def test_token_signed_by_an_unpinned_key_is_refused():
    other = nacl.signing.SigningKey.generate()
    with pytest.raises(BadToken):
        tokens.parse(make_token(A, vault=other), VAULT.verify_key)
    # an identity's own key is not the vault key either
    with pytest.raises(BadToken):
        tokens.parse(make_token(A, vault=A.signing_key), VAULT.verify_key)
    # nor is a message signature (different context)
    payload = make_token(A)[:-wire.SIG_LEN]
    forged = payload + VAULT.sign(payload).signature
    with pytest.raises(BadToken):
        tokens.parse(forged, VAULT.verify_key)


def test_truncated_or_missized_tokens_are_refused():
    raw = make_token(A)
    for cut in (raw[:-1], raw[1:], raw[:wire.SIG_LEN], raw[:wire.SIG_LEN + 1], raw[:len(raw) // 2], b"",
                raw + b"\x00", b"\x00" * (tokens.MAX_TOKEN + 1)):
        with pytest.raises(BadToken):
            tokens.parse(cut, VAULT.verify_key)
    for not_bytes in (None, bytearray(raw), raw.hex(), 1):
        with pytest.raises(BadToken):
            tokens.parse(not_bytes, VAULT.verify_key)


def _vault_signed(payload_map):
    payload = msgpack.packb(payload_map, use_bin_type=True)
    return payload + VAULT.sign(tokens.TOKEN_CONTEXT + payload).signature


GOOD_TOKEN_MAP = {"v": 1, "tid": b"t" * 16, "sub": "alice", "role": "actor", "key": A.sign_public, "kv": 1,
                  "pub": [""], "subs": [""], "iat": T0, "exp": T0 + 60}


@pytest.mark.parametrize("over", [
    {"v": 2}, {"sub": "Alice"}, {"sub": 1}, {"role": 1}, {"key": b"k" * 31}, {"key": "k" * 32},
    {"kv": 1.0}, {"kv": True}, {"iat": "now"}, {"exp": 1.5}, {"pub": "health."}, {"subs": [1]},
    {"pub": [b"health."]}, {"tid": "t"}, {"extra": 1},
], ids=repr)
def test_vault_signed_token_with_wrong_shape_is_refused(over):
    assert tokens.parse(_vault_signed(GOOD_TOKEN_MAP), VAULT.verify_key).identity == "alice"
    with pytest.raises(BadToken):
        tokens.parse(_vault_signed({**GOOD_TOKEN_MAP, **over}), VAULT.verify_key)


def test_vault_signed_garbage_payloads_are_bad_tokens():
    for payload in (b"\xc1", b"\x91" * 2000 + b"\xc0", msgpack.packb([1, 2]), msgpack.packb(None)):
        with pytest.raises(BadToken):
            tokens.parse(payload + VAULT.sign(tokens.TOKEN_CONTEXT + payload).signature, VAULT.verify_key)
    missing = dict(GOOD_TOKEN_MAP)
    del missing["exp"]
    with pytest.raises(BadToken):
        tokens.parse(_vault_signed(missing), VAULT.verify_key)


def test_verifier_expiry_uses_the_injected_clock_even_when_cached():
    clock = Clock(T0)
    v = tokens.TokenVerifier(VAULT.verify_key, clock)
    raw = make_token(A, issued_at=T0, lifetime=100)
    assert v.check(raw, sender="alice").identity == "alice"
    clock.t = T0 + 99.999
    v.check(raw, sender="alice")
    clock.t = T0 + 100
    with pytest.raises(TokenExpired):
        v.check(raw, sender="alice")
    assert isinstance(TokenExpired("x"), PermissionError)


def test_verifier_revocation_refuses_old_versions_and_admits_newer():
    v = tokens.TokenVerifier(VAULT.verify_key, Clock())
    old, new = make_token(A, key_version=1), make_token(A, key_version=2)
    v.check(old, sender="alice")  # cached before the revocation
    v.revoke("alice", 1)
    with pytest.raises(TokenRevoked):
        v.check(old, sender="alice")
    assert v.check(new, sender="alice").key_version == 2
    v.revoke("alice", 0)  # a lower revocation never un-revokes
    with pytest.raises(TokenRevoked):
        v.check(old, sender="alice")
    v.check(make_token(B, key_version=1), sender="bob")  # other identities are unaffected
    v.revoke("alice", 2)
    with pytest.raises(TokenRevoked):
        v.check(new, sender="alice")


def test_verifier_sender_mismatch_and_grants():
    v = tokens.TokenVerifier(VAULT.verify_key, Clock())
    raw = make_token(A, publish=(b"machine.vm1.", b"health.alice."))
    with pytest.raises(BadToken):
        v.check(raw, sender="bob")
    assert v.check(raw, sender="alice", topic_frame=b"machine.vm1.")
    assert v.check(raw, sender="alice", topic_frame=b"machine.vm1.status.")
    assert v.check(raw, sender="alice", topic_frame=b"health.alice.")
    for topic in (b"machine.vm10.", b"machine.vm1x.", b"machine.", b"health.alicex.", b"cmd.machine.vm1."):
        with pytest.raises(NotGranted):
            v.check(raw, sender="alice", topic_frame=topic)
    everything = make_token(A, publish=(b"",))
    for topic in (b"a.", b"machine.vm10.", b"vault.token.bob."):
        v.check(everything, sender="alice", topic_frame=topic)
    nothing = make_token(A, publish=())
    with pytest.raises(NotGranted):
        v.check(nothing, sender="alice", topic_frame=b"health.alice.")


def test_verifier_cache_is_bounded_lru():
    v = tokens.TokenVerifier(VAULT.verify_key, Clock(), cache_size=2)
    t1, t2, t3 = (make_token(A) for _ in range(3))
    v.check(t1, sender="alice")
    v.check(t2, sender="alice")
    v.check(t1, sender="alice")  # t1 becomes most recent
    v.check(t3, sender="alice")
    assert list(v.cache) == [t1, t3]
    # a bad token is never cached
    with pytest.raises(BadToken):
        v.check(make_token(A, vault=A.signing_key), sender="alice")
    assert len(v.cache) == 2


# ---------------------------------------------------------------------------
# AuthProxy
# ---------------------------------------------------------------------------

def test_seal_without_a_token_raises_no_token():
    p = make_proxy(A, token=None)
    assert not p.token_valid() and p.renew_in() == 0.0
    with pytest.raises(NoToken):
        p.seal("health.alice", health_body())
    assert p.seq == 0


def test_seal_after_expiry_raises_no_token():
    clock = Clock()
    p = make_proxy(A, clock=clock, token=make_token(A, lifetime=60))
    p.seal("health.alice", health_body())
    clock.t = T0 + 60
    assert not p.token_valid()
    with pytest.raises(NoToken):
        p.seal("health.alice", health_body())


def test_seal_unknown_topic_family_and_bad_body():
    p = make_proxy(A)
    for topic in ("nope.alice", "vault.alice", "healthy"):
        with pytest.raises(UnknownTopic):
            p.seal(topic, {})
    with pytest.raises(SchemaError):
        p.seal("health.alice", {**health_body(), "pid": 1.0})
    with pytest.raises(ProtocolError):
        p.seal("health.al ice", health_body())


def test_set_token_refuses_tokens_for_others_or_other_keys():
    p = make_proxy(A, token=None)
    with pytest.raises(BadToken):
        p.set_token(make_token(B))  # bob's token
    with pytest.raises(BadToken):
        p.set_token(make_token(B, identity="alice"))  # alice's name, bob's key
    with pytest.raises(TokenExpired):
        p.set_token(make_token(A, issued_at=T0 - 1000, lifetime=900))
    assert p.token is None


def test_full_flow_seal_open_and_replay():
    raw = make_token(A, publish=(b"health.alice.", b"debug."))
    sender = make_proxy(A, token=raw)
    receiver = make_proxy(B)
    frames = sender.seal("health.alice", health_body())
    msg = receiver.open(frames)
    assert (msg.sender, msg.topic, msg.boot, msg.seq, msg.token) == ("alice", "health.alice", 1, 1, raw)
    assert msg.ts == T0 * 1000 and msg.body == health_body()
    with pytest.raises(Replayed):
        receiver.open(frames)
    # a fresh message from the same boot passes; an older one, out of order, does not
    f2, f3 = sender.seal("debug.x", {"n": 2}), sender.seal("debug.x", {"n": 3})
    assert receiver.open(f3).seq == 3
    with pytest.raises(Replayed):
        receiver.open(f2)
    # refused: a topic outside the token's grants, even though sealed with a valid token
    with pytest.raises(NotGranted):
        receiver.open(sender.seal("error.alice", {"kind": "handler", "topic": "x", "sender": "alice",
                                                   "code": "x", "reason": "", "suppressed": 0}))


def test_open_refuses_a_valid_token_carried_by_another_key():
    raw_a = make_token(A, publish=(b"",))
    # bob signs a message claiming to be alice, carrying alice's (stolen) token
    frames = wire.seal(B.signing_key, "debug.x", wire.pack_payload("alice", 1, 1, raw_a, {}))
    with pytest.raises(BadSignature):
        make_proxy(VAULT_ID).open(frames)
    # bob carries alice's token under his own name
    frames = wire.seal(B.signing_key, "debug.x", wire.pack_payload("bob", 1, 1, raw_a, {}))
    with pytest.raises(BadToken):
        make_proxy(VAULT_ID).open(frames)


def test_open_checks_expiry_and_revocation_on_the_receiver_clock():
    clock = Clock()
    sender = make_proxy(A, token=make_token(A, lifetime=100))
    receiver = make_proxy(B, clock=clock)
    f1, f2, f3 = (sender.seal("debug.x", {}) for _ in range(3))
    receiver.open(f1)
    receiver.verifier.revoke("alice", A.version)
    with pytest.raises(TokenRevoked):
        receiver.open(f2)
    receiver.verifier.revoked.clear()
    clock.t = T0 + 100
    with pytest.raises(TokenExpired):
        receiver.open(f3)


def test_refused_messages_do_not_advance_the_replay_window():
    sender = make_proxy(A)
    receiver = make_proxy(B)
    good = sender.seal("debug.x", {"n": 1})
    env = bytearray(good[1])
    env[-1] ^= 1
    with pytest.raises(BadSignature):
        receiver.open([good[0], bytes(env)])
    assert receiver.open(good).seq == 1


def test_two_boots_interleaved_are_both_tracked():
    raw = make_token(A)
    boot1, boot2 = make_proxy(A, boot=1, token=raw), make_proxy(A, boot=2, token=raw)
    receiver = make_proxy(B)
    first = boot1.seal("debug.x", {"n": 1})
    sequence = [first, boot2.seal("debug.x", {"n": 1}), boot1.seal("debug.x", {"n": 2}),
                boot2.seal("debug.x", {"n": 2}), boot1.seal("debug.x", {"n": 3})]
    got = [(m.boot, m.seq) for m in map(receiver.open, sequence)]
    assert got == [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3)]
    assert receiver.replay.seen["alice"] == {1: 3, 2: 2}
    with pytest.raises(Replayed):
        receiver.open(first)


def test_a_new_boot_never_pushes_a_live_boot_out_of_the_window():
    # (issue 10, hole 3: this replaces a test of the old rule, which evicted the smallest boot
    # even while it was live and refused any boot below every tracked one)
    clock = Clock()
    raw = make_token(A)
    receiver = make_proxy(B, clock=clock, replay=ReplayGuard(boots_per_sender=8))
    proxies = {b: make_proxy(A, boot=b, token=raw) for b in range(9, 21)}
    live = proxies[12]
    receiver.open(live.seal("debug.x", {}))
    for b in (11, 13, 14, 15, 16, 17, 18):  # seven other boots, larger and smaller
        receiver.open(proxies[b].seal("debug.x", {}))
    assert sorted(receiver.replay.seen["alice"]) == list(range(11, 19))
    # the window is full of boots whose tokens live: a new one is refused, whatever its number
    for b in (10, 19):
        with pytest.raises(Replayed, match="boots with live tokens"):
            receiver.open(proxies[b].seal("debug.x", {}))
    assert receiver.open(live.seal("debug.x", {})).seq == 2  # the live one, smallest or not
    # once their tokens have expired, fresh tokens' boots take the expired places
    clock.t = T0 + 901
    fresh = make_token(A, issued_at=T0 + 901)
    late = {b: make_proxy(A, boot=b, token=fresh, clock=clock) for b in (19, 20)}
    for b, p in late.items():
        assert receiver.open(p.seal("debug.x", {})).boot == b
    assert sorted(receiver.replay.seen["alice"]) == [19, 20]  # the expired ones are gone at once


def test_replay_window_evicts_least_recently_used_not_smallest():
    g = ReplayGuard(boots_per_sender=3)
    now = T0
    g.record("a", 1, 1, expires=now + 10, now=now)   # the live one: smallest boot
    g.record("a", 50, 1, expires=now + 10, now=now)
    g.record("a", 60, 1, expires=now + 10, now=now)
    g.record("a", 1, 2, expires=now + 10, now=now)   # used again: most recent
    g.record("a", 70, 1, expires=now + 10, now=now)  # over the bound: the least recently used goes
    assert list(g.seen["a"]) == [60, 1, 70]
    g.check("a", 1, 3, now=now)
    with pytest.raises(Replayed):
        g.check("a", 1, 2, now=now)
    # an expired boot goes before any live one, however recently used
    g.record("a", 90, 1, expires=now + 1, now=now)   # pushes 60 out (least recently used)
    g.record("a", 1, 3, expires=now + 10, now=now)
    assert list(g.seen["a"]) == [70, 90, 1]
    g.record("a", 80, 1, expires=now + 10, now=now + 5)  # 90's token has expired: it goes, not 70
    assert list(g.seen["a"]) == [70, 1, 80]


def test_boot_ids_of_one_counter_grow_and_two_counters_do_not_collide():
    from proto.authproxy import boot_id

    ids = [boot_id(c) for c in range(1, 50)]
    assert ids == sorted(ids) and all(0 < b < 2**63 for b in ids)
    # two files counting from 1 (the agent's state/boot and the home's run/vm1.boot)
    agent, home = [boot_id(1) for _ in range(200)], [boot_id(1) for _ in range(200)]
    assert len(set(agent) | set(home)) >= 399


def test_duplicate_map_keys_are_refused():
    sender = make_proxy(A)
    receiver = make_proxy(B)
    good = sender.seal("debug.x", {"n": 1})
    payload = good[1][:-wire.SIG_LEN]
    # the same body with "n" given twice (msgpack would keep the last), signed properly
    body_dup = b"\x82\xa1n\x01\xa1n\x02"
    assert msgpack.unpackb(body_dup) == {"n": 2}
    packed_body = msgpack.packb({"n": 1})
    assert payload.count(packed_body) == 1
    forged = wire.seal(A.signing_key, "debug.x", payload.replace(packed_body, body_dup))
    with pytest.raises(DecodeError, match="duplicate key"):
        receiver.open(forged)
    # any map: two "seq" (as in a header), and nested
    with pytest.raises(DecodeError, match="duplicate key"):
        wire.unpack(b"\x82\xa3seq\x01\xa3seq\x02")
    with pytest.raises(DecodeError, match="duplicate key"):
        wire.unpack(b"\x81\xa1b\x82\xa1k\x01\xa1k\x01")  # nested, same value twice
    assert receiver.open(good).body == {"n": 1}  # positive control: the honest one passes


def test_replay_journal_keeps_boots_until_their_tokens_expire(tmp_path):
    journal = tmp_path / "replay.json"
    clock = Clock()
    sender = make_proxy(A, boot=4)
    frames = [sender.seal("debug.x", {"n": i}) for i in range(2)]
    r1 = make_proxy(B, clock=clock, replay=ReplayGuard(journal_file=journal, save=atomic_write))
    r1.open(frames[0])
    r1.replay.flush(force=True)
    # a receiver restarted within the token's life refuses the replay
    r2 = make_proxy(B, clock=clock, replay=ReplayGuard(journal_file=journal, save=atomic_write))
    with pytest.raises(Replayed):
        r2.open(frames[0])
    assert r2.open(frames[1]).seq == 2
    # after it, the entry is dropped from the journal, and the token's expiry refuses the replay
    clock.t = T0 + 901
    r2.replay.flush(force=True)
    assert json.loads(journal.read_text()) == {}
    with pytest.raises(TokenExpired):
        make_proxy(B, clock=clock, replay=ReplayGuard(journal_file=journal, save=atomic_write)).open(frames[0])
    # an older journal (bare seqs) is still read
    journal.write_text(json.dumps({"alice": {"4": 2}}))
    with pytest.raises(Replayed):
        ReplayGuard(journal_file=journal, save=atomic_write).check("alice", 4, 2)


def test_replay_guard_journal_persists(tmp_path):
    journal = tmp_path / "replay.json"
    sender = make_proxy(A, boot=4)
    frames = [sender.seal("debug.x", {"n": i}) for i in range(3)]
    r1 = make_proxy(B, replay=ReplayGuard(journal_file=journal, save=atomic_write))
    r1.open(frames[0])
    r1.replay.flush()
    assert json.loads(journal.read_text()) == {"alice": {"4": [1, T0 + 900]}}  # [seq, token expiry]
    r1.open(frames[1])
    r1.replay.flush()  # within the interval: not written yet (never a write per message)
    assert json.loads(journal.read_text()) == {"alice": {"4": [1, T0 + 900]}}
    r1.replay.flush(force=True)
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    assert json.loads(journal.read_text()) == {"alice": {"4": [2, T0 + 900]}}
    r2 = make_proxy(B, replay=ReplayGuard(journal_file=journal, save=atomic_write))
    assert r2.replay.seen == {"alice": {4: 2}}
    for f in frames[:2]:
        with pytest.raises(Replayed):
            r2.open(f)
    assert r2.open(frames[2]).seq == 3
    r2.replay.flush(force=True)
    r3 = ReplayGuard(journal_file=journal, save=atomic_write, clock=Clock())
    with pytest.raises(Replayed):
        r3.check("alice", 4, 3)
    r3.check("alice", 4, 4)
    assert ReplayGuard(journal_file=tmp_path / "absent.json", save=atomic_write).seen == {}


def test_replay_guard_unit():
    g = ReplayGuard(boots_per_sender=2)
    g.check("a", 5, 0)  # unknown sender: anything goes
    g.record("a", 5, 10)
    with pytest.raises(Replayed):
        g.check("a", 5, 10)
    g.check("a", 5, 11)
    g.record("a", 6, 1)
    with pytest.raises(Replayed):
        g.check("a", 4, 100)
    g.record("a", 7, 1)
    assert g.seen["a"] == {6: 1, 7: 1}
    with pytest.raises(Replayed):
        g.check("a", 5, 12)
    g.check("b", 1, 1)


def test_untokened_request_needs_registry_auth_and_its_own_topic():
    requester = make_proxy(A, token=None)
    frames = requester.request("token")
    assert frames[0] == b"vault.req.alice."
    msg = wire.decode(frames)
    assert msg.token is None and msg.body["op"] == "token" and msg.body["key_version"] == A.version
    assert msg.body["rid"] in requester.pending
    with pytest.raises(BadToken):
        make_proxy(VAULT_ID).open(frames)  # no registry_auth: not the Vault

    calls = []

    def registry_auth(sender, version):
        calls.append((sender, version))
        return {"alice": A, "bob": B}[sender].signing_key.verify_key

    vault = make_proxy(VAULT_ID, registry_auth=registry_auth)
    assert vault.open(frames).sender == "alice"
    assert calls == [("alice", A.version)]
    with pytest.raises(Replayed):
        vault.open(frames)

    body = {"rid": RID, "op": "token", "key_version": 1, "secret": None}
    # alice asking under bob's request topic is refused before any key lookup
    other = wire.seal(A.signing_key, "vault.req.bob", wire.pack_payload("alice", 1, 5, None, body))
    with pytest.raises(BadToken):
        vault.open(other)
    # alice claiming to be bob is caught by bob's registered key
    forged = wire.seal(A.signing_key, "vault.req.bob", wire.pack_payload("bob", 1, 1, None, body))
    with pytest.raises(BadSignature):
        vault.open(forged)
    # untokened on any other topic is refused even by the Vault
    other_topic = wire.seal(A.signing_key, "health.alice", wire.pack_payload("alice", 1, 6, None, health_body()))
    with pytest.raises(BadToken):
        vault.open(other_topic)
    # the replayed request was looked up too (replay is checked after the signature); bob's never twice
    assert calls == [("alice", A.version), ("alice", A.version), ("bob", 1)]


def _vault_reply(to: str, body: dict, seq=1):
    vault = make_proxy(VAULT_ID, token=make_token(VAULT_ID, publish=(b"vault.",)))
    vault.seq = seq - 1
    return vault.seal(f"vault.token.{to}", body)


def test_accept_token_reply():
    clock = Clock()
    a = make_proxy(A, token=None, clock=clock)
    a.request("token")
    (rid,) = a.pending
    a.request("secret", secret="smtp")
    secret_rid = list(a.pending)[1]
    raw = make_token(A, publish=(b"health.alice.",), issued_at=T0, lifetime=600)

    # a reply to some other process's request is ignored
    stray = a.open(_vault_reply("alice", {"rid": b"\x09" * 16, "token": raw, "exp": T0 + 600}, seq=1))
    assert a.accept_token_reply(stray) is None and a.token is None
    # a reply for our secret request is not a token
    not_token = a.open(_vault_reply("alice", {"rid": secret_rid, "token": raw}, seq=2))
    assert a.accept_token_reply(not_token) is None and a.token is None

    refused_reply = a.open(_vault_reply("alice", {"rid": rid, "token": None, "code": "revoked",
                                                  "reason": "alice is revoked"}, seq=3))
    with pytest.raises(BadToken) as info:
        a.accept_token_reply(refused_reply)
    assert "revoked" in str(info.value) and "alice is revoked" in str(info.value)
    assert a.token is None

    a.request("token")
    (rid2,) = [r for r in a.pending if r not in (rid, secret_rid)]
    good = a.open(_vault_reply("alice", {"rid": rid2, "token": raw, "exp": T0 + 600}, seq=4))
    tok = a.accept_token_reply(good)
    assert tok is a.token and tok.raw == raw and a.token_valid()
    assert a.accept_token_reply(good) is None  # each request is answered once

    # renew at half life
    assert a.renew_in() == 300
    clock.t = T0 + 200
    assert a.renew_in() == 100
    clock.t = T0 + 300
    assert a.renew_in() == 0
    clock.t = T0 + 10_000
    assert a.renew_in() == 0.0
    clock.t = T0 + 599
    assert a.open(a.seal("health.alice", health_body())).sender == "alice"  # the installed token works


def test_accept_token_reply_refuses_a_token_for_another_key():
    a = make_proxy(A, token=None)
    a.request("token")
    (rid,) = a.pending
    reply = a.open(_vault_reply("alice", {"rid": rid, "token": make_token(B, identity="alice")}))
    with pytest.raises(BadToken):
        a.accept_token_reply(reply)
    assert a.token is None


def test_renew_in_is_half_life_based():
    clock = Clock(T0 + 50)
    p = make_proxy(A, clock=clock, token=make_token(A, issued_at=T0, lifetime=1000))
    assert p.renew_in() == 450
    p.set_token(make_token(A, issued_at=T0 + 50, lifetime=60))
    assert p.renew_in() == 30


def test_pending_requests_are_bounded():
    p = make_proxy(A, token=None)
    for _ in range(100):
        p.request("token")
    assert len(p.pending) == 64
    assert p.seq == 100


def test_set_keys_after_rotation_signs_with_the_new_key():
    a2 = IdentityKeys(A.name, A.version + 1, B.curve_public, B.curve_secret, bytes(nacl.signing.SigningKey.generate()))
    p = make_proxy(A)
    p.set_keys(a2)
    frames = p.seal("debug.x", {})
    # the old token names the old key, so the receiver refuses until a new token is installed
    with pytest.raises(BadSignature):
        make_proxy(B).open(frames)
    p.set_token(make_token(a2))
    assert make_proxy(B).open(p.seal("debug.x", {})).seq == 2


def test_describe_rejection_codes():
    assert describe_rejection(Replayed("again")) == ("replayed", "again")
    assert describe_rejection(TooLarge("")) == ("too_large", "TooLarge")
    assert describe_rejection(ValueError("x"))[0] == "error"
    assert issubclass(BadSignature, AuthError) and issubclass(TooLarge, ProtocolError)
