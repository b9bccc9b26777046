"""An identity provider's public signing keys, fetched from its JWKS URL and kept by key id.

Fetched with aiohttp on the event loop: PyJWT's own PyJWKClient fetches with urllib, which would
block every socket of the process for as long as the identity provider takes to answer.
"""

import asyncio
import contextvars
import json
import time

import aiohttp
import jwt
import structlog

log = structlog.get_logger(__name__)

FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1024 * 1024  # real ones are a few KiB


class JwksKeys:
    """The keys by `kid`: fetched at start (prefetch), again in the background once older than
    `max_age`, and again at once for a `kid` not among them; but whatever the tokens say, at
    most once per `min_refetch` seconds, so made-up key ids cannot flood the identity provider."""

    def __init__(self, url: str, algorithms: tuple[str, ...], *, max_age: float, min_refetch: float):
        self.url = url
        self.algorithms = algorithms
        self.max_age = max_age
        self.min_refetch = min_refetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = 0.0  # monotonic time of the last good fetch
        self._tried_at: float | None = None  # of the last attempt, good or not
        self._fetching: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key named `kid`, or None when the JWKS has no usable one by that name."""
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None:
            if now - self._loaded_at > self.max_age and self._may_fetch(now):
                self._start_fetch(now)  # in the background: the keys in hand serve meanwhile
            return key
        if self._fetching is None and self._may_fetch(now):
            self._start_fetch(now)
        if self._fetching is not None:
            # Shielded: a caller that goes away (a closed socket) must not cancel everyone's fetch.
            await asyncio.shield(self._fetching)
        return self._keys.get(kid)

    def prefetch(self) -> None:
        """Fetch now, in the background: the first token need not wait, and a wrong jwks_url
        shows in the log at start rather than at the first login."""
        if self._fetching is None and self._may_fetch(time.monotonic()):
            self._start_fetch(time.monotonic())

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _may_fetch(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= self.min_refetch

    def _start_fetch(self, now: float) -> None:
        self._tried_at = now
        # A context of its own: the fetch serves every waiting request, not the one that started it
        # (whose request id would otherwise be on its log lines).
        self._fetching = asyncio.create_task(self._fetch(), context=contextvars.Context())
        self._fetching.add_done_callback(self._fetch_done)

    def _fetch_done(self, task: asyncio.Task) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _fetch(self) -> None:
        """Replace the keys with the JWKS's; on any failure keep those in hand (an identity
        provider that is down must not lock out tokens signed with keys already known)."""
        try:
            keys, skipped = usable_keys(await self._download(), self.algorithms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable, an HTTP error, not a JWKS: all the same to callers
            log.warning("jwks.fetch_failed", url=self.url, error=f"{type(exc).__name__}: {exc}"[:300],
                        keys_kept=len(self._keys))
            return
        self._keys, self._loaded_at = keys, time.monotonic()
        log.info("jwks.fetched", url=self.url, kids=sorted(keys), skipped=skipped)

    async def _download(self):
        if self._session is None:
            # trust_env: an HTTPS_PROXY in the environment is the way out to the identity provider.
            self._session = aiohttp.ClientSession(trust_env=True)
        # No redirects: one could lead from the https URL configured to a plain http one.
        async with self._session.get(self.url, allow_redirects=False, headers={"Accept": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            if (response.content_length or 0) > MAX_JWKS_BYTES:
                raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


def usable_keys(document, algorithms: tuple[str, ...]) -> tuple[dict[str, jwt.PyJWK], int]:
    """The signing keys of a JWKS document that verify one of `algorithms`, by kid, and how many
    others it had. A key without a kid, for encryption, of an algorithm not allowed (a symmetric
    "oct" key among them) or that cannot be read is skipped, not fatal: one odd key must not
    lock out tokens signed with the others."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS: no "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk)
        except Exception:  # an unknown key type or curve, a broken value: PyJWT raises several kinds
            continue
        if key.algorithm_name in algorithms:
            keys[jwk["kid"]] = key
    return keys, len(document["keys"]) - len(keys)
