#ifndef LLMBRIDGE_SERVICE_MEMORY_TRIM_H_
#define LLMBRIDGE_SERVICE_MEMORY_TRIM_H_

namespace llmbridge::service {

// When to hand the heap a burst of calls left free back to the OS.
//
// glibc keeps the arenas that many concurrent calls grew: after a burst of
// 1,024 calls the server stays at about 62 MiB where it idles at 23, and
// malloc_trim(0) brings it back to 23 (BENCHMARKS.md). A trim costs a few
// milliseconds, so it runs once per burst: when the calls in flight fall to a
// quarter of a peak of at least kMinPeak since the last trim.
//
// Not thread-safe: the caller serialises OnStarted/OnEnded (LocalLLMService
// calls them under its in-flight lock) and trims outside that lock.
class BurstTrimPolicy {
 public:
  // Bursts smaller than this leave too little behind to be worth a trim.
  static constexpr int kMinPeak = 256;

  // A call started; `in_flight` counts it.
  void OnStarted(int in_flight);
  // A call ended; `in_flight` no longer counts it. True: trim now.
  bool OnEnded(int in_flight);

 private:
  int peak_ = 0;  // most calls in flight since the last trim (0 right after it)
};

// Returns free heap memory to the OS (glibc's malloc_trim; nothing where the
// C library has no such call). Any thread; takes a few milliseconds.
void ReleaseFreeMemory();

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_MEMORY_TRIM_H_
