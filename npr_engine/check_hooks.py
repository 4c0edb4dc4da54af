"""`python -m npr_engine.check_hooks`: verify every hook target against the installed SGLang.

Run it before any SGLang upgrade: it resolves each target without patching anything
and reports which targets are missing or were written for another SGLang version.
"""

from __future__ import annotations

import sys

from npr_engine.hooks import HookInstallError, resolve
from npr_engine.info import sglang_version


def main() -> int:
    from npr_engine.patches import all_hooks

    installed = sglang_version()
    failures = 0
    for hook in all_hooks():
        try:
            resolve(hook.target)
            status = "ok"
        except HookInstallError as exc:
            status = f"MISSING ({exc})"
            failures += 1
        note = "" if hook.pinned == installed else f" [written for {hook.pinned}]"
        print(f"{status:8} {hook.kind.value:7} {hook.target}{note}")
    print(f"sglang {installed}: {failures} missing target(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
