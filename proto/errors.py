"""One error hierarchy for the whole bus.

Every refusal has a stable ``code`` (a short snake_case string) that goes on
the wire in ``broker.denied`` and rejection events, and a human ``reason``.
Leaves also inherit a builtin so callers can catch them idiomatically
(``TokenExpired`` is a ``PermissionError``).
"""


class DctrlError(Exception):
    """Root of every dctrl error."""

    code = "error"


class ProtocolError(DctrlError, ValueError):
    """A message from outside is malformed; it is refused, never acted on."""

    code = "malformed"


class FrameError(ProtocolError):
    code = "bad_frames"


class TooLarge(ProtocolError):
    code = "too_large"


class DecodeError(ProtocolError):
    code = "bad_encoding"


class SchemaError(ProtocolError):
    code = "bad_body"


class UnknownTopic(ProtocolError):
    code = "unknown_topic"


class AuthError(DctrlError, PermissionError):
    """A well-formed message that is not allowed."""

    code = "denied"


class BadSignature(AuthError):
    code = "bad_signature"


class BadToken(AuthError):
    code = "bad_token"


class TokenExpired(AuthError):
    code = "token_expired"


class TokenRevoked(AuthError):
    code = "revoked"


class NotGranted(AuthError):
    code = "not_granted"


class Replayed(AuthError):
    code = "replayed"


class UnknownIdentity(AuthError):
    code = "unknown_identity"


class ClockUntrusted(AuthError):
    code = "clock_untrusted"


class ConfigError(DctrlError):
    """The home, its config, policy or key files are wrong; fix and retry."""

    code = "config"


class InsecureKeyFile(ConfigError, PermissionError):
    code = "insecure_key_file"
