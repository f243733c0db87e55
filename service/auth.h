// Bearer-token authentication of gRPC calls (--auth_token_file).
//
// Clients send the metadata `authorization: Bearer <token>`. The check runs
// in gRPC's auth filter (an auth metadata processor on the server
// credentials, plaintext and TLS alike), so a call with a missing or wrong
// token ends with UNAUTHENTICATED before any handler runs: no reactor, no
// sidecar request, no log line with a request id. The processor consumes
// the header: handlers never see a token, and nothing logs one.
//
// Tokens live in a file, one per line; blank lines and lines starting with
// '#' are ignored. The file is read again on SIGHUP and whenever it changes
// (checked every second: path, inode, size and mtime, so a Kubernetes
// Secret update, which swaps a symlink, is seen too). A reload that finds
// the file unreadable or without tokens keeps the tokens in use and logs a
// warning: a half-written file must not lock every client out.
//
// Health (grpc.health.v1, for kubelet probes) is always open; reflection is
// open unless `protect_reflection`.
//
// Threading: the processor runs on gRPC's threads, concurrently; the
// watcher on a thread of its own. Everything here may be used from any
// thread.
#ifndef LLMBRIDGE_SERVICE_AUTH_H_
#define LLMBRIDGE_SERVICE_AUTH_H_

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/server_credentials.h"

namespace llmbridge::service {

// The tokens of a token file's text. InvalidArgument (naming the line,
// never the token) for a token with characters a gRPC header value cannot
// carry, or when there is none at all.
absl::StatusOr<std::vector<std::string>> ParseTokenFile(absl::string_view text);

// The accepted tokens, kept only as SHA-256 digests and compared in
// constant time: how long a check takes says nothing about any token.
class TokenSet {
 public:
  void Replace(const std::vector<std::string>& tokens);
  bool Accepts(absl::string_view presented) const;
  size_t size() const;

 private:
  using Digest = std::array<unsigned char, 32>;
  static Digest DigestOf(absl::string_view text);

  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<Digest>> digests_ ABSL_GUARDED_BY(mu_);
};

struct AuthOptions {
  std::string token_file;
  bool protect_reflection = false;
};

class BearerAuth {
 public:
  // Reads the token file (an error if unreadable or empty) and starts
  // watching it. Call after the process blocked SIGINT/SIGTERM and before
  // it starts other threads: this blocks SIGHUP in the calling thread, so
  // that every thread started later leaves SIGHUP to the watcher.
  static absl::StatusOr<std::unique_ptr<BearerAuth>> Start(AuthOptions options);
  ~BearerAuth();  // stops the watcher

  // OK, or UNAUTHENTICATED saying what the client must send. `path` is the
  // call's method ("/package.Service/Method"); `authorization` the value of
  // the authorization header, if the client sent one.
  absl::Status Check(absl::string_view path,
                     std::optional<absl::string_view> authorization) const;

  // `credentials` with this check installed. `tls` says whether they are
  // SslServerCredentials (which take a C++ processor); plaintext ones are
  // rebuilt around gRPC core's insecure credentials, the only way gRPC 1.51
  // lets a processor run without TLS (its InsecureServerCredentials abort
  // in SetAuthMetadataProcessor).
  std::shared_ptr<grpc::ServerCredentials> Protect(
      std::shared_ptr<grpc::ServerCredentials> credentials, bool tls);

  // Reads the token file now (what SIGHUP does); false if it was kept.
  bool Reload(const std::string& trigger);
  size_t token_count() const { return tokens_.size(); }

 private:
  explicit BearerAuth(AuthOptions options) : options_(std::move(options)) {}
  void Watch();

  const AuthOptions options_;
  TokenSet tokens_;
  std::string file_identity_;  // path, inode, size, mtime; watcher thread only
  std::atomic<bool> stop_{false};
  std::thread watcher_;
};

// BearerAuth::Start for a configured token file; nullptr (no
// authentication) when `token_file` is empty.
absl::StatusOr<std::unique_ptr<BearerAuth>> StartBearerAuth(
    const std::string& token_file, bool reflection_open);

// `credentials` unchanged when `auth` is null, else auth->Protect(...): so
// that main.cc needs one line whether or not a token file is configured.
std::shared_ptr<grpc::ServerCredentials> WithBearerAuth(
    std::shared_ptr<grpc::ServerCredentials> credentials, bool tls,
    BearerAuth* auth);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_AUTH_H_
