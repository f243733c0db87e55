#include "rpc_bridge/dispatcher.h"

#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/status_mapping.h"

namespace llmbridge::rpc {

Dispatcher::Dispatcher(DispatcherOptions options)
    : options_(std::move(options)) {}

void Dispatcher::Reply(const std::shared_ptr<PendingCall>& call,
                       absl::StatusOr<Json> reply) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->replied) return;
  call->replied = true;
  if (call->handlers.on_reply) call->handlers.on_reply(std::move(reply));
}

template <typename Fn>
void Dispatcher::RunHandler(int64_t id, const std::shared_ptr<PendingCall>& call,
                            Fn handler) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->replied) return;
  call->handler_thread.store(std::this_thread::get_id());
  NotificationOutcome outcome = handler();
  call->handler_thread.store(std::thread::id());
  if (!outcome.has_value() && call->deferred_cancel.has_value()) {
    // The handler cancelled its own call: finish that now, outside it.
    if (Take(id) == nullptr) return;
    (void)Notify(kNotifyCancelRequest, Json{{"id", id}});
    outcome = absl::StatusOr<Json>(*std::move(call->deferred_cancel));
  } else if (outcome.has_value()) {
    // The notification ended the call: it gets no other reply, and a late
    // response for its id is dropped.
    Take(id);
  } else {
    return;
  }
  call->replied = true;
  if (call->handlers.on_reply) call->handlers.on_reply(*std::move(outcome));
}

void Dispatcher::Deliver(int64_t id, const std::shared_ptr<PendingCall>& call,
                         const Notification& notification) {
  RunHandler(id, call, [&]() -> NotificationOutcome {
    if (!call->handlers.on_notification) return std::nullopt;
    return call->handlers.on_notification(notification);
  });
}

int64_t Dispatcher::Call(const std::string& method, Json params,
                         CallHandlers handlers) {
  const int64_t id = ReserveId();
  CallWithId(id, method, std::move(params), std::move(handlers));
  return id;
}

void Dispatcher::CallWithId(int64_t id, const std::string& method, Json params,
                            CallHandlers handlers) {
  auto call = std::make_shared<PendingCall>();
  call->stream = handlers.on_chunk != nullptr || handlers.on_notification != nullptr;
  call->handlers = std::move(handlers);
  std::string line = EncodeRequest({method, std::move(params), id});
  if (line.size() >= options_.max_request_bytes) {
    Reply(call,
          WithReason(absl::InvalidArgumentError(absl::StrCat(
                         "messages: the request encodes to ", line.size(),
                         " bytes, over the sidecar's message limit of ",
                         options_.max_request_bytes,
                         " bytes (control characters take 6 bytes each); "
                         "shorten the conversation")),
                     reason::kInvalidRequest));
    return;
  }
  std::optional<absl::Status> closed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      closed = close_status_;
    } else {
      pending_[id] = call;
    }
  }
  if (closed.has_value()) {
    // Outside mu_: the handler may call back into the dispatcher.
    Reply(call, *closed);
    return;
  }
  absl::Status sent =
      transport_ == nullptr
          ? absl::FailedPreconditionError("dispatcher has no transport")
          : transport_->Send(line);
  if (!sent.ok()) {
    if (auto taken = Take(id)) Reply(taken, sent);
  }
}

absl::Status Dispatcher::Notify(const std::string& method, Json params) {
  if (transport_ == nullptr) {
    return absl::FailedPreconditionError("dispatcher has no transport");
  }
  return transport_->Send(EncodeNotification({method, std::move(params)}));
}

void Dispatcher::Cancel(int64_t id, const absl::Status& why) {
  if (std::shared_ptr<PendingCall> running = Find(id);
      running != nullptr &&
      running->handler_thread.load() == std::this_thread::get_id()) {
    // From inside one of this call's own handlers, which holds its lock:
    // RunHandler finishes the cancel when the handler returns.
    if (!running->deferred_cancel.has_value()) running->deferred_cancel = why;
    return;
  }
  std::shared_ptr<PendingCall> call = Take(id);
  if (call == nullptr) return;
  // Best effort: if the pipe is gone the sidecar has no work to stop.
  (void)Notify(kNotifyCancelRequest, Json{{"id", id}});
  Reply(call, why);
}

void Dispatcher::FailAll(const absl::Status& why) {
  std::map<int64_t, std::shared_ptr<PendingCall>> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    calls.swap(pending_);
  }
  for (auto& [id, call] : calls) Reply(call, why);
}

size_t Dispatcher::pending_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

bool Dispatcher::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

std::shared_ptr<Dispatcher::PendingCall> Dispatcher::Take(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return nullptr;
  std::shared_ptr<PendingCall> call = std::move(it->second);
  pending_.erase(it);
  return call;
}

std::shared_ptr<Dispatcher::PendingCall> Dispatcher::Find(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(id);
  return it == pending_.end() ? nullptr : it->second;
}

std::optional<int64_t> Dispatcher::StreamOwner(
    std::optional<int64_t> request_id) const {
  if (request_id.has_value()) return request_id;
  if (tagged_streams_) return std::nullopt;
  // A seed-style sidecar: the caller runs one stream at a time, so the
  // oldest pending stream is the one (a health probe may be pending too).
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, call] : pending_) {
    if (call->stream) return id;
  }
  return std::nullopt;
}

void Dispatcher::OnMessage(IncomingMessage message) {
  if (message.chunk.has_value()) {
    std::optional<int64_t> id = StreamOwner(message.chunk->request_id);
    if (!id.has_value()) return;
    // A call that was cancelled or already replied to is gone from the map:
    // its late chunks are dropped here.
    std::shared_ptr<PendingCall> call = Find(*id);
    if (call == nullptr) return;
    RunHandler(*id, call, [&]() -> NotificationOutcome {
      if (call->handlers.on_chunk) {
        call->handlers.on_chunk(std::move(message.chunk->content));
      }
      return std::nullopt;
    });
    return;
  }
  if (message.notification.has_value()) {
    const Notification& n = *message.notification;
    if (!absl::StartsWith(n.method, "stream.")) return;  // e.g. log messages
    std::optional<int64_t> id = StreamOwner(StreamRequestId(n.params));
    if (!id.has_value()) return;
    if (auto call = Find(*id)) Deliver(*id, call, n);
    return;
  }
  Response& response = *message.response;
  if (!response.id.has_value()) {
    // The sidecar could not even read one of our requests (id null): we
    // cannot tell which, so it is only logged.
    protocol_errors_.fetch_add(1);
    if (options_.on_bad_line) {
      options_.on_bad_line(
          absl::InternalError(absl::StrCat(
              "an error without id: ",
              response.error ? response.error->message : "(no message)")),
          "");
    }
    return;
  }
  std::shared_ptr<PendingCall> call = Take(*response.id);
  if (call == nullptr) return;  // cancelled earlier: late reply dropped
  if (response.error.has_value()) {
    Reply(call, RpcErrorToStatus(*response.error));
  } else {
    Reply(call, std::move(response.result));
  }
}

void Dispatcher::OnBadLine(const absl::Status& why,
                           std::optional<int64_t> call_id,
                           std::string_view line_start) {
  protocol_errors_.fetch_add(1);
  if (options_.on_bad_line) options_.on_bad_line(why, line_start);
  if (!call_id.has_value()) return;
  std::shared_ptr<PendingCall> call = Take(*call_id);
  if (call == nullptr) return;
  if (absl::IsResourceExhausted(why)) {
    Reply(call, WithReason(absl::ResourceExhaustedError(absl::StrCat(
                               why.message(),
                               " for this call; the message was dropped "
                               "(raise the line cap if such answers are "
                               "expected)")),
                           reason::kResponseTooLarge));
    return;
  }
  // The sidecar broke the protocol while answering: it is at fault, not
  // the caller's request, so this is never INVALID_ARGUMENT.
  Reply(call, WithReason(absl::InternalError(absl::StrCat(
                             "the sidecar sent a malformed message for this "
                             "call (", why.message(),
                             "); the call was ended. This is a sidecar bug: "
                             "see the server log")),
                         reason::kSidecarProtocolError));
}

void Dispatcher::OnClosed(const absl::Status& why) {
  absl::Status status =
      options_.describe_close
          ? options_.describe_close(why)
          : WithReason(absl::UnavailableError(absl::StrCat(
                           "the sidecar closed its output: ", why.message())),
                       reason::kSidecarExited);
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    close_status_ = status;
  }
  FailAll(status);
}

}  // namespace llmbridge::rpc
