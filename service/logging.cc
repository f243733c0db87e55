#include "service/logging.h"

#include <unistd.h>

#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace llmbridge::service {

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields) {
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                              absl::UTCTimeZone())},
      {"level", level},
      {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  std::string text = line.dump(-1, ' ', false,
                               nlohmann::json::error_handler_t::replace) +
                     "\n";
  (void)!::write(STDERR_FILENO, text.data(), text.size());
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("%016x", rng());
}

}  // namespace llmbridge::service
