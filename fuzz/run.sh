#!/usr/bin/env bash
# Builds the fuzz targets with AFL++ instrumentation (cargo-afl) and fuzzes each
# for SECONDS (default 180), one after another, starting from fuzz/corpus/<target>/.
# Fails if any target found a crash or a hang; findings stay in fuzz/out/<target>/.
#
#   fuzz/run.sh [-m] [SECONDS] [TARGET...]
#
#   -m        afterwards, minimise the corpus plus what the run found
#             (`cargo afl cmin`) back into fuzz/corpus/<target>/
#   TARGET    any of the targets below; all of them when left out
#
# Needs cargo-afl (`cargo install cargo-afl`; the first `cargo afl` builds AFL++
# with make and a C compiler). Stable Rust is enough.
set -euo pipefail
cd "$(dirname "$0")"

ALL=(report_json share_validate share_codec jwt_header plugin_upload)
minimise=0
if [[ "${1:-}" == "-m" ]]; then
    minimise=1
    shift
fi
seconds="${1:-180}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")

# Per-execution timeout in ms: a hang is a run longer than this. plugin_upload
# compiles whatever parses with Cranelift, which takes seconds on a big component.
timeout_ms() {
    case "$1" in
        plugin_upload) echo 20000 ;;
        share_validate | jwt_header) echo 3000 ;;
        *) echo 1000 ;;
    esac
}

# The corpus plus the run's queue, minimised by afl-cmin into corpus/<target>/.
# The shell afl-cmin is used: the Python one shipped with cargo-afl's AFL++ finds
# no coverage with these persistent-mode targets.
minimise() {
    local target="$1" out="out/$1"
    local cmin
    cmin="$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -path '*/afl/bin/afl-cmin.bash' |
        sort | tail -n 1)"
    rm -rf "$out/merged" "$out/min"
    mkdir -p "$out/merged"
    cp "corpus/$target"/* "$out/default/queue"/id:* "$out/merged"/
    AFL_PATH="$(dirname "$cmin")" "$cmin" -m none -t "$(timeout_ms "$target")" \
        -i "$out/merged" -o "$out/min" -- "target/release/$target" >"$out/cmin.log" 2>&1
    if [[ -z "$(ls -A "$out/min" 2>/dev/null)" ]]; then
        echo "   afl-cmin kept nothing (see fuzz/$out/cmin.log): corpus left as it was" >&2
        return 1
    fi
    rm -rf "corpus/$target"
    mkdir -p "corpus/$target"
    # AFL's queue names (id:000123,src:…,op:…) are not portable file names.
    local file
    for file in "$out/min"/*; do
        cp "$file" "corpus/$target/$(sha256sum "$file" | cut -c1-16)"
    done
    echo "   corpus minimised to $(ls "corpus/$target" | wc -l) files"
}

# The fuzzed code runs on exactly the main workspace's dependency versions: the
# lock file is copied from it (cargo then adds only afl's own dependencies).
cp ../Cargo.lock Cargo.lock
# The nested wasm build of host/build.rs goes to ../target/wasm-plugins as in a
# normal build; everything AFL-instrumented stays in fuzz/target.
cargo afl build --release --bins

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_TRY_AFFINITY=1 AFL_SKIP_CRASHES=0 AFL_FORKSRV_INIT_TMOUT=60000
failed=()
for target in "${targets[@]}"; do
    out="out/$target"
    rm -rf "$out"
    mkdir -p "$out"
    echo "== $target: fuzzing for ${seconds}s"
    # One run outside AFL first: fills the compiled-plugin cache that new
    # share_validate processes read, and shows a target that cannot start.
    first="$(find "corpus/$target" -type f | sort | head -n 1)"
    "target/release/$target" <"$first"
    cargo afl fuzz -V "$seconds" -m none -t "$(timeout_ms "$target")" \
        -i "corpus/$target" -o "$out" "target/release/$target" >"$out/log" 2>&1 || {
        tail -n 30 "$out/log"
        failed+=("$target (afl-fuzz failed)")
        continue
    }
    stats="$out/default/fuzzer_stats"
    field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    printf '   %s execs (%s/s), corpus %s, edges %s of %s (%s), crashes %s, hangs %s\n' \
        "$(field execs_done)" "$(field execs_per_sec)" "$(field corpus_count)" \
        "$(field edges_found)" "$(field total_edges)" "$(field bitmap_cvg)" \
        "$(field saved_crashes)" "$(field saved_hangs)"
    if [[ "$(field saved_crashes)" != 0 || "$(field saved_hangs)" != 0 ]]; then
        failed+=("$target (see fuzz/$out/default/crashes and hangs)")
        continue
    fi
    if [[ $minimise == 1 ]]; then
        minimise "$target" || failed+=("$target (minimising)")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all clean"
