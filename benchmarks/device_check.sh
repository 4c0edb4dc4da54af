#!/usr/bin/env bash
# GPU check of the decode attention kernels: tests compiled (no interpreter), then the
# benchmark. For a GPU machine whose python3 has torch + triton + pytest but neither
# SGLang nor this package installed: npr_engine.kernels is made importable from a temp
# copy. Logs and JSON go to OUTDIR; the benchmark table is printed last.
# Usage: benchmarks/device_check.sh OUTDIR   (under 6 minutes: tests <= 120 s, benchmark <= 220 s)
set -uo pipefail
out=${1:?usage: benchmarks/device_check.sh OUTDIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS

{
  echo "== environment"
  nvidia-smi -L || echo "nvidia-smi failed"
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
"cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
} 2>&1 | tee "$out/env.log"

# npr_engine/__init__.py + kernels/ as npr_engine/kernels, outside the repo so that the
# repo's own npr_engine/ (which has no kernels/ inside) cannot shadow it.
pkg=$(mktemp -d /tmp/npr_path.XXXXXX)
mkdir -p "$pkg/npr_engine"
cp "$repo/npr_engine/__init__.py" "$pkg/npr_engine/"
cp -r "$repo/kernels" "$pkg/npr_engine/kernels"
cp "$repo/tests/test_kernels.py" "$pkg/"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

echo "== kernel tests on the GPU (compiled)" | tee "$out/tests.log"
(cd "$pkg" && timeout 120 python3 -m pytest -q --noconftest -p no:cacheprovider \
  -o addopts="" test_kernels.py) 2>&1 | tee -a "$out/tests.log"
tests_rc=$?
echo "tests exit code: $tests_rc ($((SECONDS - start)) s so far)" | tee -a "$out/tests.log"

echo "== benchmark" | tee "$out/bench.log"
(cd "$repo" && timeout 220 python3 benchmarks/kernels.py "$out" --budget-s 160) 2>&1 | tee -a "$out/bench.log"
bench_rc=$?

echo "== summary: tests exit $tests_rc, benchmark exit $bench_rc, $((SECONDS - start)) s"
grep -E "passed|failed|error" "$out/tests.log" | tail -3
if [ -f "$out/kernels_table.txt" ]; then
  cat "$out/kernels_table.txt"
else
  echo "no benchmark table (see $out/bench.log)"
fi
rm -rf "$pkg"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
