#include "rpc_bridge/client.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/status_mapping.h"

namespace llmbridge::rpc {

using Clock = std::chrono::steady_clock;

// Runs callbacks at given times on one thread: the deadlines of all calls.
// Schedule/Cancel never block on a running callback.
class Scheduler {
 public:
  Scheduler() : thread_([this] { Loop(); }) {}
  ~Scheduler() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  uint64_t Schedule(Clock::time_point at, std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t token = ++next_token_;
    timers_.emplace(std::make_pair(at, token), std::move(fn));
    cv_.notify_all();
    return token;
  }

  void Cancel(uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == token) {
        timers_.erase(it);
        return;
      }
    }
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      if (timers_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto first = timers_.begin();
      // A copy: the node may be erased while we wait unlocked.
      const Clock::time_point due = first->first.first;
      if (Clock::now() < due) {
        cv_.wait_until(lock, due);
        continue;
      }
      std::function<void()> fn = std::move(first->second);
      timers_.erase(first);
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<Clock::time_point, uint64_t>, std::function<void()>>
      timers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// One stream, from Stream() to on_done. Handlers reach it from the reader
// thread (through the dispatcher, which serialises them), from Cancel and
// from the deadline timer; `finished` makes on_done run once.
class StreamCall {
 public:
  CompleteParams params;
  bool legacy = false;  // a seed-style sidecar: the client queues these

  // Ends the stream once; returns false if it had ended already.
  bool Finish(absl::StatusOr<CompleteResult> result) {
    std::function<void(absl::StatusOr<CompleteResult>)> on_done;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (finished) return false;
      finished = true;
      on_done = std::move(handlers.on_done);
      handlers.on_chunk = nullptr;
      handlers.on_tool_event = nullptr;
    }
    if (on_done) on_done(std::move(result));
    return true;
  }

  std::mutex mu;
  StreamHandlers handlers ABSL_GUARDED_BY(mu);
  bool finished ABSL_GUARDED_BY(mu) = false;
  int64_t id ABSL_GUARDED_BY(mu) = 0;  // 0 while queued
  std::weak_ptr<Sidecar> sidecar ABSL_GUARDED_BY(mu);
  uint64_t timer ABSL_GUARDED_BY(mu) = 0;
  // Assembled on the reader thread.
  std::string content;
};

namespace {

absl::StatusOr<CompleteResult> DecodeResult(const Json& result) {
  try {
    return result.get<CompleteResult>();
  } catch (const Json::exception& e) {
    return absl::InternalError(
        absl::StrCat("malformed complete result from the sidecar: ", e.what()));
  }
}

std::chrono::milliseconds Millis(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

// Handles one stream notification; a non-empty outcome ends the call.
NotificationOutcome OnStreamNotification(StreamCall& call,
                                         const Notification& n) {
  if (n.method == kNotifyStreamChunk) {
    absl::StatusOr<StreamChunkParams> chunk = ParseStreamChunk(n.params);
    if (!chunk.ok()) return absl::StatusOr<Json>(chunk.status());
    if (chunk->content.empty()) return std::nullopt;
    call.content += chunk->content;
    std::function<void(const std::string&)> on_chunk;
    {
      std::lock_guard<std::mutex> lock(call.mu);
      on_chunk = call.handlers.on_chunk;
    }
    if (on_chunk) on_chunk(chunk->content);
    return std::nullopt;
  }
  if (n.method == kNotifyStreamToolCall || n.method == kNotifyStreamToolResult) {
    absl::StatusOr<ToolEvent> event = ParseToolEvent(n);
    if (!event.ok()) return absl::StatusOr<Json>(event.status());
    std::function<void(const ToolEvent&)> on_tool_event;
    {
      std::lock_guard<std::mutex> lock(call.mu);
      on_tool_event = call.handlers.on_tool_event;
    }
    if (on_tool_event) on_tool_event(*event);
    return std::nullopt;
  }
  if (n.method == kNotifyStreamDone) {
    // The end of the stream: seed-style sidecars send no response after it,
    // and for ours the response repeats what the stream said.
    absl::StatusOr<StreamDoneParams> done = ParseStreamDone(n.params);
    if (!done.ok()) return absl::StatusOr<Json>(done.status());
    Json result{{"content", call.content},
                {"model", done->model},
                {"finish_reason", done->finish_reason},
                {"usage", done->usage}};
    return absl::StatusOr<Json>(std::move(result));
  }
  if (n.method == kNotifyStreamError) {
    absl::StatusOr<StreamErrorParams> error = ParseStreamError(n.params);
    if (!error.ok()) return absl::StatusOr<Json>(error.status());
    return absl::StatusOr<Json>(RpcErrorToStatus(
        {error->code, error->message, n.params.value("data", Json())}));
  }
  return std::nullopt;
}

}  // namespace

void StreamHandle::Cancel(const absl::Status& why) const {
  if (call_ == nullptr) return;
  int64_t id;
  std::shared_ptr<Sidecar> sidecar;
  {
    std::lock_guard<std::mutex> lock(call_->mu);
    if (call_->finished) return;
    id = call_->id;
    sidecar = call_->sidecar.lock();
  }
  // Started: the dispatcher tells the sidecar and replies `why`, which runs
  // on_done. Queued, or the sidecar is gone: end it here.
  if (id != 0 && sidecar != nullptr) sidecar->dispatcher().Cancel(id, why);
  call_->Finish(why);
}

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

namespace {
Config FromOptions(std::initializer_list<Option> options) {
  Config config;
  for (const Option& option : options) option(config);
  return config;
}
}  // namespace

Client::Client(Config config, ClientOptions options)
    : config_(WithDefaults(std::move(config))),
      options_(options),
      scheduler_(std::make_unique<Scheduler>()) {}

Client::Client(std::initializer_list<Option> options)
    : Client(FromOptions(options)) {}

Client::~Client() {
  Close();
  scheduler_.reset();
}

absl::StatusOr<std::shared_ptr<Sidecar>> Client::Running() {
  std::shared_ptr<Sidecar> exited;  // destroyed outside mu_ (joins threads)
  std::unique_lock<std::mutex> lock(mu_);
  if (sidecar_ != nullptr && sidecar_->IsRunning()) return sidecar_;
  if (absl::Status valid = Validate(config_); !valid.ok()) return valid;
  const RestartPolicy& policy = options_.restart;
  if (sidecar_ != nullptr) {
    // It exited since the last request: count it, for the backoff.
    std::optional<ExitInfo> exit = sidecar_->ExitError();
    RecordFailureLocked(
        absl::UnavailableError(absl::StrCat(
            "the sidecar ", exit ? exit->Describe() : "stopped")),
        Clock::now() - started_at_ < policy.quick_failure);
    exited = std::move(sidecar_);
  }
  if (quick_failures_ >= policy.max_quick_failures) {
    if (Clock::now() < next_start_) {
      return WithReason(absl::UnavailableError(absl::StrCat(
          "the sidecar failed ", quick_failures_,
          " times in a row right after starting; last failure: ",
          last_failure_.message(),
          ". Fix the cause (see the sidecar's stderr in the server log); "
          "starts resume in ",
          Millis(next_start_ - Clock::now()).count(), " ms")),
          reason::kSidecarUnavailable);
    }
    quick_failures_ = policy.max_quick_failures - 1;  // one more try
  }
  if (Clock::now() < next_start_) {
    // Back off before starting again; other requests wait here too.
    std::this_thread::sleep_until(next_start_);
  }
  SidecarOptions options;
  options.config = config_;
  options.max_line_bytes = options_.max_line_bytes;
  options.write_timeout = options_.write_timeout;
  options.stop_grace = options_.stop_grace;
  ++starts_;
  started_at_ = Clock::now();
  absl::StatusOr<std::unique_ptr<Sidecar>> started =
      Sidecar::Start(std::move(options));
  if (!started.ok()) {
    RecordFailureLocked(started.status(), /*quick=*/true);
    return started.status();
  }
  sidecar_ = std::shared_ptr<Sidecar>(*std::move(started));
  if (options_.on_sidecar_start) options_.on_sidecar_start(starts_);
  return sidecar_;
}

absl::StatusOr<Json> Client::Call(const std::string& method, Json params,
                                  std::chrono::milliseconds timeout) {
  absl::StatusOr<std::shared_ptr<Sidecar>> sidecar = Running();
  if (!sidecar.ok()) return sidecar.status();
  return CallAndWait((*sidecar)->dispatcher(), method, std::move(params),
                     timeout);
}

void Client::RecordFailureLocked(absl::Status why, bool quick) {
  const RestartPolicy& policy = options_.restart;
  last_failure_ = std::move(why);
  quick_failures_ = quick ? quick_failures_ + 1 : 0;
  if (quick_failures_ >= policy.max_quick_failures) {
    // Crash-looping: stop trying for a while, with a clear error.
    next_start_ = Clock::now() + policy.cool_down;
  } else if (quick_failures_ > 1) {
    // The first restart is immediate; then 1x, 2x, 4x ... the initial delay.
    next_start_ = Clock::now() +
                  std::min<std::chrono::milliseconds>(
                      policy.initial_backoff *
                          (1 << std::min(quick_failures_ - 2, 16)),
                      policy.max_backoff);
  }
}

absl::Status Client::EnsureStarted() { return Running().status(); }

absl::StatusOr<CompleteResult> Client::Complete(CompleteParams params,
                                                CallOptions call) {
  absl::StatusOr<std::shared_ptr<Sidecar>> sidecar = Running();
  if (!sidecar.ok()) return sidecar.status();
  params.stream = false;
  Clock::time_point deadline =
      call.deadline.value_or(Clock::now() + config_.request_timeout);
  auto timeout = std::max(Millis(deadline - Clock::now()),
                          std::chrono::milliseconds(0));
  params.timeout_s = static_cast<double>(timeout.count()) / 1000.0;
  absl::StatusOr<Json> reply = CallAndWait((*sidecar)->dispatcher(),
                                           kMethodComplete, params, timeout);
  if (!reply.ok()) return reply.status();
  return DecodeResult(*reply);
}

void Client::StartQueued(std::shared_ptr<StreamCall> call) {
  // Only called with a running sidecar at hand, never on a path that could
  // start or destroy one: it runs on the reader thread.
  std::shared_ptr<Sidecar> sidecar;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    sidecar = call->sidecar.lock();
  }
  if (sidecar == nullptr || !sidecar->IsRunning()) {
    call->Finish(WithReason(
        absl::UnavailableError(
            "the sidecar stopped before this queued stream could start; retry"),
        reason::kSidecarExited));
    if (call->legacy) OnLegacyStreamDone();
    return;
  }
  std::weak_ptr<StreamCall> weak = call;
  CallHandlers handlers;
  handlers.on_notification = [weak](const Notification& n) {
    std::shared_ptr<StreamCall> c = weak.lock();
    return c ? OnStreamNotification(*c, n) : std::nullopt;
  };
  handlers.on_reply = [this, weak](absl::StatusOr<Json> reply) {
    std::shared_ptr<StreamCall> c = weak.lock();
    if (c == nullptr) return;
    uint64_t timer;
    {
      std::lock_guard<std::mutex> lock(c->mu);
      timer = c->timer;
    }
    scheduler_->Cancel(timer);
    if (reply.ok()) {
      c->Finish(DecodeResult(*reply));
    } else {
      c->Finish(reply.status());
    }
    if (c->legacy) OnLegacyStreamDone();
  };
  CompleteParams params = call->params;
  params.stream = true;
  // The id is recorded before the request goes out, so a Cancel racing
  // with the send still reaches the sidecar as $/cancelRequest.
  Dispatcher& dispatcher = sidecar->dispatcher();
  const int64_t id = dispatcher.ReserveId();
  {
    std::lock_guard<std::mutex> lock(call->mu);
    if (call->finished) return;  // cancelled while queued
    call->id = id;
  }
  // Not under call->mu: on_reply may run before CallWithId returns.
  dispatcher.CallWithId(id, kMethodComplete, params, std::move(handlers));
  bool ended;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    ended = call->finished;
  }
  // Cancelled between taking the id and sending: the dispatcher did not know
  // the call yet, so cancel it now (a no-op if the sidecar already replied).
  if (ended) dispatcher.Cancel(id, absl::CancelledError("cancelled"));
}

void Client::OnLegacyStreamDone() {
  std::shared_ptr<StreamCall> next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!legacy_queue_.empty()) {
      std::shared_ptr<StreamCall> candidate = legacy_queue_.front();
      legacy_queue_.erase(legacy_queue_.begin());
      std::lock_guard<std::mutex> call_lock(candidate->mu);
      if (!candidate->finished) {
        next = std::move(candidate);
        break;
      }
    }
    legacy_stream_active_ = next != nullptr;
  }
  if (next != nullptr) StartQueued(std::move(next));
}

absl::StatusOr<StreamHandle> Client::Stream(CompleteParams params,
                                            StreamHandlers handlers,
                                            CallOptions options) {
  absl::StatusOr<std::shared_ptr<Sidecar>> sidecar = Running();
  if (!sidecar.ok()) return sidecar.status();
  auto call = std::make_shared<StreamCall>();
  call->legacy = !(*sidecar)->init_result().stream_request_id;
  Clock::time_point deadline =
      options.deadline.value_or(Clock::now() + config_.request_timeout);
  params.timeout_s =
      static_cast<double>(
          std::max(Millis(deadline - Clock::now()), std::chrono::milliseconds(0))
              .count()) /
      1000.0;
  call->params = std::move(params);
  StreamHandle handle(call);
  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->handlers = std::move(handlers);
    call->sidecar = *sidecar;
    call->timer = scheduler_->Schedule(deadline, [handle, deadline] {
      handle.Cancel(WithReason(
          absl::DeadlineExceededError(
              "the request's deadline passed before the model finished; "
              "raise the deadline or --request_timeout, or lower max_tokens"),
          reason::kDeadlineExceeded));
    });
  }
  if (call->legacy) {
    std::lock_guard<std::mutex> lock(mu_);
    if (legacy_stream_active_) {
      legacy_queue_.push_back(call);
      return handle;
    }
    legacy_stream_active_ = true;
  }
  StartQueued(call);
  return handle;
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

bool Client::IsRunning() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sidecar_ != nullptr && sidecar_->IsRunning();
}

pid_t Client::SidecarPid() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sidecar_ != nullptr && sidecar_->IsRunning() ? sidecar_->pid() : -1;
}

int Client::StartCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return starts_;
}

absl::Status Client::Restart() {
  Close();
  return EnsureStarted();
}

void Client::Close() {
  std::shared_ptr<Sidecar> sidecar;
  std::vector<std::shared_ptr<StreamCall>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sidecar.swap(sidecar_);
    queued.swap(legacy_queue_);
    legacy_stream_active_ = false;
  }
  for (auto& call : queued) {
    call->Finish(WithReason(absl::UnavailableError("the client was closed"),
                            reason::kShuttingDown));
  }
  if (sidecar != nullptr) sidecar->Stop();
}

}  // namespace llmbridge::rpc
