"""Parts of the client that need no server: checks of the arguments, the
canonical params and configuration hash, and the pandas shapes."""

from __future__ import annotations

import hashlib
import struct

import pandas as pd
import pytest

from privacy_guardian import Guardian, UsageError, canonical_params, config_hash
from privacy_guardian.frames import result_frame


@pytest.mark.parametrize(
    ("servers", "needle"),
    [
        ([], "no share servers given"),
        (["ftp://a"], "is not an http:// or https:// URL"),
        (["http://a?x=1"], "without ? or #"),
    ],
)
def test_bad_servers_are_refused_with_a_code(servers: list[str], needle: str) -> None:
    with pytest.raises(UsageError) as refused:
        Guardian(servers=servers, token="t")
    assert refused.value.code == "bad_servers"
    assert needle in str(refused.value)


def test_servers_may_be_one_comma_separated_string() -> None:
    g = Guardian(servers="http://a:1, http://b:2/", token="t")
    assert g.servers == ["http://a:1", "http://b:2"]


def test_params_are_serialised_as_the_servers_do() -> None:
    # serde_json's Value::to_string: sorted keys, no spaces, UTF-8 as is.
    assert canonical_params({"b": [1, 2.5], "a": "é", "c": {"z": None, "y": True}}) == (
        '{"a":"é","b":[1,2.5],"c":{"y":true,"z":null}}'
    )
    assert canonical_params({"epsilon": 1.0}) == '{"epsilon":1.0}'


def test_config_hash_follows_the_servers_layout() -> None:
    digest = "ab" * 32
    v1 = hashlib.sha256(b"guardian:endpoint:v1\0" + bytes.fromhex(digest) + struct.pack("<Q", 3) + b"cfg")
    assert config_hash(digest, b"cfg", 3, None) == v1.hexdigest()
    v2 = hashlib.sha256(
        b"guardian:endpoint:v2\0" + bytes.fromhex(digest) + struct.pack("<Q", 3) + struct.pack("<Q", 7) + b"cfg"
    )
    assert config_hash(digest, b"cfg", 3, 7) == v2.hexdigest()


def test_results_become_frames_of_the_collect_tables_shape() -> None:
    histogram = result_frame({"buckets": ["red", "green"], "counts": [3, 12]})
    assert list(histogram.index) == ["red", "green"]
    assert histogram["counts"].tolist() == [3, 12]
    vector = result_frame([5, -1])
    assert vector["value"].tolist() == [5, -1]
    mean = result_frame({"count": 2, "mean": [1.5], "sum": [3]})
    assert mean.to_dict("records") == [{"mean": 1.5, "sum": 3, "count": 2}]
    scalar = result_frame(42)
    assert scalar["value"].tolist() == [42]
    assert isinstance(scalar, pd.DataFrame)
