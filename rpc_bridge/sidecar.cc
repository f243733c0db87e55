#include "rpc_bridge/sidecar.h"

#include <signal.h>

#include <condition_variable>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::rpc {

absl::StatusOr<Json> CallAndWait(Dispatcher& dispatcher,
                                 const std::string& method, Json params,
                                 std::chrono::milliseconds timeout) {
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<absl::StatusOr<Json>> reply;
  };
  auto slot = std::make_shared<Slot>();
  int64_t id = dispatcher.Call(
      method, std::move(params),
      {nullptr, [slot](absl::StatusOr<Json> reply) {
         std::lock_guard<std::mutex> lock(slot->mu);
         slot->reply = std::move(reply);
         slot->cv.notify_all();
       }});
  {
    std::unique_lock<std::mutex> lock(slot->mu);
    if (slot->cv.wait_for(lock, timeout,
                          [&] { return slot->reply.has_value(); })) {
      return *std::move(slot->reply);
    }
  }
  dispatcher.Cancel(
      id, WithReason(absl::DeadlineExceededError(absl::StrCat(
                         "the sidecar did not answer '", method, "' within ",
                         timeout.count(), " ms")),
                     reason::kDeadlineExceeded));
  std::lock_guard<std::mutex> lock(slot->mu);
  return *std::move(slot->reply);
}

Sidecar::Sidecar(SidecarOptions options)
    : options_(std::move(options)),
      dispatcher_([this](const absl::Status& why) { return DescribeClose(why); }) {}

absl::StatusOr<std::unique_ptr<Sidecar>> Sidecar::Start(
    SidecarOptions options) {
  std::unique_ptr<Sidecar> sidecar(new Sidecar(std::move(options)));
  const Config& config = sidecar->options_.config;
  SubprocessOptions spawn;
  spawn.argv = {config.python_path, config.sidecar_path};
  spawn.extra_env = config.env;
  // The sidecar's Python must not buffer: every line is a protocol message.
  spawn.extra_env.emplace("PYTHONUNBUFFERED", "1");
  spawn.work_dir = config.work_dir;
  absl::StatusOr<std::unique_ptr<Subprocess>> process =
      Subprocess::Spawn(spawn);
  if (!process.ok()) {
    return WithReason(absl::UnavailableError(absl::StrCat(
                          "cannot start the sidecar: ",
                          process.status().message(),
                          " (check --python and --sidecar)")),
                      reason::kSidecarUnavailable);
  }
  sidecar->process_ = *std::move(process);
  StdioTransportOptions transport;
  transport.max_line_bytes = sidecar->options_.max_line_bytes;
  transport.write_timeout = sidecar->options_.write_timeout;
  sidecar->transport_ = MakeStdioTransport(
      sidecar->process_->TakeStdinFd(), sidecar->process_->TakeStdoutFd(),
      &sidecar->dispatcher_, transport);
  sidecar->dispatcher_.set_transport(sidecar->transport_.get());
  absl::Status ready = sidecar->Handshake();
  if (!ready.ok()) {
    sidecar->Stop();
    return ready;
  }
  return sidecar;
}

absl::Status Sidecar::Handshake() {
  const Config& config = options_.config;
  InitParams params;
  params.backend = config.backend;
  params.model = config.model;
  params.host = config.host;
  params.mcp_servers = config.mcp_servers;
  // The sidecar waits for a loading backend (llama.cpp's 503) up to this
  // long; a margin under our own deadline lets its clearer error arrive.
  params.options["startup_timeout_s"] =
      0.9 * static_cast<double>(config.startup_timeout.count()) / 1000.0;
  if (config.mcp_strict) params.options["mcp_strict"] = true;
  absl::StatusOr<Json> reply = CallAndWait(dispatcher_, kMethodInit, params,
                                           config.startup_timeout);
  if (!reply.ok()) {
    if (absl::IsDeadlineExceeded(reply.status())) {
      return WithReason(
          absl::UnavailableError(absl::StrCat(
              "the sidecar was not ready within ",
              config.startup_timeout.count(),
              " ms (raise --startup_timeout if the model loads slowly)")),
          reason::kSidecarUnavailable);
    }
    return reply.status();
  }
  try {
    init_result_ = reply->get<InitResult>();
  } catch (const Json::exception& e) {
    return WithReason(absl::InternalError(absl::StrCat(
                          "malformed init result from the sidecar: ", e.what())),
                      reason::kSidecarError);
  }
  if (!init_result_.ready) {
    return WithReason(absl::UnavailableError(absl::StrCat(
                          "the sidecar reported it is not ready: ",
                          init_result_.message)),
                      reason::kSidecarUnavailable);
  }
  dispatcher_.set_stream_request_id(init_result_.stream_request_id);
  return absl::OkStatus();
}

absl::Status Sidecar::DescribeClose(const absl::Status& why) {
  // stdout closing almost always means the process is exiting; give it a
  // moment so the status can say how it ended.
  std::optional<ExitInfo> exit =
      process_ ? process_->Wait(std::chrono::milliseconds(100)) : std::nullopt;
  std::string message = "the sidecar stopped";
  if (exit.has_value()) {
    absl::StrAppend(&message, ": ", exit->Describe());
  } else if (!absl::IsOutOfRange(why)) {
    absl::StrAppend(&message, ": ", why.message());
  }
  if (process_) process_->WaitStderrDrained(std::chrono::milliseconds(50));
  std::string tail = process_ ? process_->StderrTail() : "";
  if (!tail.empty()) absl::StrAppend(&message, "; its last stderr lines:\n", tail);
  return WithReason(absl::UnavailableError(message), reason::kSidecarExited);
}

std::optional<ExitInfo> Sidecar::ExitError() {
  return WaitForExit(std::chrono::milliseconds(0));
}

std::optional<ExitInfo> Sidecar::WaitForExit(
    std::chrono::milliseconds timeout) {
  if (process_ == nullptr) return std::nullopt;
  return process_->Wait(timeout);
}

ExitInfo Sidecar::Stop() {
  if (std::optional<ExitInfo> done = ExitError()) {
    transport_.reset();
    return *done;
  }
  const auto grace = options_.stop_grace;
  if (IsRunning()) {
    // The reply does not matter: the process exits either way.
    (void)CallAndWait(dispatcher_, kMethodShutdown, Json::object(), grace);
  }
  transport_->CloseSend();
  std::optional<ExitInfo> exit = process_->Wait(grace);
  if (!exit.has_value()) {
    process_->Signal(SIGTERM);
    exit = process_->Wait(grace);
  }
  if (!exit.has_value()) {
    process_->Signal(SIGKILL);
    exit = process_->Wait(std::chrono::hours(1));
  }
  transport_.reset();  // joins the reader; pending calls were failed
  return *exit;
}

Sidecar::~Sidecar() {
  if (transport_ != nullptr) Stop();
}

}  // namespace llmbridge::rpc
