// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-26T10:00:00.123Z","level":"info","event":"request_done",
//    "request_id":"4f2a...","method":"Complete","code":"OK","ms":812}
// Prompt and answer text never appear unless the operator asks for it
// (--log_prompts). Safe to call from any thread: each line is one write(2).
#ifndef LLMBRIDGE_SERVICE_LOGGING_H_
#define LLMBRIDGE_SERVICE_LOGGING_H_

#include <string>

#include "nlohmann/json.hpp"

namespace llmbridge::service {

void LogEvent(const std::string& level, const std::string& event,
              nlohmann::json fields = nlohmann::json::object());

// A new random request id (16 hex digits).
std::string NewRequestId();

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_LOGGING_H_
