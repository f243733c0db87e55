// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-26T10:00:00.123Z","level":"info","event":"request_done",
//    "request_id":"4f2a...","method":"Complete","code":"OK","ms":812}
// Everything the server writes goes through here, the lines of its sidecar
// and gRPC's own log included, so a log collector can parse every line.
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
#include <string_view>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace llmbridge::service {

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields = nlohmann::json::object());

// The line LogEvent writes (with its '\n'). Bytes that are not UTF-8 (a
// child's output can hold anything) become U+FFFD instead of failing.
std::string FormatLogLine(const std::string& level, const std::string& event,
                          nlohmann::json fields, absl::Time now);

// One line that the sidecar (pid), or a program it runs such as an MCP
// server or llama.cpp, wrote to its stderr, as the event
//   {"event":"sidecar_log","level":"warn","pid":4242,"line":"...", ...fields}
// with the line unchanged. The level is read from the sidecar's Python
// logging format ("... sidecar[PID] WARNING name: message"); other lines
// are "info".
void LogSidecarLine(int pid, std::string_view line,
                    nlohmann::json fields = nlohmann::json::object());
std::string FormatSidecarLogLine(int pid, std::string_view line, absl::Time now,
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
