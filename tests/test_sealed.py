"""proto/sealed.py: the sealed-box helpers moved to proto (no disk, no sockets, no zmq)."""

import os

import pytest
import zmq
from zmq.utils import z85

from proto.errors import SecretError
from proto.sealed import open_sealed, seal_for, z85_decode, z85_encode


def test_z85_matches_pyzmq():
    for n in (0, 4, 32, 64):
        raw = os.urandom(n)
        assert z85_encode(raw) == z85.encode(raw)
        assert z85_decode(z85.encode(raw)) == raw
        assert z85_decode(z85.encode(raw).decode()) == raw
    assert z85_encode(bytes.fromhex("864FD26FB559F75B")) == b"HelloWorld"  # ZeroMQ RFC 32's example


@pytest.mark.parametrize("bad", [b"abcd", b"\x00" * 5, b"#####", "é" * 5, b"~" * 40])
def test_z85_refuses_what_is_not_z85(bad):
    with pytest.raises(ValueError):
        z85_decode(bad)


def test_a_curve_keypair_seals_and_opens():
    public, secret = zmq.curve_keypair()
    sealed = seal_for(public, b"smtp-password")
    assert open_sealed(secret, sealed) == b"smtp-password"
    _, other = zmq.curve_keypair()
    with pytest.raises(SecretError):
        open_sealed(other, sealed)


def test_the_secretstore_names_are_proto_s():
    from actors import secretstore

    assert secretstore.seal_for is seal_for and secretstore.open_sealed is open_sealed
