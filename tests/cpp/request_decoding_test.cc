// DescribeUndecodable names what is wrong with request bytes that protobuf
// refuses: not protobuf at all, or a string field that is not UTF-8 (by
// its path). AnswerUndecodableRequests is checked on an in-process gRPC
// server: each handler sits on its own method (the indices come from the
// service descriptor, so adding or reordering an rpc cannot move them onto
// another method's messages). The binary is covered end to end in tests/e2e.
#include "service/request_decoding.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "llmbridge/v1/llmbridge.grpc.pb.h"
#include "llmbridge/v1/llmbridge.pb.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteRequest;

std::string Serialized(const CompleteRequest& r) {
  std::string bytes;
  EXPECT_TRUE(r.SerializePartialToString(&bytes));
  return bytes;
}

CompleteRequest TwoMessages() {
  CompleteRequest r;
  for (const char* text : {"first", "second"}) {
    auto* m = r.add_messages();
    m->set_role("user");
    m->set_content(text);
  }
  return r;
}

// Replaces the UTF-8 text `from` inside serialized bytes with bytes of the
// same length that are not UTF-8 (protobuf would not serialize those).
std::string Corrupt(std::string bytes, const std::string& from) {
  size_t at = bytes.find(from);
  EXPECT_NE(at, std::string::npos);
  bytes[at] = '\xff';
  return bytes;
}

TEST(DescribeUndecodableTest, TruncatedBytes) {
  std::string bytes = Serialized(TwoMessages());
  bytes.resize(bytes.size() - 3);
  CompleteRequest parsed;
  ASSERT_FALSE(parsed.ParseFromString(bytes));
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(why.message().find("not a valid llmbridge.v1.CompleteRequest"),
            absl::string_view::npos)
      << why.message();
  EXPECT_NE(why.message().find("truncated or corrupt"), absl::string_view::npos);
}

TEST(DescribeUndecodableTest, NamesTheStringFieldThatIsNotUtf8) {
  std::string bytes = Corrupt(Serialized(TwoMessages()), "second");
  CompleteRequest parsed;
  ASSERT_FALSE(parsed.ParseFromString(bytes));
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(why.message().substr(0, 40),
            "messages[1].content: not valid UTF-8; pr")
      << why.message();
}

TEST(DescribeUndecodableTest, FindsFieldsInsideOptions) {
  CompleteRequest r = TwoMessages();
  (*r.mutable_options()->mutable_fields())["stop"].set_string_value("halt");
  std::string bytes = Corrupt(Serialized(r), "halt");
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.message().substr(0, why.message().find(':')),
            "options.fields[0].value.string_value")
      << why.message();
}

TEST(DescribeUndecodableTest, OverlongAndSurrogateEncodingsAreNotUtf8) {
  for (std::string bad : {std::string("\xc0\xaf"), std::string("\xed\xa0\x80"),
                          std::string("\xf4\x90\x80\x80"), std::string("ab\xe2\x82")}) {
    CompleteRequest r;
    r.set_model("MODEL" + std::string(bad.size() > 5 ? 0 : 5 - bad.size(), '_'));
    std::string bytes = Serialized(r);
    size_t at = bytes.find("MODEL");
    bytes.replace(at, bad.size(), bad);
    absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
    EXPECT_EQ(why.message().substr(0, 6), "model:") << why.message();
  }
}

TEST(LocalLlmMethodIndexTest, FollowsTheServiceDescriptor) {
  const google::protobuf::ServiceDescriptor* service =
      CompleteRequest::descriptor()->file()->FindServiceByName("LocalLLM");
  ASSERT_NE(service, nullptr);
  for (int i = 0; i < service->method_count(); ++i) {
    EXPECT_EQ(LocalLlmMethodIndex(service->method(i)->name()).value_or(-1), i);
  }
  absl::StatusOr<int> missing = LocalLlmMethodIndex("Completion");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("llmbridge.v1.LocalLLM has no method Completion"),
            absl::string_view::npos)
      << missing.status();
}

// Answers each method with something that says which method ran and what
// it was given.
class EchoService final : public llmbridge::v1::LocalLLM::CallbackService {
 public:
  grpc::ServerWriteReactor<llmbridge::v1::CompleteResponse>* Complete(
      grpc::CallbackServerContext*, const CompleteRequest* request) override {
    class Reactor final : public grpc::ServerWriteReactor<llmbridge::v1::CompleteResponse> {
     public:
      explicit Reactor(std::string content) {
        response_.set_content(std::move(content));
        response_.set_done(true);
        StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnDone() override { delete this; }

     private:
      llmbridge::v1::CompleteResponse response_;
    };
    return new Reactor("Complete:" + request->model());
  }

  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const llmbridge::v1::EmbedRequest* request,
                                  llmbridge::v1::EmbedResponse* response) override {
    response->set_model("Embed:" + request->model());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* CountTokens(grpc::CallbackServerContext* context,
                                        const llmbridge::v1::CountTokensRequest* request,
                                        llmbridge::v1::CountTokensResponse* response) override {
    response->set_input_tokens(1000 + request->messages_size());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

class InProcessServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AnswerUndecodableRequests(&service_);
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // Sends `bytes` as the one request message of `method` (any kind of
  // call: the wire is the same), as a client with another .proto would.
  grpc::Status SendRaw(const std::string& method, const std::string& bytes) {
    grpc::GenericStub stub(channel_);
    grpc::CompletionQueue cq;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(
        &context, absl::StrCat("/", llmbridge::v1::LocalLLM::service_full_name(), "/", method),
        &cq);
    auto step = [&cq](auto start) {
      start();
      void* tag = nullptr;
      bool ok = false;
      EXPECT_TRUE(cq.Next(&tag, &ok));
      return ok;
    };
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::Status status;
    step([&] { call->StartCall(this); });
    step([&] { call->Write(request, this); });
    step([&] { call->WritesDone(this); });
    while (step([&] { call->Read(&response, this); })) {
    }
    step([&] { call->Finish(&status, this); });
    cq.Shutdown();
    return status;
  }

  EchoService service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Each handler's second look at bad bytes describes them as its own
// method's request: a handler on another method's index would name another
// message type.
TEST_F(InProcessServerTest, UndecodableBytesAreDescribedAsTheMethodsOwnRequest) {
  const std::string truncated = "\x0a\x05ab";  // field 1: 5 bytes promised, 2 sent
  for (const char* method : {"Complete", "Embed", "CountTokens"}) {
    grpc::Status status = SendRaw(method, truncated);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_NE(status.error_message().find(
                  absl::StrCat("not a valid llmbridge.v1.", method, "Request")),
              std::string::npos)
        << method << ": " << status.error_message();
  }
}

// Decodable requests still reach the service's own method for each rpc.
TEST_F(InProcessServerTest, DecodableRequestsReachTheirOwnMethods) {
  auto stub = llmbridge::v1::LocalLLM::NewStub(channel_);
  {
    grpc::ClientContext context;
    CompleteRequest request;
    request.set_model("m");
    auto reader = stub->Complete(&context, request);
    llmbridge::v1::CompleteResponse response;
    ASSERT_TRUE(reader->Read(&response));
    EXPECT_EQ(response.content(), "Complete:m");
    EXPECT_TRUE(reader->Finish().ok());
  }
  {
    grpc::ClientContext context;
    llmbridge::v1::EmbedRequest request;
    request.set_model("e");
    llmbridge::v1::EmbedResponse response;
    ASSERT_TRUE(stub->Embed(&context, request, &response).ok());
    EXPECT_EQ(response.model(), "Embed:e");
  }
  {
    grpc::ClientContext context;
    llmbridge::v1::CountTokensRequest request;
    request.add_messages()->set_content("a");
    request.add_messages()->set_content("b");
    llmbridge::v1::CountTokensResponse response;
    ASSERT_TRUE(stub->CountTokens(&context, request, &response).ok());
    EXPECT_EQ(response.input_tokens(), 1002);
  }
  // A method without a decoding handler is left as gRPC made it.
  grpc::ClientContext context;
  llmbridge::v1::ListToolsResponse tools;
  EXPECT_EQ(stub->ListTools(&context, {}, &tools).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace llmbridge::service
