// Server options of the ops flags: connection age validation, and which
// flags --help lists.
#include <chrono>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/help.h"
#include "service/server_options.h"

namespace llmbridge::service {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

std::string Error(const ConnectionAge& age) {
  absl::Status s = ValidateConnectionAge(age);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  return std::string(s.message());
}

TEST(ConnectionAgeTest, OffByDefaultAndAnyPositiveAgeIsValid) {
  EXPECT_TRUE(ValidateConnectionAge({}).ok());
  EXPECT_TRUE(ValidateConnectionAge({milliseconds(300'000), milliseconds(0)}).ok());
  EXPECT_TRUE(ValidateConnectionAge({milliseconds(1), milliseconds(1)}).ok());
}

TEST(ConnectionAgeTest, BadValuesNameTheFlag) {
  EXPECT_THAT(Error({milliseconds(-1), milliseconds(0)}),
              HasSubstr("--max_connection_age must not be negative"));
  EXPECT_THAT(Error({milliseconds(1000), milliseconds(-5)}),
              HasSubstr("--max_connection_age_grace must not be negative"));
  // gRPC takes an int of milliseconds.
  EXPECT_THAT(Error({milliseconds(int64_t{1} << 31), milliseconds(0)}),
              HasSubstr("--max_connection_age is too long"));
  EXPECT_THAT(Error({milliseconds(0), milliseconds(1000)}),
              HasSubstr("--max_connection_age_grace needs --max_connection_age"));
}

TEST(FlagHelpTest, ListsFlagsOfTheServerOnly) {
  EXPECT_TRUE(IsServerFlagFile("service/main.cc"));
  EXPECT_TRUE(IsServerFlagFile("/src/llmbridge/service/main.cc"));
  EXPECT_FALSE(IsServerFlagFile("absl/flags/parse.cc"));
  EXPECT_FALSE(IsServerFlagFile("absl/flags/internal/usage.cc"));
}

}  // namespace
}  // namespace llmbridge::service
