"""A small iControl REST client: one auth token per process, one request in flight at a time.

HTTP runs in worker threads (http.client, with the configured TLS verification and CA bundle)
under a deadline. Idempotent calls are retried on 5xx, timeouts and connection errors with
jittered exponential backoff until the retry deadline; a 401 makes the client log in again
once and replay the request. The token is made to live `token_timeout_s` (F5 allows up to
36000 s) and is renewed a minute before it expires.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import trio

from segue_f5.settings import F5Settings

LOGIN_PATH = "/mgmt/shared/authn/login"
TOKEN_PATH = "/mgmt/shared/authz/tokens/"  # noqa: S105 - a URL path, not a secret
RENEW_MARGIN_S = 60.0


class F5Error(Exception):
    """F5 answered with an error that retrying will not mend (a 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class F5Unreachable(Exception):
    """No answer (or only 5xx answers) from F5 before the retry deadline."""


class _Retry(Exception):
    pass


class F5Client:
    """Talks to one BIG-IP management address."""

    def __init__(self, settings: F5Settings, password: str,
                 count: Callable[[str], None] = lambda outcome: None) -> None:
        self.settings = settings
        parts = urlsplit(settings.management_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._password = password
        self._count = count
        self._lock = trio.Lock()
        self._token: str | None = None
        self._token_expires = 0.0
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = ssl.create_default_context(
                cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
            if not settings.verify_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE

    def _http(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        """One blocking request (in a worker thread)."""
        timeout = self.settings.request_timeout_s
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if token:
            headers["X-F5-Auth-Token"] = token
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": raw[:200].decode("utf-8", "replace")}  # Jetty's HTML pages
        return response.status, doc

    async def _send(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        with trio.fail_after(self.settings.request_timeout_s + 1):
            return await trio.to_thread.run_sync(self._http, method, path, body, token,
                                                 abandon_on_cancel=True)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Status and JSON body of one call; 4xx answers are returned, not raised (but 401
        leads to one new login and a replay). Raises F5Unreachable after the retry deadline."""
        async with self._lock:
            deadline = trio.current_time() + self.settings.retry_deadline_s
            attempt = 0
            relogged = False
            while True:
                try:
                    token = await self._ensure_token()
                    status, doc = await self._send(method, path, body, token)
                    if status == 401 and not relogged:
                        self._token = None
                        relogged = True
                        continue
                    if status >= 500:
                        raise _Retry(f"{status}: {_message(doc)}")
                except (OSError, http.client.HTTPException, trio.TooSlowError, _Retry) as e:
                    self._count("retry")
                    attempt += 1
                    delay = min(0.1 * 2**attempt, 2.0) * random.uniform(0.5, 1.5)  # noqa: S311
                    if trio.current_time() + delay > deadline:
                        self._count("unreachable")
                        raise F5Unreachable(f"{method} {path}: {_describe(e)}") from None
                    await trio.sleep(delay)
                    continue
                self._count("ok" if status < 400 else f"http_{status}")
                return status, doc

    async def _ensure_token(self) -> str:
        if self._token is not None and trio.current_time() < self._token_expires - RENEW_MARGIN_S:
            return self._token
        status, doc = await self._send("POST", LOGIN_PATH, {
            "username": self.settings.username, "password": self._password,
            "loginProviderName": "tmos"}, None)
        if status >= 500:
            raise _Retry(f"login: {status}: {_message(doc)}")
        if status != 200:
            raise F5Error(status, f"login as {self.settings.username} refused: {_message(doc)}")
        token = doc["token"]["token"]
        lifetime = float(doc["token"].get("timeout", 1200))
        status, _ = await self._send("PATCH", TOKEN_PATH + token,
                                     {"timeout": self.settings.token_timeout_s}, token)
        if status == 200:
            lifetime = self.settings.token_timeout_s
        self._token, self._token_expires = token, trio.current_time() + lifetime
        return token

    async def logout(self) -> None:
        """Delete the token (F5 keeps at most 100 per user); best effort."""
        token, self._token = self._token, None
        if token is None:
            return
        with contextlib.suppress(OSError, http.client.HTTPException, trio.TooSlowError):
            await self._send("DELETE", TOKEN_PATH + token, None, token)


def _message(doc: Any) -> str:
    return str(doc.get("message", doc)) if isinstance(doc, dict) else str(doc)


def _describe(e: BaseException) -> str:
    if isinstance(e, trio.TooSlowError):
        return "timed out"
    return str(e) or type(e).__name__
