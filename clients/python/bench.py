"""How long the client takes to combine a result once the shares are fetched.

Against a running deployment (``GUARDIAN_SERVERS``, ``GUARDIAN_TOKEN`` as
``guardian dev`` prints them), for each endpoint named on the command line
(default: ``demo``), with at least one released batch:

    python bench.py colors noisy robust [--runs 200]

prints, per endpoint: opening it the first time (agreement checks, fetching and
compiling the plugin), opening it again (the compiled plugin is reused),
fetching every server's share of the total, and ``unshard`` alone (median, 99th
percentile and maximum over the runs).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time

from privacy_guardian import Guardian


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoints", nargs="*", default=["demo"])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    guardian = Guardian()
    print(f"{'endpoint':<12} {'plugin':<14} {'share':>8} {'open':>10} {'reopen':>10} {'fetch':>10} "
          f"{'unshard p50':>12} {'p99':>10} {'max':>10}")
    for name in args.endpoints:
        start = time.perf_counter()
        endpoint = guardian.endpoint(name)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        guardian.endpoint(name)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        raw = [guardian._cluster.get_json(i, ["api", "v1", "endpoints", name, "total"])
               for i in range(len(guardian.servers))]
        fetch = time.perf_counter() - start
        shares = [base64.b64decode(r["share"]) for r in raw]
        count = raw[0]["count"]
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            endpoint.unshard(shares, count)
            times.append(time.perf_counter() - start)
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{name:<12} {endpoint.info.plugin:<14} {len(shares[0]):>7}B {ms(cold):>10} {ms(warm):>10} "
              f"{ms(fetch):>10} {ms(statistics.median(times)):>12} {ms(p99):>10} {ms(times[-1]):>10}")


if __name__ == "__main__":
    main()
