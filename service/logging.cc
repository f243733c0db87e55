#include "service/logging.h"

#include <grpc/support/log.h>

#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/stubs/logging.h"
#include "rpc_bridge/async_stderr.h"

namespace llmbridge::service {
namespace {

void GrpcLog(gpr_log_func_args* args) {
  const char* level = args->severity == GPR_LOG_SEVERITY_ERROR  ? "error"
                      : args->severity == GPR_LOG_SEVERITY_INFO ? "info"
                                                                : "debug";
  LogEvent(level, "grpc",
           {{"message", args->message != nullptr ? args->message : ""},
            {"at", absl::StrFormat("%s:%d", args->file != nullptr ? args->file : "",
                                   args->line)}});
}

void ProtobufLog(google::protobuf::LogLevel severity, const char* file,
                 int line, const std::string& message) {
  const char* level = severity >= google::protobuf::LOGLEVEL_ERROR
                          ? "error"
                          : severity == google::protobuf::LOGLEVEL_WARNING
                                ? "warn"
                                : "info";
  LogEvent(level, "protobuf",
           {{"message", message}, {"at", absl::StrFormat("%s:%d", file, line)}});
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

}  // namespace

std::string FormatLogLine(const std::string& level, const std::string& event,
                          nlohmann::json fields, absl::Time now) {
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone())},
      {"level", level},
      {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields) {
  std::string line = FormatLogLine(level, event, std::move(fields), absl::Now());
  line.pop_back();  // the writer adds the '\n'
  rpc::StderrWriter().Write(std::move(line));
}

std::string FormatSidecarLogLine(int pid, std::string_view line, absl::Time now,
                                 nlohmann::json fields) {
  fields["pid"] = pid;
  fields["line"] = std::string(line);
  return FormatLogLine(SidecarLevel(line), "sidecar_log", std::move(fields), now);
}

void LogSidecarLine(int pid, std::string_view line, nlohmann::json fields) {
  std::string text = FormatSidecarLogLine(pid, line, absl::Now(), std::move(fields));
  text.pop_back();
  rpc::StderrWriter().Write(std::move(text));
}

void RouteLibraryLogs() {
  gpr_set_log_function(GrpcLog);
  google::protobuf::SetLogHandler(ProtobufLog);
}

void FlushLogs(std::chrono::milliseconds timeout) {
  rpc::StderrWriter().Flush(timeout);
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("%016x", rng());
}

}  // namespace llmbridge::service
