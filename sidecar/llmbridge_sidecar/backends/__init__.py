"""Model backends, one module each, all behind ``backends.base.Backend``."""

from __future__ import annotations

from ..errors import BackendError
from ..protocol import INVALID_PARAMS, InitParams
from .base import Backend

# "echo" is a debugging/benchmark backend (no model), not for production.
BACKEND_NAMES = ("ollama", "gguf", "llama.cpp", "vllm", "transformers", "echo")


def create_backend(params: InitParams) -> Backend:
    """Build (but do not start) the backend named by ``init``."""
    # Imported lazily so that an HTTP-only install never touches llama_cpp or torch.
    if params.backend == "ollama":
        from .ollama import OllamaBackend

        return OllamaBackend(params)
    if params.backend in ("llama.cpp", "vllm"):
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(params)
    if params.backend == "gguf":
        from .gguf import GgufBackend

        return GgufBackend(model=params.model, options=params.options)
    if params.backend == "transformers":
        from .hf_transformers import TransformersBackend

        return TransformersBackend(model=params.model, options=params.options)
    if params.backend == "echo":
        from .echo import EchoBackend

        return EchoBackend(params)
    raise BackendError(
        INVALID_PARAMS,
        f"invalid params: unknown backend {params.backend!r}; "
        f"valid backends: {', '.join(BACKEND_NAMES)}",
        {"field": "backend", "backend": params.backend, "valid_backends": list(BACKEND_NAMES)},
    )
