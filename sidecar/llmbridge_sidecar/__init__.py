"""llmbridge sidecar: a JSON-RPC 2.0 server on stdio that fronts local LLM backends.

The C++ llmbridge server spawns this process and speaks newline-delimited
JSON-RPC to it; see ``protocol.py`` for the wire contract.
"""

__version__ = "0.1.0"
