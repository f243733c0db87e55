// Bearer-token checks without a server: the token file format, constant-
// time matching, which methods stay open, and reloading. The gRPC side
// (UNAUTHENTICATED before any work, SIGHUP, a Secret-style symlink swap,
// TLS) runs against the real server in tests/e2e/test_auth_e2e.py.
#include "service/auth.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace llmbridge::service {
namespace {

TEST(ParseTokenFileTest, OneTokenPerLineIgnoringBlanksAndComments) {
  auto tokens = ParseTokenFile("# rotated 2026-11-30\n\n  alpha  \r\nbeta\n#gamma\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, (std::vector<std::string>{"alpha", "beta"}));
}

TEST(ParseTokenFileTest, RejectsTokensAHeaderCannotCarryWithoutQuotingThem) {
  auto tokens = ParseTokenFile("good\nsecret with space\n");
  ASSERT_FALSE(tokens.ok());
  EXPECT_NE(tokens.status().message().find("line 2"), absl::string_view::npos);
  EXPECT_EQ(tokens.status().message().find("secret"), absl::string_view::npos);
}

TEST(ParseTokenFileTest, AFileWithoutTokensIsAnError) {
  EXPECT_FALSE(ParseTokenFile("# nothing here\n\n").ok());
  EXPECT_FALSE(ParseTokenFile("").ok());
}

TEST(TokenSetTest, AcceptsExactlyTheCurrentTokens) {
  TokenSet set;
  EXPECT_FALSE(set.Accepts("alpha"));
  set.Replace({"alpha", "beta"});
  EXPECT_TRUE(set.Accepts("alpha"));
  EXPECT_TRUE(set.Accepts("beta"));
  EXPECT_FALSE(set.Accepts("alph"));
  EXPECT_FALSE(set.Accepts("alphaa"));
  EXPECT_FALSE(set.Accepts(""));
  set.Replace({"gamma"});
  EXPECT_FALSE(set.Accepts("alpha"));
  EXPECT_TRUE(set.Accepts("gamma"));
}

class BearerAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/auth_test_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    path_ = std::string(dir) + "/tokens";
    Write("alpha\n");
  }
  void TearDown() override {
    std::remove(path_.c_str());
  }
  void Write(const std::string& text) { std::ofstream(path_) << text; }

  std::string path_;
};

TEST_F(BearerAuthTest, ChecksTheAuthorizationMetadata) {
  auto auth = BearerAuth::Start({path_, /*protect_reflection=*/false});
  ASSERT_TRUE(auth.ok()) << auth.status();
  const BearerAuth& a = **auth;
  constexpr char kComplete[] = "/llmbridge.v1.LocalLLM/Complete";
  EXPECT_TRUE(a.Check(kComplete, "Bearer alpha").ok());
  EXPECT_TRUE(a.Check(kComplete, "bearer   alpha ").ok());

  absl::Status missing = a.Check(kComplete, std::nullopt);
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(missing.message().find("authorization: Bearer <token>"),
            absl::string_view::npos);
  EXPECT_EQ(a.Check(kComplete, "Basic YWxwaGE=").code(),
            absl::StatusCode::kUnauthenticated);
  absl::Status wrong = a.Check(kComplete, "Bearer alpha2");
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.message().find("alpha2"), absl::string_view::npos);

  // Probes and reflection need no token.
  EXPECT_TRUE(a.Check("/grpc.health.v1.Health/Check", std::nullopt).ok());
  EXPECT_TRUE(a.Check("/grpc.reflection.v1alpha.ServerReflection/"
                      "ServerReflectionInfo", std::nullopt).ok());
}

TEST_F(BearerAuthTest, ReflectionCanRequireAToken) {
  auto auth = BearerAuth::Start({path_, /*protect_reflection=*/true});
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->Check("/grpc.reflection.v1alpha.ServerReflection/"
                           "ServerReflectionInfo", std::nullopt).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE((*auth)->Check("/grpc.health.v1.Health/Watch", std::nullopt).ok());
}

TEST_F(BearerAuthTest, ReloadRotatesAndABadFileKeepsTheTokensInUse) {
  auto auth = BearerAuth::Start({path_, false});
  ASSERT_TRUE(auth.ok()) << auth.status();
  constexpr char kPath[] = "/llmbridge.v1.LocalLLM/ListTools";
  Write("beta\n");
  EXPECT_TRUE((*auth)->Reload("test"));
  EXPECT_TRUE((*auth)->Check(kPath, "Bearer beta").ok());
  EXPECT_FALSE((*auth)->Check(kPath, "Bearer alpha").ok());

  Write("# emptied by a half-done edit\n");
  EXPECT_FALSE((*auth)->Reload("test"));
  EXPECT_TRUE((*auth)->Check(kPath, "Bearer beta").ok());
}

TEST_F(BearerAuthTest, StartFailsOnAMissingOrEmptyFile) {
  EXPECT_FALSE(BearerAuth::Start({path_ + ".missing", false}).ok());
  Write("\n# none\n");
  EXPECT_FALSE(BearerAuth::Start({path_, false}).ok());
}

}  // namespace
}  // namespace llmbridge::service
