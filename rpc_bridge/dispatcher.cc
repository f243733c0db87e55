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

void Dispatcher::ReplyLocked(PendingCall& call, absl::StatusOr<Json> reply) {
  call.replied = true;
  std::move(call.handlers.on_reply).Finish(std::move(reply));
  if (call.settle_after_reply && !call.settled) {
    call.settled = true;
    if (call.handlers.on_settled) call.handlers.on_settled();
  }
}

void Dispatcher::Reply(const std::shared_ptr<PendingCall>& call,
                       absl::StatusOr<Json> reply) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->replied) return;
  ReplyLocked(*call, std::move(reply));
}

void Dispatcher::Settle(const std::shared_ptr<PendingCall>& call) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->settled) return;
  if (!call->replied) {
    // on_reply is about to run on another thread: it settles after it.
    call->settle_after_reply = true;
    return;
  }
  call->settled = true;
  if (call->handlers.on_settled) call->handlers.on_settled();
}

bool Dispatcher::AwaitCancelConfirmation(int64_t id,
                                         std::shared_ptr<PendingCall> call) {
  bool settle_now = !tagged_streams_.load();  // a seed sidecar cannot confirm
  if (!settle_now) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      settle_now = true;  // nobody left to confirm
    } else {
      unsettled_[id] = std::move(call);
    }
  }
  // Best effort: if the pipe is gone the sidecar has no work to stop.
  (void)Notify(kNotifyCancelRequest, Json{{"id", id}});
  return settle_now;
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
    std::shared_ptr<PendingCall> taken = Take(id);
    if (taken == nullptr) return;
    if (AwaitCancelConfirmation(id, std::move(taken))) call->settle_after_reply = true;
    outcome = absl::StatusOr<Json>(*std::move(call->deferred_cancel));
  } else if (outcome.has_value()) {
    // The notification ended the call: it gets no other reply, and a late
    // response for its id is dropped. The sidecar is done with it.
    Take(id);
    call->settle_after_reply = true;
  } else {
    return;
  }
  ReplyLocked(*call, *std::move(outcome));
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
  // A call that is never sent is settled with its reply.
  call->settle_after_reply = true;
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
  {
    // Not shared yet; never taken under mu_ (the reader takes mu_ under a
    // call's mu).
    std::lock_guard<std::mutex> call_lock(call->mu);
    call->settle_after_reply = false;  // to be sent: the sidecar settles it
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
    {
      std::lock_guard<std::mutex> call_lock(call->mu);
      call->settle_after_reply = true;  // never sent
    }
    // Outside mu_: the handler may call back into the dispatcher.
    Reply(call, *closed);
    return;
  }
  absl::Status sent =
      transport_ == nullptr
          ? absl::FailedPreconditionError("dispatcher has no transport")
          : transport_->Send(line);
  if (!sent.ok()) {
    if (auto taken = Take(id)) {
      {
        std::lock_guard<std::mutex> lock(taken->mu);
        taken->settle_after_reply = true;  // never reached the sidecar
      }
      Reply(taken, sent);
    }
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
  if (AwaitCancelConfirmation(id, call)) {
    std::lock_guard<std::mutex> lock(call->mu);
    call->settle_after_reply = true;
  }
  Reply(call, why);
}

void Dispatcher::FailAll(const absl::Status& why) {
  std::map<int64_t, std::shared_ptr<PendingCall>> calls;
  std::map<int64_t, std::shared_ptr<PendingCall>> unsettled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    calls.swap(pending_);
    unsettled.swap(unsettled_);
  }
  for (auto& [id, call] : calls) {
    {
      std::lock_guard<std::mutex> lock(call->mu);
      call->settle_after_reply = true;
    }
    Reply(call, why);
  }
  for (auto& [id, call] : unsettled) Settle(call);
}

size_t Dispatcher::pending_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

size_t Dispatcher::unsettled_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unsettled_.size();
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
  if (call == nullptr) {
    // Cancelled earlier: the late reply is dropped, and says the sidecar
    // is done with the call.
    std::shared_ptr<PendingCall> cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = unsettled_.find(*response.id);
      if (it != unsettled_.end()) {
        cancelled = std::move(it->second);
        unsettled_.erase(it);
      }
    }
    if (cancelled != nullptr) Settle(cancelled);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->settle_after_reply = true;  // its own reply: done with it
  }
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
  // Ended here, though the sidecar may still be working on it: it is told
  // to stop, and the call is settled when it confirms.
  if (AwaitCancelConfirmation(*call_id, call)) {
    std::lock_guard<std::mutex> lock(call->mu);
    call->settle_after_reply = true;
  }
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
