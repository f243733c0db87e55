// The pattern behind tsan_suppressions.cc, made deterministic: an
// absl::Status with a payload shared by two threads, read on one and
// released last on the other, with no synchronisation TSan can see between
// the read and the release (only libabsl_status's reference count, which
// TSan cannot see). Without the suppression this test fails under
// --config=tsan every time; sidecar_pool_test failed the same way in about
// 1 run in 7 (a queue timeout's status released on the scheduler thread
// while the test read its ErrorInfo reason).
//
// Outside TSan it checks nothing more than the payload's round trip.
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "gtest/gtest.h"

namespace {

// One absl::Status handed to another thread, read there and released there
// first; this thread then releases the last reference. Returns what the
// reader saw of `read`.
std::string ShareReadAndRelease(absl::Status status,
                                std::string (*read)(const absl::Status&)) {
  std::optional<absl::Status> held(std::move(status));
  std::mutex mu;  // hands the copy over: the read is ordered after the write
  std::optional<absl::Status> copy;
  {
    std::lock_guard<std::mutex> lock(mu);
    copy = *held;
  }
  // Relaxed on purpose: it orders nothing for TSan, like the reference
  // count inside libabsl_status.
  std::atomic<bool> reader_done{false};
  std::string seen;
  std::thread reader([&] {
    std::optional<absl::Status> mine;
    {
      std::lock_guard<std::mutex> lock(mu);
      mine = std::move(copy);
    }
    seen = read(*mine);
    mine.reset();  // drops its reference inside libabsl_status
    reader_done.store(true, std::memory_order_relaxed);
  });
  while (!reader_done.load(std::memory_order_relaxed)) std::this_thread::yield();
  held.reset();  // the last reference: freed here
  reader.join();
  return seen;
}

// Long enough that the type URL and message live on the heap.
constexpr char kUrl[] = "type.googleapis.com/llmbridge.test.AReasonLongerThanSso";

TEST(TsanSuppressionsTest, APayloadFreedOnAnotherThreadIsNotARace) {
  // The payload's storage is freed from inside libabsl_status.
  absl::Status status = absl::UnavailableError("a message long enough to be allocated");
  status.SetPayload(kUrl, absl::Cord("OVERLOADED"));
  EXPECT_EQ(ShareReadAndRelease(status,
                                [](const absl::Status& s) {
                                  auto payload = s.GetPayload(kUrl);
                                  return payload ? std::string(*payload) : "";
                                }),
            "OVERLOADED");
}

TEST(TsanSuppressionsTest, AMessageFreedOnAnotherThreadIsNotARace) {
  // No payload: libabsl_status's last `delete` is a tail call, so TSan
  // reports it as called from our inline Status::Unref.
  EXPECT_EQ(ShareReadAndRelease(
                absl::UnavailableError("a message long enough to be allocated"),
                [](const absl::Status& s) { return std::string(s.message()); }),
            "a message long enough to be allocated");
}

}  // namespace
