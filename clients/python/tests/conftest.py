"""What the tests against a live deployment need: its URLs and tokens, and the
``guardian`` binary whose ``collect --json`` is the reference result.

``host/tests/python_client.rs`` starts a two-server ``guardian dev``, creates
the endpoints, submits reports with ``guardian submit`` and runs this suite with
these variables set. Run alone, the suite fails (it never skips) and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

VARIABLES = ("GUARDIAN_SERVERS", "GUARDIAN_TOKEN", "GUARDIAN_USER_TOKEN", "GUARDIAN_BIN", "GUARDIAN_EXPECTED")


@dataclass(frozen=True)
class Deployment:
    """A running deployment and the reference command line."""

    servers: list[str]
    #: A scientist's token.
    token: str
    #: A user's token, to submit more reports.
    user_token: str
    #: The `guardian` binary.
    binary: str
    #: The plain computation over the reports submitted before the suite ran.
    expected: dict[str, Any]

    def cli(self, *args: str, token: str | None = None, stdin: str | None = None) -> str:
        """Runs the command line against the deployment; fails the test with its
        output when it fails."""
        env = {**os.environ, "GUARDIAN_SERVERS": ",".join(self.servers), "GUARDIAN_TOKEN": token or self.token}
        out = subprocess.run(
            [self.binary, *args], env=env, input=stdin, capture_output=True, text=True, timeout=600
        )
        if out.returncode != 0:
            pytest.fail(f"guardian {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def collect_json(self, *args: str) -> dict[str, Any]:
        """``guardian collect ... --json``, parsed."""
        return json.loads(self.cli("collect", *args, "--json"))


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    missing = [name for name in VARIABLES if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: these tests run against a live two-server `guardian dev`; "
            "run them with `cargo test -p guardian --test python_client` (after `cargo xtask prepare`)",
            pytrace=False,
        )
    return Deployment(
        servers=os.environ["GUARDIAN_SERVERS"].split(","),
        token=os.environ["GUARDIAN_TOKEN"],
        user_token=os.environ["GUARDIAN_USER_TOKEN"],
        binary=os.environ["GUARDIAN_BIN"],
        expected=json.loads(os.environ["GUARDIAN_EXPECTED"]),
    )
