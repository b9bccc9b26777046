"""Bearer tokens: JWTs with claims sub, a role and exp, of two kinds.

- HS256, signed with jwt_secret (what `python -m service token` issues); the role is the claim
  `role`, one of ROLES.
- An identity provider's, signed with a key of its JWKS (jwks_url; RS256, ES256, ...): its
  `iss` and `aud` checked when configured, its role read from `role_claim` through `role_map`.

The token's header says which kind it claims to be, and each kind is verified with its own keys
and algorithms only: an HS256 token never meets a public key, a JWKS token never the secret.
"""

import dataclasses
import functools
import time
from typing import TYPE_CHECKING

import jwt
import structlog
from aiohttp import web

from .jwks import JwksKeys

if TYPE_CHECKING:  # config.py imports this module
    from .config import Config

log = structlog.get_logger(__name__)

ROLES = ("user", "worker", "admin")
ALGORITHM = "HS256"
# What a JWKS token may be signed with: asymmetric algorithms only, so that no token can have a
# published public key used as an HMAC secret (and never "none").
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
STRONGEST_FIRST = ("admin", "worker", "user")
# The identity provider's clock may run ahead of ours: a token it has just issued is not refused
# as "not yet valid" (iat, nbf) for this long. Expiry stays exact (unexpired()).
CLOCK_SKEW_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Principal:
    sub: str
    role: str
    expires_at: float

    @property
    def sees_everything(self) -> bool:
        """Workers and admins see every execution; a user only its own."""
        return self.role in ("worker", "admin")

    def may_see(self, owner: str) -> bool:
        return self.sees_everything or owner == self.sub


class InvalidToken(Exception):
    """Missing, malformed, forged or expired token; the message is safe to show."""


def issue_token(secret: str, sub: str, role: str, ttl_seconds: float) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": role, "iat": now, "exp": now + int(ttl_seconds)}, secret, ALGORITHM)


def verify_token(secret: str, token: str | None) -> Principal:
    """An HS256 token signed with `secret`."""
    if not token:
        raise InvalidToken("missing bearer token")
    if not secret:  # an empty HMAC key is a key anyone can sign with
        raise InvalidToken("invalid token")
    return unexpired(_verified(secret, token))


def unexpired(principal: Principal) -> Principal:
    # Checked on every use: a remembered token expires like any other.
    if principal.expires_at <= time.time():
        raise InvalidToken("token expired")
    return principal


@functools.lru_cache(maxsize=4096)
def _verified(secret: str, token: str) -> Principal:
    """The signature check, remembered per token: clients reconnect with the token they had, and
    a reconnect storm would otherwise spend its time on HMACs. Refusals are not remembered."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "role", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("invalid token") from exc
    sub, role = claims["sub"], claims["role"]
    if not valid_sub(sub) or role not in ROLES:
        raise InvalidToken("invalid token")
    return Principal(sub=sub, role=role, expires_at=float(claims["exp"]))


def valid_sub(sub) -> bool:
    return isinstance(sub, str) and 0 < len(sub) <= 200 and "\x00" not in sub


@dataclasses.dataclass(frozen=True)
class IdentityProviderRules:
    """How to read an identity provider's tokens: jwt_issuer, jwt_audience, role_claim, role_map."""
    issuer: str = ""
    audience: str = ""
    role_claim: str = "role"
    role_map: tuple[tuple[str, str], ...] = ()  # (the provider's name, ours); a tuple, to be hashable

    def role(self, claims: dict) -> str | None:
        """The strongest of ROLES that the role claim names, through the map if there is one."""
        value = claim(claims, self.role_claim)
        # A string may hold several names, as OAuth's `scope` does ("openid agent-admin").
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        mapping = dict(self.role_map)
        named = {mapping.get(name) if mapping else name for name in names if isinstance(name, str)}
        return next((role for role in STRONGEST_FIRST if role in named), None)


def claim(claims: dict, name: str):
    """The claim `name`; else, if there is none of that name, the dotted path through nested
    objects (Keycloak's realm_access.roles). Whole names first: some providers' claim names are
    URLs, dots included."""
    if name in claims:
        return claims[name]
    value = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@functools.lru_cache(maxsize=4096)
def _verified_by_provider(key: jwt.PyJWK, token: str, rules: IdentityProviderRules) -> Principal:
    """As _verified, for a token of the identity provider. Remembered per key object too: a key
    fetched again is a new object, so a key dropped from the JWKS stops serving from this cache."""
    try:
        claims = jwt.decode(
            token, key.key, algorithms=[key.algorithm_name],
            issuer=rules.issuer or None, audience=rules.audience or None, leeway=CLOCK_SKEW_SECONDS,
            # A provider's tokens carry an aud for some service; unchecked unless configured.
            options={"require": ["sub", "exp"], "verify_aud": bool(rules.audience)})
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidToken("token issuer not accepted") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken("token audience not accepted") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("invalid token") from exc
    except Exception as exc:
        # Hostile input reaching the crypto library in a way PyJWT does not wrap: a refusal, not
        # a 500. Its type only: a traceback's locals would hold the token.
        log.warning("auth.unexpected_verify_error", error=type(exc).__name__)
        raise InvalidToken("invalid token") from None
    if not valid_sub(claims["sub"]):
        raise InvalidToken("invalid token")
    role = rules.role(claims)
    if role is None:
        raise InvalidToken("token has no accepted role")
    return Principal(sub=claims["sub"], role=role, expires_at=float(claims["exp"]))


@functools.lru_cache(maxsize=4096)
def _algorithm_and_kid(token: str) -> tuple[str | None, str | None]:
    """What the token's header claims (not yet verified), remembered like the signature checks:
    reading it costs as much as checking a remembered token does, 70 times over."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("invalid token") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    return (algorithm if isinstance(algorithm, str) else None), (kid if isinstance(kid, str) else None)


class TokenVerifier:
    """Every token check (REST, both sockets, a socket's auth refresh) goes through verify()."""

    def __init__(self, secret: str, keys: JwksKeys | None = None,
                 rules: IdentityProviderRules = IdentityProviderRules()):
        self.secret = secret
        self.keys = keys
        self.rules = rules

    @classmethod
    def from_config(cls, config: "Config") -> "TokenVerifier":
        keys = None
        if config.jwks_url:
            keys = JwksKeys(config.jwks_url, config.jwt_algorithms, max_age=config.jwks_cache_seconds,
                            min_refetch=config.jwks_min_refetch_seconds)
        rules = IdentityProviderRules(
            issuer=config.jwt_issuer, audience=config.jwt_audience, role_claim=config.role_claim,
            role_map=tuple(tuple(pair.split("=", 1)) for pair in config.role_map))
        return cls(config.jwt_secret, keys, rules)

    async def verify(self, token: str | None) -> Principal:
        """The token's principal; InvalidToken, with a reason safe to show, for any other token."""
        if not token:
            raise InvalidToken("missing bearer token")
        algorithm, kid = _algorithm_and_kid(token)
        if algorithm == ALGORITHM and self.secret:
            return verify_token(self.secret, token)
        if self.keys is None or algorithm not in self.keys.algorithms:
            raise InvalidToken("invalid token")
        if kid is None:
            raise InvalidToken("token names no signing key (kid)")
        key = await self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        return unexpired(_verified_by_provider(key, token, self.rules))

    def prefetch(self) -> None:
        if self.keys is not None:
            self.keys.prefetch()

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()


def token_from_request(request: web.Request) -> str | None:
    """The bearer token from the Authorization header (sockets also take ?access_token=, see
    socket_handshake.py)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None
