"""llmbridge_fuzzer: one libFuzzer target per parser of untrusted bytes.

With --config=fuzz (clang, see .bazelrc) the target links libFuzzer's
main; in every other build it links replay_main.cc instead, which runs the
inputs named on its command line. So `bazel build //...` keeps each harness
compiling against the code it fuzzes, without clang.
"""

load("@rules_cc//cc:defs.bzl", "cc_binary")

def llmbridge_fuzzer(name, srcs, deps):
    cc_binary(
        name = name,
        srcs = srcs,
        linkopts = select({
            "//tests/fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = deps + ["//tests/fuzz:fuzz_input"] + select({
            "//tests/fuzz:libfuzzer": [],
            "//conditions:default": ["//tests/fuzz:replay_main"],
        }),
    )
