// A value handed from one thread to another exactly once: the first Set
// wins, and waiters block until it comes. For callers that turn a callback
// into a blocking call (the library's Complete, owners' CallAndWait).
//
// Threading: any thread may Set and any thread may wait.
#ifndef LLMBRIDGE_RPC_BRIDGE_ONE_SHOT_H_
#define LLMBRIDGE_RPC_BRIDGE_ONE_SHOT_H_

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace llmbridge::rpc {

template <typename T>
class OneShot {
 public:
  // Shared, so a callback that outlives its waiter (a timeout) stays safe.
  static std::shared_ptr<OneShot> Make() { return std::make_shared<OneShot>(); }

  void Set(T value) {
    std::lock_guard<std::mutex> lock(mu_);
    if (value_.has_value()) return;
    value_ = std::move(value);
    cv_.notify_all();
  }

  // A callback that Sets this, for APIs that take one.
  static auto Setter(const std::shared_ptr<OneShot>& shot) {
    return [shot](T value) { shot->Set(std::move(value)); };
  }

  T Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return value_.has_value(); });
    return *value_;
  }

  std::optional<T> WaitFor(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return value_.has_value(); })) {
      return std::nullopt;
    }
    return *value_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<T> value_ ABSL_GUARDED_BY(mu_);
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_ONE_SHOT_H_
