#include "service/help.h"

#include "absl/flags/usage_config.h"

namespace llmbridge::service {

bool IsServerFlagFile(std::string_view file) {
  // Bazel compiles with paths relative to the workspace ("service/main.cc");
  // other builds may pass absolute ones.
  return file.substr(0, 8) == "service/" ||
         file.find("/service/") != std::string_view::npos;
}

void ConfigureFlagHelp() {
  absl::FlagsUsageConfig config;
  config.contains_helpshort_flags = [](absl::string_view file) {
    return IsServerFlagFile(std::string_view(file.data(), file.size()));
  };
  config.contains_help_flags = config.contains_helpshort_flags;
  config.contains_helppackage_flags = config.contains_helpshort_flags;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace llmbridge::service
