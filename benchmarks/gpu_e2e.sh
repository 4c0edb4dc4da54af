#!/usr/bin/env bash
# End-to-end GPU check: --attention-backend npr_triton against triton (benchmarks/gpu_e2e.py),
# for a GPU machine whose python3 has torch, triton and transformers but no SGLang and no
# network. The caller lays out, relative to the repository root:
#   .gpu/wheels/*.whl   SGLang 0.5.23 and its missing dependencies (gpu-check/wheels.txt)
#   .gpu/gpu-check/     a copy of shared/gpu-check (env.sh, the sgl_kernel stand-in)
#   .gpu/tokenizer/     the default model's tokenizer files
# Installs SGLang and this package into /tmp/site, then runs the check. Everything is
# logged to OUTDIR/gpu_e2e.log; results go to OUTDIR/gpu_e2e.json; the table is printed last.
# Usage: benchmarks/gpu_e2e.sh OUTDIR [gpu_e2e.py options, e.g. --dtypes float32]
#        (about 3 minutes: installs, then the check, cut at E2E_TIMEOUT_S, default 185 s)
set -uo pipefail
out=${1:?usage: benchmarks/gpu_e2e.sh OUTDIR [gpu_e2e.py options]}
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
site=${E2E_SITE:-/tmp/site}  # env.sh puts /tmp/site on PYTHONPATH; E2E_SITE is for dry runs
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_e2e.log"
: >"$log"
export PYTHONUNBUFFERED=1
start=$SECONDS

step() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$log"; }

install_package() {
  # setup.py installs kernels/ and patches/ inside npr_engine and declares the SGLang plugin
  # entry point. Without setuptools (a Python 3.12 image may lack it): the same layout by hand.
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$repo" && return
  echo "pip could not build the package: copying it into $site by hand"
  local info="$site/npr_engine-0.1.0.dist-info"
  mkdir -p "$info" &&
    cp -r "$repo/npr_engine" "$site/" &&
    cp -r "$repo/kernels" "$site/npr_engine/kernels" &&
    cp -r "$repo/patches" "$site/npr_engine/patches" &&
    printf 'Metadata-Version: 2.1\nName: npr-engine\nVersion: 0.1.0\n' >"$info/METADATA" &&
    printf '[sglang.srt.plugins]\nnpr_engine = npr_engine.plugin:load\n' >"$info/entry_points.txt"
}

check_entry_point() {
  # From /tmp: the repository's own npr_engine/ (no kernels/ inside) must not shadow the install.
  (cd /tmp && PYTHONPATH="$site" python3 -c 'from importlib.metadata import entry_points
found = [e.value for e in entry_points(group="sglang.srt.plugins")]
print("sglang.srt.plugins:", found)
assert "npr_engine.plugin:load" in found')
}

step environment
(nvidia-smi -L; python3 -c 'import sys, torch, triton, transformers
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__,
      "transformers", transformers.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")') 2>&1 | tee -a "$log"

if [ "${E2E_SKIP_INSTALL:-0}" = 1 ] && [ -d "$site/sglang" ]; then
  step "install skipped: $site has SGLang (E2E_SKIP_INSTALL=1)"
else
step "install into $site"
(python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$repo"/.gpu/wheels/*.whl &&
  install_package && check_entry_point) 2>&1 | tee -a "$log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  step "install failed"
  exit 1
fi
fi

# shellcheck source=/dev/null
# Our copy of gpu-check (benchmarks/gpu-check: the stand-in plus weak_ref_tensor, for
# CUDA graphs), else the one laid out under .gpu/.
check_dir="$repo/benchmarks/gpu-check"
[ -f "$check_dir/env.sh" ] || check_dir="$repo/.gpu/gpu-check"
. "$check_dir/env.sh"
export PYTHONPATH="$site:$PYTHONPATH"
unset TRITON_INTERPRET

step "check"
(cd /tmp && timeout -k 10 "${E2E_TIMEOUT_S:-185}" python3 "$repo/benchmarks/gpu_e2e.py" "$out" --tokenizer "$repo/.gpu/tokenizer" "$@") 2>&1 |
  tee -a "$log"
rc=${PIPESTATUS[0]}
step "done: exit $rc (0 compared, 1 a run crashed or timed out, 2 no valid comparison, 124 timeout)"
exit "$rc"
