// The inference path end to end on loopback with the real binaries: a
// registry holding the committed table of the shipped model, a router, and a
// moend-node following the router's plan for ratio 8. Generate must run over a
// really compressed cache, and a newer calibration must reach the node.
#include <gtest/gtest.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <tuple>

#include "core/sensitivity_table.h"
#include "grpcpp/grpcpp.h"
#include "moend/v1/node.grpc.pb.h"
#include "services/registry/registry_client.h"
#include "tests/util/child_process.h"

namespace moend {
namespace {

namespace fs = std::filesystem;
using testing::ChildProcess;

const std::string kSrc = MOEND_SOURCE_DIR;

double Metric(const std::string& text, const std::string& name) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex("\n" + name + " ([0-9.e+-]+)"))) {
    return std::stod(m[1]);
  }
  return -1;
}

int FreePort() {
  // A port from the kernel, released for the child to take.
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

TEST(NodeTest, GeneratesOverTheRoutersPlanAndFollowsNewCalibrations) {
  const fs::path dir = fs::temp_directory_path() / ("moend_node_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  ChildProcess registry(MOEND_REGISTRY_BIN,
                        {"--db", (dir / "db").string(), "--listen", "127.0.0.1:0"},
                        (dir / "registry.log").string());
  const std::string reg = registry.WaitForLine("listening on ", absl::Seconds(20));
  ASSERT_FALSE(reg.empty()) << registry.Log();

  auto client = registry::RegistryClient::Connect({.target = reg});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json").ok());
  auto table = ReadSensitivityTable(kSrc + "/data/tables/tinycode_calibration_4096x16.json");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE((*client)->PublishTable(*table).ok());

  ChildProcess router(MOEND_ROUTER_BIN, {"--registry", reg, "--listen", "127.0.0.1:0"},
                      (dir / "router.log").string());
  const std::string rtr = router.WaitForLine("listening on ", absl::Seconds(20));
  ASSERT_FALSE(rtr.empty()) << router.Log();

  const std::string metrics = "127.0.0.1:" + std::to_string(FreePort());
  ChildProcess node(MOEND_NODE_BIN,
                    {"--model", kSrc + "/models/tinycode", "--listen", "127.0.0.1:0", "--router",
                     rtr, "--ratio", "8", "--solver", "exact", "--metrics", metrics},
                    (dir / "node.log").string());
  const std::string addr = node.WaitForLine("listening on ", absl::Seconds(30));
  ASSERT_FALSE(addr.empty()) << node.Log();

  auto stub = v1::InferenceNode::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  std::string prompt;
  {
    std::ifstream f(kSrc + "/data/heldout_code.bin", std::ios::binary);
    prompt.resize(2000);
    f.read(prompt.data(), 2000);
  }
  // The node picks up its plan asynchronously: retry until version 1 is applied.
  v1::GenerateResponse resp;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_prompt(prompt);
    req.set_max_new_tokens(40);
    resp.Clear();
    grpc::Status s = stub->Generate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message() << node.Log();
    if (resp.plan_version() == 1) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(resp.plan_version(), 1u) << node.Log();
  EXPECT_EQ(resp.generated_tokens(), 40);
  EXPECT_EQ(resp.text().size(), 40u);
  EXPECT_EQ(resp.prompt_tokens(), 2000);
  // The cache holds the prompt and every generated token but the last (never
  // fed): 2039 tokens x 12 layers x 2 heads x 64 x 4 bytes in fp16.
  EXPECT_EQ(resp.full_cache_bytes(), 2039LL * 12 * 2 * 64 * 4);
  const double ratio = static_cast<double>(resp.full_cache_bytes()) / resp.kv_cache_bytes();
  EXPECT_GT(ratio, 5.0);  // plan is 8x at c = 3840; the fp16 window and residual weigh more at 2000

  // The full-cache baseline on request.
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_prompt(prompt);
    req.set_max_new_tokens(8);
    req.set_full_cache(true);
    v1::GenerateResponse full;
    ASSERT_TRUE(stub->Generate(&ctx, req, &full).ok());
    EXPECT_EQ(full.plan_version(), 0u);
    EXPECT_EQ(full.kv_cache_bytes(), full.full_cache_bytes());
  }
  // Bad input is a clear error.
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    v1::GenerateResponse r;
    grpc::Status s = stub->Generate(&ctx, req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("prompt is empty"), std::string::npos);
  }

  const std::string scraped = testing::HttpGet(metrics, "/metrics");
  EXPECT_NE(testing::HttpGet(metrics, "/healthz").find("200 OK\r\n"), std::string::npos)
      << "the node's /healthz (its health service, in process)";
  EXPECT_EQ(Metric(scraped, "moend_node_plan_version"), 1.0) << scraped;
  EXPECT_NEAR(Metric(scraped, "moend_node_plan_ratio"), 8.0, 0.05) << scraped;
  // The last finished request was the full-cache one.
  EXPECT_EQ(Metric(scraped, "moend_node_compression_ratio"), 1.0) << scraped;
  EXPECT_GE(Metric(scraped, "moend_node_tokens_generated_total"), 48.0) << scraped;
  EXPECT_GT(Metric(scraped, "moend_node_plan_predicted_error"), 0.0) << scraped;

  // A newer calibration lands: the node applies version 2.
  ASSERT_TRUE((*client)->PublishTable(*table).ok());
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_prompt(prompt.substr(0, 300));
    req.set_max_new_tokens(2);
    resp.Clear();
    ASSERT_TRUE(stub->Generate(&ctx, req, &resp).ok());
    if (resp.plan_version() == 2) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(resp.plan_version(), 2u) << node.Log();
  EXPECT_EQ(node.Signal(SIGTERM, absl::Seconds(20)) >> 8, 0) << node.Log();
  fs::remove_all(dir);
}

// A node serving a fixed --plan under a small KV pool (16,000,000 bytes), without a router:
// streaming equals unary generation, the pool refuses what can never fit
// with the numbers, bad requests get clear errors, and every byte goes back.
// A per-head plan file (core/plan.h: layers with "heads"): the node hands the
// runtime one tuple per (layer, KV head), 24 for tinycode, as
// Plan::RuntimeTuples. While the runtime applies only per-layer plans
// (runtime::ValidatePlan wants num_layers tuples) the node refuses it at
// start, naming the 24 tuples; once the runtime takes per-head plans, the
// node must serve it over a compressed cache. Either way a node that read
// only the layers' own tuples (unused, the full cache, for per-head layers)
// fails this test.
TEST(NodeTest, PerHeadPlanFileGivesTheRuntimeOneTuplePerHead) {
  const fs::path dir = fs::temp_directory_path() / ("moend_node_heads_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string plan = (dir / "plan.json").string();
  {
    std::ofstream f(plan);
    f << R"({"model":"tinycode","solver":"manual","budget_bytes":1000000000,"context":4096,)"
      << R"("total_bytes":24,"ratio":1,"predicted_error":0,"layers":[)";
    for (int l = 0; l < 12; ++l) {
      f << (l ? "," : "") << R"({"bytes":2,"predicted_error":0,"heads":[)"
        << R"({"keep":0.25,"kbits":4,"vbits":2,"bytes":1,"predicted_error":0},)"
        << R"({"keep":0.5,"kbits":8,"vbits":4,"bytes":1,"predicted_error":0}]})";
    }
    f << "]}";
  }
  ChildProcess node(MOEND_NODE_BIN,
                    {"--model", kSrc + "/models/tinycode", "--listen", "127.0.0.1:0", "--plan",
                     plan, "--kv-pool-bytes", "16000000"},
                    (dir / "node.log").string());
  const std::string addr = node.WaitForLine("listening on ", absl::Seconds(30));
  if (addr.empty()) {
    EXPECT_NE(node.WaitExit(absl::Seconds(10)), -1) << node.Log();
    EXPECT_NE(node.Log().find("plan has 24 layers but the model has 12"), std::string::npos)
        << node.Log();
  } else {
    auto stub = v1::InferenceNode::NewStub(
        grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
    v1::GenerateRequest req;
    req.set_prompt(std::string(600, 'a'));
    req.set_max_new_tokens(4);
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Generate(&ctx, req, &resp).ok()) << node.Log();
    EXPECT_LT(resp.kv_cache_bytes(), resp.full_cache_bytes()) << node.Log();
  }
  fs::remove_all(dir);
}

TEST(NodeTest, FixedPlanPoolStreamingAndBadInput) {
  const fs::path dir = fs::temp_directory_path() / ("moend_node_pool_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string plan = (dir / "plan.json").string();
  {
    // keep 0.25 everywhere at 4/2 bits: 12 layers.
    std::ofstream f(plan);
    f << R"({"model":"tinycode","solver":"manual","budget_bytes":1000000000,"context":4096,)"
      << R"("total_bytes":12,"ratio":1,"predicted_error":0,"layers":[)";
    for (int l = 0; l < 12; ++l) {
      f << (l ? "," : "")
        << R"({"keep":0.25,"kbits":4,"vbits":2,"bytes":1,"predicted_error":0})";
    }
    f << "]}";
  }
  const std::string metrics = "127.0.0.1:" + std::to_string(FreePort());
  ChildProcess node(MOEND_NODE_BIN,
                    {"--model", kSrc + "/models/tinycode", "--listen", "127.0.0.1:0", "--plan",
                     plan, "--kv-pool-bytes", "16000000", "--metrics", metrics, "--shadow-rate",
                     "1", "--shadow-tokens", "8"},
                    (dir / "node.log").string());
  const std::string addr = node.WaitForLine("listening on ", absl::Seconds(30));
  ASSERT_FALSE(addr.empty()) << node.Log();
  auto stub = v1::InferenceNode::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  std::string prompt;
  {
    std::ifstream f(kSrc + "/data/heldout_code.bin", std::ios::binary);
    prompt.resize(4000);
    f.read(prompt.data(), 4000);
  }
  const std::string long_prompt = prompt;
  prompt.resize(1500);
  v1::GenerateRequest req;
  req.set_prompt(prompt);
  req.set_max_new_tokens(24);
  v1::GenerateResponse unary;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Generate(&ctx, req, &unary).ok()) << node.Log();
  }
  EXPECT_EQ(unary.plan_version(), 0u);
  EXPECT_EQ(unary.token_ids_size(), 24);
  EXPECT_EQ(unary.finish_reason(), "length");
  EXPECT_GT(unary.reserved_bytes(), unary.kv_cache_bytes());
  // The shadow's full cache (12 layers x 2 heads x 1507 tokens x 256 bytes)
  // is reserved too.
  EXPECT_GT(unary.reserved_bytes(), 12LL * 2 * 1507 * 256);
  EXPECT_GT(static_cast<double>(unary.full_cache_bytes()) / unary.kv_cache_bytes(), 3.0);
  EXPECT_EQ(unary.shadow_steps(), 7);  // every request is shadowed for 8 tokens
  EXPECT_LE(unary.shadow_agreements(), 7);
  EXPECT_GE(unary.shadow_kl_nats(), 0.0);
  {
    grpc::ClientContext ctx;
    auto reader = stub->GenerateStream(&ctx, req);
    v1::GenerateChunk chunk;
    std::string streamed;
    int messages = 0;
    v1::GenerateResponse done;
    while (reader->Read(&chunk)) {
      ++messages;
      if (chunk.has_done()) done = chunk.done();
      streamed += chunk.text();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(streamed, unary.text());
    EXPECT_EQ(done.text(), unary.text());
    EXPECT_GT(messages, 1);
  }
  {  // A prompt whose full cache can never fit the 16,000,000-byte pool.
    v1::GenerateRequest big = req;
    big.set_prompt(long_prompt);
    big.set_full_cache(true);
    grpc::ClientContext ctx;
    v1::GenerateResponse out;
    grpc::Status s = stub->Generate(&ctx, big, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(s.error_message().find("16000000"), std::string::npos) << s.error_message();
  }
  for (auto [field, value, want] :
       {std::tuple{"temperature", -1.0, "temperature"}, {"top_p", 2.0, "top_p"}}) {
    v1::GenerateRequest bad = req;
    if (std::string(field) == "temperature") bad.mutable_sampling()->set_temperature(value);
    else bad.mutable_sampling()->set_top_p(value);
    grpc::ClientContext ctx;
    v1::GenerateResponse out;
    grpc::Status s = stub->Generate(&ctx, bad, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(s.error_message().find(want), std::string::npos) << s.error_message();
  }
  {
    v1::GenerateRequest ids;
    ids.add_prompt_token_ids(5);
    ids.add_prompt_token_ids(256);
    grpc::ClientContext ctx;
    v1::GenerateResponse out;
    grpc::Status s = stub->Generate(&ctx, ids, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("256"), std::string::npos) << s.error_message();
  }
  {  // A client that gives up mid-decode frees its sequence.
    v1::GenerateRequest slow = req;
    slow.set_max_new_tokens(2000);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(2500));
    v1::GenerateResponse out;
    EXPECT_EQ(stub->Generate(&ctx, slow, &out).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // Still serving, and the pool is whole again.
  {
    grpc::ClientContext ctx;
    v1::GenerateResponse out;
    ASSERT_TRUE(stub->Generate(&ctx, req, &out).ok());
    EXPECT_EQ(out.text(), unary.text());
  }
  std::string scraped;
  for (int i = 0; i < 50; ++i) {  // the engine publishes after its loop turn
    scraped = testing::HttpGet(metrics, "/metrics");
    if (Metric(scraped, "moend_node_kv_pool_bytes\\{state=\"used\"\\}") == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(Metric(scraped, "moend_node_kv_pool_bytes\\{state=\"used\"\\}"), 0) << scraped;
  EXPECT_EQ(Metric(scraped, "moend_node_kv_pool_bytes\\{state=\"free\"\\}"), 16000000) << scraped;
  EXPECT_EQ(Metric(scraped, "moend_node_sequences\\{state=\"running\"\\}"), 0) << scraped;
  EXPECT_GE(Metric(scraped, "moend_node_shadow_steps_total\\{plan=\"fixed\"\\}"), 7) << scraped;
  EXPECT_EQ(node.Signal(SIGTERM, absl::Seconds(20)) >> 8, 0) << node.Log();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moend
