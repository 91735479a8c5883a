"""dctrl wire protocol: envelope, signatures, tokens, schemas and errors.

Everything here is pure (no sockets) so that it can be tested and reused by the
broker, the actors and the machine agent alike. See docs/protocol.md.
"""
