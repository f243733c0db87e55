#include "rpc_bridge/dispatcher.h"

#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/status_mapping.h"

namespace llmbridge::rpc {

Dispatcher::Dispatcher(CloseDescriber describe_close)
    : describe_close_(std::move(describe_close)) {}

void Dispatcher::Reply(const std::shared_ptr<PendingCall>& call,
                       absl::StatusOr<Json> reply) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->replied) return;
  call->replied = true;
  if (call->handlers.on_reply) call->handlers.on_reply(std::move(reply));
}

void Dispatcher::Deliver(int64_t id, const std::shared_ptr<PendingCall>& call,
                         const Notification& notification) {
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->replied || !call->handlers.on_notification) return;
  NotificationOutcome outcome = call->handlers.on_notification(notification);
  if (!outcome.has_value()) return;
  // The notification ended the call: it gets no other reply, and a late
  // response for its id is dropped.
  Take(id);
  call->replied = true;
  if (call->handlers.on_reply) call->handlers.on_reply(*std::move(outcome));
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
  call->handlers = std::move(handlers);
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
          : transport_->Send(EncodeRequest({method, std::move(params), id}));
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

std::optional<int64_t> Dispatcher::FindId(const Json& params) const {
  if (std::optional<int64_t> id = StreamRequestId(params)) return id;
  if (tagged_streams_) return std::nullopt;
  // A seed-style sidecar: the caller runs one stream at a time, so the oldest
  // pending call is the stream's.
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_.empty()) return std::nullopt;
  return pending_.begin()->first;
}

void Dispatcher::OnMessage(IncomingMessage message) {
  if (message.notification.has_value()) {
    const Notification& n = *message.notification;
    if (!absl::StartsWith(n.method, "stream.")) return;  // e.g. log messages
    // A call that was cancelled or already replied to is gone from the map:
    // its late notifications are dropped here.
    std::optional<int64_t> id = FindId(n.params);
    if (!id.has_value()) return;
    if (auto call = Find(*id)) Deliver(*id, call, n);
    return;
  }
  Response& response = *message.response;
  if (!response.id.has_value()) {
    // The sidecar could not even read one of our requests (id null): we
    // cannot tell which, so it is only logged.
    std::fprintf(stderr, "llmbridge: sidecar error without id: %s\n",
                 response.error ? response.error->message.c_str() : "?");
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

namespace {

// The integer after `"key":` in a JSON text prefix, if any. Enough to tell
// which call an over-long (unparsable) line belonged to.
std::optional<int64_t> ScanId(std::string_view text, std::string_view key) {
  size_t at = text.find(key);
  if (at == std::string_view::npos) return std::nullopt;
  size_t i = at + key.size();
  while (i < text.size() && (text[i] == ' ' || text[i] == ':')) ++i;
  int64_t value = 0;
  size_t digits = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++digits) {
    value = value * 10 + (text[i] - '0');
  }
  if (digits == 0 || digits > 18) return std::nullopt;
  return value;
}

}  // namespace

void Dispatcher::OnBadLine(const absl::Status& why,
                           std::string_view line_start) {
  if (absl::IsResourceExhausted(why)) {
    // Too big to parse: fail the call it names, so it does not hang.
    std::optional<int64_t> id = ScanId(line_start, "\"request_id\"");
    if (!id.has_value()) id = ScanId(line_start, "\"id\"");
    if (id.has_value()) {
      if (auto call = Take(*id)) {
        Reply(call, WithReason(absl::ResourceExhaustedError(absl::StrCat(
                                   why.message(),
                                   " for this call; the message was dropped "
                                   "(raise the line cap if such answers are "
                                   "expected)")),
                               reason::kResponseTooLarge));
        return;
      }
    }
  }
  std::fprintf(stderr, "llmbridge: ignoring a bad line from the sidecar: %s: %.120s\n",
               std::string(why.message()).c_str(),
               std::string(line_start).c_str());
}

void Dispatcher::OnClosed(const absl::Status& why) {
  absl::Status status =
      describe_close_
          ? describe_close_(why)
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
