#include "rpc_bridge/client.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/one_shot.h"
#include "rpc_bridge/status_mapping.h"

namespace llmbridge::rpc {

using Clock = std::chrono::steady_clock;

namespace {

absl::Status ProtocolError(const absl::Status& why) {
  // A malformed message from the sidecar is its fault, never the caller's:
  // not INVALID_ARGUMENT.
  return WithReason(absl::InternalError(absl::StrCat(
                        "the sidecar sent a malformed message: ", why.message())),
                    reason::kSidecarProtocolError);
}

absl::StatusOr<CompleteResult> DecodeResult(const Json& result) {
  try {
    return result.get<CompleteResult>();
  } catch (const Json::exception& e) {
    return ProtocolError(absl::InternalError(
        absl::StrCat("malformed complete result: ", e.what())));
  }
}

bool ReadBool(const Json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// One stream: text deltas go to the caller as they come; stream.done (or
// the response) ends it. Reached from the reader thread only, through the
// dispatcher, which serialises a call's handlers.
struct StreamState {
  StreamHandlers handlers;
  std::string content;
  bool ended = false;
};

NotificationOutcome OnStreamNotification(StreamState& state,
                                         const Notification& n) {
  if (n.method == kNotifyStreamToolCall || n.method == kNotifyStreamToolResult) {
    absl::StatusOr<ToolEvent> event = ParseToolEvent(n);
    if (!event.ok()) return absl::StatusOr<Json>(ProtocolError(event.status()));
    if (state.handlers.on_tool_event) state.handlers.on_tool_event(*event);
    return std::nullopt;
  }
  if (n.method == kNotifyStreamDone) {
    // The end of the stream: seed-style sidecars send no response after it,
    // and for ours the response repeats what the stream said.
    absl::StatusOr<StreamDoneParams> done = ParseStreamDone(n.params);
    if (!done.ok()) return absl::StatusOr<Json>(ProtocolError(done.status()));
    Json result{{"content", std::move(state.content)},
                {"model", done->model},
                {"finish_reason", done->finish_reason},
                {"raw_finish_reason", done->raw_finish_reason},
                {"usage", done->usage}};
    return absl::StatusOr<Json>(std::move(result));
  }
  if (n.method == kNotifyStreamError) {
    absl::StatusOr<StreamErrorParams> error = ParseStreamError(n.params);
    if (!error.ok()) return absl::StatusOr<Json>(ProtocolError(error.status()));
    Json data;
    if (auto it = n.params.find("data"); it != n.params.end()) data = *it;
    return absl::StatusOr<Json>(
        RpcErrorToStatus({error->code, error->message, std::move(data)}));
  }
  return std::nullopt;
}

Config FromOptions(std::initializer_list<Option> options) {
  Config config;
  for (const Option& option : options) option(config);
  return config;
}

}  // namespace

// Forwards pool events to the caller's observer and counts starts for
// on_sidecar_start.
class Client::StartCounter : public PoolObserver {
 public:
  StartCounter(PoolObserver* next, std::function<void(int)> on_start)
      : next_(next), on_start_(std::move(on_start)) {}

  void OnStateChanged() override {
    if (next_) next_->OnStateChanged();
  }
  void OnSidecarEvent(std::string_view event, const Json& fields) override {
    if (event == "sidecar_started" && on_start_) on_start_(++starts_);
    if (next_) next_->OnSidecarEvent(event, fields);
  }
  void OnSidecarStderr(int slot, pid_t pid, std::string_view line) override {
    if (next_) next_->OnSidecarStderr(slot, pid, line);
  }
  void OnProtocolError(int slot, const absl::Status& why,
                       std::string_view line_start) override {
    if (next_) next_->OnProtocolError(slot, why, line_start);
  }
  void OnLoad(int in_flight, int queued) override {
    if (next_) next_->OnLoad(in_flight, queued);
  }
  void OnAdmitted(std::chrono::steady_clock::duration wait) override {
    if (next_) next_->OnAdmitted(wait);
  }
  void OnRejected() override {
    if (next_) next_->OnRejected();
  }

 private:
  PoolObserver* const next_;
  const std::function<void(int)> on_start_;
  std::atomic<int> starts_{0};
};

Option WithBackend(std::string v) {
  return [v](Config& c) { c.backend = v; };
}
Option WithHost(std::string v) {
  return [v](Config& c) { c.host = v; };
}
Option WithModel(std::string v) {
  return [v](Config& c) { c.model = v; };
}
Option WithPythonPath(std::string v) {
  return [v](Config& c) { c.python_path = v; };
}
Option WithSidecarPath(std::string v) {
  return [v](Config& c) { c.sidecar_path = v; };
}
Option WithStartupTimeout(std::chrono::milliseconds v) {
  return [v](Config& c) { c.startup_timeout = v; };
}
Option WithRequestTimeout(std::chrono::milliseconds v) {
  return [v](Config& c) { c.request_timeout = v; };
}
Option WithWorkDir(std::string v) {
  return [v](Config& c) { c.work_dir = v; };
}
Option WithEnv(std::map<std::string, std::string> v) {
  return [v](Config& c) { c.env = v; };
}
Option WithMCPServers(std::map<std::string, MCPServerConfig> v) {
  return [v](Config& c) { c.mcp_servers = v; };
}

Client::Client(Config config, ClientOptions options)
    : config_(WithDefaults(std::move(config))),
      config_status_(Validate(config_)),
      options_(std::move(options)),
      start_counter_(std::make_unique<StartCounter>(options_.pool.observer,
                                                    options_.on_sidecar_start)) {
  PoolOptions pool = options_.pool;
  pool.sidecar.config = config_;
  if (pool.queue_timeout.count() <= 0) {
    pool.queue_timeout = config_.startup_timeout + std::chrono::seconds(30);
  }
  // An invalid config never starts anything: every call reports it.
  pool.preload = pool.preload && config_status_.ok();
  pool.observer = start_counter_.get();
  pool_ = std::make_unique<SidecarPool>(std::move(pool));
}

Client::Client(std::initializer_list<Option> options)
    : Client(FromOptions(options)) {}

Client::~Client() {
  pool_->Shutdown();
  pool_.reset();
}

absl::Status Client::EnsureStarted() {
  if (!config_status_.ok()) return config_status_;
  return pool_->WaitReady(config_.startup_timeout + std::chrono::seconds(5));
}

PoolCallRequest Client::AdmittedRequest(const std::string& method, Json params,
                                        const CallOptions& call) const {
  PoolCallRequest request;
  request.method = method;
  request.params = std::move(params);
  request.admission = true;
  request.deadline = call.deadline.value_or(Clock::now() + config_.request_timeout);
  request.send_timeout = true;
  return request;
}

PoolCallRequest Client::CompleteRequest(CompleteParams params, bool stream,
                                        const CallOptions& call) const {
  params.stream = stream;
  params.timeout_s.reset();  // set from the deadline when it is sent
  PoolCallRequest request = AdmittedRequest(kMethodComplete, params, call);
  // The stream carries the text and stream.done ends the call here, so the
  // response after it need not repeat the whole answer (the sidecar would
  // encode it and the reader parse it, only for it to be dropped).
  if (stream) request.params["result_content"] = false;
  return request;
}

absl::StatusOr<CompleteResult> Client::Complete(CompleteParams params,
                                                CallOptions call) {
  if (!config_status_.ok()) return config_status_;
  auto reply = OneShot<absl::StatusOr<Json>>::Make();
  PoolCallRequest request = CompleteRequest(std::move(params), false, call);
  request.handlers.on_reply = OneShot<absl::StatusOr<Json>>::Setter(reply);
  pool_->Submit(std::move(request));
  // The pool's deadline timer ends the call; no timeout needed here.
  absl::StatusOr<Json> result = reply->Wait();
  if (!result.ok()) return result.status();
  return DecodeResult(*result);
}

StreamHandle Client::Stream(CompleteParams params, StreamHandlers handlers,
                            CallOptions call) {
  if (!config_status_.ok()) {
    std::move(handlers.on_done).Finish(config_status_);
    return StreamHandle();
  }
  auto state = std::make_shared<StreamState>();
  state->handlers = std::move(handlers);
  PoolCallRequest request = CompleteRequest(std::move(params), true, call);
  request.handlers.on_chunk = [state](std::string text) {
    if (text.empty()) return;
    if (state->handlers.collect_content) state->content += text;
    if (state->handlers.on_chunk) state->handlers.on_chunk(text);
  };
  request.handlers.on_notification = [state](const Notification& n) {
    return OnStreamNotification(*state, n);
  };
  request.handlers.on_reply = [state](absl::StatusOr<Json> reply) {
    // Runs once (it is a Reply), possibly on another thread than the
    // chunks, but never concurrently with them.
    Reply<CompleteResult> on_done = std::move(state->handlers.on_done);
    state->handlers = StreamHandlers();
    std::move(on_done).Finish(reply.ok() ? DecodeResult(*reply)
                                         : absl::StatusOr<CompleteResult>(reply.status()));
  };
  return StreamHandle(pool_->Submit(std::move(request)));
}

StreamHandle Client::CallAsync(const std::string& method, Json params,
                               std::chrono::milliseconds timeout,
                               Reply<Json> on_reply,
                               bool only_if_ready) {
  if (!config_status_.ok()) {
    std::move(on_reply).Finish(config_status_);
    return StreamHandle();
  }
  PoolCallRequest request;
  request.method = method;
  request.params = std::move(params);
  request.admission = false;
  request.only_if_ready = only_if_ready;
  request.deadline = Clock::now() + timeout;
  request.handlers.on_reply = std::move(on_reply);
  return StreamHandle(pool_->Submit(std::move(request)));
}

StreamHandle Client::CallAdmitted(
    const std::string& method, Json params,
    Reply<Json> on_reply, CallOptions call) {
  if (!config_status_.ok()) {
    std::move(on_reply).Finish(config_status_);
    return StreamHandle();
  }
  PoolCallRequest request = AdmittedRequest(method, std::move(params), call);
  request.handlers.on_reply = std::move(on_reply);
  return StreamHandle(pool_->Submit(std::move(request)));
}

absl::StatusOr<Json> Client::Call(const std::string& method, Json params,
                                  std::chrono::milliseconds timeout) {
  auto reply = OneShot<absl::StatusOr<Json>>::Make();
  CallAsync(method, std::move(params), timeout,
            OneShot<absl::StatusOr<Json>>::Setter(reply));
  return reply->Wait();
}

Capabilities Client::GetCapabilities() const {
  Capabilities caps;
  PoolStatus status = pool_->Status();
  if (!status.init.has_value()) return caps;
  const Json& c = status.init->capabilities;
  if (!c.is_object()) return caps;
  // The sidecar's bytes are untrusted: every field is type-checked.
  caps.streaming = ReadBool(c, "streaming", caps.streaming);
  caps.tools = ReadBool(c, "tools", caps.tools);
  caps.mcp = ReadBool(c, "mcp", caps.mcp);
  caps.sessions = ReadBool(c, "sessions", caps.sessions);
  caps.images = ReadBool(c, "images", caps.images);
  if (auto it = c.find("native_tools"); it != c.end() && it->is_array()) {
    for (const Json& t : *it) {
      if (t.is_string()) caps.native_tools.push_back(t.get<std::string>());
    }
  }
  return caps;
}

bool Client::IsRunning() const { return pool_->Status().AnyReady(); }

pid_t Client::SidecarPid() const {
  for (const SlotStatus& slot : pool_->Status().slots) {
    if (slot.state == SlotState::kReady) return slot.pid;
  }
  return -1;
}

int Client::StartCount() const { return pool_->Status().starts; }

absl::Status Client::Restart() {
  pool_->Unload();
  return EnsureStarted();
}

void Client::Close() { pool_->Unload(); }

}  // namespace llmbridge::rpc
