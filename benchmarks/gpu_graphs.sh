#!/usr/bin/env bash
# Issue "On the GPU as users run it", items 1 and 3 -- PREPARED, NOT YET RUN ON A GPU.
# Layout as benchmarks/gpu_e2e.sh (.gpu/wheels, .gpu/tokenizer); uses benchmarks/gpu-check
# (the sgl_kernel stand-in plus weak_ref_tensor). Three comparisons, one install:
#   1. float32  npr_triton (eager) vs npr_triton:graphs   same tokens with graphs on/off,
#                                                          graph_replays > 0, graph_steps > 0
#   2. bfloat16 triton:graphs vs triton:graphs,splits=16  the noise floor (fraction equal,
#                                                          first divergences)
#   3. bfloat16 triton:graphs vs npr_triton:graphs        must be no worse than 2
# Each comparison is cut at E2E_TIMEOUT_S (default 110 s); tables in OUTDIR/*/gpu_e2e.json.
# Usage: benchmarks/gpu_graphs.sh OUTDIR
set -uo pipefail
out=${1:?usage: benchmarks/gpu_graphs.sh OUTDIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export E2E_TIMEOUT_S=${E2E_TIMEOUT_S:-110}
rc=0
"$repo/benchmarks/gpu_e2e.sh" "$out/1_graphs_on_off" --dtypes float32 --budget-s 100 \
  --backends npr_triton npr_triton:graphs || rc=$?
E2E_SKIP_INSTALL=1 "$repo/benchmarks/gpu_e2e.sh" "$out/2_noise_floor" --dtypes bfloat16 --budget-s 100 \
  --backends triton:graphs triton:graphs,splits=16 || rc=$?
E2E_SKIP_INSTALL=1 "$repo/benchmarks/gpu_e2e.sh" "$out/3_npr_vs_triton" --dtypes bfloat16 --budget-s 100 \
  --backends triton:graphs npr_triton:graphs || rc=$?
exit "$rc"
