# syntax=docker/dockerfile:1
#
# llmbridge container image: the gRPC server, the Python sidecar and its
# virtual environment (llama-cpp-python + the bundled SmolLM2 model).
#
#   docker build -t llmbridge:dev .
#   docker run --rm --stop-timeout=40 -p 50051:50051 llmbridge:dev   # embedded gguf backend
#
# --stop-timeout: on `docker stop` the server gets --shutdown_grace (30 s) for
# streams in flight plus up to 5 s to stop its sidecar; Docker's default of
# 10 s would SIGKILL it mid-drain. (`docker stop -t 40` does the same.)
#
# Two stages:
#   build    Debian 12 with the toolchain; scripts/setup (the README's install
#            script) installs the Debian packages, compiles llama-cpp-python,
#            creates .venv with the runtime extras only, and builds the
#            optimised server (bazel build --config=release), as scripts/run
#            does on a laptop.
#   runtime  Debian 12 slim with only the shared libraries the binary links,
#            Python 3.11 for the venv, and a non-root user (uid/gid 10001,
#            the runAsUser of k8s/).
# Needs BuildKit (the default builder since Docker 23) for the cache mount.

ARG DEBIAN_RELEASE=12

FROM debian:${DEBIAN_RELEASE} AS build
# The venv holds absolute paths (script shebangs, the editable sidecar
# install), so it is built in the directory it will live in at run time.
WORKDIR /opt/llmbridge
# llama.cpp tunes itself for the build machine by default (-march=native),
# which can crash with SIGILL on another node. GGML_NATIVE=OFF keeps the
# x86-64 AVX/AVX2/FMA/F16C kernels (any x86 server since about 2013) without
# tying the image to this CPU. scikit-build-core (llama-cpp-python's build
# backend) appends SKBUILD_CMAKE_ARGS to scripts/setup's CMAKE_ARGS.
# Build with --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON for one node type.
# (Do not pass SOURCE_DATE_EPOCH: ggml then turns all of AVX/AVX2/FMA off.)
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"
ENV SKBUILD_CMAKE_ARGS=${LLAMA_CMAKE_ARGS} \
    LLMBRIDGE_PY_EXTRAS=gguf \
    LLMBRIDGE_BUILD=release \
    DEBIAN_FRONTEND=noninteractive
COPY . .
# The llama-cpp-python wheel (15-25 minutes to compile) stays in a BuildKit
# cache mount, so rebuilding the image after a code change reuses it; one
# cache folder per LLAMA_CMAKE_ARGS, so a wheel built with other flags is
# never picked up. pip and setuptools leave the venv afterwards: nothing
# installs at run time.
RUN --mount=type=cache,target=/root/.cache/llmbridge \
    LLMBRIDGE_CACHE_DIR=/root/.cache/llmbridge/$(echo "$SKBUILD_CMAKE_ARGS" | sha256sum | cut -c1-12) \
    scripts/setup \
 && install -D -m 0755 bazel-release-bin/service/llmbridge /out/bin/llmbridge \
 && mkdir -p /out/sidecar \
 && cp -r sidecar/sidecar.py sidecar/llmbridge_sidecar /out/sidecar/ \
 && .venv/bin/python -m pip uninstall -q -y pip setuptools \
 && find /out /opt/llmbridge/.venv -name __pycache__ -prune -exec rm -rf {} + \
 && bazel shutdown

# llama-cpp-python's wheel also carries llama.cpp's CMake install tree
# (site-packages/lib and include: headers, CMake files and a second set of
# its libraries, which the package never loads: it loads llama_cpp/lib/),
# and, as wheels cannot hold symlinks, three identical copies of each library
# (libllama.so, .so.0, .so.0.5.0). Drop the tree; keep one copy, link the rest.
# Also dropped: the packages' own test suites (numpy's: 8 MB) and the debug
# sections some wheels ship (9 MB in all, when aiohttp was in the venv). Libraries
# that auditwheel vendored (*.libs/) are left alone: patchelf rewrote them.
RUN site=/opt/llmbridge/.venv/lib/python3.11/site-packages \
 && rm -rf "$site/lib" "$site/include" \
 && find "$site" -type d -name tests -prune -exec rm -rf {} + \
 && find "$site" -name '*.so*' -type f -not -path '*.libs/*' -exec strip --strip-debug {} + \
 && cd "$site/llama_cpp/lib" \
 && for so in lib*.so; do \
      real=$(ls -1 "$so".* | sort | tail -n 1); \
      for alias in "$so" "$so".*; do \
        [ "$alias" = "$real" ] || ! cmp -s "$alias" "$real" || ln -sf "$real" "$alias"; \
      done; \
    done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Only what the binary and the venv load: Debian 12's gRPC 1.51, protobuf
# 3.21, Abseil and prometheus-cpp (the binary links them dynamically; check
# with `ldd bazel-bin/service/llmbridge`), Python 3.11 (the venv's base
# interpreter) and libgomp (llama.cpp's OpenMP threads).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 libgrpc++1.51 libprotobuf32 libabsl20220623 libgomp1 ca-certificates \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 llmbridge \
 && useradd --system --uid 10001 --gid llmbridge --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin llmbridge
COPY --from=build /out/ /opt/llmbridge/
COPY --from=build /opt/llmbridge/.venv /opt/llmbridge/.venv
# The binary also finds the sidecar here when --sidecar is empty
# (service/sidecar_locator.cc: <bindir>/../share/llmbridge/sidecar/).
RUN mkdir -p /opt/llmbridge/share/llmbridge \
 && ln -s /opt/llmbridge/sidecar /opt/llmbridge/share/llmbridge/sidecar
# The root filesystem is read-only in k8s/: no .pyc files, logs unbuffered.
ENV PATH=/opt/llmbridge/.venv/bin:/opt/llmbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# 50051: gRPC (llmbridge.v1.LocalLLM, grpc.health.v1, reflection).
# 9090: Prometheus metrics (--metrics_listen).
EXPOSE 50051 9090
# The server drains on SIGTERM (Docker's default stop signal, stated here so
# it is not changed by accident); see --stop-timeout above.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/llmbridge/bin/llmbridge"]
# Defaults for `docker run`; k8s/ replaces them with its own args.
CMD ["--listen=0.0.0.0:50051", \
     "--python=/opt/llmbridge/.venv/bin/python", \
     "--sidecar=/opt/llmbridge/sidecar/sidecar.py"]
