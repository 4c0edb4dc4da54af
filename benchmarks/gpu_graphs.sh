#!/usr/bin/env bash
# Issue "On the GPU as users run it", items 1 and 3, in one install and two checks.
# Layout as benchmarks/gpu_e2e.sh (.gpu/wheels, .gpu/tokenizer); uses benchmarks/gpu-check
# (the sgl_kernel stand-in plus weak_ref_tensor, for CUDA graphs).
#   1. float32   npr_triton (eager) vs npr_triton:graphs     same tokens with graphs on/off;
#                                                             graph_replays > 0, graph_steps > 0
#   2. bfloat16  triton:graphs as the reference, then
#                triton:graphs,splits=16                      the noise floor (fraction equal,
#                                                             first divergences)
#                npr_triton:graphs                            must be no worse than the floor
# Check 1 is cut at 260 s, check 2 at 270 s (E2E_TIMEOUT_S_1, E2E_TIMEOUT_S_2): on the H200
# (run 1) an eager float32 run took 95 s, a graph run 56-81 s (engine start 41-63 s with
# capture), the model build 15 s; about 9 minutes in all with the install. Tables in
# OUTDIR/{1_graphs_on_off,2_bf16}/gpu_e2e.json and .log, printed last.
# Usage: benchmarks/gpu_graphs.sh OUTDIR
set -uo pipefail
out=${1:?usage: benchmarks/gpu_graphs.sh OUTDIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rc=0
E2E_TIMEOUT_S=${E2E_TIMEOUT_S_1:-260} "$repo/benchmarks/gpu_e2e.sh" "$out/1_graphs_on_off" \
  --dtypes float32 --budget-s "$((${E2E_TIMEOUT_S_1:-260} - 10))" --backends npr_triton npr_triton:graphs || rc=$?
E2E_SKIP_INSTALL=1 E2E_TIMEOUT_S=${E2E_TIMEOUT_S_2:-270} "$repo/benchmarks/gpu_e2e.sh" "$out/2_bf16" \
  --dtypes bfloat16 --budget-s "$((${E2E_TIMEOUT_S_2:-270} - 10))" \
  --backends triton:graphs triton:graphs,splits=16 npr_triton:graphs || rc=$?
exit "$rc"
