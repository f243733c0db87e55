#!/usr/bin/env python3
"""Entry script for the llmbridge sidecar (the ``sidecar_path`` users configure).

Works with the ``llmbridge-sidecar`` package installed in the interpreter's
environment, or straight from a source tree / Bazel runfiles tree. The
script may be reached through a symlink (runfiles), so the package is looked
for next to the real file, not next to the link.
"""

import os
import sys

try:
    from llmbridge_sidecar.__main__ import main
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    from llmbridge_sidecar.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
