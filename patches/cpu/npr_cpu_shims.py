"""CPU-enablement shim, installed into site-packages by `./install.sh cpu` only.

PyPI's torchvision wheels are built against CUDA torch: beside the CPU torch wheel its
`_C` ops library fails to load, and `torchvision/_meta_registrations.py` then crashes
at import registering a fake kernel for the missing `torchvision::nms` op. SGLang
imports torchvision at start-up (through transformers' image utilities), so the whole
server would fail. This module is imported by `npr_cpu_shims.pth` at interpreter start
and, without importing torch itself, wraps the loading of that one torchvision module
so that registrations for torchvision ops are skipped when the ops library is absent
(exactly what torchvision already does for its other meta kernels).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision._meta_registrations"


class _SkipMissingTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def guarded_exec(module):  # noqa: ANN001
            import torch.library
            import torchvision.extension

            if torchvision.extension._has_ops():
                return exec_module(module)
            original = torch.library.register_fake

            def register_fake(op, *args, **kwargs):  # noqa: ANN001
                if isinstance(op, str) and op.startswith("torchvision::"):
                    return lambda fn: fn
                return original(op, *args, **kwargs)

            torch.library.register_fake = register_fake
            try:
                return exec_module(module)
            finally:
                torch.library.register_fake = original

        spec.loader.exec_module = guarded_exec
        return spec


if not any(isinstance(f, _SkipMissingTorchvisionOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _SkipMissingTorchvisionOps())
