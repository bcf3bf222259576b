// The generated messages serialize and parse back field for field.
#include <string>

#include "gtest/gtest.h"
#include "moend/v1/node.grpc.pb.h"
#include "moend/v1/plan.pb.h"
#include "moend/v1/registry.grpc.pb.h"
#include "moend/v1/router.grpc.pb.h"

namespace {

TEST(ProtoTest, PlanRoundTripsWithNamedLayerFields) {
  moend::v1::Plan plan;
  plan.set_version(7);
  plan.set_model("tinycode");
  plan.set_solver("greedy");
  plan.set_table_version(3);
  plan.set_budget_bytes(123456);
  plan.set_context(3840);
  for (int l = 0; l < 12; ++l) {
    moend::v1::LayerPlan* layer = plan.add_layers();
    layer->set_layer(l);
    layer->set_keep(l % 2 ? 0.5 : 0.125);
    layer->set_kbits(4);
    layer->set_vbits(l % 3 ? 2 : 8);
    layer->set_bytes(1000 + 16 * l);
    layer->set_predicted_error(0.001 * l);
  }
  plan.set_total_bytes(12000);
  plan.set_full_bytes(12 * 2 * 3840 * 64 * 4);
  plan.set_ratio(static_cast<double>(plan.full_bytes()) / plan.total_bytes());
  plan.set_predicted_error(0.066);

  std::string wire;
  ASSERT_TRUE(plan.SerializeToString(&wire));
  moend::v1::Plan back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.version(), 7u);
  EXPECT_EQ(back.model(), "tinycode");
  EXPECT_EQ(back.solver(), "greedy");
  EXPECT_EQ(back.table_version(), 3u);
  EXPECT_EQ(back.budget_bytes(), 123456);
  EXPECT_EQ(back.context(), 3840);
  ASSERT_EQ(back.layers_size(), 12);
  EXPECT_EQ(back.layers(5).layer(), 5);
  EXPECT_DOUBLE_EQ(back.layers(5).keep(), 0.5);
  EXPECT_EQ(back.layers(5).kbits(), 4);
  EXPECT_EQ(back.layers(5).vbits(), 2);
  EXPECT_EQ(back.layers(5).bytes(), 1080);
  EXPECT_DOUBLE_EQ(back.layers(5).predicted_error(), 0.005);
  EXPECT_DOUBLE_EQ(back.ratio(), plan.ratio());
  EXPECT_EQ(back.SerializeAsString(), wire);
}

TEST(ProtoTest, SensitivityTableRoundTripsRowsAndTuples) {
  moend::v1::SensitivityTable t;
  t.set_model("tinycode");
  t.set_num_layers(2);
  t.set_num_kv_heads(2);
  t.set_head_dim(64);
  t.set_seq_len(4096);
  t.set_compression_point(3840);
  t.set_samples(16);
  for (double keep : {1.0, 0.5, 0.0625}) {
    auto* tuple = t.add_tuples();
    tuple->set_keep(keep);
    tuple->set_kbits(8);
    tuple->set_vbits(2);
  }
  for (int l = 0; l < 2; ++l) {
    auto* row = t.add_s();
    for (int i = 0; i < 3; ++i) row->add_s(l * 10 + i + 0.25);
  }
  moend::v1::SensitivityTable back;
  ASSERT_TRUE(back.ParseFromString(t.SerializeAsString()));
  EXPECT_EQ(back.model(), "tinycode");
  EXPECT_EQ(back.compression_point(), 3840);
  ASSERT_EQ(back.tuples_size(), 3);
  EXPECT_DOUBLE_EQ(back.tuples(2).keep(), 0.0625);
  EXPECT_EQ(back.tuples(2).vbits(), 2);
  ASSERT_EQ(back.s_size(), 2);
  ASSERT_EQ(back.s(1).s_size(), 3);
  EXPECT_DOUBLE_EQ(back.s(1).s(2), 12.25);
}

// Per-head routing added fields under new numbers only, so that older
// senders' bytes parse with them empty (a per-layer table or plan) and older
// readers skip them.
TEST(ProtoTest, PerHeadFieldsHaveNewNumbersAndRoundTrip) {
  const auto* table = moend::v1::SensitivityTable::descriptor();
  ASSERT_NE(table->FindFieldByName("s_head"), nullptr);
  EXPECT_EQ(table->FindFieldByName("s_head")->number(), 10);
  EXPECT_EQ(table->FindFieldByName("signals")->number(), 11);
  EXPECT_EQ(moend::v1::LayerPlan::descriptor()->FindFieldByName("heads")->number(), 7);
  EXPECT_EQ(moend::v1::SolvePlanRequest::descriptor()->FindFieldByName("units")->number(), 5);
  EXPECT_EQ(moend::v1::WatchPlansRequest::descriptor()->FindFieldByName("units")->number(), 4);
  EXPECT_EQ(moend::v1::PartialTable::descriptor()->FindFieldByName("head_rows")->number(), 6);

  moend::v1::SensitivityTable t;
  t.set_num_layers(2);
  t.set_num_kv_heads(2);
  for (int l = 0; l < 2; ++l) {
    t.add_s()->add_s(l + 0.5);
    auto* heads = t.add_s_head();
    for (int h = 0; h < 2; ++h) heads->add_heads()->add_s(l * 10 + h + 0.25);
  }
  t.add_signals("code: 16 x 4096 tokens");
  moend::v1::SensitivityTable back;
  ASSERT_TRUE(back.ParseFromString(t.SerializeAsString()));
  ASSERT_EQ(back.s_head_size(), 2);
  ASSERT_EQ(back.s_head(1).heads_size(), 2);
  EXPECT_DOUBLE_EQ(back.s_head(1).heads(1).s(0), 11.25);
  ASSERT_EQ(back.signals_size(), 1);
  EXPECT_EQ(back.signals(0), "code: 16 x 4096 tokens");

  moend::v1::Plan plan;
  moend::v1::LayerPlan* layer = plan.add_layers();
  layer->set_bytes(300);
  for (int h = 0; h < 2; ++h) {
    moend::v1::HeadPlan* head = layer->add_heads();
    head->set_keep(h ? 1.0 : 0.25);
    head->set_kbits(h ? 4 : 2);
    head->set_vbits(4);
    head->set_bytes(100 + 100 * h);
    head->set_predicted_error(0.001 * (h + 1));
  }
  moend::v1::Plan plan_back;
  ASSERT_TRUE(plan_back.ParseFromString(plan.SerializeAsString()));
  ASSERT_EQ(plan_back.layers(0).heads_size(), 2);
  EXPECT_DOUBLE_EQ(plan_back.layers(0).heads(0).keep(), 0.25);
  EXPECT_EQ(plan_back.layers(0).heads(0).kbits(), 2);
  EXPECT_EQ(plan_back.layers(0).heads(1).bytes(), 200);
  EXPECT_DOUBLE_EQ(plan_back.layers(0).heads(1).predicted_error(), 0.002);

  // Without them: empty.
  t.clear_s_head();
  t.clear_signals();
  ASSERT_TRUE(back.ParseFromString(t.SerializeAsString()));
  EXPECT_EQ(back.s_head_size(), 0);
  EXPECT_EQ(back.signals_size(), 0);
}

TEST(ProtoTest, BudgetIsEitherRatioOrBytes) {
  moend::v1::Budget b;
  b.set_ratio(14.0);
  EXPECT_EQ(b.kind_case(), moend::v1::Budget::kRatio);
  b.set_bytes(136000000);
  EXPECT_EQ(b.kind_case(), moend::v1::Budget::kBytes);
  EXPECT_EQ(b.ratio(), 0.0);
}

TEST(ProtoTest, ServicesDeclareTheirMethods) {
  const auto* registry =
      moend::v1::RegisterModelRequest::descriptor()->file()->FindServiceByName("Registry");
  ASSERT_NE(registry, nullptr);
  ASSERT_NE(registry->FindMethodByName("ReportShard"), nullptr);
  ASSERT_NE(registry->FindMethodByName("WatchModelVersions"), nullptr);
  EXPECT_TRUE(registry->FindMethodByName("WatchModelVersions")->server_streaming());
  const auto* router = moend::v1::SolvePlanRequest::descriptor()->file()->FindServiceByName("Router");
  ASSERT_NE(router, nullptr);
  ASSERT_NE(router->FindMethodByName("SolvePlan"), nullptr);
  EXPECT_TRUE(router->FindMethodByName("WatchPlans")->server_streaming());
  const auto* node = moend::v1::GenerateRequest::descriptor()->file()->FindServiceByName("InferenceNode");
  ASSERT_NE(node, nullptr);
  EXPECT_NE(node->FindMethodByName("Generate"), nullptr);
}

}  // namespace
