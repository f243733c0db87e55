// The C++ client of bench/e2e (`bench/e2e --client=cpp`): c closed-loop
// workers, each sending its next request when its previous one ended, for
// `--seconds` after `--warmup_s` of unmeasured warm-up, against either
//
//   --path=llmbridge   llmbridge's Complete over gRPC (the sync API, one
//                      thread per worker, all workers on --channels channels),
//   --path=direct|litellm  an OpenAI-compatible POST /v1/chat/completions
//                      with "stream": true over plain HTTP/1.1 keep-alive
//                      sockets (one per worker), each SSE event parsed.
//
// It prints one JSON line with the same keys as the Python client of
// bench/e2e_bench.py (requests, rps, client_cpu_s, TTFC and total p50/p99 in
// ms, errors). Why it exists: with the Python clients, the gRPC client alone
// costs about twice the CPU of the aiohttp one, and at c = 1 that difference
// shows up as llmbridge's "added latency". A lean client in the same language
// for every path measures the relays, not the clients. Not a test.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "llmbridge/v1/llmbridge.grpc.pb.h"

ABSL_FLAG(std::string, path, "llmbridge", "llmbridge (gRPC), direct or litellm (HTTP)");
ABSL_FLAG(std::string, target, "", "host:port to call");
ABSL_FLAG(int, c, 1, "concurrent closed-loop workers");
ABSL_FLAG(int, chunks, 1, "content chunks per answer (max_tokens)");
ABSL_FLAG(double, seconds, 3.0, "measured seconds");
ABSL_FLAG(double, warmup_s, 0.5, "unmeasured warm-up seconds before");
ABSL_FLAG(int, channels, 1, "gRPC channels the workers share (--path=llmbridge)");
ABSL_FLAG(bool, honour_retry_info, false,
          "after a refusal that carries a google.rpc.RetryInfo (llmbridge's "
          "OVERLOADED), wait its retry_delay before the worker's next call, as a "
          "well-behaved client does; default: resend at once");

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kPrompt[] = "Say hello";
constexpr char kModel[] = "fake-model";
constexpr char kChunkText[] = "tok ";

struct Sample {
  double ttfc_s;
  double total_s;
};

// What the workers of one phase collected; filled under mu.
struct Results {
  std::mutex mu;
  std::vector<Sample> samples;
  std::vector<std::string> errors;

  void Add(std::vector<Sample>& s, std::vector<std::string>& e) {
    std::lock_guard<std::mutex> lock(mu);
    samples.insert(samples.end(), s.begin(), s.end());
    errors.insert(errors.end(), e.begin(), e.end());
  }
};

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

int CountChunkText(const std::string& s) {
  int n = 0;
  for (size_t at = s.find(kChunkText); at != std::string::npos;
       at = s.find(kChunkText, at + 1)) {
    ++n;
  }
  return n;
}

// ---- gRPC -------------------------------------------------------------------

class GrpcWorker {
 public:
  explicit GrpcWorker(std::shared_ptr<grpc::Channel> channel, int chunks)
      : stub_(llmbridge::v1::LocalLLM::NewStub(std::move(channel))),
        chunks_(chunks) {
    llmbridge::v1::Message* m = request_.add_messages();
    m->set_role("user");
    m->set_content(kPrompt);
    request_.set_max_tokens(chunks);
  }

  // One call; a sample, or an error message. `until`: the phase's end.
  std::optional<Sample> Call(std::string* error, Clock::time_point until) {
    const Clock::time_point t0 = Clock::now();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    std::unique_ptr<grpc::ClientReader<llmbridge::v1::CompleteResponse>> reader =
        stub_->Complete(&context, request_);
    llmbridge::v1::CompleteResponse response;
    int got = 0;
    bool done = false;
    double ttfc = 0;
    while (reader->Read(&response)) {
      if (!response.content().empty()) {
        if (got == 0) ttfc = Seconds(Clock::now() - t0);
        got += response.content() == kChunkText ? 1 : CountChunkText(response.content());
      }
      done = done || response.done();
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) {
      *error = absl::StrCat("gRPC ", status.error_code(), ": ",
                            status.error_message().substr(0, 300));
      if (absl::GetFlag(FLAGS_honour_retry_info)) WaitRetryDelay(status, until);
      return std::nullopt;
    }
    if (got != chunks_ || !done) {
      *error = absl::StrCat("expected ", chunks_, " chunks and done, got ", got,
                            ", done=", done);
      return std::nullopt;
    }
    return Sample{ttfc, Seconds(Clock::now() - t0)};
  }

 private:
  // Sleeps the RetryInfo's retry_delay of a refused call, if it has one,
  // but not past `until`.
  static void WaitRetryDelay(const grpc::Status& status, Clock::time_point until) {
    google::rpc::Status details;
    if (status.error_details().empty() ||
        !details.ParseFromString(status.error_details())) {
      return;
    }
    for (const auto& any : details.details()) {
      google::rpc::RetryInfo retry;
      if (any.UnpackTo(&retry)) {
        const Clock::time_point wake =
            Clock::now() + std::chrono::seconds(retry.retry_delay().seconds()) +
            std::chrono::nanoseconds(retry.retry_delay().nanos());
        std::this_thread::sleep_until(std::min(wake, until));
        return;
      }
    }
  }

  std::unique_ptr<llmbridge::v1::LocalLLM::Stub> stub_;
  llmbridge::v1::CompleteRequest request_;
  const int chunks_;
};

// ---- HTTP/1.1 ---------------------------------------------------------------

// One keep-alive connection; reconnects after an error.
class HttpWorker {
 public:
  HttpWorker(std::string host, std::string port, int chunks)
      : host_(std::move(host)), port_(std::move(port)), chunks_(chunks) {
    nlohmann::json body = {
        {"model", kModel},
        {"messages", {{{"role", "user"}, {"content", kPrompt}}}},
        {"stream", true},
        {"stream_options", {{"include_usage", true}}},
        {"max_tokens", chunks}};
    const std::string text = body.dump();
    request_ = absl::StrCat(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: ", host_, ":", port_,
        "\r\nContent-Type: application/json\r\nAuthorization: Bearer bench\r\n"
        "Content-Length: ",
        text.size(), "\r\n\r\n", text);
  }
  ~HttpWorker() { Close(); }

  std::optional<Sample> Call(std::string* error, Clock::time_point /*until*/) {
    const Clock::time_point t0 = Clock::now();
    // A kept-alive connection the server closed while it was idle (uvicorn,
    // LiteLLM's server, closes them after 5 s) fails before any byte of an
    // answer: send again once on a new one, as HTTP clients do.
    const bool reused = fd_ >= 0;
    if (fd_ < 0 && !Connect(error)) return std::nullopt;
    std::optional<size_t> header_end = SendAndReadHeaders();
    if (!header_end.has_value() && reused && buffer_.empty()) {
      Close();
      if (!Connect(error)) return std::nullopt;
      header_end = SendAndReadHeaders();
    }
    if (!header_end.has_value()) {
      return Fail("connection closed before the headers", error);
    }
    const std::string headers = buffer_.substr(0, *header_end);
    buffer_.erase(0, *header_end + 4);
    if (headers.compare(0, 12, "HTTP/1.1 200") != 0) {
      return Fail(absl::StrCat("HTTP: ", headers.substr(0, 200)), error);
    }
    const std::string lower = Lowercase(headers);
    const bool chunked = lower.find("transfer-encoding: chunked") != std::string::npos;
    size_t body_left = 0;  // without chunked framing: the content-length
    if (!chunked) {
      size_t at = lower.find("content-length:");
      size_t n = 0;
      if (at == std::string::npos ||
          !absl::SimpleAtoi(headers.substr(at + 15, headers.find("\r\n", at) - at - 15), &n)) {
        return Fail("neither chunked nor a content-length", error);
      }
      body_left = n;
    }
    // The body, decoded as it arrives, SSE events parsed line by line.
    int got = 0;
    bool done_seen = false;
    double ttfc = 0;
    std::string events;  // decoded body not yet split into lines
    while (true) {
      bool finished = false;
      if (chunked) {
        size_t eol = buffer_.find("\r\n");
        if (eol != std::string::npos) {
          size_t size = 0;
          if (!absl::SimpleHexAtoi(buffer_.substr(0, eol), &size)) {
            return Fail("a malformed chunk size", error);
          }
          if (buffer_.size() >= eol + 2 + size + 2) {
            events.append(buffer_, eol + 2, size);
            buffer_.erase(0, eol + 2 + size + 2);
            finished = size == 0;
          } else if (!ReadMore()) {
            return Fail("connection closed mid-body", error);
          }
        } else if (!ReadMore()) {
          return Fail("connection closed mid-body", error);
        }
      } else {
        if (buffer_.empty() && body_left > 0 && !ReadMore()) {
          return Fail("connection closed mid-body", error);
        }
        size_t take = std::min(body_left, buffer_.size());
        events.append(buffer_, 0, take);
        buffer_.erase(0, take);
        body_left -= take;
        finished = body_left == 0;
      }
      for (size_t eol; (eol = events.find('\n')) != std::string::npos;) {
        std::string_view line(events.data(), eol);
        if (line.substr(0, 5) == "data:") {
          std::string_view payload = line.substr(5);
          while (!payload.empty() && payload.front() == ' ') payload.remove_prefix(1);
          if (payload == "[DONE]") {
            done_seen = true;
          } else {
            nlohmann::json event = nlohmann::json::parse(payload, nullptr, false);
            if (event.is_object() && event.contains("choices") &&
                event["choices"].is_array()) {
              for (const auto& choice : event["choices"]) {
                const auto delta = choice.find("delta");
                if (delta == choice.end() || !delta->is_object()) continue;
                const auto content = delta->find("content");
                if (content != delta->end() && content->is_string() &&
                    !content->get_ref<const std::string&>().empty()) {
                  if (got == 0) ttfc = Seconds(Clock::now() - t0);
                  ++got;
                }
              }
            }
          }
        }
        events.erase(0, eol + 1);
      }
      if (finished) break;
    }
    if (got != chunks_ || !done_seen) {
      *error = absl::StrCat("expected ", chunks_, " chunks and [DONE], got ", got);
      return std::nullopt;
    }
    return Sample{ttfc, Seconds(Clock::now() - t0)};
  }

 private:
  static std::string Lowercase(std::string s) {
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  }

  bool Connect(std::string* error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host_.c_str(), port_.c_str(), &hints, &found) != 0) {
      *error = "cannot resolve " + host_;
      return false;
    }
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fd_ = fd;
        break;
      }
      ::close(fd);
    }
    ::freeaddrinfo(found);
    if (fd_ < 0) *error = "cannot connect to " + host_ + ":" + port_;
    return fd_ >= 0;
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buffer_.clear();
  }

  std::optional<Sample> Fail(std::string why, std::string* error) {
    Close();
    *error = std::move(why);
    return std::nullopt;
  }

  // The request sent and the answer's headers received: where they end.
  std::optional<size_t> SendAndReadHeaders() {
    if (!SendAll(request_)) return std::nullopt;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!ReadMore()) return std::nullopt;
    }
    return end;
  }

  bool SendAll(const std::string& data) {
    for (size_t at = 0; at < data.size();) {
      ssize_t n = ::send(fd_, data.data() + at, data.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return false;
      at += static_cast<size_t>(n);
    }
    return true;
  }

  bool ReadMore() {
    char chunk[16384];
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  const std::string host_;
  const std::string port_;
  const int chunks_;
  std::string request_;
  std::string buffer_;
  int fd_ = -1;
};

// ---- the phases -------------------------------------------------------------

double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
         (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// Runs every worker's Call in a loop on its own thread until `until`.
template <typename Worker>
void RunPhase(std::vector<std::unique_ptr<Worker>>& workers, Clock::time_point until,
              Results* results) {
  std::vector<std::thread> threads;
  threads.reserve(workers.size());
  for (auto& worker : workers) {
    threads.emplace_back([&worker, until, results] {
      std::vector<Sample> samples;
      std::vector<std::string> errors;
      std::string error;
      while (Clock::now() < until) {
        std::optional<Sample> s = worker->Call(&error, until);
        if (s.has_value()) {
          samples.push_back(*s);
        } else {
          errors.push_back(error);
        }
      }
      if (results != nullptr) results->Add(samples, errors);
    });
  }
  for (std::thread& t : threads) t.join();
}

double Percentile(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  return values[std::min(values.size() - 1, static_cast<size_t>(values.size() * q))] * 1e3;
}

template <typename Worker>
nlohmann::json Measure(std::vector<std::unique_ptr<Worker>>& workers) {
  const auto seconds = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  RunPhase(workers, Clock::now() + seconds(absl::GetFlag(FLAGS_warmup_s)), nullptr);
  Results results;
  const double cpu0 = CpuSeconds();
  const Clock::time_point t0 = Clock::now();
  RunPhase(workers, t0 + seconds(absl::GetFlag(FLAGS_seconds)), &results);
  const double wall = Seconds(Clock::now() - t0);
  const double cpu = CpuSeconds() - cpu0;
  std::vector<double> ttfc, total;
  for (const Sample& s : results.samples) {
    ttfc.push_back(s.ttfc_s);
    total.push_back(s.total_s);
  }
  std::sort(ttfc.begin(), ttfc.end());
  std::sort(total.begin(), total.end());
  std::vector<std::string> first = results.errors;
  std::sort(first.begin(), first.end());
  first.erase(std::unique(first.begin(), first.end()), first.end());
  if (first.size() > 3) first.resize(3);
  const size_t n = results.samples.size();
  return {{"requests", n},
          {"wall_s", wall},
          {"rps", n / wall},
          {"client_cpu_s", cpu},
          {"ttfc_p50", Percentile(ttfc, 0.5)},
          {"ttfc_p99", Percentile(ttfc, 0.99)},
          {"total_p50", Percentile(total, 0.5)},
          {"total_p99", Percentile(total, 0.99)},
          {"errors", results.errors.size()},
          {"first_errors", first}};
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "bench/e2e's C++ load client: --path=llmbridge|direct|litellm "
      "--target=HOST:PORT --c=N --chunks=K --seconds=S; prints one JSON line.");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_path);
  const std::string target = absl::GetFlag(FLAGS_target);
  const int c = std::max(1, absl::GetFlag(FLAGS_c));
  const int chunks = absl::GetFlag(FLAGS_chunks);
  nlohmann::json out;
  if (path == "llmbridge") {
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
      grpc::ChannelArguments args;
      // Each channel its own connection (not a shared subchannel).
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      channels.push_back(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
    }
    std::vector<std::unique_ptr<GrpcWorker>> workers;
    for (int i = 0; i < c; ++i) {
      workers.push_back(std::make_unique<GrpcWorker>(channels[i % channels.size()], chunks));
    }
    out = Measure(workers);
  } else if (path == "direct" || path == "litellm") {
    std::vector<std::string> parts = absl::StrSplit(target, ':');
    if (parts.size() != 2) {
      std::fprintf(stderr, "--target must be HOST:PORT, not %s\n", target.c_str());
      return 2;
    }
    std::vector<std::unique_ptr<HttpWorker>> workers;
    for (int i = 0; i < c; ++i) {
      workers.push_back(std::make_unique<HttpWorker>(parts[0], parts[1], chunks));
    }
    out = Measure(workers);
  } else {
    std::fprintf(stderr, "unknown --path %s (llmbridge, direct or litellm)\n", path.c_str());
    return 2;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
