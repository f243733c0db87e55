#include "rpc_bridge/sidecar.h"

#include <signal.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/one_shot.h"

namespace llmbridge::rpc {

absl::StatusOr<Json> CallAndWait(Dispatcher& dispatcher,
                                 const std::string& method, Json params,
                                 std::chrono::milliseconds timeout) {
  auto reply = OneShot<absl::StatusOr<Json>>::Make();
  int64_t id = dispatcher.Call(method, std::move(params),
                               {nullptr, nullptr, OneShot<absl::StatusOr<Json>>::Setter(reply)});
  if (auto answered = reply->WaitFor(timeout)) return *std::move(answered);
  dispatcher.Cancel(
      id, WithReason(absl::DeadlineExceededError(absl::StrCat(
                         "the sidecar did not answer '", method, "' within ",
                         timeout.count(), " ms")),
                     reason::kDeadlineExceeded));
  // Every call gets exactly one reply: the cancellation's, or the one the
  // reader was delivering as the timeout passed. Either is on its way.
  return reply->Wait();
}

Sidecar::Sidecar(SidecarOptions options, SidecarEvents events)
    : options_(std::move(options)),
      events_(std::move(events)),
      dispatcher_(DispatcherOptions{
          [this](const absl::Status& why) { return DescribeClose(why); },
          [this](const absl::Status& why, std::string_view line) {
            if (events_.on_bad_line) events_.on_bad_line(why, line);
          },
          options_.max_line_bytes}) {}

absl::StatusOr<std::unique_ptr<Sidecar>> Sidecar::Spawn(SidecarOptions options,
                                                        SidecarEvents events) {
  std::unique_ptr<Sidecar> sidecar(
      new Sidecar(std::move(options), std::move(events)));
  const Config& config = sidecar->options_.config;
  SubprocessOptions spawn;
  spawn.argv = {config.python_path, config.sidecar_path};
  spawn.extra_env = config.env;
  // The sidecar's Python must not buffer: every line is a protocol message.
  spawn.extra_env.emplace("PYTHONUNBUFFERED", "1");
  spawn.work_dir = config.work_dir;
  spawn.on_stderr_line = sidecar->options_.on_stderr_line;
  absl::StatusOr<std::unique_ptr<Subprocess>> process =
      Subprocess::Spawn(spawn);
  if (!process.ok()) {
    return WithLimits(
        WithReason(absl::UnavailableError(absl::StrCat(
                       "cannot start the sidecar: ", process.status().message(),
                       " (check the Python interpreter and the sidecar path)")),
                   reason::kSidecarUnavailable),
        {limit::kSidecarCommand});
  }
  sidecar->process_ = *std::move(process);
  StdioTransportOptions transport;
  transport.max_line_bytes = sidecar->options_.max_line_bytes;
  transport.write_timeout = sidecar->options_.write_timeout;
  Sidecar* self = sidecar.get();
  transport.on_send_failed = [self](const absl::Status& why) {
    if (self->events_.on_stalled) self->events_.on_stalled(why);
  };
  sidecar->transport_ = MakeStdioTransport(
      sidecar->process_->TakeStdinFd(), sidecar->process_->TakeStdoutFd(),
      &sidecar->dispatcher_, transport);
  sidecar->dispatcher_.set_transport(sidecar->transport_.get());
  return sidecar;
}

absl::StatusOr<std::unique_ptr<Sidecar>> Sidecar::Start(
    SidecarOptions options) {
  absl::StatusOr<std::unique_ptr<Sidecar>> sidecar = Spawn(std::move(options));
  if (!sidecar.ok()) return sidecar.status();
  const auto timeout = (*sidecar)->options_.config.startup_timeout;
  auto outcome = OneShot<absl::Status>::Make();
  (*sidecar)->SendInit(OneShot<absl::Status>::Setter(outcome));
  absl::Status ready = outcome->WaitFor(timeout).value_or(WithLimits(
      WithReason(absl::UnavailableError(absl::StrCat(
                     "the sidecar was not ready within ", timeout.count(),
                     " ms (allow a longer start if the model loads slowly)")),
                 reason::kSidecarUnavailable),
      {limit::kStartupTimeout}));
  if (!ready.ok()) {
    (*sidecar)->Stop();
    return ready;
  }
  return sidecar;
}

void Sidecar::SendInit(std::function<void(absl::Status)> done) {
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
  if (options_.init_options.is_object()) {
    for (const auto& [key, value] : options_.init_options.items()) {
      params.options[key] = value;
    }
  }
  dispatcher_.Call(kMethodInit, params,
                   {nullptr, nullptr,
                    [this, done = std::move(done)](absl::StatusOr<Json> reply) {
                      done(AcceptInitReply(std::move(reply)));
                    }});
}

absl::Status Sidecar::AcceptInitReply(absl::StatusOr<Json> reply) {
  if (!reply.ok()) return reply.status();
  InitResult result;
  try {
    result = reply->get<InitResult>();
  } catch (const Json::exception& e) {
    return WithReason(absl::InternalError(absl::StrCat(
                          "malformed init result from the sidecar: ", e.what())),
                      reason::kSidecarProtocolError);
  }
  if (!result.ready) {
    return WithReason(absl::UnavailableError(absl::StrCat(
                          "the sidecar reported it is not ready: ",
                          result.message)),
                      reason::kSidecarUnavailable);
  }
  init_result_ = std::move(result);
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
  if (options_.stderr_in_errors && process_) {
    process_->WaitStderrDrained(std::chrono::milliseconds(50));
    std::string tail = process_->StderrTail();
    if (!tail.empty()) {
      absl::StrAppend(&message, "; its last stderr lines:\n", tail);
    }
  }
  absl::Status status =
      WithReason(absl::UnavailableError(message), reason::kSidecarExited);
  if (events_.on_closed) events_.on_closed();
  return status;
}

std::optional<ExitInfo> Sidecar::ExitError() {
  return WaitForExit(std::chrono::milliseconds(0));
}

std::optional<ExitInfo> Sidecar::WaitForExit(
    std::chrono::milliseconds timeout) {
  if (process_ == nullptr) return std::nullopt;
  return process_->Wait(timeout);
}

void Sidecar::Kill() {
  if (process_ != nullptr) process_->Signal(SIGKILL);
}

ExitInfo Sidecar::Stop() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (std::optional<ExitInfo> done = ExitError()) {
    transport_.reset();
    return *done;
  }
  const auto grace = options_.stop_grace;
  if (IsRunning()) {
    // The reply does not matter: the process exits either way.
    (void)CallAndWait(dispatcher_, kMethodShutdown, Json::object(), grace);
  }
  if (transport_) transport_->CloseSend();
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
