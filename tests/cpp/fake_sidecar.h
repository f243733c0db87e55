// The purpose-built misbehaving sidecar of the real-process tests
// (testdata/fake_sidecar.py; its docstring lists the modes), and the config
// that runs it.
#ifndef LLMBRIDGE_TESTS_CPP_FAKE_SIDECAR_H_
#define LLMBRIDGE_TESTS_CPP_FAKE_SIDECAR_H_

#include <dirent.h>
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc::testing {

// Only bounds a broken test: nothing waits this long when the code works.
inline constexpr std::chrono::milliseconds kWait = std::chrono::seconds(30);

inline std::string FakeSidecarPath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir ? srcdir : ".",
                      "/llmbridge/tests/cpp/testdata/fake_sidecar.py");
}

// The fake in `mode`, with extra environment variables for it.
inline Config FakeConfig(const std::string& mode,
                         std::map<std::string, std::string> env = {}) {
  Config c;
  c.backend = kBackendOllama;
  c.model = "fake";
  c.python_path = "/usr/bin/python3";
  c.sidecar_path = FakeSidecarPath();
  c.env = std::move(env);
  c.env["FAKE_SIDECAR_MODE"] = mode;
  c.startup_timeout = std::chrono::seconds(10);
  c.request_timeout = std::chrono::seconds(60);
  return c;
}

inline CompleteParams Ask(const std::string& text) {
  CompleteParams p;
  p.messages = {{"user", text, ""}};
  return p;
}

// Entries of a /proc directory (fds, threads), to compare before and after.
inline int CountEntries(const char* dir) {
  int n = 0;
  DIR* d = ::opendir(dir);
  if (d == nullptr) return -1;
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

// A zombie counts as alive: it was not reaped.
inline bool ProcessGone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

}  // namespace llmbridge::rpc::testing

#endif  // LLMBRIDGE_TESTS_CPP_FAKE_SIDECAR_H_
