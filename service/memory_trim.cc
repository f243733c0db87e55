#include "service/memory_trim.h"

#include <algorithm>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace llmbridge::service {

void BurstTrimPolicy::OnStarted(int in_flight) { peak_ = std::max(peak_, in_flight); }

bool BurstTrimPolicy::OnEnded(int in_flight) {
  if (peak_ < kMinPeak || in_flight * 4 > peak_) return false;
  peak_ = 0;  // the next trim waits for the next burst
  return true;
}

void ReleaseFreeMemory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace llmbridge::service
