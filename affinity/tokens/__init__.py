"""Affinity tokens: compact JWS signing and verification, key rings, keys fetched as JWKS."""
