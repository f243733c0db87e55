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
           {{"message", args->message},
            {"at", absl::StrFormat("%s:%d", args->file, args->line)}});
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

}  // namespace

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields) {
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                              absl::UTCTimeZone())},
      {"level", level},
      {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  rpc::StderrWriter().Write(line.dump(-1, ' ', false,
                                      nlohmann::json::error_handler_t::replace));
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
