#!/usr/bin/env bash
# cuvisor's real-GPU validation kit in one command (see README.md beside this file):
#
#   bash examples/gpu/run.sh OUT_DIR [PART...]      PART: env interception oversubscription cost hibernate
#
# Runs the parts asked for (all by default), each under a time limit, then writes
# OUT_DIR/results.md from the records. Exits 77 (skipped) with the reason where there is
# no NVIDIA GPU, 1 if a check failed, 0 if every check passed or was skipped.
set -uo pipefail
out=${1:?usage: run.sh OUT_DIR [env interception oversubscription cost hibernate]}
shift
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(env interception hibernate oversubscription cost)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "kit: skipped: no NVIDIA GPU here (nvidia-smi is not installed)"
    exit 77
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "kit: skipped: no NVIDIA GPU here (nvidia-smi -L fails: $(nvidia-smi -L 2>&1 | head -n1))"
    exit 77
fi
shim=${CUVISOR_SHIM:-$repo/target/release/libcuvisor_preload.so}
cuvisor=${CUVISOR_BIN:-$repo/target/release/cuvisor}
if [ ! -f "$shim" ] || [ ! -x "$cuvisor" ]; then
    if command -v cargo >/dev/null 2>&1; then
        (cd "$repo" && cargo build --release) || exit 1
    else
        echo "kit: $shim or $cuvisor is missing and there is no cargo here: build them with" \
             "'cargo build --release' on an x86-64 machine and bring target/release/ along" >&2
        exit 1
    fi
fi
mkdir -p "$out"
# Part -> time limit in seconds: together they fit one 10-minute call of the device tool.
declare -A limit=([env]=40 [interception]=160 [hibernate]=60 [oversubscription]=200 [cost]=110)
for part in "${parts[@]}"; do
    [ -n "${limit[$part]:-}" ] || { echo "kit: unknown part $part" >&2; exit 2; }
    echo "kit: === $part (at most ${limit[$part]} s)"
    timeout --kill-after=10 "${limit[$part]}" \
        python3 "$here/kit.py" "$part" --out "$out" --shim "$shim" --cuvisor "$cuvisor"
    rc=$?
    [ $rc -eq 0 ] || echo "kit: part $part ended with status $rc (124: its time limit); its records so far are kept"
done
python3 "$here/kit.py" summary --out "$out" --shim "$shim" --cuvisor "$cuvisor"
if grep -q '"ok": false' "$out"/*.jsonl 2>/dev/null; then
    echo "kit: some checks FAILED: see $out/results.md and $out/raw.log"
    exit 1
fi
echo "kit: every check passed or was skipped: $out/results.md"
