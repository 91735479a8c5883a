"""Identities, their key files, the public key registry and the policy."""
