// Fuzzes rpc_bridge::LineReader, the framing of everything the sidecar
// writes, against a reference model: split on '\n', drop a partial last
// line, report a line longer than the cap once as ResourceExhausted, strip
// one trailing '\r'. The bytes arrive in fuzzer-chosen chunks so that lines
// straddle read(2) boundaries the way pipe reads split them.
//
// Input: [cap selector][chunk count][chunk sizes...][payload...]
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "rpc_bridge/line_reader.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

using llmbridge::rpc::LineReader;

// One result of LineReader::Next, or of the model.
struct Item {
  bool overlong = false;
  std::string line;  // when !overlong
  bool operator==(const Item& o) const {
    return overlong == o.overlong && line == o.line;
  }
};

std::vector<Item> Model(const std::string& payload, size_t cap) {
  std::vector<Item> out;
  size_t start = 0;
  while (true) {
    size_t newline = payload.find('\n', start);
    if (newline == std::string::npos) break;  // partial last line: dropped
    std::string line = payload.substr(start, newline - start);
    start = newline + 1;
    if (line.size() > cap) {
      out.push_back({true, ""});
      continue;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back({false, line});
  }
  return out;
}

// SOCK_SEQPACKET keeps write boundaries: each read(2) returns one chunk,
// and an empty packet reads as end of stream, so one socket pair serves
// every run. Created once: a socket pair per run would dominate its cost.
int* Sockets() {
  static int* fds = [] {
    static int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) != 0) std::abort();
    return pair;
  }();
  return fds;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  llmbridge::fuzz::FuzzInput in(data, size);
  const uint8_t selector = in.Byte();
  // Mostly small caps, so over-long lines are common; sometimes the real one.
  const size_t cap = selector == 255 ? llmbridge::rpc::kDefaultMaxLineBytes
                                     : 1 + selector % 80;
  const int chunks = in.Below(24);
  std::vector<size_t> sizes;
  for (int i = 0; i < chunks; ++i) sizes.push_back(in.Byte());
  const std::string payload = in.Rest();

  int* fds = Sockets();
  size_t at = 0;
  for (size_t n : sizes) {
    n = std::min(n, payload.size() - at);
    if (n == 0) continue;  // an empty packet would read as end of stream
    if (::send(fds[0], payload.data() + at, n, 0) != static_cast<ssize_t>(n)) {
      std::abort();
    }
    at += n;
  }
  if (at < payload.size() &&
      ::send(fds[0], payload.data() + at, payload.size() - at, 0) !=
          static_cast<ssize_t>(payload.size() - at)) {
    std::abort();
  }
  if (::send(fds[0], "", 0, 0) != 0) std::abort();  // end of stream

  LineReader reader(fds[1], cap);
  std::vector<Item> got;
  while (true) {
    absl::StatusOr<std::string> line = reader.Next();
    if (absl::IsResourceExhausted(line.status())) {
      // The prefix kept for diagnostics must come from the skipped line.
      if (reader.overlong_prefix().size() > 512 ||
          payload.find(reader.overlong_prefix()) == std::string::npos) {
        std::abort();
      }
      got.push_back({true, ""});
      continue;
    }
    if (absl::IsOutOfRange(line.status())) break;
    if (!line.ok()) std::abort();  // read(2) failed: not the input's fault
    if (line->size() > cap || line->find('\n') != std::string::npos) {
      std::abort();
    }
    got.push_back({false, *std::move(line)});
  }
  if (got != Model(payload, cap)) std::abort();
  return 0;
}
