// What `llmbridge --help` prints. Abseil's --help lists only the flags
// defined in a file named after the binary (llmbridge.cc), so by default it
// listed none of ours; this makes --help (and --helpshort) list every flag
// the server defines, with its default and meaning. --helpfull still adds
// Abseil's own flags (--flagfile, --fromenv, ...).
#ifndef LLMBRIDGE_SERVICE_HELP_H_
#define LLMBRIDGE_SERVICE_HELP_H_

#include <string_view>

namespace llmbridge::service {

// Call in main() before absl::ParseCommandLine.
void ConfigureFlagHelp();

// Whether a flag defined in `file` (its __FILE__) is one of the server's.
bool IsServerFlagFile(std::string_view file);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_HELP_H_
