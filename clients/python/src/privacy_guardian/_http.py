"""The share servers of one deployment, in server-index order, and the one place
where HTTP answers become values or :class:`ServerError`.

Retries follow the ``guardian`` command line: a GET (idempotent) is retried on
transport errors, 5xx and a 429 that says when (``Retry-After``); a seal is
retried only when the server says it did nothing and asks to come back (503, or
429 with ``Retry-After``), since a lost answer may hide a success. Backoff
doubles from 0.2 s up to 3 s, with jitter; a server that failed in transport
after every retry is tried once by the next requests, until it answers again.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union
from urllib.parse import quote, urlsplit

import requests

from .errors import ServerError, UsageError

#: A bearer token, or a function returning a fresh one before each request.
Token = Union[str, Callable[[], str], None]

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 60.0
MAX_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of retried requests."""

    #: Attempts in all, the first one included.
    attempts: int = 5
    #: Delay before the second attempt, in seconds; it doubles after each failure.
    first_delay: float = 0.2
    #: Upper bound of one delay, in seconds.
    max_delay: float = 3.0

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (0-based), with jitter."""
        base = min(self.first_delay * (2 ** min(attempt, 30)), self.max_delay)
        return base * random.uniform(0.5, 1.0)


IDEMPOTENT = "idempotent"
WHEN_ASKED = "when_asked"


def parse_servers(urls: Sequence[str]) -> list[str]:
    """Checks the base URLs and returns them without a trailing ``/``."""
    if isinstance(urls, str):
        urls = [u for u in urls.split(",")]
    servers = []
    for text in (u.strip() for u in urls):
        if not text:
            continue
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError("bad_servers", f"servers: {text!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise UsageError("bad_servers", f"servers: {text!r} must be a base URL, without ? or #")
        servers.append(text.rstrip("/"))
    if not servers:
        raise UsageError(
            "bad_servers",
            "no share servers given: pass servers=[URL, URL, ...] (or set GUARDIAN_SERVERS), in server-index order",
        )
    return servers


class Cluster:
    """The servers at ``servers`` (base URLs in server-index order)."""

    def __init__(
        self,
        servers: Sequence[str],
        token: Token = None,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.servers = parse_servers(servers)
        if token is not None and not callable(token) and not isinstance(token, str):
            raise UsageError("bad_token", "token must be a string or a function returning one")
        self._token = token
        self._retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = "privacy-guardian-python"
        self._down = [False] * len(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def describe(self, index: int) -> str:
        """``server 1 (https://...)``."""
        return f"server {index} ({self.servers[index]})"

    def close(self) -> None:
        """Closes the pooled connections."""
        self._session.close()

    def _bearer(self) -> str | None:
        token = self._token() if callable(self._token) else self._token
        if token is None or not str(token).strip():
            return None
        return str(token).strip()

    def url(self, index: int, segments: Sequence[str]) -> str:
        """Server ``index``'s URL of the path made of ``segments``, each one
        percent-encoded so that an endpoint name cannot change the route."""
        return self.servers[index] + "/" + "/".join(quote(s, safe="") for s in segments)

    def get_json(self, index: int, segments: Sequence[str], params: dict[str, str] | None = None) -> Any:
        """GET a JSON document, retrying transient failures."""
        return self.request(index, "GET", segments, params=params).json_body()

    def get_pages(self, index: int, segments: Sequence[str], key: str) -> list[Any]:
        """GET every page of a paged listing and join the items under ``key``."""
        items: list[Any] = []
        after: str | None = None
        while True:
            page = self.get_json(index, segments, params={"after": after} if after else None)
            if not isinstance(page, dict) or not isinstance(page.get(key), list):
                raise self._error(index, "bad_answer", f"no {key!r} list in the listing")
            items.extend(page[key])
            nxt = page.get("next")
            # Cursors only go forward: a server that repeats one is not followed.
            if not isinstance(nxt, str) or (after is not None and nxt <= after):
                return items
            after = nxt

    def request(
        self,
        index: int,
        method: str,
        segments: Sequence[str],
        *,
        params: dict[str, str] | None = None,
        retry: str = IDEMPOTENT,
        timeout: float = REQUEST_TIMEOUT,
    ) -> "Answer":
        """Sends a request to server ``index``, retrying as ``retry`` allows; a
        non-2xx answer raises :class:`ServerError`."""
        url = self.url(index, segments)
        attempts = 1 if self._down[index] else max(self._retry.attempts, 1)
        attempt = 0
        while True:
            headers = {}
            bearer = self._bearer()
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            retry_after: float | None = None
            try:
                response = self._session.request(
                    method, url, params=params, headers=headers, timeout=(CONNECT_TIMEOUT, timeout)
                )
            except requests.RequestException as e:
                transport: str | None = str(e) or type(e).__name__
                response = None
            else:
                transport = None
            if response is not None:
                if 200 <= response.status_code < 300:
                    self._down[index] = False
                    return Answer(self, index, response.status_code, response.content)
                retry_after = _retry_after(response.headers.get("Retry-After"))
                status = response.status_code
                if status == 429:
                    retryable = retry_after is not None
                elif retry == IDEMPOTENT:
                    retryable = status >= 500
                else:
                    retryable = status == 503
            else:
                retryable = retry == IDEMPOTENT
            attempt += 1
            if retryable and attempt < attempts:
                time.sleep(max(self._retry.delay(attempt - 1), min(retry_after or 0.0, MAX_RETRY_AFTER)))
                continue
            self._down[index] = response is None
            if response is None:
                raise self._error(index, "unreachable", transport or "no answer")
            raise self._api_error(index, response)

    def _error(self, index: int, code: str, message: str, **kw: Any) -> ServerError:
        return ServerError(
            server=index, url=self.servers[index], code=code, message=message,
            has_token=self._bearer() is not None, **kw,
        )

    def _api_error(self, index: int, response: requests.Response) -> ServerError:
        status = response.status_code
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = dict(body["error"])
            code = error.pop("code", None)
            message = error.pop("message", None)
            return self._error(
                index,
                code if isinstance(code, str) else f"http_{status}",
                message if isinstance(message, str) else "",
                status=status,
                details=error,
            )
        # Not one of ours (a proxy in front of the server, or no server at all).
        text = response.content.decode("utf-8", "replace").strip()[:200] or response.reason or ""
        return self._error(index, f"http_{status}", text, status=status)


class Answer:
    """A successful (2xx) answer."""

    def __init__(self, cluster: Cluster, server: int, status: int, body: bytes) -> None:
        self._cluster = cluster
        self.server = server
        self.status = status
        self.body = body

    def json_body(self) -> Any:
        """The body as JSON; anything else is a ``bad_answer``."""
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise self._cluster._error(self.server, "bad_answer", f"not JSON: {e}") from None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(int(value.strip()))
    except ValueError:
        return None
