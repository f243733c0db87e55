// The one answer of a call, as a value: move-only, finished by consuming it,
// and never lost. The reply callback of every call (the dispatcher's
// pending call, the pool's call, the client's stream) is a Reply, so a
// second reply does not compile (Finish needs the only copy, as an rvalue,
// and leaves nothing behind) and a missing one cannot hang the caller: a
// Reply destroyed unfinished answers INTERNAL.
//
//   Reply<Json> reply = [](absl::StatusOr<Json> r) { ... };
//   std::move(reply).Finish(result);   // runs the callback, once
//
// Threading: a Reply is a plain value; whoever holds it may finish it. The
// callback runs on the thread that finishes (or destroys) it.
#ifndef LLMBRIDGE_RPC_BRIDGE_REPLY_H_
#define LLMBRIDGE_RPC_BRIDGE_REPLY_H_

#include <type_traits>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmbridge::rpc {

template <typename T>
class Reply {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<T>) &&>;

  Reply() = default;  // empty: finishing it does nothing
  template <typename F,
            typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Reply> &&
                                        std::is_constructible_v<Callback, F&&>>>
  Reply(F&& callback)  // NOLINT(google-explicit-constructor): a lambda is a Reply
      : callback_(std::forward<F>(callback)) {}

  Reply(Reply&& other) noexcept : callback_(std::exchange(other.callback_, nullptr)) {}
  Reply& operator=(Reply&& other) noexcept {
    if (this != &other) {
      Abandon();
      callback_ = std::exchange(other.callback_, nullptr);
    }
    return *this;
  }
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;

  // A reply nobody gave is a bug; its caller still hears of it.
  ~Reply() { Abandon(); }

  // Whether a callback waits for the answer.
  explicit operator bool() const { return callback_ != nullptr; }

  // Runs the callback with `result`, once; the Reply is empty after.
  void Finish(absl::StatusOr<T> result) && {
    Callback callback = std::exchange(callback_, nullptr);
    if (callback) std::move(callback)(std::move(result));
  }

 private:
  void Abandon() {
    if (callback_) {
      std::move(*this).Finish(absl::InternalError(
          "the call was dropped without an answer (a bug in llmbridge: please report "
          "it with the server log)"));
    }
  }

  Callback callback_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_REPLY_H_
