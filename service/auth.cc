#include "service/auth.h"

#include <grpc/grpc_security.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "service/logging.h"

namespace llmbridge::service {
namespace {

constexpr size_t kMaxTokenFileBytes = 1 << 20;
constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";
constexpr absl::string_view kReflectionPrefixes[] = {
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/"};

absl::Status Unauthenticated(absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat(
      why,
      "; send the metadata 'authorization: Bearer <token>' with a token from "
      "the server's --auth_token_file"));
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "auth_token_file: cannot read '", path, "': ", std::strerror(errno)));
  }
  std::string text(kMaxTokenFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxTokenFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "auth_token_file: '", path, "' is larger than 1 MiB"));
  }
  return text;
}

// What the watcher compares to notice a change: a Kubernetes Secret update
// replaces the file through a symlink swap, so the inode changes even when
// size and mtime happen to match.
std::string FileIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":",
                      st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
}

// Rejections are logged at most once a second, with a count, so that a
// client hammering the port cannot flood the log.
class RejectionLog {
 public:
  void Note(absl::string_view path, const absl::Status& why) {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    LogEvent("warn", "unauthenticated",
             {{"rejected", count_},
              {"last_method", std::string(path)},
              {"last_reason", std::string(why.message().substr(
                                  0, why.message().find(';')))}});
    count_ = 0;
  }

 private:
  std::mutex mu_;
  std::chrono::steady_clock::time_point last_ ABSL_GUARDED_BY(mu_);
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

RejectionLog& Rejections() {
  static RejectionLog* log = new RejectionLog();
  return *log;
}

// gRPC core's processor interface: used for plaintext ports.
void ProcessCoreMetadata(void* state, grpc_auth_context* /*context*/,
                         const grpc_metadata* md, size_t count,
                         grpc_process_auth_metadata_done_cb done,
                         void* user_data) {
  auto* auth = static_cast<const BearerAuth*>(state);
  absl::string_view path;
  std::optional<absl::string_view> authorization;
  const grpc_metadata* consumed = nullptr;
  for (size_t i = 0; i < count; ++i) {
    absl::string_view key(
        reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(md[i].key)),
        GRPC_SLICE_LENGTH(md[i].key));
    absl::string_view value(
        reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(md[i].value)),
        GRPC_SLICE_LENGTH(md[i].value));
    if (key == ":path") path = value;
    if (key == "authorization") {
      authorization = value;
      consumed = &md[i];
    }
  }
  absl::Status status = auth->Check(path, authorization);
  if (!status.ok()) {
    const std::string message(status.message());
    done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
         message.c_str());
    return;
  }
  done(user_data, consumed, consumed == nullptr ? 0 : 1, nullptr, 0,
       GRPC_STATUS_OK, nullptr);
}

// The C++ interface: used for TLS ports (SslServerCredentials take it).
class CppProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit CppProcessor(const BearerAuth* auth) : auth_(auth) {}
  // A hash and a few compares: cheap enough for gRPC's own threads.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& md, grpc::AuthContext* /*context*/,
                       OutputMetadata* consumed,
                       OutputMetadata* /*response*/) override {
    absl::string_view path;
    std::optional<absl::string_view> authorization;
    for (const auto& [key, value] : md) {
      absl::string_view k(key.data(), key.size());
      if (k == ":path") path = absl::string_view(value.data(), value.size());
      if (k == "authorization") {
        authorization = absl::string_view(value.data(), value.size());
      }
    }
    absl::Status status = auth_->Check(path, authorization);
    if (!status.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          std::string(status.message()));
    }
    if (authorization.has_value()) {
      consumed->insert({"authorization", std::string(*authorization)});
    }
    return grpc::Status::OK;
  }

 private:
  const BearerAuth* const auth_;
};

// Plaintext credentials with a processor: gRPC core's insecure credentials
// accept one (grpc++'s InsecureServerCredentials do not).
class InsecureCredentialsWithAuth final : public grpc::ServerCredentials {
 public:
  explicit InsecureCredentialsWithAuth(const BearerAuth* auth) : auth_(auth) {}
  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>& /*processor*/)
      override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    grpc_server_credentials* creds = grpc_insecure_server_credentials_create();
    grpc_server_credentials_set_auth_metadata_processor(
        creds, {ProcessCoreMetadata, /*destroy=*/nullptr,
                const_cast<BearerAuth*>(auth_)});
    int port = grpc_server_add_http2_port(server, addr.c_str(), creds);
    grpc_server_credentials_release(creds);
    return port;
  }

  const BearerAuth* const auth_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTokenFile(absl::string_view text) {
  std::vector<std::string> tokens;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    for (char c : line) {
      if (c < 0x21 || c > 0x7e) {
        return absl::InvalidArgumentError(absl::StrCat(
            "auth_token_file: line ", number,
            ": a token may hold only printable ASCII without spaces"));
      }
    }
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        "auth_token_file: no tokens (one per line; blank lines and lines "
        "starting with # are ignored)");
  }
  return tokens;
}

TokenSet::Digest TokenSet::DigestOf(absl::string_view text) {
  Digest digest;
  ::SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(),
           digest.data());
  return digest;
}

void TokenSet::Replace(const std::vector<std::string>& tokens) {
  auto digests = std::make_shared<std::vector<Digest>>();
  for (const std::string& token : tokens) digests->push_back(DigestOf(token));
  std::lock_guard<std::mutex> lock(mu_);
  digests_ = std::move(digests);
}

bool TokenSet::Accepts(absl::string_view presented) const {
  std::shared_ptr<const std::vector<Digest>> digests;
  {
    std::lock_guard<std::mutex> lock(mu_);
    digests = digests_;
  }
  if (digests == nullptr) return false;
  // Digests have one length whatever the token's, and every one is
  // compared in full: no early exit tells an attacker how close they came.
  const Digest candidate = DigestOf(presented);
  int matches = 0;
  for (const Digest& d : *digests) {
    matches |= CRYPTO_memcmp(d.data(), candidate.data(), d.size()) == 0;
  }
  return matches != 0;
}

size_t TokenSet::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return digests_ == nullptr ? 0 : digests_->size();
}

absl::StatusOr<std::unique_ptr<BearerAuth>> BearerAuth::Start(
    AuthOptions options) {
  // First of all, before anything here can start a thread (the first log
  // line starts the log writer's): every thread started from now on
  // inherits the mask, so SIGHUP reaches only the watcher, which waits for
  // it, never a thread that would die of it.
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &hup, nullptr);
  std::unique_ptr<BearerAuth> auth(new BearerAuth(std::move(options)));
  auth->file_identity_ = FileIdentity(auth->options_.token_file);
  absl::StatusOr<std::string> text = ReadSmallFile(auth->options_.token_file);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokenFile(*text);
  if (!tokens.ok()) return tokens.status();
  auth->tokens_.Replace(*tokens);
  LogEvent("info", "auth_tokens_loaded",
           {{"tokens", tokens->size()},
            {"file", auth->options_.token_file},
            {"trigger", "start"},
            {"reflection_open", !auth->options_.protect_reflection}});
  auth->watcher_ = std::thread(&BearerAuth::Watch, auth.get());
  return auth;
}

BearerAuth::~BearerAuth() {
  stop_ = true;
  if (watcher_.joinable()) {
    pthread_kill(watcher_.native_handle(), SIGHUP);  // wakes sigtimedwait
    watcher_.join();
  }
}

bool BearerAuth::Reload(const std::string& trigger) {
  absl::StatusOr<std::string> text = ReadSmallFile(options_.token_file);
  absl::StatusOr<std::vector<std::string>> tokens =
      text.ok() ? ParseTokenFile(*text)
                : absl::StatusOr<std::vector<std::string>>(text.status());
  if (!tokens.ok()) {
    LogEvent("warn", "auth_reload_failed",
             {{"trigger", trigger},
              {"error", std::string(tokens.status().message())},
              {"kept_tokens", tokens_.size()}});
    return false;
  }
  tokens_.Replace(*tokens);
  LogEvent("info", "auth_tokens_loaded",
           {{"tokens", tokens->size()},
            {"file", options_.token_file},
            {"trigger", trigger}});
  return true;
}

void BearerAuth::Watch() {
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  const timespec interval{1, 0};
  while (!stop_) {
    int signo = sigtimedwait(&hup, nullptr, &interval);
    if (stop_) return;
    if (signo == SIGHUP) {
      file_identity_ = FileIdentity(options_.token_file);
      Reload("SIGHUP");
      continue;
    }
    std::string identity = FileIdentity(options_.token_file);
    if (identity != file_identity_) {
      file_identity_ = identity;
      Reload("file changed");
    }
  }
}

absl::Status BearerAuth::Check(
    absl::string_view path, std::optional<absl::string_view> authorization) const {
  if (absl::StartsWith(path, kHealthPrefix)) return absl::OkStatus();
  if (!options_.protect_reflection) {
    for (absl::string_view prefix : kReflectionPrefixes) {
      if (absl::StartsWith(path, prefix)) return absl::OkStatus();
    }
  }
  absl::Status status;
  if (!authorization.has_value()) {
    status = Unauthenticated("this server requires a token");
  } else {
    absl::string_view value = absl::StripAsciiWhitespace(*authorization);
    constexpr absl::string_view kScheme = "bearer ";
    if (value.size() <= kScheme.size() ||
        !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
      status = Unauthenticated("the authorization metadata is not 'Bearer <token>'");
    } else if (!tokens_.Accepts(
                   absl::StripAsciiWhitespace(value.substr(kScheme.size())))) {
      status = Unauthenticated(
          "the token was not accepted (unknown, or rotated out of the "
          "server's token file)");
    }
  }
  if (!status.ok()) Rejections().Note(path, status);
  return status;
}

std::shared_ptr<grpc::ServerCredentials> BearerAuth::Protect(
    std::shared_ptr<grpc::ServerCredentials> credentials, bool tls) {
  if (!tls) return std::make_shared<InsecureCredentialsWithAuth>(this);
  credentials->SetAuthMetadataProcessor(std::make_shared<CppProcessor>(this));
  return credentials;
}

absl::StatusOr<std::unique_ptr<BearerAuth>> StartBearerAuth(
    const std::string& token_file, bool reflection_open) {
  if (token_file.empty()) return std::unique_ptr<BearerAuth>();
  return BearerAuth::Start({token_file, !reflection_open});
}

std::shared_ptr<grpc::ServerCredentials> WithBearerAuth(
    std::shared_ptr<grpc::ServerCredentials> credentials, bool tls,
    BearerAuth* auth) {
  if (auth == nullptr) return credentials;
  return auth->Protect(std::move(credentials), tls);
}

}  // namespace llmbridge::service
