#!/usr/bin/env python3
"""Launch SGLang's OpenAI-compatible server with NPR Engine active (see README)."""

import sys

from npr_engine.launcher import main

if __name__ == "__main__":
    sys.exit(main())
