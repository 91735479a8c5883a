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


class SecretError(DctrlError):
    """A secret could not be stored, found or opened (the Vault's store, a sealed secret).

    Messages name paths and secret names, never secret values or keys."""

    code = "secret"


class WrongKey(SecretError, PermissionError):
    """The key or passphrase does not open the store (its ``check`` field fails to decrypt),
    or the store is protected the other way (passphrase vs key file) than the caller tried."""

    code = "wrong_key"


class UnknownSecret(SecretError, KeyError):
    """No secret of that name is in the store.  ``.name`` holds the name."""

    code = "unknown_secret"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"no secret named {name!r}")
        self.name = name

    def __str__(self) -> str:  # KeyError.__str__ would repr() the message
        return str(self.args[0])


class InsecureKeyFile(ConfigError, SecretError, PermissionError):
    """A secret file (identity key, store key) that group or others can reach, or that is not
    a regular file. A config error to fix (chmod 600) and a secret that cannot be used."""

    code = "insecure_key_file"
