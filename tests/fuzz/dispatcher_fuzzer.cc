// Fuzzes rpc_bridge::Dispatcher with arbitrary sequences of calls, cancels
// and sidecar messages, through a fake Transport (no process, no threads).
// The sidecar's messages name pending calls, finished ones and made-up ids,
// so replies collide with live calls, arrive twice, or arrive late.
//
// Invariants: every call gets exactly one reply by the time the sidecar's
// output closes, never two, and nothing reaches a call after its reply;
// pending_count() is the number of calls still waiting.
//
// Lines are fed the way the stdio transport feeds them: ParseLine, then
// OnMessage or OnBadLine with the call the line names. The findings of the
// first long runs (corpus/dispatcher/known-*: ScanId's overflow, an
// exception out of ParseIncoming on a non-string "jsonrpc") stay in the
// corpus as regression seeds.
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/dispatcher.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

using namespace llmbridge::rpc;  // NOLINT: a harness, not a library
using llmbridge::fuzz::FuzzInput;

class FakeTransport : public Transport {
 public:
  absl::Status Send(std::string_view line) override {
    if (line.find('\n') != std::string::npos) __builtin_trap();
    return broken ? absl::UnavailableError("pipe broken") : absl::OkStatus();
  }
  void CloseSend() override {}
  bool broken = false;
};

struct CallRecord {
  int64_t id = 0;
  int replies = 0;
};

class Harness {
 public:
  explicit Harness(FuzzInput& in) : in_(in) {
    dispatcher_.set_transport(&transport_);
  }

  void Run() {
    for (int steps = 0; steps < 64 && !in_.empty(); ++steps) Step();
    dispatcher_.OnClosed(absl::OutOfRangeError("end of stream"));
    for (const auto& call : calls_) {
      if (call->replies != 1) __builtin_trap();
    }
    if (dispatcher_.pending_count() != 0) __builtin_trap();
    // A call after the close is answered at once.
    auto late = NewCall();
    if (late->replies != 1) __builtin_trap();
  }

 private:
  std::shared_ptr<CallRecord> NewCall() {
    auto record = std::make_shared<CallRecord>();
    calls_.push_back(record);
    CallHandlers handlers;
    handlers.on_notification =
        [record](const Notification& n) -> NotificationOutcome {
      if (record->replies != 0) __builtin_trap();  // after its reply
      if (n.method == kNotifyStreamDone) return absl::StatusOr<Json>(Json());
      if (n.method == kNotifyStreamError) {
        return absl::StatusOr<Json>(absl::InternalError("stream.error"));
      }
      return std::nullopt;
    };
    handlers.on_chunk = [record](std::string) {
      if (record->replies != 0) __builtin_trap();  // after its reply
    };
    handlers.on_reply = [record](absl::StatusOr<Json>) {
      if (++record->replies > 1) __builtin_trap();
    };
    record->id = dispatcher_.Call(kMethodComplete, Json::object(), std::move(handlers));
    return record;
  }

  // An id that collides with a live call, a finished one, or none.
  int64_t PickId() {
    switch (in_.Below(4)) {
      case 0:
      case 1:
        if (!calls_.empty()) return calls_[in_.Below(calls_.size())]->id;
        return 1;
      case 2: {
        int64_t id = 0;
        std::string raw = in_.Bytes(8);
        std::memcpy(&id, raw.data(), raw.size());
        return id;
      }
      default:
        return static_cast<int64_t>(in_.Below(8)) - 2;
    }
  }

  // Feeds one line the way the stdio transport does.
  void Receive(const std::string& line) {
    if (line.empty()) return;
    ParsedLine parsed = ParseLine(line);
    if (!parsed.message.has_value()) {
      dispatcher_.OnBadLine(absl::InternalError(parsed.problem), parsed.call_id,
                            std::string_view(line).substr(0, 200));
      return;
    }
    dispatcher_.OnMessage(*std::move(parsed.message));
  }

  void Step() {
    static const char* const kNotifications[] = {
        kNotifyStreamChunk, kNotifyStreamDone, kNotifyStreamError,
        kNotifyStreamToolCall, "stream.unknown", "log"};
    switch (in_.Below(9)) {
      case 0:
        NewCall();
        break;
      case 1:
        dispatcher_.Cancel(PickId(), absl::CancelledError("cancelled"));
        break;
      case 2:
        Receive(Json{{"jsonrpc", "2.0"},
                     {"id", PickId()},
                     {"result", {{"content", in_.Bytes(8)}}}}
                    .dump(-1, ' ', false, Json::error_handler_t::replace));
        break;
      case 3:
        Receive(Json{{"jsonrpc", "2.0"},
                     {"id", PickId()},
                     {"error", {{"code", -32000 - int(in_.Below(900))},
                                {"message", "m"}}}}
                    .dump());
        break;
      case 4: {
        Json params = Json::object();
        if (in_.Below(4) != 0) params["request_id"] = PickId();
        params["content"] = "x";
        Receive(Json{{"jsonrpc", "2.0"},
                     {"method", kNotifications[in_.Below(6)]},
                     {"params", params}}
                    .dump());
        break;
      }
      case 5:
        Receive(in_.Until('\n'));  // any bytes at all
        break;
      case 6: {
        // An over-long line: only its first bytes are seen.
        std::string prefix =
            absl::StrCat(in_.Below(2) ? "{\"id\": " : "{\"request_id\":",
                         in_.Until('\n'));
        std::optional<int64_t> id = ScanIntegerField(prefix, "\"request_id\"");
        if (!id.has_value()) id = ScanIntegerField(prefix, "\"id\"");
        dispatcher_.OnBadLine(absl::ResourceExhaustedError("line too long"),
                              id, prefix);
        break;
      }
      case 7:
        dispatcher_.set_stream_request_id(in_.Below(2) == 0);
        transport_.broken = in_.Below(4) == 0;
        break;
      default:
        if (in_.Below(8) == 0) dispatcher_.FailAll(absl::InternalError("all"));
        break;
    }
    size_t waiting = 0;
    for (const auto& call : calls_) waiting += call->replies == 0 ? 1 : 0;
    if (dispatcher_.pending_count() != waiting) __builtin_trap();
  }

  FuzzInput& in_;
  FakeTransport transport_;
  Dispatcher dispatcher_;
  std::vector<std::shared_ptr<CallRecord>> calls_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  Harness(in).Run();
  return 0;
}
