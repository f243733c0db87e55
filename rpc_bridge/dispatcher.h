// Routes the sidecar's messages to the calls waiting for them.
//
// Every call lives in one map keyed by its JSON-RPC id, from Call() until its
// single reply: the sidecar's response, a cancellation, a protocol error the
// sidecar made while answering it, or the sidecar's exit. Stream
// notifications name their call in params.request_id, so many streams share
// one pipe. A sidecar written only to the seed's text sends no request_id:
// then untagged stream notifications go to the oldest pending stream
// (callers must run such a sidecar's streams one at a time).
//
// Threading: Call, Notify and Cancel may be called from any thread. Handlers
// run on the transport's reader thread, or on the thread calling Cancel or
// FailAll; for one call they never run concurrently, and nothing runs after
// its on_reply. A chunk or notification handler may Cancel its own call:
// the cancel completes (on_reply runs) right after the handler returns.
#ifndef LLMBRIDGE_RPC_BRIDGE_DISPATCHER_H_
#define LLMBRIDGE_RPC_BRIDGE_DISPATCHER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rpc_bridge/line_reader.h"
#include "rpc_bridge/protocol.h"
#include "rpc_bridge/reply.h"
#include "rpc_bridge/transport.h"

namespace llmbridge::rpc {

// What a notification handler returns: nullopt to keep the call open, or
// the call's reply. A stream that a seed-style sidecar ends with stream.done
// or stream.error (and no response) completes this way.
using NotificationOutcome = std::optional<absl::StatusOr<Json>>;

struct CallHandlers {
  // The text of each stream.chunk addressed to this call, in order.
  // Optional; a call that has it (or on_notification) is a stream.
  std::function<void(std::string text)> on_chunk;
  // Other stream.* notifications addressed to this call. Optional.
  std::function<NotificationOutcome(const Notification&)> on_notification;
  // The result, or the error as a status: once, by type (reply.h).
  Reply<Json> on_reply;
  // Called once, after on_reply, when the sidecar is done with the call:
  // with its reply, or (when on_reply came from Cancel or a bad line) when
  // its answer to the cancel arrives, or when its output closes. A
  // seed-style sidecar (untagged streams) cannot answer a cancel: settled
  // at once. Optional.
  std::function<void()> on_settled;
};

struct DispatcherOptions {
  // Decides the status that pending calls fail with when the sidecar's
  // stdout closes (the owner knows the exit code). Runs on the reader
  // thread. Optional.
  std::function<absl::Status(const absl::Status&)> describe_close;
  // Each unusable line (already counted in protocol_errors()), for the
  // owner's log. Runs on the reader thread. Optional.
  std::function<void(const absl::Status& why, std::string_view line_start)>
      on_bad_line;
  // Requests that encode to this many bytes or more are refused before
  // they are sent: the sidecar reads lines up to its own cap (16 MiB) and
  // could not even tell which call an over-long one was.
  size_t max_request_bytes = kDefaultMaxLineBytes;
};

class Dispatcher : public MessageHandler {
 public:
  explicit Dispatcher(DispatcherOptions options = {});

  // Must be set before the first Call; not owned.
  void set_transport(Transport* transport) { transport_ = transport; }
  // Whether stream notifications carry request_id (from the init result).
  void set_stream_request_id(bool tagged) { tagged_streams_ = tagged; }

  // Sends a request and returns its id. If it cannot be sent, on_reply runs
  // before Call returns.
  int64_t Call(const std::string& method, Json params, CallHandlers handlers);

  // The same with an id taken earlier from ReserveId, for callers that must
  // know the id before the request can be answered (or cancelled).
  int64_t ReserveId() { return next_id_.fetch_add(1); }
  void CallWithId(int64_t id, const std::string& method, Json params,
                  CallHandlers handlers);

  absl::Status Notify(const std::string& method, Json params);

  // Sends $/cancelRequest for `id` and replies `why` at once; the sidecar's
  // late notifications for `id` are dropped, and its late reply settles the
  // call (on_settled). No-op if `id` already had its reply.
  void Cancel(int64_t id, const absl::Status& why);

  // Replies `why` to every pending call, and settles every call: the
  // sidecar is gone.
  void FailAll(const absl::Status& why);

  size_t pending_count() const;
  // Calls replied to by a cancel whose end the sidecar has not confirmed.
  size_t unsettled_count() const;
  bool closed() const;
  // Lines from the sidecar that were not usable messages, so far.
  uint64_t protocol_errors() const { return protocol_errors_.load(); }

  // MessageHandler, on the reader thread.
  void OnMessage(IncomingMessage message) override;
  void OnBadLine(const absl::Status& why, std::optional<int64_t> call_id,
                 std::string_view line_start) override;
  void OnClosed(const absl::Status& why) override;

 private:
  struct PendingCall {
    std::mutex mu;  // serialises this call's handlers
    bool replied ABSL_GUARDED_BY(mu) = false;
    bool settled ABSL_GUARDED_BY(mu) = false;
    // The sidecar was done before on_reply ran: settle right after it.
    bool settle_after_reply ABSL_GUARDED_BY(mu) = false;
    bool stream = false;  // has a chunk or notification handler
    CallHandlers handlers;
    // The thread running one of its handlers now (else no thread), so a
    // Cancel from inside that handler is recognised instead of deadlocking.
    std::atomic<std::thread::id> handler_thread{};
    std::optional<absl::Status> deferred_cancel ABSL_GUARDED_BY(mu);
  };

  // Runs a chunk or notification handler under the call's lock; finishes
  // the call if the handler's outcome (or its own Cancel) ended it.
  template <typename Fn>
  void RunHandler(int64_t id, const std::shared_ptr<PendingCall>& call,
                  Fn handler);

  std::shared_ptr<PendingCall> Take(int64_t id);
  // A call taken out of pending_ by a cancel (or a bad line): tells the
  // sidecar to stop, and keeps the call until the sidecar confirms. True
  // when nobody can confirm (the sidecar is gone, or is seed-style): the
  // caller settles it with its reply then.
  bool AwaitCancelConfirmation(int64_t id, std::shared_ptr<PendingCall> call);
  static void Settle(const std::shared_ptr<PendingCall>& call);
  std::shared_ptr<PendingCall> Find(int64_t id) const;
  static void Reply(const std::shared_ptr<PendingCall>& call,
                    absl::StatusOr<Json> reply);
  // on_reply, then on_settled if the sidecar was done already.
  static void ReplyLocked(PendingCall& call, absl::StatusOr<Json> reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(call.mu);
  void Deliver(int64_t id, const std::shared_ptr<PendingCall>& call,
               const Notification& notification);
  // The pending call a stream message belongs to: its request_id, or for a
  // seed-style sidecar the oldest pending stream.
  std::optional<int64_t> StreamOwner(std::optional<int64_t> request_id) const;

  const DispatcherOptions options_;
  std::atomic<uint64_t> protocol_errors_{0};
  Transport* transport_ = nullptr;
  std::atomic<bool> tagged_streams_{true};
  std::atomic<int64_t> next_id_{1};

  mutable std::mutex mu_;
  std::map<int64_t, std::shared_ptr<PendingCall>> pending_ ABSL_GUARDED_BY(mu_);
  // Replied to by a cancel; waiting for the sidecar's own end of them.
  std::map<int64_t, std::shared_ptr<PendingCall>> unsettled_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_DISPATCHER_H_
