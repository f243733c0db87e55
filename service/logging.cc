#include "service/logging.h"

#include <unistd.h>

#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpc/support/log.h"

namespace llmbridge::service {
namespace {

void WriteLine(const std::string& text) {
  (void)!::write(STDERR_FILENO, text.data(), text.size());
}

// Python's logging level names, as the sidecar's format writes them after
// "sidecar[PID] ", mapped to ours.
std::string SidecarLevel(std::string_view line) {
  size_t at = line.find("sidecar[");
  if (at == std::string_view::npos) return "info";
  line.remove_prefix(at);
  at = line.find("] ");
  if (at == std::string_view::npos) return "info";
  line.remove_prefix(at + 2);
  struct Level {
    std::string_view python;
    const char* ours;
  };
  for (const Level& level : {Level{"DEBUG ", "debug"}, Level{"INFO ", "info"},
                             Level{"WARNING ", "warn"}, Level{"ERROR ", "error"},
                             Level{"CRITICAL ", "error"}}) {
    if (line.substr(0, level.python.size()) == level.python) return level.ours;
  }
  return "info";
}

void GrpcLogToJson(gpr_log_func_args* args) {
  const char* level = args->severity == GPR_LOG_SEVERITY_ERROR  ? "error"
                      : args->severity == GPR_LOG_SEVERITY_INFO ? "info"
                                                                : "debug";
  LogEvent(level, "grpc_log",
           {{"message", args->message != nullptr ? args->message : ""},
            {"file", args->file != nullptr ? args->file : ""},
            {"line", args->line}});
}

}  // namespace

std::string FormatLogLine(const std::string& level, const std::string& event,
                          nlohmann::json fields, absl::Time now) {
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone())},
      {"level", level},
      {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields) {
  WriteLine(FormatLogLine(level, event, std::move(fields), absl::Now()));
}

std::string FormatSidecarLogLine(int pid, std::string_view line, absl::Time now) {
  return FormatLogLine(SidecarLevel(line), "sidecar_log",
                       {{"pid", pid}, {"line", std::string(line)}}, now);
}

void LogSidecarLine(int pid, std::string_view line) {
  WriteLine(FormatSidecarLogLine(pid, line, absl::Now()));
}

void RouteGrpcLogsToJson() { gpr_set_log_function(&GrpcLogToJson); }

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("%016x", rng());
}

}  // namespace llmbridge::service
