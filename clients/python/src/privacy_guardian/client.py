"""The scientist's client: :class:`Guardian` (the deployment) and
:class:`Endpoint` (one endpoint, opened after every server agreed on it).

It makes the checks of the ``guardian`` command line (``guardian collect``)
before it trusts anything: every server is at its position and counts the same
servers; every server describes the endpoint with the same plugin digest and
configuration hash; the plugin fetched from server 0 has that digest; the plugin
configured here gives that hash; every server's share describes the same batch
(or the same batches, for a total) with the same count.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from . import _http
from ._http import Cluster, RetryPolicy, Token
from ._plugin import Plugin, Runtime
from .errors import DisagreementError, GuardianError, PluginError, ServerError, UsageError

#: Sealing waits for every server to agree, fold and release.
SEAL_TIMEOUT = 600.0


@dataclass(frozen=True)
class EndpointInfo:
    """An endpoint as the servers describe it (server 0's view once they agree)."""

    #: The endpoint's name.
    name: str
    #: The plugin's own name (``sum``, ``histogram``, ...).
    plugin: str
    #: SHA-256 of the plugin's component, hex.
    plugin_digest: str
    #: What every server must agree on (plugin, config, min batch, quota), hex.
    config_hash: str
    #: Fewest reports in a batch.
    min_batch: int
    #: The parameters the endpoint was created with (``None`` in a listing when bulky).
    params: Any = None
    #: Most unbatched reports one user may hold, if the endpoint has a quota.
    max_reports_per_user: int | None = None
    #: Reports waiting for a batch, per server (in a listing; ``None`` where a
    #: server did not say).
    unbatched: tuple[int | None, ...] = ()
    #: Whether every server that lists it has the same definition.
    agreed: bool = True

    @classmethod
    def _parse(cls, raw: Any) -> "EndpointInfo":
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        max_reports = raw.get("max_reports_per_user")
        return cls(
            name=str(raw["name"]),
            plugin=str(raw["plugin"]),
            plugin_digest=str(raw["plugin_digest"]),
            config_hash=str(raw["config_hash"]),
            min_batch=int(raw["min_batch"]),
            params=raw.get("params"),
            max_reports_per_user=None if max_reports is None else int(max_reports),
        )


@dataclass(frozen=True)
class Collected:
    """A combined result, with the same fields as ``guardian collect --json``."""

    #: The endpoint's name.
    endpoint: str
    #: What the plugin's ``unshard`` returned, as plain Python values.
    result: Any
    #: Reports in the result.
    count: int
    #: The batch (``None`` for a total).
    batch_id: str | None = None
    #: Number of released batches merged (only for a total).
    batches: int | None = None
    #: Reports the seal rejected because their validity proofs failed (robust plugins).
    rejected: int = 0
    #: When server 0 committed the batch (RFC 3339; ``None`` for a total).
    sealed_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The object ``guardian collect --json`` prints for the same result."""
        out: dict[str, Any] = {"endpoint": self.endpoint}
        if self.batch_id is not None:
            out["batch_id"] = self.batch_id
        if self.batches is not None:
            out["batches"] = self.batches
        out["count"] = self.count
        if self.rejected:
            out["rejected"] = self.rejected
        out["result"] = self.result
        return out

    def to_pandas(self) -> Any:
        """The result as a pandas DataFrame (needs pandas): a histogram's buckets
        as rows, a vector's elements as rows, a scalar as one row."""
        from .frames import result_frame

        return result_frame(self.result)


def canonical_params(params: Any) -> str:
    """The params as the servers pass them to ``configure``: compact JSON with
    sorted keys (serde_json's ``Value::to_string``)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(plugin_digest: str, config: bytes, min_batch: int, max_reports_per_user: int | None) -> str:
    """The configuration hash every server computes for an endpoint, hex."""
    try:
        digest = bytes.fromhex(plugin_digest)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise PluginError("plugin_digest_mismatch", f"the endpoint's plugin digest {plugin_digest!r} is not 64 hex digits")
    h = hashlib.sha256()
    h.update(b"guardian:endpoint:v1\0" if max_reports_per_user is None else b"guardian:endpoint:v2\0")
    h.update(digest)
    h.update(struct.pack("<Q", min_batch))
    if max_reports_per_user is not None:
        h.update(struct.pack("<Q", max_reports_per_user))
    h.update(config)
    return h.hexdigest()


class Guardian:
    """A deployment of share servers, as a scientist uses it.

    ``servers`` are the base URLs in server-index order (or one comma-separated
    string); ``token`` is a bearer token with the scientist role, or a function
    returning one (called before each request, so it may refresh). Without
    arguments, ``GUARDIAN_SERVERS`` and ``GUARDIAN_TOKEN`` are read, as the
    command line does.

    Compiled plugins are kept for the life of the object, so collecting again
    from an endpoint with the same plugin compiles nothing.
    """

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        token: Token = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        if servers is None:
            servers = os.environ.get("GUARDIAN_SERVERS", "")
        if token is None:
            token = os.environ.get("GUARDIAN_TOKEN") or None
        self._cluster = Cluster(servers, token, retry=retry)
        self._runtime = Runtime()

    @property
    def servers(self) -> list[str]:
        """The base URLs, in server-index order."""
        return list(self._cluster.servers)

    def close(self) -> None:
        """Closes pooled connections."""
        self._cluster.close()

    def __enter__(self) -> "Guardian":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def endpoints(self) -> list[EndpointInfo]:
        """Every endpoint of the deployment, by name: server 0's definition,
        each server's count of reports waiting for a batch, and whether every
        server that lists it has the same definition (``agreed``)."""
        cluster = self._cluster
        views: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for index in range(len(cluster)):
            for raw in cluster.get_pages(index, ["api", "v1", "endpoints"], "endpoints"):
                if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                    raise ServerError(server=index, url=cluster.servers[index], code="bad_answer",
                                      message="an endpoint without a name in the listing")
                views.setdefault(raw["name"], []).append((index, raw))
        out = []
        for name in sorted(views):
            held = views[name]
            first = _parse_info(cluster, held[0][0], held[0][1])
            unbatched: list[int | None] = [None] * len(cluster)
            agreed = len(held) == len(cluster)
            for index, raw in held:
                info = _parse_info(cluster, index, raw)
                agreed = agreed and (info.plugin_digest, info.config_hash) == (first.plugin_digest, first.config_hash)
                reports = raw.get("reports")
                if isinstance(reports, dict) and isinstance(reports.get("unbatched"), int):
                    unbatched[index] = reports["unbatched"]
            out.append(EndpointInfo(**{**first.__dict__, "unbatched": tuple(unbatched), "agreed": agreed}))
        return out

    def endpoint(self, name: str) -> "Endpoint":
        """Opens endpoint ``name`` for collecting: checks the server order, that
        every server has the same definition, fetches the plugin from server 0
        (once per digest), checks its digest, configures it here and checks the
        configuration hash."""
        cluster = self._cluster
        _check_order(cluster)
        info = _fetch_agreed(cluster, name)
        plugin = self._plugin(info)
        try:
            config = plugin.configure(canonical_params(info.params))
        except PluginError as e:
            raise PluginError(
                e.code, f"plugin {info.plugin} refused the endpoint's params {info.params} locally: {e}"
            ) from None
        mine = config_hash(info.plugin_digest, config, info.min_batch, info.max_reports_per_user)
        if mine != info.config_hash:
            raise PluginError(
                "config_hash_mismatch",
                f"the plugin configured here gives config hash {mine}, but the servers have "
                f"{info.config_hash} for endpoint {name!r}: refusing to use another configuration than theirs",
            )
        return Endpoint(self._cluster, info, plugin, config)

    def _plugin(self, info: EndpointInfo) -> Plugin:
        if self._runtime.cached(info.plugin_digest):
            return self._runtime.load(info.plugin_digest)
        answer = self._cluster.request(0, "GET", ["api", "v1", "plugins", info.plugin_digest, "wasm"])
        digest = hashlib.sha256(answer.body).hexdigest()
        if digest != info.plugin_digest:
            raise PluginError(
                "plugin_digest_mismatch",
                f"{self._cluster.describe(0)} sent plugin code whose SHA-256 is {digest}, not the "
                f"endpoint's plugin digest {info.plugin_digest}: refusing to run it",
            )
        return self._runtime.load(digest, answer.body)


class Endpoint:
    """An endpoint every server agrees on, with its plugin loaded here."""

    def __init__(self, cluster: Cluster, info: EndpointInfo, plugin: Plugin, config: bytes) -> None:
        self._cluster = cluster
        #: The agreed definition.
        self.info = info
        self._plugin = plugin
        self._config = config

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.info.name

    def __repr__(self) -> str:
        return f"<Endpoint {self.info.name!r}: {self.info.plugin}, min batch {self.info.min_batch}>"

    def collect(self) -> Collected:
        """Seals a batch on server 0, fetches every server's share of it and
        combines them here. Raises :class:`ServerError` with code
        ``batch_too_small`` when too few reports wait."""
        raw = self._cluster.request(
            0, "POST", self._path("batches"), retry=_http.WHEN_ASKED, timeout=SEAL_TIMEOUT
        ).json_body()
        try:
            batch_id, count = str(raw["batch_id"]), int(raw["count"])
            rejected = int(raw.get("rejected", 0))
        except (KeyError, TypeError, ValueError):
            raise ServerError(server=0, url=self._cluster.servers[0], code="bad_answer",
                              message=f"the seal's answer has no batch_id and count: {raw!r}") from None
        try:
            return self.batch(batch_id, _sealed=(count, rejected))
        except GuardianError as e:
            e.add_note(
                f"batch {batch_id} is sealed, but its shares could not all be combined; "
                f"endpoint.batch({batch_id!r}) or endpoint.total() includes it"
            )
            raise

    def batch(self, batch_id: str, *, _sealed: tuple[int, int] | None = None) -> Collected:
        """Fetches every server's share of released batch ``batch_id`` and
        combines them."""
        shares, first = [], None
        for index in range(len(self._cluster)):
            raw = self._cluster.get_json(index, self._path("batches", batch_id))
            who = self._cluster.describe(index)
            try:
                got = (str(raw["batch_id"]), int(raw["count"]))
                server_index = int(raw["server_index"])
            except (KeyError, TypeError, ValueError):
                raise _bad_answer(self._cluster, index, "a batch share without batch_id, count and server_index")
            expected = (batch_id, _sealed[0]) if _sealed else (first[0] if first else got)
            if got != expected:
                raise DisagreementError(
                    "servers_disagree",
                    f"{who} describes batch {got[0]} with {got[1]} reports, but server 0 "
                    f"{'sealed' if _sealed else 'has'} batch {expected[0]} with {expected[1]}: "
                    "the servers disagree, do not use this result",
                )
            if first is None:
                first = (got, raw)
            _check_index(who, index, server_index)
            shares.append(_decode(self._cluster, index, raw.get("share")))
        assert first is not None
        (_, count), raw0 = first
        rejected = _sealed[1] if _sealed else int(raw0.get("rejected", 0) or 0)
        return Collected(
            endpoint=self.name,
            result=self.unshard(shares, count),
            count=count,
            batch_id=batch_id,
            rejected=rejected,
            sealed_at=raw0.get("sealed_at"),
        )

    def total(self) -> Collected:
        """Fetches every server's merge of every released batch and combines them."""
        shares, first, rejected = [], None, 0
        for index in range(len(self._cluster)):
            raw = self._cluster.get_json(index, self._path("total"))
            who = self._cluster.describe(index)
            try:
                got = (int(raw["batches"]), int(raw["count"]))
                server_index = int(raw["server_index"])
            except (KeyError, TypeError, ValueError):
                raise _bad_answer(self._cluster, index, "a total without batches, count and server_index")
            _check_index(who, index, server_index)
            if first is None:
                first = got
                rejected = int(raw.get("rejected", 0) or 0)
            elif got != first:
                raise DisagreementError(
                    "servers_disagree",
                    f"the servers' totals differ: server 0 has {first[0]} batches with {first[1]} reports, "
                    f"{who} has {got[0]} with {got[1]}; a seal may still be completing, collect again in a moment",
                )
            shares.append(_decode(self._cluster, index, raw.get("share")))
        assert first is not None
        return Collected(
            endpoint=self.name,
            result=self.unshard(shares, first[1]),
            count=first[1],
            batches=first[0],
            rejected=rejected,
        )

    def batches(self) -> list[dict[str, Any]]:
        """Server 0's list of released batches, oldest first: ``batch_id``,
        ``count``, ``rejected``, ``sealed_at``."""
        return self._cluster.get_pages(0, self._path("batches"), "batches")

    def history(self) -> "History":
        """Every released batch, combined, oldest first: the result over time."""
        return History([self.batch(str(b["batch_id"])) for b in self.batches()])

    def unshard(self, shares: Sequence[bytes], count: int) -> Any:
        """Combines released shares (one per server, in server-index order) with
        the endpoint's plugin and returns its result as plain Python values."""
        text = self._plugin.unshard(self._config, shares, count)
        try:
            return json.loads(text)
        except ValueError:
            raise PluginError("plugin_bad_output", f"the plugin's unshard did not return JSON: {text[:200]!r}") from None

    def _path(self, *rest: str) -> list[str]:
        return ["api", "v1", "endpoints", self.info.name, *rest]


@dataclass(frozen=True)
class History:
    """Released batches of one endpoint, oldest first."""

    #: One result per batch.
    results: list[Collected] = field(default_factory=list)

    def __iter__(self) -> Iterator[Collected]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_pandas(self) -> Any:
        """A time series (needs pandas), indexed by ``sealed_at``: a scalar result
        is a Series; a histogram a DataFrame with one column per bucket; a
        vector a DataFrame with one column per element; plus ``count``."""
        from .frames import history_frame

        return history_frame(self.results)


def _parse_info(cluster: Cluster, index: int, raw: Any) -> EndpointInfo:
    try:
        return EndpointInfo._parse(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise _bad_answer(cluster, index, f"an endpoint description without {e}") from None


def _bad_answer(cluster: Cluster, index: int, what: str) -> ServerError:
    return ServerError(server=index, url=cluster.servers[index], code="bad_answer", message=what)


def _check_order(cluster: Cluster) -> None:
    if len(cluster) < 2:
        raise UsageError(
            "bad_servers",
            "only one server is given: measurements are split among at least two share servers, "
            "list every one in server-index order",
        )
    for index in range(len(cluster)):
        ready = cluster.get_json(index, ["readyz"])
        try:
            servers, server_index = int(ready["servers"]), int(ready["server_index"])
        except (KeyError, TypeError, ValueError):
            raise _bad_answer(cluster, index, "a /readyz answer without servers and server_index") from None
        if servers != len(cluster):
            raise DisagreementError(
                "wrong_server_count",
                f"{cluster.describe(index)} belongs to a deployment of {servers} share servers, but "
                f"{len(cluster)} are given: give every server's URL, in server-index order",
            )
        _check_index(cluster.describe(index), index, server_index)


def _check_index(who: str, position: int, index: int) -> None:
    if index != position:
        raise DisagreementError(
            "wrong_server_order",
            f"{who} says it is server {index}, but it is at position {position} of servers: "
            "list the servers in server-index order",
        )


def _fetch_agreed(cluster: Cluster, name: str) -> EndpointInfo:
    views = []
    for index in range(len(cluster)):
        try:
            raw = cluster.get_json(index, ["api", "v1", "endpoints", name])
        except ServerError as e:
            if e.code == "unknown_endpoint":
                raise ServerError(
                    server=e.server, url=e.url, code=e.code, status=e.status, details=e.details,
                    message=f"there is no endpoint {name!r} on this server; Guardian.endpoints() lists them",
                ) from None
            raise
        views.append(_parse_info(cluster, index, raw))
    zero = views[0]
    for index, info in enumerate(views[1:], start=1):
        if (info.plugin_digest, info.config_hash) != (zero.plugin_digest, zero.config_hash):
            raise DisagreementError(
                "servers_disagree",
                f"the servers disagree on endpoint {name!r}: {cluster.describe(0)} has plugin {zero.plugin} "
                f"({zero.plugin_digest[:12]}) with params {json.dumps(zero.params)} and min batch {zero.min_batch} "
                f"(config hash {zero.config_hash[:12]}), {cluster.describe(index)} has plugin {info.plugin} "
                f"({info.plugin_digest[:12]}) with params {json.dumps(info.params)} and min batch {info.min_batch} "
                f"(config hash {info.config_hash[:12]}); delete it and create it again on every server",
            )
    return zero


def _decode(cluster: Cluster, index: int, share: Any) -> bytes:
    try:
        return base64.b64decode(share, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise _bad_answer(cluster, index, "a share that is not base64") from None
