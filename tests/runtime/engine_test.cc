#include "runtime/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "prometheus/registry.h"

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
  // A clock the test moves: deadlines expire at a chosen token, whatever the
  // machine's speed.
  std::atomic<int64_t> now_ms{0};
  EngineOptions options;
  options.clock = [&] { return absl::UnixEpoch() + absl::Milliseconds(now_ms.load()); };
  auto engine = Engine::Create(*model_, options, nullptr);
  ASSERT_TRUE(engine.ok());
  std::atomic<int> seen{0};
  GenerationRequest r = Request(Prompt(0, 300), Ratio8Like(), 3000);
  r.on_token = [&](int32_t) { ++seen; };
  r.cancelled = [&] { return seen.load() >= 5; };
  auto cancelled = (*engine)->Generate(std::move(r));
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen.load(), 5);
  EXPECT_EQ((*engine)->stats().used_bytes, 0);

  GenerationRequest late = Request(Prompt(0, 300), Ratio8Like(), 3000);
  std::atomic<int> tokens{0};
  late.on_token = [&](int32_t) {
    if (++tokens == 3) now_ms += 301;
  };
  late.deadline = absl::UnixEpoch() + absl::Milliseconds(now_ms.load() + 300);
  auto expired = (*engine)->Generate(std::move(late));
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kDeadlineExceeded) << expired.status();
  EXPECT_EQ(tokens.load(), 3);  // it expired mid-decode, at the step after the third token
  EXPECT_EQ((*engine)->stats().used_bytes, 0);
  EXPECT_EQ((*engine)->stats().running, 0);

  // Cancelled during the prompt's prefill: polled once in the queue, then
  // before each piece of prefill (4096 rows; this prompt takes four pieces):
  // the third piece's poll cancels it.
  std::atomic<int> polls{0};
  GenerationRequest early = Request(Prompt(0, 300), Ratio8Like(), 8);
  early.on_token = [&](int32_t) { ++seen; };
  early.cancelled = [&] { return ++polls > 3; };
  seen = 0;
  auto in_prefill = (*engine)->Generate(std::move(early));
  EXPECT_EQ(in_prefill.status().code(), absl::StatusCode::kCancelled);
  EXPECT_NE(in_prefill.status().message().find("prefill"), std::string::npos)
      << in_prefill.status();
  EXPECT_EQ(seen.load(), 0);
  EXPECT_EQ((*engine)->stats().used_bytes, 0);
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
  // Greedy output, then the same request with stop sequences.
  auto greedy = (*engine)->Generate(Request(Prompt(0, 200), Ratio8Like(), 24));
  ASSERT_TRUE(greedy.ok());
  const std::vector<int32_t>& g = greedy->tokens;
  ASSERT_EQ(g.size(), 24u);
  // The first occurrence of the pair (g[4], g[5]) ends generation; the output
  // holds what came before it, and the stream saw exactly the output.
  size_t at = 0;
  while (!(g[at] == g[4] && g[at + 1] == g[5])) ++at;
  GenerationRequest stopped = Request(Prompt(0, 200), Ratio8Like(), 24);
  stopped.stop = {{g[4], g[5]}};
  std::vector<int32_t> streamed;
  stopped.on_token = [&](int32_t t) { streamed.push_back(t); };
  auto out = (*engine)->Generate(std::move(stopped));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->finish, FinishReason::kStop);
  EXPECT_EQ(out->tokens, std::vector<int32_t>(g.begin(), g.begin() + at));
  EXPECT_EQ(out->generated_tokens, static_cast<int64_t>(at + 2));
  EXPECT_EQ(streamed, out->tokens);
  // A stop sequence that never completes: tokens held back while it might
  // are delivered in the end, and the output is the greedy one.
  int32_t absent = 0;  // a byte the greedy output never holds
  while (std::find(g.begin(), g.end(), absent) != g.end()) ++absent;
  GenerationRequest never = Request(Prompt(0, 200), Ratio8Like(), 24);
  never.stop = {{g[21], g[22], g[23], absent}, {g[23], absent}};
  std::vector<int32_t> all;
  never.on_token = [&](int32_t t) { all.push_back(t); };
  auto length = (*engine)->Generate(std::move(never));
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(length->finish, FinishReason::kLength);
  EXPECT_EQ(length->tokens, g);
  EXPECT_EQ(all, g);
  // Overlapping stops ending at the same token: the longer one is dropped.
  GenerationRequest both = Request(Prompt(0, 200), Ratio8Like(), 24);
  both.stop = {{g[7]}, {g[5], g[6], g[7]}};
  size_t first7 = 0;
  while (g[first7] != g[7]) ++first7;
  auto b = (*engine)->Generate(std::move(both));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->finish, FinishReason::kStop);
  const bool long_first = first7 == 7 || (first7 >= 2 && g[first7 - 2] == g[5] &&
                                          g[first7 - 1] == g[6]);
  EXPECT_EQ(b->tokens.size(), long_first ? first7 - 2 : first7);
  // Limits on stop sequences.
  GenerationRequest many = Request(Prompt(0, 50), Ratio8Like(), 4);
  many.stop.assign(17, std::vector<int32_t>{1});
  EXPECT_EQ((*engine)->Generate(std::move(many)).status().code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest longer = Request(Prompt(0, 50), Ratio8Like(), 4);
  longer.stop = {std::vector<int32_t>(257, 1)};
  EXPECT_EQ((*engine)->Generate(std::move(longer)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The value of a counter or gauge family's sample whose labels include `label`
// (empty: the first sample); -1 when absent.
double Sample(prometheus::Registry& registry, const std::string& family,
              const std::string& label = "") {
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      bool match = label.empty();
      for (const auto& l : m.label) match = match || l.value == label;
      if (match) return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  return -1;
}

TEST_F(EngineTest, MetricsCountDecodeStepsTokensAndEngineTime) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto engine = Engine::Create(*model_, {}, registry.get());
  ASSERT_TRUE(engine.ok());
  auto one = (*engine)->Generate(Request(Prompt(0, 300), Ratio8Like(), 10));
  ASSERT_TRUE(one.ok()) << one.status();
  // The first token comes from the prefill; the other 9 from 9 decode steps.
  EXPECT_EQ(Sample(*registry, "moend_node_decode_steps_total"), 9);
  EXPECT_EQ(Sample(*registry, "moend_node_decode_tokens_total"), 9);
  EXPECT_GT(Sample(*registry, "moend_node_engine_seconds_total", "prefill"), 0);
  EXPECT_GT(Sample(*registry, "moend_node_engine_seconds_total", "decode"), 0);
  EXPECT_EQ(Sample(*registry, "moend_node_kv_pool_bytes", "used"), 0);
  // Two at once (B queued at A's first token, so they overlap): a step that
  // decodes both counts two tokens.
  std::thread b_thread;
  GenerationRequest a = Request(Prompt(500, 300), Ratio8Like(), 40);
  bool first = true;
  a.on_token = [&](int32_t) {
    if (!first) return;
    first = false;
    b_thread = std::thread([&] {
      EXPECT_TRUE((*engine)->Generate(Request(Prompt(900, 300), Ratio8Like(), 40)).ok());
    });
    while ((*engine)->stats().queued == 0) std::this_thread::yield();
  };
  EXPECT_TRUE((*engine)->Generate(std::move(a)).ok());
  b_thread.join();
  EXPECT_EQ(Sample(*registry, "moend_node_decode_tokens_total"), 9 + 39 + 39);
  const double steps = Sample(*registry, "moend_node_decode_steps_total");
  EXPECT_LT(steps, 9 + 39 + 39);  // some steps decoded both
  EXPECT_GE(steps, 9 + 39);
}

TEST_F(EngineTest, ShutdownFailsRunningPrefillingAndQueuedRequestsWithUnavailable) {
  auto engine = Engine::Create(*model_, {}, nullptr);
  ASSERT_TRUE(engine.ok());
  Engine* e = engine->get();
  // A decodes; at its first token B is queued; once B's prefill is under way
  // C is queued behind it (one prefill at a time); then the engine goes. None
  // of them could finish first: each asks for 3,000 tokens.
  std::atomic<bool> all_placed{false};
  absl::Status b_status, c_status;
  std::thread b_thread, c_thread;
  GenerationRequest a = Request(Prompt(0, 300), Ratio8Like(), 3000);
  int a_tokens = 0;
  a.on_token = [&](int32_t) {
    ++a_tokens;
    if (a_tokens == 1) {
      b_thread = std::thread([&] {
        b_status = e->Generate(Request(Prompt(400, 1000), Ratio8Like(), 3000)).status();
      });
      while (e->stats().queued == 0) std::this_thread::yield();
    } else if (!all_placed && e->stats().prefilling == 1) {
      c_thread = std::thread([&] {
        c_status = e->Generate(Request(Prompt(1500, 1000), Ratio8Like(), 3000)).status();
      });
      while (e->stats().queued == 0) std::this_thread::yield();
      all_placed = true;
    }
  };
  absl::Status a_status;
  std::thread a_thread([&] { a_status = e->Generate(std::move(a)).status(); });
  while (!all_placed) std::this_thread::yield();
  engine->reset();  // stops the loop; every request fails
  a_thread.join();
  b_thread.join();
  c_thread.join();
  EXPECT_EQ(a_status.code(), absl::StatusCode::kUnavailable) << a_status;
  EXPECT_EQ(b_status.code(), absl::StatusCode::kUnavailable) << b_status;
  EXPECT_EQ(c_status.code(), absl::StatusCode::kUnavailable) << c_status;
}

TEST_F(EngineTest, APromptsPrefillRunsInBoundedPiecesBetweenDecodeStepsOfTheRunningSequences) {
  const int64_t layers = model_->config().num_layers;
  // B's prompt of 900 tokens, in chunks of 256 rows: per layer 4 projection
  // units, the compression, 4 attention units and 4 MLP units, 13 units of
  // 900 + 256 + 900 + 900 = 2956 rows.
  const int64_t n = 900, units_per_layer = 13, rows_per_layer = 3 * n + 256;
  // A decodes; at its first token (on the engine thread) B is queued, and
  // the callback waits until the engine sees it. A's next step (its second
  // token) comes before B is admitted; then every turn runs one piece of B's
  // prefill and one decode step of A, and the last piece delivers B's first
  // token before that turn's step. So A has 1 + (pieces) tokens then. (Were
  // B's prefill run whole between two steps, A would have 2.)
  auto run = [&](int64_t budget, int64_t pieces) {
    EngineOptions options;
    options.prefill_rows_per_step = budget;
    auto engine = Engine::Create(*model_, options, nullptr);
    ASSERT_TRUE(engine.ok());
    std::atomic<int64_t> a_tokens{0}, a_at_b_first{-1}, prefilling_seen{0};
    std::thread b_thread;
    std::vector<int32_t> b_tokens;
    const int64_t a_new = pieces + 8;
    GenerationRequest a = Request(Prompt(0, 300), Ratio8Like(), a_new);
    a.on_token = [&](int32_t) {
      if (a_at_b_first < 0 && (*engine)->stats().prefilling == 1) ++prefilling_seen;
      if (++a_tokens == 1) {
        b_thread = std::thread([&] {
          GenerationRequest b = Request(Prompt(700, n), Ratio8Like(), 6);
          b.on_token = [&](int32_t) {
            if (a_at_b_first < 0) a_at_b_first = a_tokens.load();
          };
          auto r = (*engine)->Generate(std::move(b));
          ASSERT_TRUE(r.ok()) << r.status();
          b_tokens = r->tokens;
        });
        while ((*engine)->stats().queued == 0) std::this_thread::yield();
      }
    };
    auto ra = (*engine)->Generate(std::move(a));
    b_thread.join();
    ASSERT_TRUE(ra.ok()) << ra.status();
    EXPECT_EQ(a_at_b_first.load(), pieces + 1) << "budget " << budget;
    EXPECT_EQ(prefilling_seen.load(), pieces - 1) << "budget " << budget;  // the stats show it
    EXPECT_EQ((*engine)->stats().prefilling, 0);
    // Interleaving changes no token.
    EXPECT_EQ(ra->tokens, GreedyAlone(Prompt(0, 300), Ratio8Like(), a_new)) << budget;
    EXPECT_EQ(b_tokens, GreedyAlone(Prompt(700, n), Ratio8Like(), 6)) << budget;
    EXPECT_EQ((*engine)->stats().used_bytes, 0);
  };
  run(1, layers * units_per_layer);  // one unit per step
  run(rows_per_layer, layers);       // one layer per step
  // Otherwise: pieces of whole units, each ending once it adds up to at
  // least the budget.
  const int64_t unit_rows[] = {256, 256, 256, 132, 256, 256, 256, 256, 132, 256, 256, 256, 132};
  auto pieces_for = [&](int64_t budget) {
    int64_t pieces = 0, spent = 0;
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t rows : unit_rows) {
        if (spent == 0) ++pieces;
        spent += rows;
        if (spent >= budget) spent = 0;
      }
    }
    return pieces;
  };
  run(256, pieces_for(256));  // one unit, or a short one and the next
  run(EngineOptions{}.prefill_rows_per_step, pieces_for(EngineOptions{}.prefill_rows_per_step));
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
