// stream_bench: end-to-end throughput and per-chunk latency of
// llmbridge::rpc::Client streams over ONE real Python sidecar running the
// echo debug backend (no model: every chunk's cost is the bridge's own).
//
// For each N in --streams it runs --streams_per_mode / N rounds (the same
// total work for every N), each round being
//   concurrent: N streams started together and multiplexed over the pipe;
//   sequential: the same N streams one at a time, each started when the
//               previous one ended (the seed's one-stream-at-a-time client).
// Every stream asks for --chunks chunks (echo option {"chunks": C}). The two
// modes alternate round by round so that machine noise hits both alike.
//
// Reported per mode: chunks/s (all chunks / wall time), the speed-up of
// concurrent over sequential, time to first chunk (from the Stream() call),
// the per-stream inter-arrival gap between consecutive chunks, and the CPU
// time per chunk spent in this process (the C++ bridge: reader thread,
// JSON parsing, dispatch) and in the sidecar (Python: JSON encoding,
// writes, asyncio).
//
// A benchmark, not a test: nothing is asserted except that every stream
// delivered all its chunks (a wrong count is an error).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/client.h"

ABSL_FLAG(std::string, python, "/work/main/.venv/bin/python",
          "Python interpreter with the sidecar's dependencies");
ABSL_FLAG(std::string, sidecar, "sidecar/sidecar.py",
          "path of sidecar/sidecar.py (relative paths: from the current "
          "directory, or the workspace under `bazel run`)");
ABSL_FLAG(std::vector<std::string>, streams, (std::vector<std::string>{"1", "8", "64"}),
          "concurrent stream counts N to measure, comma-separated");
ABSL_FLAG(std::vector<std::string>, modes,
          (std::vector<std::string>{"concurrent", "sequential"}),
          "modes to run: concurrent, sequential (one only: for profiling)");
ABSL_FLAG(int, chunks, 200, "chunks per stream");
ABSL_FLAG(int, streams_per_mode, 320,
          "streams measured per N and mode, in rounds of N (so every N does the "
          "same total work: streams_per_mode x chunks chunks per mode)");
ABSL_FLAG(int, warmup_rounds, 1, "unmeasured rounds per N before the measured ones");

namespace {

using llmbridge::rpc::Client;
using llmbridge::rpc::CompleteParams;
using llmbridge::rpc::CompleteResult;
using llmbridge::rpc::Config;
using llmbridge::rpc::StreamHandlers;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  // Fields after the command name, which is in parentheses and may hold spaces.
  size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  // Field 3 is the state; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && (fields >> field); ++i) {
    if (i == 14) utime = std::strtod(field.c_str(), nullptr);
    if (i == 15) stime = std::strtod(field.c_str(), nullptr);
  }
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto secs = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return secs(usage.ru_utime) + secs(usage.ru_stime);
}

// One stream's record. Chunk times are written on the bridge's reader
// thread (into reserved storage: no allocation in the handler) and read by
// the main thread after on_done, which the Batch's mutex orders.
struct StreamRecord {
  Clock::time_point start;
  std::vector<Clock::time_point> arrivals;
  absl::StatusOr<CompleteResult> result = absl::UnknownError("not finished");
};

// Counts finished streams; the main thread waits on it.
class Latch {
 public:
  void Reset(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    remaining_ = n;
  }
  void CountDown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--remaining_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return remaining_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int remaining_ = 0;
};

struct ModeStats {
  int64_t streams = 0;
  int64_t chunks = 0;
  double wall_s = 0;
  double bridge_cpu_s = 0;   // this process
  double sidecar_cpu_s = 0;  // the Python sidecar
  std::vector<double> first_chunk_us;
  std::vector<double> gap_us;
  std::vector<double> stream_ms;  // Stream() to on_done
  std::vector<Clock::time_point> ends;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

class Bench {
 public:
  Bench(Client& client, int chunks) : client_(client), chunks_(chunks) {
    params_.messages = {{"user", "bench", ""}};
    params_.options = llmbridge::rpc::Json{{"chunks", chunks}};
  }

  // Starts `n` streams together (concurrent) or one after another, and
  // records them into `stats` unless it is nullptr (warm-up).
  absl::Status Round(int n, bool concurrent, ModeStats* stats) {
    std::vector<std::unique_ptr<StreamRecord>> records;
    for (int i = 0; i < n; ++i) {
      records.push_back(std::make_unique<StreamRecord>());
      records.back()->arrivals.reserve(static_cast<size_t>(chunks_));
    }
    std::vector<Clock::time_point> ends(static_cast<size_t>(n));
    const pid_t pid = client_.SidecarPid();
    const double sidecar_cpu0 = ProcessCpuSeconds(pid);
    const double self_cpu0 = SelfCpuSeconds();
    const Clock::time_point t0 = Clock::now();
    if (concurrent) {
      latch_.Reset(n);
      for (int i = 0; i < n; ++i) {
        if (absl::Status s = Start(*records[i], ends[i]); !s.ok()) return s;
      }
      latch_.Wait();
    } else {
      for (int i = 0; i < n; ++i) {
        latch_.Reset(1);
        if (absl::Status s = Start(*records[i], ends[i]); !s.ok()) return s;
        latch_.Wait();
      }
    }
    const Clock::time_point t1 = Clock::now();
    const double self_cpu1 = SelfCpuSeconds();
    const double sidecar_cpu1 = ProcessCpuSeconds(pid);
    for (int i = 0; i < n; ++i) {
      const StreamRecord& r = *records[i];
      if (!r.result.ok()) {
        return absl::Status(r.result.status().code(),
                            absl::StrCat("stream failed: ", r.result.status().message()));
      }
      if (static_cast<int>(r.arrivals.size()) != chunks_ ||
          r.result->usage.output_tokens != chunks_) {
        return absl::InternalError(absl::StrCat(
            "stream got ", r.arrivals.size(), " chunks (usage says ",
            r.result->usage.output_tokens, "), expected ", chunks_));
      }
    }
    if (stats == nullptr) return absl::OkStatus();
    stats->streams += n;
    stats->chunks += static_cast<int64_t>(n) * chunks_;
    stats->wall_s += Seconds(t1 - t0);
    stats->bridge_cpu_s += self_cpu1 - self_cpu0;
    stats->sidecar_cpu_s += sidecar_cpu1 - sidecar_cpu0;
    for (int i = 0; i < n; ++i) {
      const StreamRecord& r = *records[i];
      stats->first_chunk_us.push_back(Seconds(r.arrivals.front() - r.start) * 1e6);
      for (size_t k = 1; k < r.arrivals.size(); ++k) {
        stats->gap_us.push_back(Seconds(r.arrivals[k] - r.arrivals[k - 1]) * 1e6);
      }
      stats->stream_ms.push_back(Seconds(ends[i] - r.start) * 1e3);
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Start(StreamRecord& record, Clock::time_point& end) {
    StreamHandlers handlers;
    handlers.on_chunk = [&record](const std::string&) {
      record.arrivals.push_back(Clock::now());
    };
    handlers.on_done = [this, &record, &end](absl::StatusOr<CompleteResult> r) {
      end = Clock::now();
      record.result = std::move(r);
      latch_.CountDown();
    };
    record.start = Clock::now();
    // Never fails here: a refused call reports through on_done.
    client_.Stream(params_, std::move(handlers));
    return absl::OkStatus();
  }

  Client& client_;
  const int chunks_;
  CompleteParams params_;
  Latch latch_;
};

std::string Resolve(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  if (const char* ws = std::getenv("BUILD_WORKSPACE_DIRECTORY")) {
    return absl::StrCat(ws, "/", path);
  }
  return path;
}

void PrintRow(int n, const char* mode, const ModeStats& s, double baseline_cps) {
  const double cps = static_cast<double>(s.chunks) / s.wall_s;
  const double chunks = static_cast<double>(s.chunks);
  std::printf(
      "| %3d | %-10s | %7lld | %6.2f | %9.0f | %5.2fx | %7.1f / %7.1f | %6.1f / %7.1f "
      "| %6.1f / %6.1f | %5.1f | %5.1f |\n",
      n, mode, static_cast<long long>(s.chunks), s.wall_s, cps, cps / baseline_cps,
      Percentile(s.first_chunk_us, 0.5), Percentile(s.first_chunk_us, 0.99),
      Percentile(s.gap_us, 0.5), Percentile(s.gap_us, 0.99),
      Percentile(s.stream_ms, 0.5), Percentile(s.stream_ms, 0.99),
      s.bridge_cpu_s / chunks * 1e6, s.sidecar_cpu_s / chunks * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Throughput and per-chunk latency of N concurrent rpc_bridge streams over "
      "one sidecar (echo debug backend), against one stream at a time.\n"
      "Usage: stream_bench [--python=...] [--sidecar=...] [--streams=1,8,64] "
      "[--chunks=200] [--streams_per_mode=320]");
  absl::ParseCommandLine(argc, argv);
  const int chunks = absl::GetFlag(FLAGS_chunks);
  const int per_mode = absl::GetFlag(FLAGS_streams_per_mode);
  std::vector<int> ns;
  for (const std::string& s : absl::GetFlag(FLAGS_streams)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) {
      std::fprintf(stderr, "--streams: '%s' is not a positive integer\n", s.c_str());
      return 2;
    }
    ns.push_back(n);
  }
  if (chunks <= 0 || per_mode <= 0) {
    std::fprintf(stderr, "--chunks and --streams_per_mode must be positive\n");
    return 2;
  }

  Config config;
  config.backend = llmbridge::rpc::kBackendEcho;
  config.python_path = absl::GetFlag(FLAGS_python);
  config.sidecar_path = Resolve(absl::GetFlag(FLAGS_sidecar));
  config.startup_timeout = std::chrono::seconds(30);
  config.request_timeout = std::chrono::minutes(5);
  Client client(config);
  if (absl::Status s = client.EnsureStarted(); !s.ok()) {
    std::fprintf(stderr, "cannot start the sidecar (%s %s): %s\n",
                 config.python_path.c_str(), config.sidecar_path.c_str(),
                 std::string(s.message()).c_str());
    return 1;
  }
  std::printf("stream_bench: echo backend, one sidecar (pid %d), %d chunks/stream, "
              "%d streams per N and mode in rounds of N (+%d warm-up rounds), "
              "%ld CPUs online\n\n",
              client.SidecarPid(), chunks, per_mode, absl::GetFlag(FLAGS_warmup_rounds),
              ::sysconf(_SC_NPROCESSORS_ONLN));
  std::printf(
      "| N   | mode       | chunks  | wall s | chunks/s  | vs seq | 1st chunk us p50 / p99 "
      "| gap us p50 / p99 | stream ms p50 / p99 | C++ cpu us/chunk | py cpu us/chunk |\n"
      "|-----|------------|---------|--------|-----------|--------|-------------------"
      "-----|------------------|---------------------|------|------|\n");
  std::fflush(stdout);

  bool run_concurrent = false, run_sequential = false;
  for (const std::string& m : absl::GetFlag(FLAGS_modes)) {
    if (m == "concurrent") {
      run_concurrent = true;
    } else if (m == "sequential") {
      run_sequential = true;
    } else {
      std::fprintf(stderr, "--modes: unknown mode '%s'\n", m.c_str());
      return 2;
    }
  }

  Bench bench(client, chunks);
  // Global warm-up: the sidecar's first requests import and allocate.
  if (absl::Status s = bench.Round(64, true, nullptr); !s.ok()) {
    std::fprintf(stderr, "warm-up: %s\n", s.ToString().c_str());
    return 1;
  }
  for (int n : ns) {
    ModeStats concurrent, sequential;
    for (int r = 0; r < absl::GetFlag(FLAGS_warmup_rounds); ++r) {
      for (bool c : {true, false}) {
        if (!(c ? run_concurrent : run_sequential)) continue;
        if (absl::Status s = bench.Round(n, c, nullptr); !s.ok()) {
          std::fprintf(stderr, "N=%d warm-up: %s\n", n, s.ToString().c_str());
          return 1;
        }
      }
    }
    const int rounds = std::max(1, per_mode / n);
    for (int r = 0; r < rounds; ++r) {
      // Alternate the order too, so neither mode always runs first.
      for (bool c : {r % 2 == 0, r % 2 != 0}) {
        if (!(c ? run_concurrent : run_sequential)) continue;
        if (absl::Status s = bench.Round(n, c, c ? &concurrent : &sequential); !s.ok()) {
          std::fprintf(stderr, "N=%d %s: %s\n", n, c ? "concurrent" : "sequential",
                       s.ToString().c_str());
          return 1;
        }
      }
    }
    // Without a sequential run, "vs seq" compares with the concurrent row.
    const ModeStats& baseline = run_sequential ? sequential : concurrent;
    const double base = static_cast<double>(baseline.chunks) / baseline.wall_s;
    if (run_sequential) PrintRow(n, "sequential", sequential, base);
    if (run_concurrent) PrintRow(n, "concurrent", concurrent, base);
    std::fflush(stdout);
  }
  std::printf(
      "\nsequential: the same streams one at a time (the seed's client). vs seq: "
      "chunks/s over the sequential row of the same N.\n"
      "1st chunk: Stream() call to first chunk; gap: between consecutive chunks of one "
      "stream; stream: Stream() call to on_done.\n"
      "cpu us/chunk: CPU time (user+sys) of this process (C++ bridge) and of the "
      "sidecar, over chunks delivered.\n");
  client.Close();
  return 0;
}
