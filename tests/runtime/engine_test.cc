#include "runtime/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "runtime/sequence.h"
#include "runtime/streaming_prefill.h"
#include "tests/runtime/tinycode_fixture.h"

namespace moend::runtime {
namespace {

class EngineTest : public testing::TinycodeTest {
 protected:
  static std::vector<CompressionTuple> Ratio8Like() {
    std::vector<CompressionTuple> plan;
    for (int l = 0; l < 12; ++l) plan.push_back(l % 3 ? CompressionTuple{0.25, 4, 2}
                                                       : CompressionTuple{0.5, 2, 4});
    return plan;
  }
  static GenerationRequest Request(std::vector<int32_t> prompt, std::vector<CompressionTuple> plan,
                                   int64_t max_new) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.plan = std::move(plan);
    r.max_new_tokens = max_new;
    return r;
  }
  // Greedy tokens through the evaluation's path (streaming prefill + Feed).
  static std::vector<int32_t> GreedyAlone(const std::vector<int32_t>& prompt,
                                          const std::vector<CompressionTuple>& plan, int64_t n) {
    std::vector<std::vector<CompressionTuple>> plans{plan};
    PrefillOptions options;
    options.appended_capacity = n;
    auto prefill = StreamingPrefill(*model_, prompt, plans, options);
    EXPECT_TRUE(prefill.ok());
    Sequence seq(std::move(prefill->caches[0]), static_cast<int64_t>(prompt.size()));
    std::vector<int32_t> out{Argmax(prefill->last_logits)};
    while (static_cast<int64_t>(out.size()) < n) {
      auto logits = Feed(*model_, seq, std::vector<int32_t>{out.back()});
      EXPECT_TRUE(logits.ok());
      out.push_back(Argmax(*logits));
    }
    return out;
  }
};

TEST_F(EngineTest, ConcurrentRequestsGiveWhatEachGetsAloneOnTheEvaluationPath) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  const std::vector<std::vector<CompressionTuple>> plans = {
      Ratio8Like(), std::vector<CompressionTuple>(12), Ratio8Like(),
      std::vector<CompressionTuple>(12, CompressionTuple{0.125, 2, 2})};
  const int64_t begins[] = {0, 500, 900, 1300}, sizes[] = {400, 257, 333, 500};
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = (*engine)->Generate(Request(Prompt(begins[i], sizes[i]), plans[i], 40));
      ASSERT_TRUE(r.ok()) << r.status();
      got[i] = r->tokens;
      EXPECT_EQ(r->finish, FinishReason::kLength);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(got[i], GreedyAlone(Prompt(begins[i], sizes[i]), plans[i], 40)) << i;
  }
  EXPECT_EQ((*engine)->stats().used_bytes, 0);
}

TEST_F(EngineTest, PoolAdmitsQueuesAndRefusesWithTheNumbers) {
  const std::vector<CompressionTuple> plan = Ratio8Like();
  const int64_t one = ReservedSequenceBytes(model_->config(), plan, 300, 15);
  EngineOptions options;
  options.kv_pool_bytes = one + one / 2;  // room for one sequence at a time
  auto engine = Engine::Create(*model_, options, nullptr);
  ASSERT_TRUE(engine.ok());
  std::atomic<int64_t> max_used{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      GenerationRequest r = Request(Prompt(100 * i, 300), plan, 16);
      r.on_token = [&](int32_t) {
        max_used = std::max<int64_t>(max_used, (*engine)->stats().used_bytes);
      };
      auto out = (*engine)->Generate(std::move(r));
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(out->reserved_bytes, one);
      EXPECT_EQ(static_cast<int64_t>(out->tokens.size()), 16);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(max_used.load(), one);  // never two at once
  EXPECT_EQ((*engine)->stats().used_bytes, 0);

  auto big = (*engine)->Generate(Request(Prompt(0, 1500), std::vector<CompressionTuple>(12), 8));
  ASSERT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  const int64_t need = ReservedSequenceBytes(model_->config(),
                                             std::vector<CompressionTuple>(12), 1500, 7);
  EXPECT_NE(big.status().message().find(std::to_string(need)), std::string::npos)
      << big.status();
  EXPECT_NE(big.status().message().find(std::to_string(options.kv_pool_bytes)),
            std::string::npos);
}

TEST_F(EngineTest, CancelAndDeadlineFreeTheBytesAtOnce) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  std::atomic<int> seen{0};
  GenerationRequest r = Request(Prompt(0, 300), Ratio8Like(), 3000);
  r.on_token = [&](int32_t) { ++seen; };
  r.cancelled = [&] { return seen.load() >= 5; };
  auto cancelled = (*engine)->Generate(std::move(r));
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*engine)->stats().used_bytes, 0);

  GenerationRequest late = Request(Prompt(0, 300), Ratio8Like(), 3000);
  std::atomic<int> tokens{0};
  late.on_token = [&](int32_t) {
    if (++tokens == 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  };
  late.deadline = absl::Now() + absl::Milliseconds(300);
  auto expired = (*engine)->Generate(std::move(late));
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kDeadlineExceeded) << expired.status();
  EXPECT_GT(tokens.load(), 0);  // it expired mid-decode, not in the queue
  EXPECT_EQ((*engine)->stats().used_bytes, 0);
  EXPECT_EQ((*engine)->stats().running, 0);
  // Still serving.
  EXPECT_TRUE((*engine)->Generate(Request(Prompt(0, 100), Ratio8Like(), 3)).ok());
}

TEST_F(EngineTest, BadRequestsGetClearErrorsAndTheEngineKeepsServing) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  auto code = [&](GenerationRequest r) { return (*engine)->Generate(std::move(r)).status(); };
  EXPECT_EQ(code(Request({}, Ratio8Like(), 4)).code(), absl::StatusCode::kInvalidArgument);
  absl::Status vocab = code(Request({1, 300, 2}, Ratio8Like(), 4));
  EXPECT_EQ(vocab.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(vocab.message().find("300"), std::string::npos);
  absl::Status layers = code(Request(Prompt(0, 50), std::vector<CompressionTuple>(11), 4));
  EXPECT_NE(layers.message().find("11 tuples"), std::string::npos) << layers;
  EXPECT_EQ(code(Request(Prompt(0, 50), Ratio8Like(), 0)).code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest hot = Request(Prompt(0, 50), Ratio8Like(), 4);
  hot.sampling.temperature = -1;
  EXPECT_NE(code(hot).message().find("temperature"), std::string::npos);
  GenerationRequest nucleus = Request(Prompt(0, 50), Ratio8Like(), 4);
  nucleus.sampling.top_p = 1.5;
  EXPECT_NE(code(nucleus).message().find("top_p"), std::string::npos);
  GenerationRequest empty_stop = Request(Prompt(0, 50), Ratio8Like(), 4);
  empty_stop.stop = {{}};
  EXPECT_EQ(code(empty_stop).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::Create(*model_, {.kv_pool_bytes = 0}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*engine)->Generate(Request(Prompt(0, 50), Ratio8Like(), 4)).ok());
}

TEST_F(EngineTest, SamplingIsSeededAndStopSequencesEndGeneration) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  auto sample = [&](uint64_t seed) {
    GenerationRequest r = Request(Prompt(0, 200), Ratio8Like(), 24);
    r.sampling = {.temperature = 1.0, .top_k = 20, .top_p = 0.95, .seed = seed};
    auto out = (*engine)->Generate(std::move(r));
    EXPECT_TRUE(out.ok());
    return out->tokens;
  };
  EXPECT_EQ(sample(7), sample(7));
  EXPECT_NE(sample(7), sample(8));  // 24 tokens at temperature 1: equal by chance ~never
  // Greedy output, then the same request stopped at its 5th and 6th tokens.
  auto greedy = (*engine)->Generate(Request(Prompt(0, 200), Ratio8Like(), 24));
  ASSERT_TRUE(greedy.ok());
  GenerationRequest stopped = Request(Prompt(0, 200), Ratio8Like(), 24);
  stopped.stop = {{greedy->tokens[4], greedy->tokens[5]}};
  auto out = (*engine)->Generate(std::move(stopped));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->finish, FinishReason::kStop);
  EXPECT_LE(out->tokens.size(), 6u);
  EXPECT_EQ(out->tokens, std::vector<int32_t>(greedy->tokens.begin(),
                                              greedy->tokens.begin() + out->tokens.size()));
}

TEST_F(EngineTest, ShadowMeasuresAgreementAndKlAgainstTheFullCache) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  const std::vector<CompressionTuple> full(12);
  // The full plan against its full shadow: the same computation, so every
  // step agrees and the KL is zero.
  GenerationRequest same = Request(Prompt(0, 600), full, 12);
  same.shadow_tokens = 10;
  auto a = (*engine)->Generate(std::move(same));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shadow_steps, 9);
  EXPECT_EQ(a->shadow_agreements, 9);
  EXPECT_LT(a->shadow_kl_sum, 1e-9);
  EXPECT_EQ(a->reserved_bytes, ReservedSequenceBytes(model_->config(), full, 600, 11) +
                                   ReservedSequenceBytes(model_->config(), full, 600, 9));
  // The harshest tuple everywhere moves the distributions measurably.
  const std::vector<CompressionTuple> harsh(12, CompressionTuple{0.0625, 2, 2});
  GenerationRequest lossy = Request(Prompt(0, 600), harsh, 30);
  lossy.shadow_tokens = 20;
  auto b = (*engine)->Generate(std::move(lossy));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->shadow_steps, 19);
  EXPECT_LE(b->shadow_agreements, 19);
  EXPECT_GT(b->shadow_kl_sum, 1e-3);
  // The shadow changes nothing about the tokens the request gets.
  EXPECT_EQ(b->tokens, GreedyAlone(Prompt(0, 600), harsh, 30));
  EXPECT_EQ((*engine)->stats().used_bytes, 0);
}

}  // namespace
}  // namespace moend::runtime
