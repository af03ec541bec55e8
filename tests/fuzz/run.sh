#!/usr/bin/env bash
# Fuzzes the management API with schemathesis: the `api` function behind the local SigV4 front
# (target/debug/tether-local-api), talking to the AWS emulator. Part of `make test`, which builds
# tether-local-api and installs the emulator (.venv) first. Fails unless every enabled check
# passed, server errors (5xx) included, and ends with one line:
#   fuzz: cases=N server_errors=M
#
# Settings (environment):
#   FUZZ_SEED          schemathesis' seed (default below): the same seed generates the same cases
#   FUZZ_MAX_EXAMPLES  test cases per operation and phase (default below)
#   FUZZ_OUT           where the reports, the server's log and schemathesis' crash files go
#                      (default target/fuzz)
#   FUZZ_TIMEOUT       seconds after which the schemathesis run is killed (default 900)
#   PYTHON             the Python that creates .venv-fuzz (default python3, >= 3.11)
# Extra arguments go to `schemathesis run` (e.g. --include-operation-id createNode).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
fuzz=tests/fuzz
seed=${FUZZ_SEED:-20261121}
max_examples=${FUZZ_MAX_EXAMPLES:-100}
out=${FUZZ_OUT:-$root/target/fuzz}
python=${PYTHON:-python3}
venv=.venv-fuzz
stamp=$venv/.tether-fuzz
server=target/debug/tether-local-api

# --- The pinned fuzzer, in its own virtualenv (re-installed when requirements.txt changes) ---
if [[ ! -f $stamp || $fuzz/requirements.txt -nt $stamp ]]; then
    "$python" -m venv "$venv" || { echo "fuzz: '$python -m venv' failed: install Python 3's venv module (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$fuzz/requirements.txt"
    "$venv/bin/pip" check --disable-pip-version-check >/dev/null || { "$venv/bin/pip" check >&2; exit 1; }
    touch "$stamp"
fi

[[ -x $server ]] || { echo "fuzz: $server not found: run 'cargo build -p tether-tests --bins' first" >&2; exit 1; }

# --- The API: tether-local-api serves until its stdin closes ---------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
server_pid=
cleanup() {
    local status=$?
    if [[ -n ${hold:-} ]]; then exec {hold}>&-; fi  # closes the server's stdin: it stops
    if [[ -n $server_pid ]]; then
        for _ in {1..50}; do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkfifo "$work/stdin"
"$server" <"$work/stdin" >"$out/server.log" 2>&1 &
server_pid=$!
exec {hold}>"$work/stdin"

ready=
for _ in {1..600}; do  # up to 60 s: the emulator starts, the fixtures are built
    ready=$(grep -m1 '^TETHER_API_READY ' "$out/server.log" || true)
    [[ -n $ready ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $ready ]]; then
    echo "fuzz: tether-local-api did not get ready; its output ($out/server.log):" >&2
    tail -n 30 "$out/server.log" >&2
    exit 1
fi
url=$(sed -E 's/.* url=([^ ]+).*/\1/' <<<"$ready")
echo "fuzz: API at $url (seed $seed, $max_examples examples per operation and phase)"

# --- Real nodes and ids for the fuzzer's dictionaries -----------------------------------------
export PYTHONPATH=$root/$fuzz
"$venv/bin/python" "$fuzz/seed.py" "$work" "$ready"
cp "$fuzz/config.toml" "$work/config.toml"

# --- The run ----------------------------------------------------------------------------------
# From $out, so that schemathesis' and Hypothesis' working files (crash files for `st replay`,
# Hypothesis' caches) land there, not in the work tree; the crash files of earlier runs are
# dropped so each run starts from the seed alone.
rm -rf "$out/report.json" "$out/junit.xml" "$out/cache" "$out/.hypothesis"
export TETHER_FUZZ_CACHE=$out/cache
set +e
(
    cd "$out"
    SCHEMATHESIS_HOOKS=hooks timeout --kill-after=10 "${FUZZ_TIMEOUT:-900}" \
        "$root/$venv/bin/schemathesis" --config-file "$work/config.toml" run \
        "$root/functions/api/openapi.json" \
        --url "$url" \
        --seed "$seed" \
        --max-examples "$max_examples" \
        --workers 1 \
        --request-timeout 30 \
        --no-color \
        --output-sanitize false \
        --report json,junit \
        --report-json-path "$out/report.json" \
        --report-junit-path "$out/junit.xml" \
        "$@"
)
status=$?
set -e

if [[ ! -f $out/report.json ]]; then
    echo "fuzz: schemathesis wrote no report (exit $status)" >&2
    exit 1
fi
"$venv/bin/python" "$fuzz/summary.py" "$out/report.json" || status=1
exit "$status"
