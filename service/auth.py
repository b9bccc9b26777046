"""Bearer tokens: HS256 JWTs with claims sub, role and exp."""

import dataclasses
import functools
import time

import jwt
from aiohttp import web

ROLES = ("user", "worker", "admin")
ALGORITHM = "HS256"


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
    if not token:
        raise InvalidToken("missing bearer token")
    principal = _verified(secret, token)
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
    if not isinstance(sub, str) or not sub or len(sub) > 200 or "\x00" in sub or role not in ROLES:
        raise InvalidToken("invalid token")
    return Principal(sub=sub, role=role, expires_at=float(claims["exp"]))


def token_from_request(request: web.Request) -> str | None:
    """The bearer token from the Authorization header (sockets also take ?access_token=, see
    socket_handshake.py)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None
