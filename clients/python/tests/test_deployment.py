"""The client against a live two-server ``guardian dev`` (see conftest.py):
every result equals what ``guardian collect --json`` prints for the same batch
or total, for ``sum``, ``histogram``, a DP plugin (``dp-sum``) and a robust one
(``prio3-sum``); plain computations agree where there is no noise; errors carry
the servers' codes and say which server; unsharding reuses the compiled plugin
(its speed is measured by bench.py, not asserted here)."""

from __future__ import annotations

import base64
import json
import random
import statistics
import time
from typing import Any

import pandas as pd
import pytest

from privacy_guardian import DisagreementError, Guardian, PluginError, RetryPolicy, ServerError, UsageError
from privacy_guardian.client import Endpoint

from conftest import Deployment

COLORS = ["red", "green", "blue", "yellow"]
#: The endpoints whose results are compared, with the plugin behind each.
ENDPOINTS = {"sum3": "sum", "colors": "histogram", "noisy": "dp-sum", "robust": "prio3-sum"}


def same(a: Any, b: Any) -> bool:
    """Equal JSON values, floats to the last bit (`guardian collect` reads and
    prints the plugin's JSON without rounding)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def measurements(name: str, n: int) -> list[Any]:
    rng = random.Random()
    if name == "sum3":
        return [[rng.randrange(1_000_000) for _ in range(3)] for _ in range(n)]
    if name == "colors":
        return [rng.choice(COLORS) for _ in range(n)]
    if name == "noisy":
        return [[rng.randrange(11), rng.randrange(11)] for _ in range(n)]
    return [rng.randrange(256) for _ in range(n)]


def plain(name: str, values: list[Any]) -> Any:
    if name == "sum3":
        return [sum(v[i] for v in values) for i in range(3)]
    if name == "colors":
        return {"buckets": COLORS, "counts": [values.count(c) for c in COLORS]}
    return sum(values)


@pytest.fixture(scope="session")
def guardian(deployment: Deployment) -> Guardian:
    return Guardian(servers=deployment.servers, token=deployment.token)


def test_endpoints_are_listed_with_what_waits_on_each_server(guardian: Guardian, deployment: Deployment) -> None:
    listed = {e.name: e for e in guardian.endpoints()}
    for name, plugin in ENDPOINTS.items():
        assert name in listed, listed.keys()
        info = listed[name]
        assert info.plugin == plugin
        assert info.agreed
        assert len(info.plugin_digest) == 64


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_results_equal_the_command_lines(name: str, guardian: Guardian, deployment: Deployment) -> None:
    endpoint = guardian.endpoint(name)
    assert endpoint.info.plugin == ENDPOINTS[name]
    reports = deployment.expected["reports"]

    # The client seals the first batch; the command line's total over that one
    # batch is the same result.
    batch = endpoint.collect()
    assert batch.count == reports
    assert batch.batch_id is not None and len(batch.batch_id) == 32
    reference = deployment.collect_json(name, "--total")
    assert reference["batches"] == 1 and reference["count"] == reports, reference
    assert same(batch.result, reference["result"]), (batch.result, reference["result"])
    if name in deployment.expected:
        assert batch.result == deployment.expected[name]
    if name == "noisy":
        # Noise was added, once, at release: the same result every time.
        assert endpoint.batch(batch.batch_id).result == batch.result
        assert sorted(batch.result) == sorted(["delta", "epsilon", "mechanism", "noise_scale", "sum"])
    total = endpoint.total()
    assert same(total.to_json(), reference), (total.to_json(), reference)

    # The command line seals the second batch; the client reads it back.
    values = measurements(name, 10)
    lines = "".join(json.dumps(v) + "\n" for v in values)
    deployment.cli("submit", name, "--file", "-", token=deployment.user_token, stdin=lines)
    sealed = deployment.collect_json(name)
    again = endpoint.batch(sealed["batch_id"])
    assert same(again.to_json(), sealed), (again.to_json(), sealed)
    if name != "noisy":
        assert again.result == plain(name, values)
    total = endpoint.total()
    assert total.batches == 2 and total.count == reports + 10
    assert same(total.to_json(), deployment.collect_json(name, "--total"))

    # Batches over time, and the result as a DataFrame.
    history = endpoint.history()
    assert [r.batch_id for r in history] == [batch.batch_id, sealed["batch_id"]]
    series = history.to_pandas()
    assert len(series) == 2
    assert isinstance(series.index, pd.DatetimeIndex)
    frame = batch.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    if name == "colors":
        assert list(frame.index) == COLORS
        assert frame["counts"].tolist() == batch.result["counts"]
        assert list(series.columns) == [*COLORS, "count"]
        assert series["count"].tolist() == [reports, 10]
    if name == "robust":
        assert isinstance(series, pd.Series)
        assert series.tolist() == [batch.result, again.result]


@pytest.mark.parametrize("name", ["colors", "wide"])
def test_unsharding_reuses_the_compiled_plugin(
    name: str, guardian: Guardian, deployment: Deployment
) -> None:
    endpoint = guardian.endpoint(name)
    if name == "wide":
        endpoint.collect()
    shares = [fetch_share(guardian, index, name) for index in range(len(deployment.servers))]
    count = endpoint.total().count
    times = []
    for _ in range(20):
        start = time.perf_counter()
        result = endpoint.unshard(shares, count)
        times.append(time.perf_counter() - start)
    assert sum(result["counts"]) == count
    print(
        f"unshard of {name} ({len(shares[0])} bytes a share): median {statistics.median(times) * 1000:.2f} ms, "
        f"max {max(times) * 1000:.2f} ms"
    )
    # The bulk lowering gives the plugin what wasmtime-py's own conversion gives it.
    plugin = endpoint._plugin
    assert plugin.unshard(endpoint._config, shares, count) == plugin.unshard(
        endpoint._config, shares, count, bulk=False
    )
    # Opening it again reuses the compiled component.
    assert guardian.endpoint(name)._plugin is plugin


def fetch_share(guardian: Guardian, index: int, name: str) -> bytes:
    raw = guardian._cluster.get_json(index, ["api", "v1", "endpoints", name, "total"])
    return base64.b64decode(raw["share"])


def test_errors_carry_the_servers_codes(guardian: Guardian, deployment: Deployment) -> None:
    with pytest.raises(ServerError) as unknown:
        guardian.endpoint("no-such-endpoint")
    assert unknown.value.code == "unknown_endpoint"
    assert unknown.value.server == 0 and unknown.value.status == 404
    assert "server 0 (" in str(unknown.value)

    # Nothing waits in the demo endpoint: said with the counts.
    with pytest.raises(ServerError) as small:
        guardian.endpoint("demo").collect()
    assert small.value.code == "batch_too_small"
    assert small.value.details["needed"] == 3
    assert "only 0 reports are held by every server" in str(small.value)

    with pytest.raises(ServerError) as refused:
        Guardian(servers=deployment.servers, token="not-a-token").endpoint("colors")
    assert refused.value.status == 401
    assert refused.value.code not in ("", "http_401")
    assert "refused the token" in str(refused.value)

    # A user may not read results: the server's own code for a missing role.
    with pytest.raises(ServerError) as role:
        Guardian(servers=deployment.servers, token=deployment.user_token).endpoint("colors").total()
    assert role.value.status == 403
    assert "use a token that carries that role" in str(role.value)

    with pytest.raises(DisagreementError) as order:
        Guardian(servers=list(reversed(deployment.servers)), token=deployment.token).endpoint("colors")
    assert order.value.code == "wrong_server_order"

    with pytest.raises(UsageError) as single:
        Guardian(servers=deployment.servers[:1], token=deployment.token).endpoint("colors")
    assert single.value.code == "bad_servers"

    # A token may be a function, called for each request.
    calls = []

    def token() -> str:
        calls.append(1)
        return deployment.token

    assert Guardian(servers=deployment.servers, token=token).endpoints()
    assert calls

    down = Guardian(
        servers=[deployment.servers[0], "http://127.0.0.1:9"], token=deployment.token, retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(ServerError) as unreachable:
        down.endpoint("colors")
    assert unreachable.value.code == "unreachable" and unreachable.value.server == 1


def test_a_plugin_refusal_keeps_its_case(guardian: Guardian) -> None:
    endpoint: Endpoint = guardian.endpoint("sum3")
    with pytest.raises(PluginError) as refused:
        endpoint.unshard([b"\x00" * 3, b"\x00" * 3], 1)
    assert refused.value.code == "plugin_invalid_state", refused.value
    assert "8-byte" in str(refused.value) or "bytes" in str(refused.value)


def test_the_notebook_example_runs(deployment: Deployment) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "colors.py"
    env = {**os.environ, "GUARDIAN_SERVERS": ",".join(deployment.servers), "GUARDIAN_TOKEN": deployment.token}
    out = subprocess.run([sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<Endpoint 'demo': histogram, min batch 3>" in out.stdout, out.stdout
    assert "buckets" in out.stdout, out.stdout
