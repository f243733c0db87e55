// Reads typed values from a fuzzer's input, front to back. A small stand-in
// for LLVM's FuzzedDataProvider, which lives in clang's resource directory
// and so is not visible to the gcc build of the replay drivers. Reads past
// the end yield zeros and empty strings: every input is a valid program.
#ifndef LLMBRIDGE_TESTS_FUZZ_FUZZ_INPUT_H_
#define LLMBRIDGE_TESTS_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llmbridge::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}

  bool empty() const { return pos_ >= size_; }

  uint8_t Byte() { return empty() ? 0 : static_cast<uint8_t>(data_[pos_++]); }

  // A value in [0, bound), from one byte (bound <= 256) or two.
  uint32_t Below(uint32_t bound) {
    if (bound == 0) return 0;
    uint32_t raw = Byte();
    if (bound > 256) raw = (raw << 8) | Byte();
    return raw % bound;
  }

  // Up to `max` bytes, the length chosen by the input.
  std::string Bytes(size_t max) {
    size_t n = Below(static_cast<uint32_t>(max + 1));
    return Take(n);
  }

  // Bytes up to the next `separator` (consumed, not returned) or the end.
  std::string Until(char separator) {
    size_t end = std::string_view(data_ + pos_, size_ - pos_).find(separator);
    if (end == std::string_view::npos) return Rest();
    std::string out(data_ + pos_, end);
    pos_ += end + 1;
    return out;
  }

  std::string Rest() { return Take(size_ - pos_); }

 private:
  std::string Take(size_t n) {
    if (pos_ >= size_) return "";
    n = std::min(n, size_ - pos_);
    std::string out(data_ + pos_, n);
    pos_ += n;
    return out;
  }

  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace llmbridge::fuzz

#endif  // LLMBRIDGE_TESTS_FUZZ_FUZZ_INPUT_H_
