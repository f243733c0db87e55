#include "service/sidecar_locator.h"

#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace llmbridge::service {
namespace {

constexpr char kInRunfiles[] = "/llmbridge/sidecar/sidecar.py";

std::string SelfPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::string ShippedSidecarPath() {
  std::vector<std::string> candidates;
  if (const char* runfiles = std::getenv("RUNFILES_DIR")) {
    candidates.push_back(std::string(runfiles) + kInRunfiles);
  }
  std::string self = SelfPath();
  if (!self.empty()) {
    candidates.push_back(self + ".runfiles" + kInRunfiles);
    candidates.push_back(Dirname(self) +
                         "/../share/llmbridge/sidecar/sidecar.py");
  }
  for (const std::string& path : candidates) {
    if (::access(path.c_str(), R_OK) == 0) return path;
  }
  return "";
}

}  // namespace llmbridge::service
