"""`dctrl pub` and `dctrl sub`: one signed message, or what an identity receives, on the real bus."""

from __future__ import annotations

import json

from proto.errors import DctrlError
from scripts.cli.common import command, with_deadline
from scripts.cli.common import home as _home


def cmd_pub(args):
    from actors.runtime import Runtime
    from scripts.cli.tools import PublishOnce

    try:
        body = json.loads(args.body)
    except json.JSONDecodeError as exc:
        raise DctrlError(f"JSON_BODY is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DctrlError("JSON_BODY must be a JSON object")
    from proto.topics import REGISTRY

    schema = REGISTRY.schema_for(args.topic)
    if schema is None:
        raise DctrlError(f"no topic family for {args.topic!r}; see docs/protocol.md")
    body = bytes_from_hex(schema, body)
    schema.check(body)
    home = _home(args)
    actor = PublishOnce(args.topic, body)
    rt = Runtime(actor, home.bus_settings(args.as_name))
    with_deadline(rt, args.timeout)
    rt.run(handle_signals=True)
    if not actor.sent:
        raise DctrlError(f"not published within {args.timeout} s: no token from the Vault (is the bus up?)")
    print(f"published {args.topic} as {args.as_name}")


HEX_PREFIX = "hex:"


def bytes_from_hex(node, value, path="body"):
    """JSON has no bytes: where the topic's schema has a bytes field (a command's ``id``, a
    token), a string there is hex (``"00ff..."`` or ``"hex:00ff..."``); in a free-form part
    (``debug.*`` bodies) a string is bytes only with the ``hex:`` prefix. Everything else is
    left as it is, for the schema to judge."""
    from proto.schema import Any, Bytes, List, Map, Opt

    if isinstance(node, Opt):
        node = node.node
    if isinstance(node, Bytes) and isinstance(value, str):
        return _hex(value, path)
    if isinstance(node, Map) and isinstance(value, dict):
        return {k: bytes_from_hex(node.fields.get(k, node.extra), v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(node, List) and isinstance(value, list):
        return [bytes_from_hex(node.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(node, Any):
        if isinstance(value, str) and value.startswith(HEX_PREFIX):
            return _hex(value, path)
        if isinstance(value, dict):
            return {k: bytes_from_hex(node, v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [bytes_from_hex(node, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _hex(text, path) -> bytes:
    digits = text[len(HEX_PREFIX):] if text.startswith(HEX_PREFIX) else text
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise DctrlError(f"{path}: bytes are given as hex (\"00ff...\" or \"hex:00ff...\"), not {text[:40]!r}") \
            from None


def cmd_sub(args):
    from actors.runtime import Runtime
    from scripts.cli.tools import Subscriber

    home = _home(args)
    reader_gone = []

    def sink(line):
        if reader_gone:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:  # `dctrl sub ... | head -1`: the reader has had enough
            reader_gone.append(True)
            rt.stop()

    actor = Subscriber(args.prefix, count=args.count, timeout=args.timeout, sink=sink, json_lines=args.json)
    rt = Runtime(actor, home.bus_settings(args.as_name))
    rt.add_handler(args.prefix, actor.deliver, raw=True)
    rt.run(handle_signals=True)
    if reader_gone:
        raise BrokenPipeError  # (main ends quietly)
    return 0 if (not args.count or actor.seen >= args.count) else 1


def register(sub):
    sp = command(sub, "pub", cmd_pub, "publish one signed message as an identity (debugging a policy, or a command "
                             "by hand)")
    sp.description += (
        ". The body is checked against the topic's schema (docs/protocol.md). JSON has no bytes: give a bytes "
        'field as hex, "00ff..." or "hex:00ff..." (a command\'s 16-byte id: 32 hex digits); in free-form '
        'bodies (debug.*) only "hex:..." strings become bytes. Example: dctrl pub cmd.chain.watch '
        '\'{"id": "hex:000102030405060708090a0b0c0d0e0f", "expires": 1900000000, "address": "bcrt1q...", '
        '"label": null}\' --as admin')
    sp.add_argument("topic", help="the topic, e.g. debug.hello or cmd.chain.watch")
    sp.add_argument("body", metavar="JSON_BODY", help='a JSON object; bytes fields as hex ("hex:00ff...")')
    sp.add_argument("--as", dest="as_name", required=True, help="identity to publish as")
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a token (default 10)")

    sp = command(sub, "sub", cmd_sub, "print every message under PREFIX that reaches an identity, with its verdict")
    sp.add_argument("prefix", help="topic prefix, whole segments (\"\" for everything the identity may see)")
    sp.add_argument("--as", dest="as_name", required=True, help="identity to subscribe as")
    sp.add_argument("--count", type=int, help="stop after N messages (exit 1 if fewer arrived)")
    sp.add_argument("--timeout", type=float, help="stop after S seconds")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
