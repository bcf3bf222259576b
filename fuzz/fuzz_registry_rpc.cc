// Fuzzes the request handling of every moend.v1.Registry RPC: the first byte
// picks the RPC, the rest is that RPC's request message in protobuf wire
// format (inputs that do not parse are skipped). The RegistryService handler
// runs in-process with a ServerContext on the stack, over a Registry in the
// state a fresh input expects:
//
//   - model "tinycode" registered from models/tinycode/config.json, with
//     version 1 = data/tables/tinycode_calibration_4096x16.json;
//   - job "job-000001" (tinycode, 4 tuples, seq_len 512, 2 samples, one
//     sample per shard): shard 1 leased to "fuzz-worker" and reported, shard
//     0 leased as "job-000001/0/1", so a ReportShard for it merges the job;
//   - the clock stands still, so leases never lapse.
//
// Each input starts from that state (a copy of an in-memory Store), which
// keeps every crash reproducible from its input file alone; the RocksDB
// Store is not in the loop (its keys and values are the registry's own, not
// the caller's bytes). After a call, the registry's records must load again
// (Registry::Open over the same store), and an OK reply must serialize.
//
// WatchModelVersions is a stream; its request goes through what the handler
// does before streaming (GetModel, then EventsAfter and GetTable).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/sensitivity_table.h"
#include "fuzz/fuzz_util.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/server_context.h"
#include "moend/v1/registry.pb.h"
#include "services/registry/clock.h"
#include "services/registry/model_config.h"
#include "services/registry/proto_convert.h"
#include "services/registry/registry.h"
#include "services/registry/registry_service.h"
#include "storage/store.h"

namespace moend::registry {
namespace {

using storage::Column;

// storage::Store in memory, for a fresh registry per input.
class MemStore final : public storage::Store {
 public:
  using Columns = std::map<Column, std::map<std::string, std::string, std::less<>>>;
  explicit MemStore(Columns data = {}) : Store("mem"), data_(std::move(data)) {}

  absl::StatusOr<std::string> Get(Column c, std::string_view key) const override {
    auto col = data_.find(c);
    if (col != data_.end()) {
      auto it = col->second.find(key);
      if (it != col->second.end()) return it->second;
    }
    return absl::NotFoundError(
        absl::StrCat("no key '", std::string(key), "' in ", std::string(storage::ColumnName(c))));
  }
  absl::Status Put(Column c, std::string_view key, std::string_view value) override {
    data_[c][std::string(key)] = std::string(value);
    return absl::OkStatus();
  }
  absl::Status Delete(Column c, std::string_view key) override {
    auto col = data_.find(c);
    if (col != data_.end()) {
      auto it = col->second.find(key);
      if (it != col->second.end()) col->second.erase(it);
    }
    return absl::OkStatus();
  }
  absl::Status Write(const storage::WriteBatch& batch) override {
    for (const auto& op : batch.ops()) {
      if (op.is_delete) {
        data_[op.column].erase(op.key);
      } else {
        data_[op.column][op.key] = op.value;
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<storage::KeyValue>> Scan(Column c,
                                                      std::string_view prefix) const override {
    std::vector<storage::KeyValue> out;
    auto col = data_.find(c);
    if (col == data_.end()) return out;
    for (auto it = col->second.lower_bound(prefix);
         it != col->second.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      out.push_back({it->first, it->second});
    }
    return out;
  }
  const Columns& data() const { return data_; }

 private:
  Columns data_;
};

constexpr char kModel[] = "tinycode";
constexpr char kWorker[] = "fuzz-worker";

ManualClock* FuzzClock() {
  static ManualClock* clock = new ManualClock();
  return clock;
}

RegistryOptions Options() {
  RegistryOptions options;
  options.clock = FuzzClock();
  return options;
}

void Check(const absl::Status& s, const char* what) {
  FUZZ_CHECK(s.ok(), absl::StrCat("setting up the registry: ", what, ": ", s.ToString()));
}

std::vector<CompressionTuple> JobTuples() {
  return {{1.0, 16, 16}, {1.0, 4, 4}, {0.5, 8, 4}, {0.25, 2, 2}};
}

// A report of `shard` (one sample, every layer) of job-000001.
ShardReport Report(int64_t shard, const std::string& lease_id, int64_t num_layers) {
  ShardReport r;
  r.lease_id = lease_id;
  r.worker_id = kWorker;
  r.job_id = "job-000001";
  r.shard_index = shard;
  r.model = kModel;
  r.table.layer_begin = 0;
  r.table.layer_end = num_layers;
  r.table.samples = 1;
  r.table.tuples = JobTuples();
  for (int64_t l = 0; l < num_layers; ++l) {
    r.table.s.push_back({0.0, 0.01 * static_cast<double>(l + 1), 0.05, 0.3});
  }
  return r;
}

// The records of the registry every input starts from.
const MemStore::Columns& BaseState() {
  static const MemStore::Columns* base = [] {
    auto owned = std::make_unique<MemStore>();
    MemStore* store = owned.get();
    auto registry = Registry::Open(std::move(owned), Options());
    Check(registry.status(), "Registry::Open");
    Registry& r = **registry;
    auto model = r.RegisterModel(kModel, fuzz::ReadSourceFile("models/tinycode/config.json"));
    Check(model.status(), "RegisterModel");
    auto table = SensitivityTableFromJson(
        fuzz::ReadSourceFile("data/tables/tinycode_calibration_4096x16.json"));
    Check(table.status(), "reading the shipped table");
    Check(r.PublishTable(*table).status(), "PublishTable");
    JobSpec spec;
    spec.model = kModel;
    spec.tuples = JobTuples();
    spec.seq_len = 512;
    spec.num_samples = 2;
    spec.samples_per_shard = 1;
    spec.dataset = "data/calibration.bin";
    auto job = r.SubmitJob(spec);
    Check(job.status(), "SubmitJob");
    auto first = r.LeaseShard(kWorker);
    auto second = r.LeaseShard(kWorker);
    Check(first.status(), "LeaseShard");
    Check(second.status(), "LeaseShard");
    FUZZ_CHECK(first->has_value() && second->has_value(), "no shard to lease");
    FUZZ_CHECK((*first)->lease_id == "job-000001/0/1", "unexpected lease id " + (*first)->lease_id);
    Check(r.ReportShard(Report(1, (*second)->lease_id, model->shape.num_layers)).status(),
          "ReportShard");
    return new MemStore::Columns(store->data());
  }();
  return *base;
}

// Parses `bytes` as a Request, or returns false.
template <typename Request>
bool ParseRequest(std::string_view bytes, Request* req) {
  return req->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

// Runs a handler and checks what every handler promises.
template <typename Request, typename Response, typename Handler>
void Call(std::string_view bytes, Handler handler) {
  Request req;
  if (!ParseRequest(bytes, &req)) return;
  Response resp;
  grpc::ServerContext context;
  grpc::Status status = handler(&context, &req, &resp);
  if (status.ok()) {
    std::string wire;
    FUZZ_CHECK(resp.SerializeToString(&wire), "an OK reply does not serialize");
  } else {
    FUZZ_CHECK(!status.error_message().empty(),
               absl::StrCat("error ", status.error_code(), " without a message"));
    FUZZ_CHECK(status.error_code() != grpc::StatusCode::INTERNAL &&
                   status.error_code() != grpc::StatusCode::UNKNOWN &&
                   status.error_code() != grpc::StatusCode::DATA_LOSS,
               "a request error reported as a server fault: " + status.error_message());
  }
}

enum Rpc : uint8_t {
  kRegisterModel,
  kGetModel,
  kListModels,
  kSubmitJob,
  kGetJob,
  kListJobs,
  kLeaseShard,
  kHeartbeat,
  kReportShard,
  kPublishTable,
  kGetTable,
  kWatchModelVersions,
  kNumRpcs,
};

std::string Seed(Rpc rpc, const google::protobuf::Message& m) {
  return std::string(1, static_cast<char>(rpc)) + m.SerializeAsString();
}

std::vector<fuzz::Seed> MakeSeeds() {
  std::vector<fuzz::Seed> seeds;
  {
    v1::RegisterModelRequest req;
    req.set_name("tinycode-2");
    req.set_config_json(fuzz::ReadSourceFile("models/tinycode/config.json"));
    seeds.push_back({"register_model", Seed(kRegisterModel, req)});
    req.set_name(kModel);
    seeds.push_back({"register_model_again", Seed(kRegisterModel, req)});
  }
  {
    v1::GetModelRequest req;
    req.set_name(kModel);
    seeds.push_back({"get_model", Seed(kGetModel, req)});
  }
  seeds.push_back({"list_models", Seed(kListModels, v1::ListModelsRequest())});
  {
    v1::SubmitJobRequest req;
    v1::JobSpec* spec = req.mutable_spec();
    spec->set_model(kModel);
    for (const CompressionTuple& t : JobTuples()) *spec->add_tuples() = ToProto(t);
    spec->set_seq_len(4096);
    spec->set_num_samples(16);
    spec->set_samples_per_shard(4);
    spec->set_layers_per_shard(6);
    spec->set_dataset("data/calibration.bin");
    seeds.push_back({"submit_job", Seed(kSubmitJob, req)});
    spec->set_job_id("job-000001");
    seeds.push_back({"submit_job_existing_id", Seed(kSubmitJob, req)});
  }
  {
    v1::GetJobRequest req;
    req.set_job_id("job-000001");
    req.set_include_shards(true);
    seeds.push_back({"get_job", Seed(kGetJob, req)});
  }
  {
    v1::ListJobsRequest req;
    req.set_model(kModel);
    seeds.push_back({"list_jobs", Seed(kListJobs, req)});
  }
  {
    v1::LeaseShardRequest req;
    req.set_worker_id("another-worker");
    req.set_model(kModel);
    seeds.push_back({"lease_shard", Seed(kLeaseShard, req)});
  }
  {
    v1::HeartbeatRequest req;
    req.set_lease_id("job-000001/0/1");
    req.set_worker_id(kWorker);
    seeds.push_back({"heartbeat", Seed(kHeartbeat, req)});
  }
  {
    auto config = ModelShapeFromConfigJson(fuzz::ReadSourceFile("models/tinycode/config.json"));
    Check(config.status(), "reading the shipped config");
    v1::ReportShardRequest req = ToProto(Report(0, "job-000001/0/1", config->num_layers));
    seeds.push_back({"report_shard_completes_job", Seed(kReportShard, req)});
    req.set_lease_id("job-000001/1/1");
    req.set_shard_index(1);
    seeds.push_back({"report_shard_duplicate", Seed(kReportShard, req)});
  }
  {
    auto table = SensitivityTableFromJson(
        fuzz::ReadSourceFile("data/tables/tinycode_calibration_4096x16.json"));
    Check(table.status(), "reading the shipped table");
    // Two tuples of the shipped table keep the seed small.
    table->tuples.resize(2);
    for (auto& row : table->s) row.resize(2);
    v1::PublishTableRequest req;
    *req.mutable_table() = ToProto(*table);
    seeds.push_back({"publish_table", Seed(kPublishTable, req)});
  }
  {
    v1::GetTableRequest req;
    req.set_model(kModel);
    req.set_version(1);
    seeds.push_back({"get_table", Seed(kGetTable, req)});
  }
  {
    v1::WatchModelVersionsRequest req;
    req.set_model(kModel);
    req.set_include_tables(true);
    seeds.push_back({"watch_model_versions", Seed(kWatchModelVersions, req)});
  }
  return seeds;
}


// One input: `rpc` with request `bytes`, on a fresh copy of the base state.
void RunOne(Rpc rpc, std::string_view bytes) {

  auto owned = std::make_unique<MemStore>(BaseState());
  MemStore* store = owned.get();
  auto opened = Registry::Open(std::move(owned), Options());
  FUZZ_CHECK(opened.ok(), "reopening the base state: " + opened.status().ToString());
  Registry& registry = **opened;
  RegistryService service(&registry, absl::Milliseconds(1));

  switch (rpc) {
    case kRegisterModel:
      Call<v1::RegisterModelRequest, v1::Model>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.RegisterModel(c, q, r); });
      break;
    case kGetModel:
      Call<v1::GetModelRequest, v1::Model>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.GetModel(c, q, r); });
      break;
    case kListModels:
      Call<v1::ListModelsRequest, v1::ListModelsResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.ListModels(c, q, r); });
      break;
    case kSubmitJob:
      Call<v1::SubmitJobRequest, v1::CalibrationJob>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.SubmitJob(c, q, r); });
      break;
    case kGetJob:
      Call<v1::GetJobRequest, v1::CalibrationJob>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.GetJob(c, q, r); });
      break;
    case kListJobs:
      Call<v1::ListJobsRequest, v1::ListJobsResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.ListJobs(c, q, r); });
      break;
    case kLeaseShard:
      Call<v1::LeaseShardRequest, v1::LeaseShardResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.LeaseShard(c, q, r); });
      break;
    case kHeartbeat:
      Call<v1::HeartbeatRequest, v1::HeartbeatResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.Heartbeat(c, q, r); });
      break;
    case kReportShard:
      Call<v1::ReportShardRequest, v1::ReportShardResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.ReportShard(c, q, r); });
      break;
    case kPublishTable:
      Call<v1::PublishTableRequest, v1::PublishTableResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.PublishTable(c, q, r); });
      break;
    case kGetTable:
      Call<v1::GetTableRequest, v1::GetTableResponse>(
          bytes, [&](auto* c, auto* q, auto* r) { return service.GetTable(c, q, r); });
      break;
    case kWatchModelVersions: {
      v1::WatchModelVersionsRequest req;
      if (!ParseRequest(bytes, &req)) break;
      if (!req.model().empty() && !registry.GetModel(req.model()).ok()) break;
      for (const VersionEvent& e : registry.EventsAfter(req.model(), req.after_version())) {
        v1::ModelVersionEvent msg = ToProto(e);
        if (req.include_tables()) {
          auto table = registry.GetTable(e.model, e.version);
          FUZZ_CHECK(table.ok(), "a feed event without its table: " + table.status().ToString());
          *msg.mutable_table() = ToProto(table->table);
        }
        std::string wire;
        FUZZ_CHECK(msg.SerializeToString(&wire), "an event does not serialize");
      }
      break;
    }
    case kNumRpcs:
      break;
  }

  // Whatever the call stored must load again (a restart must not fail).
  auto reopened = Registry::Open(std::make_unique<MemStore>(store->data()), Options());
  FUZZ_CHECK(reopened.ok(), "the registry's records no longer load: " +
                                reopened.status().ToString());
}

}  // namespace
}  // namespace moend::registry

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, moend::registry::MakeSeeds);
  // Requests with invalid UTF-8 in string fields fail to parse (as in the
  // server) and are skipped; protobuf's log line for each is noise.
  google::protobuf::SetLogHandler(nullptr);
  moend::registry::BaseState();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using moend::registry::Rpc;
  if (size == 0) return 0;
  moend::registry::RunOne(static_cast<Rpc>(data[0] % Rpc::kNumRpcs),
                          std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  return 0;
}
