#include "rpc_bridge/client.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {
namespace {

absl::StatusOr<CompleteResult> DecodeResult(const Json& result) {
  try {
    return result.get<CompleteResult>();
  } catch (const Json::exception& e) {
    return absl::InternalError(
        absl::StrCat("malformed complete result from the sidecar: ", e.what()));
  }
}

// State of one stream on the reader thread: stream.done may carry the usage
// while the final response carries the text.
struct StreamState {
  StreamHandlers handlers;
  std::optional<StreamDoneParams> done;
};

}  // namespace

void StreamHandle::Cancel(const absl::Status& why) const {
  if (std::shared_ptr<Sidecar> sidecar = sidecar_.lock()) {
    sidecar->dispatcher().Cancel(id_, why);
  }
}

Client::Client(Config config) : config_(WithDefaults(std::move(config))) {}

Client::~Client() { Close(); }

absl::StatusOr<std::shared_ptr<Sidecar>> Client::Running() {
  std::lock_guard<std::mutex> lock(mu_);
  if (sidecar_ != nullptr && sidecar_->IsRunning()) return sidecar_;
  if (absl::Status valid = Validate(config_); !valid.ok()) return valid;
  // A sidecar that exited is replaced: the next request restarts it.
  sidecar_.reset();
  SidecarOptions options;
  options.config = config_;
  absl::StatusOr<std::unique_ptr<Sidecar>> started =
      Sidecar::Start(std::move(options));
  if (!started.ok()) return started.status();
  sidecar_ = std::shared_ptr<Sidecar>(*std::move(started));
  return sidecar_;
}

absl::Status Client::EnsureStarted() { return Running().status(); }

absl::StatusOr<CompleteResult> Client::Complete(CompleteParams params) {
  absl::StatusOr<std::shared_ptr<Sidecar>> sidecar = Running();
  if (!sidecar.ok()) return sidecar.status();
  params.stream = false;
  absl::StatusOr<Json> reply =
      CallAndWait((*sidecar)->dispatcher(), kMethodComplete, params,
                  config_.request_timeout);
  if (!reply.ok()) return reply.status();
  return DecodeResult(*reply);
}

absl::StatusOr<StreamHandle> Client::Stream(CompleteParams params,
                                            StreamHandlers handlers) {
  absl::StatusOr<std::shared_ptr<Sidecar>> sidecar = Running();
  if (!sidecar.ok()) return sidecar.status();
  params.stream = true;
  auto state = std::make_shared<StreamState>();
  state->handlers = std::move(handlers);
  CallHandlers call;
  call.on_notification = [state](const Notification& n) {
    if (n.method == kNotifyStreamChunk) {
      absl::StatusOr<StreamChunkParams> chunk = ParseStreamChunk(n.params);
      if (chunk.ok() && !chunk->content.empty() && state->handlers.on_chunk) {
        state->handlers.on_chunk(chunk->content);
      }
    } else if (n.method == kNotifyStreamDone) {
      absl::StatusOr<StreamDoneParams> done = ParseStreamDone(n.params);
      if (done.ok()) state->done = *std::move(done);
    }
  };
  call.on_reply = [state](absl::StatusOr<Json> reply) {
    if (!state->handlers.on_done) return;
    if (!reply.ok()) {
      state->handlers.on_done(reply.status());
      return;
    }
    absl::StatusOr<CompleteResult> result = DecodeResult(*reply);
    if (result.ok() && state->done.has_value()) {
      // stream.done is authoritative for the summary when present.
      const StreamDoneParams& done = *state->done;
      if (done.usage.total_tokens > 0) result->usage = done.usage;
      if (!done.finish_reason.empty()) result->finish_reason = done.finish_reason;
      if (!done.model.empty()) result->model = done.model;
    }
    state->handlers.on_done(std::move(result));
  };
  int64_t id = (*sidecar)->dispatcher().Call(kMethodComplete, params,
                                             std::move(call));
  return StreamHandle(*sidecar, id);
}

Capabilities Client::GetCapabilities() const {
  Capabilities caps;
  std::lock_guard<std::mutex> lock(mu_);
  if (sidecar_ == nullptr) return caps;
  const Json& c = sidecar_->init_result().capabilities;
  if (!c.is_object()) return caps;
  caps.streaming = c.value("streaming", caps.streaming);
  caps.tools = c.value("tools", caps.tools);
  caps.mcp = c.value("mcp", caps.mcp);
  caps.sessions = c.value("sessions", caps.sessions);
  caps.images = c.value("images", caps.images);
  if (c.contains("native_tools") && c["native_tools"].is_array()) {
    for (const Json& t : c["native_tools"]) {
      if (t.is_string()) caps.native_tools.push_back(t.get<std::string>());
    }
  }
  return caps;
}

void Client::Close() {
  std::shared_ptr<Sidecar> sidecar;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sidecar.swap(sidecar_);
  }
  if (sidecar != nullptr) sidecar->Stop();
}

}  // namespace llmbridge::rpc
