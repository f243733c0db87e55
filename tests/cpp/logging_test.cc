// The server's log lines: each one JSON object, whatever the text in it;
// the sidecar's stderr lines wrapped with their origin and level.
#include "service/logging.h"

#include <string>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace llmbridge::service {
namespace {

const absl::Time kNoon = absl::FromUnixMillis(1'795'000'000'123);

// The line must end in exactly one '\n' and parse as one JSON object.
nlohmann::json Parse(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  return nlohmann::json::parse(line);
}

TEST(LoggingTest, EventLineCarriesTimeLevelEventAndFields) {
  nlohmann::json j = Parse(FormatLogLine("info", "started",
                                         {{"port", 50051}, {"tls", false}}, kNoon));
  EXPECT_EQ(j["ts"], "2026-11-18T11:06:40.123Z");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["event"], "started");
  EXPECT_EQ(j["port"], 50051);
  EXPECT_EQ(j["tls"], false);
}

TEST(LoggingTest, SidecarLineKeepsItsTextAndNamesItsOrigin) {
  const std::string text =
      "2026-11-17 08:53:20,123 sidecar[4242] INFO llmbridge_sidecar: "
      "loaded \"model\" from C:\\models\ttab";
  nlohmann::json j = Parse(FormatSidecarLogLine(4242, text, kNoon));
  EXPECT_EQ(j["event"], "sidecar_log");
  EXPECT_EQ(j["pid"], 4242);
  EXPECT_EQ(j["line"], text);
  EXPECT_EQ(j["level"], "info");
}

TEST(LoggingTest, SidecarLevelComesFromPythonsLogFormat) {
  auto level = [](const std::string& line) {
    return Parse(FormatSidecarLogLine(1, line, kNoon))["level"];
  };
  EXPECT_EQ(level("t sidecar[7] WARNING llmbridge_sidecar.server: slow"), "warn");
  EXPECT_EQ(level("t sidecar[7] ERROR llmbridge_sidecar.mcp_client: down"), "error");
  EXPECT_EQ(level("t sidecar[7] CRITICAL x: y"), "error");
  EXPECT_EQ(level("t sidecar[7] DEBUG x: y"), "debug");
  // Not the sidecar's format (llama.cpp's C code, an MCP server): info.
  EXPECT_EQ(level("llama_model_loader: loaded meta data with 33 key-value pairs"),
            "info");
  EXPECT_EQ(level("ERROR in an MCP server's own words"), "info");
  EXPECT_EQ(level(""), "info");
}

TEST(LoggingTest, BytesThatAreNotUtf8StillMakeOneJsonLine) {
  constexpr char kText[] = "bad \xff\xfe bytes\r and a \0 NUL";
  const std::string text(kText, sizeof(kText) - 1);
  nlohmann::json j = Parse(FormatSidecarLogLine(9, text, kNoon));
  std::string line = j["line"];
  EXPECT_THAT(line, ::testing::HasSubstr("\xEF\xBF\xBD"));  // U+FFFD
  EXPECT_THAT(line, ::testing::HasSubstr(" bytes\r and a "));
  EXPECT_THAT(line, ::testing::EndsWith(std::string("\0 NUL", 5)));
}

}  // namespace
}  // namespace llmbridge::service
