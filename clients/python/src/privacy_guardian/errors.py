"""Every error the client raises: one class per kind, each with a stable ``code``.

A server's refusal keeps the server's own code (``unknown_endpoint``,
``batch_too_small``, ...) and says which server answered; the client's own checks
have codes of their own (``servers_disagree``, ``plugin_digest_mismatch``, ...),
the same situations the ``guardian`` command line refuses.
"""

from __future__ import annotations

from typing import Any, Mapping


class GuardianError(Exception):
    """Base class of every error of this package.

    ``code`` is stable and meant for programs; the message is for people and
    says what to do.
    """

    code: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        """The sentence for people."""
        return str(self.args[0]) if self.args else ""


class ServerError(GuardianError):
    """A share server could not be reached, refused a request, or answered
    something the API does not describe.

    ``code`` is the server's own code from ``{"error": {"code", "message"}}``,
    ``http_<status>`` for an answer that is not the server's (a proxy),
    ``unreachable`` when no answer came, ``bad_answer`` for a 2xx answer of the
    wrong shape.
    """

    def __init__(
        self,
        *,
        server: int,
        url: str,
        code: str,
        message: str,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        has_token: bool = True,
    ) -> None:
        self.server = server
        self.url = url
        self.status = status
        self.server_message = message
        self.details: dict[str, Any] = dict(details or {})
        self.has_token = has_token
        super().__init__(code, self._sentence(code, message))

    @property
    def who(self) -> str:
        """``server 1 (http://...)``, the way every message names a server."""
        return f"server {self.server} ({self.url})"

    def _sentence(self, code: str, message: str) -> str:
        who = self.who
        if code == "unreachable":
            return f"{who} could not be reached: {message} (is it running, and is the URL right?)"
        if code == "bad_answer":
            return f"{who} gave an unexpected answer ({message})"
        if self.status == 401:
            if self.has_token:
                return f"{who} refused the token ({code}: {message}); pass a valid one as token="
            return f"{who} needs a token ({code}: {message}); pass one as token="
        if self.status == 403 and code != "plugin_not_approved":
            return f"{who} refused: {message} ({code}); use a token that carries that role"
        if self.status == 403:
            return f"{who} refused: {message} ({code})"
        if code == "batch_too_small" and "agreed" in self.details and "needed" in self.details:
            agreed, needed = self.details["agreed"], self.details["needed"]
            reports, are = ("report", "is") if agreed == 1 else ("reports", "are")
            return (
                f"nothing was sealed: only {agreed} {reports} {are} held by every server and in "
                f"no batch yet; this endpoint needs at least {needed} per batch; submit more and "
                f"collect again ({who} answered {self.status} {code})"
            )
        return f"{who} answered {self.status} {code}: {message}"


class DisagreementError(GuardianError):
    """The servers do not describe the same thing (endpoint definition, batch,
    total, server order): the result would be wrong, so none is given.

    Codes: ``servers_disagree``, ``wrong_server_order``, ``wrong_server_count``.
    """


class PluginError(GuardianError):
    """The endpoint's plugin could not be checked, loaded or run here.

    Codes: ``plugin_digest_mismatch`` (server 0 sent other code than the
    endpoint's digest), ``config_hash_mismatch`` (the plugin configured here
    does not give the servers' configuration hash), ``plugin_not_loadable`` (not
    a component of a supported world), ``plugin_trap`` (it crashed or ran out of
    fuel or memory), ``plugin_bad_output`` (its ``unshard`` did not return
    JSON), or ``plugin_`` followed by the plugin's own error case with ``_``
    for ``-`` (``plugin_invalid_state``, ``plugin_invalid_params``, ...).
    """


class UsageError(GuardianError):
    """The client was set up wrongly (no servers, a URL that is not one, a
    single server). Code ``bad_servers`` or ``bad_token``."""
