"""The documented C++ library example (examples/cpp) runs against the real
sidecar and the protocol-faithful Ollama fake."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, SIDECAR

EXAMPLE = ROOT / "bazel-bin" / "examples" / "cpp" / "complete_example"


def test_cpp_library_example_streams_a_completion(fake_ollama):
    proc = subprocess.run(
        [str(EXAMPLE), f"--python={sys.executable}", f"--sidecar={SIDECAR}",
         "--backend=ollama", f"--host={fake_ollama}", "--model=llama3.2:latest", "Say", "hello"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello from fake Ollama\n")
    assert "finish_reason=stop input_tokens=12 output_tokens=4" in proc.stdout


def test_cpp_library_example_reports_errors(fake_ollama):
    proc = subprocess.run(
        [str(EXAMPLE), f"--python={sys.executable}", f"--sidecar={SIDECAR}",
         "--backend=ollama", f"--host={fake_ollama}", "--model=no-such-model"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "NOT_FOUND" in proc.stderr and "no-such-model" in proc.stderr
