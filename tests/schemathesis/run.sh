#!/usr/bin/env bash
# API fuzzing: schemathesis generates requests from the server's own OpenAPI
# document (GET /api/v1/openapi.json) and sends them to a local two-server
# `guardian dev` deployment, once per role token and once with unsigned peer
# calls against the follower. It fails on any 5xx answer
# (not_a_server_error), on any body its operation's schema does not describe
# (response_schema_conformance), and on a status, content type or header the
# operation does not document (status_code_conformance,
# content_type_conformance, response_headers_conformance).
#
# Installs the pinned schemathesis (requirements.txt) into a venv under target/.
# Environment: SCHEMATHESIS_MAX_EXAMPLES (test cases per operation and phase,
# default 100), SCHEMATHESIS_SEED (default: random, printed by schemathesis),
# SCHEMATHESIS_CHECKS (comma-separated, default the five above), GUARDIAN (the
# binary; default: built here with cargo).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
examples="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
checks="${SCHEMATHESIS_CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance}"

venv="$root/target/schemathesis-venv"
if [[ ! -x "$venv/bin/schemathesis" ]] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi

if [[ -z "${GUARDIAN:-}" ]]; then
    cargo build --quiet -p guardian --manifest-path "$root/Cargo.toml"
    GUARDIAN="$root/target/debug/guardian"
fi

work="$(mktemp -d)"
dev_pid=""
cleanup() {
    if [[ -n "$dev_pid" ]] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -INT "$dev_pid"
        wait "$dev_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Two free consecutive ports: server i listens on port + i.
port="$(python3 - <<'EOF'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 60000)
    sockets = []
    try:
        for p in (port, port + 1):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            sockets.append(s)
    except OSError:
        continue
    finally:
        for s in sockets:
            s.close()
    print(port)
    break
else:
    raise SystemExit("no two free consecutive ports")
EOF
)"

"$GUARDIAN" dev --dir "$work/dev" --port "$port" >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 &&
        curl -fsS "http://127.0.0.1:$((port + 1))/readyz" >/dev/null 2>&1 &&
        grep -q "share servers are running" "$work/dev.log"; then
        break
    fi
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        cat "$work/dev.log"
        echo "guardian dev exited" >&2
        exit 1
    fi
    sleep 0.5
done
grep -q "share servers are running" "$work/dev.log" || {
    cat "$work/dev.log"
    echo "guardian dev did not start" >&2
    exit 1
}

failed=0
# One pass: $1 names it, $2 is the server's base URL, $3 the bearer credential,
# the rest extra schemathesis options.
fuzz() {
    local name="$1" url="$2" credential="$3"
    shift 3
    echo "=== schemathesis: $name ==="
    local seed=()
    if [[ -n "${SCHEMATHESIS_SEED:-}" ]]; then
        seed=(--seed "$SCHEMATHESIS_SEED")
    fi
    # One worker: concurrent ast.parse calls (Hypothesis describing strategies)
    # trip a CPython 3.11 bug, "AST constructor recursion depth mismatch".
    if ! "$venv/bin/schemathesis" run "$url/api/v1/openapi.json" \
        --checks "$checks" \
        --header "Authorization: Bearer $credential" \
        --max-examples "$examples" \
        --workers 1 \
        --request-timeout 30 \
        --suppress-health-check all \
        --no-color \
        "${seed[@]}" "$@"; then
        echo "=== schemathesis: $name FAILED ===" >&2
        failed=1
    fi
}

server0="http://127.0.0.1:$port"
server1="http://127.0.0.1:$((port + 1))"
# Admin last: it may delete the demo endpoint the other roles exercise.
for role in user developer scientist admin; do
    token="$("$GUARDIAN" token --role "$role" --sub "fuzz-$role" --ttl 2h \
        --issuer-dir "$work/dev/dev-issuer")"
    fuzz "$role token" "$server0" "$token" --exclude-path-regex '^/peer/'
done
# The seal protocol's routes on the follower, unsigned: every call must be
# refused as documented (401 before the body is read), whatever it carries.
# Signed steps, and every forgery of them, are tested in host/tests/trust.rs.
fuzz "unsigned peer calls" "$server1" "not-a-peer" --include-path-regex '^/peer/'

if [[ "$failed" != 0 ]]; then
    echo "--- guardian dev log (last 200 lines) ---" >&2
    tail -n 200 "$work/dev.log" >&2
    exit 1
fi
echo "schemathesis: every pass clean"
