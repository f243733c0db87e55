// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-26T10:00:00.123Z","level":"info","event":"request_done",
//    "request_id":"4f2a...","method":"Complete","code":"OK","ms":812}
// Prompt and answer text never appear unless the operator asks for it
// (--log_prompts).
//
// Safe to call from any thread, and never blocks: lines go through
// rpc_bridge's AsyncLineWriter, so a stderr that nobody reads costs log
// lines (dropped and counted, see async_stderr.h), never requests.
#ifndef LLMBRIDGE_SERVICE_LOGGING_H_
#define LLMBRIDGE_SERVICE_LOGGING_H_

#include <chrono>
#include <string>

#include "nlohmann/json.hpp"

namespace llmbridge::service {

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields = nlohmann::json::object());

// Sends gRPC's and protobuf's own log messages (written straight to stderr
// by default, on whatever thread logs) through LogEvent. Call once, early.
void RouteLibraryLogs();

// At exit: waits up to `timeout` for queued lines to reach stderr.
void FlushLogs(std::chrono::milliseconds timeout = std::chrono::seconds(2));

// A new random request id (16 hex digits).
std::string NewRequestId();

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_LOGGING_H_
