// TLS, client certificates, the bearer token, health and reflection, against
// the real binaries on loopback. Certificates are made with openssl at test
// time (tests/security/test_certs.h).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/sensitivity_table.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/impl/codegen/sync_stream.h"
#include "moend/v1/node.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/security.h"
#include "services/registry/registry_client.h"
#include "tests/security/test_certs.h"
#include "tests/util/child_process.h"

namespace moend {
namespace {

namespace fs = std::filesystem;
using ::moend::testing::ChildProcess;
using ::moend::testing::TestCerts;
using rpc::ClientSecurity;

const std::string kSrc = MOEND_SOURCE_DIR;
constexpr absl::Duration kStartup = absl::Seconds(30);

// ---- grpc.health.v1 and grpc.reflection.v1alpha by hand ------------------
// Their protos are not installed on Debian; both messages are tiny, so the
// test writes and reads the wire format itself (no descriptor clashes with the
// reflection library linked into the servers).

std::string Field(int number, const std::string& bytes) {  // length-delimited
  std::string out;
  out.push_back(static_cast<char>((number << 3) | 2));
  size_t n = bytes.size();
  do {
    unsigned char b = n & 0x7f;
    n >>= 7;
    out.push_back(static_cast<char>(n ? (b | 0x80) : b));
  } while (n);
  return out + bytes;
}

grpc::ByteBuffer ToBuffer(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address, const ClientSecurity& security) {
  auto channel = rpc::CreateChannel(address, security);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *channel : nullptr;
}

// grpc.health.v1.Health/Check: the status enum (1 = SERVING, 2 = NOT_SERVING),
// or the call's error.
absl::StatusOr<int> HealthCheck(grpc::Channel* channel, const std::string& service) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::ByteBuffer response;
  grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel,
      grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                grpc::internal::RpcMethod::NORMAL_RPC),
      &ctx, ToBuffer(service.empty() ? "" : Field(1, service)), &response);
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(FromBuffer(response))) return absl::DataLossError("bad response");
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1) return static_cast<int>(fields.field(i).varint());
  }
  return 0;  // UNKNOWN (proto3 default, not sent)
}

// One grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo exchange:
// the response's wire bytes.
absl::StatusOr<std::string> Reflect(grpc::Channel* channel,
                                                          const std::string& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel,
          grpc::internal::RpcMethod(
              "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              grpc::internal::RpcMethod::BIDI_STREAMING),
          &ctx));
  grpc::ByteBuffer response;
  const bool got = stream->Write(ToBuffer(request)) && stream->WritesDone() &&
                   stream->Read(&response);
  while (stream->Read(&response)) {
  }
  grpc::Status s = stream->Finish();
  if (!s.ok()) return rpc::FromGrpcStatus(s);
  if (!got) return absl::DataLossError("no reflection response");
  return FromBuffer(response);
}

// Names of the services the server lists (ServerReflectionRequest.list_services = 7,
// response list_services_response = 6 { repeated service = 1 { name = 1 } }).
absl::StatusOr<std::vector<std::string>> ListServices(grpc::Channel* channel) {
  auto bytes = Reflect(channel, Field(7, "*"));
  if (!bytes.ok()) return bytes.status();
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(*bytes)) return absl::DataLossError("bad reflection response");
  const google::protobuf::UnknownFieldSet* response = &fields;
  std::vector<std::string> names;
  for (int i = 0; i < response->field_count(); ++i) {
    if (response->field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    list.ParseFromString(response->field(i).length_delimited());
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet service;
      service.ParseFromString(list.field(j).length_delimited());
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) names.push_back(service.field(k).length_delimited());
      }
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The methods of `service` as described by the file that reflection returns
// for it (file_containing_symbol = 4; file_descriptor_response = 4
// { repeated bytes file_descriptor_proto = 1 }).
absl::StatusOr<std::vector<std::string>> ReflectedMethods(grpc::Channel* channel,
                                                          const std::string& service) {
  auto bytes = Reflect(channel, Field(4, service));
  if (!bytes.ok()) return bytes.status();
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(*bytes)) return absl::DataLossError("bad reflection response");
  const google::protobuf::UnknownFieldSet* response = &fields;
  const std::string short_name = service.substr(service.rfind('.') + 1);
  std::vector<std::string> methods;
  for (int i = 0; i < response->field_count(); ++i) {
    if (response->field(i).number() != 4) continue;
    google::protobuf::UnknownFieldSet files;
    files.ParseFromString(response->field(i).length_delimited());
    for (int j = 0; j < files.field_count(); ++j) {
      google::protobuf::FileDescriptorProto file;
      if (!file.ParseFromString(files.field(j).length_delimited())) continue;
      for (const auto& s : file.service()) {
        if (s.name() != short_name) continue;
        for (const auto& m : s.method()) methods.push_back(m.name());
      }
    }
  }
  return methods;
}

bool Contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// ---- fixtures ---------------------------------------------------------------

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("moend_security_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_ / "pki");
    auto certs = testing::MakeTestCerts(*dir_ / "pki");
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = new TestCerts(*certs);
  }
  static void TearDownTestSuite() {
    // Kept (with every log) when a test failed.
    if (dir_ != nullptr && !::testing::UnitTest::GetInstance()->Failed()) fs::remove_all(*dir_);
    delete certs_;
    delete dir_;
  }
  void SetUp() override { ASSERT_NE(certs_, nullptr) << "no test certificates"; }

  static std::string Path(const std::string& name) { return (*dir_ / name).string(); }
  static std::string NewDb(const std::string& name) {
    fs::remove_all(*dir_ / name);
    return Path(name);
  }

  // Server flags: TLS with the test CA's server certificate and the token.
  static std::vector<std::string> TlsServerFlags(bool client_ca) {
    std::vector<std::string> f = {"--tls-cert", certs_->server_cert, "--tls-key",
                                  certs_->server_key, "--auth-token-file", certs_->token_file};
    if (client_ca) {
      f.push_back("--tls-client-ca");
      f.push_back(certs_->ca);
    }
    return f;
  }
  // Outgoing-connection flags for a binary that talks to a TLS server.
  static std::vector<std::string> TlsClientFlags(bool client_cert) {
    std::vector<std::string> f = {"--tls-ca", certs_->ca, "--auth-token-file", certs_->token_file};
    if (client_cert) {
      for (const std::string& s : {std::string("--tls-client-cert"), certs_->client_cert,
                                   std::string("--tls-client-key"), certs_->client_key}) {
        f.push_back(s);
      }
    }
    return f;
  }

  static ClientSecurity Tls(bool token, bool client_cert = false) {
    ClientSecurity s;
    s.tls_ca_file = certs_->ca;
    if (token) s.auth_token_file = certs_->token_file;
    if (client_cert) {
      s.tls_client_cert_file = certs_->client_cert;
      s.tls_client_key_file = certs_->client_key;
    }
    return s;
  }

  // Starts moend-registry with `flags` and returns its address ("" on failure).
  std::string StartRegistry(const std::string& name, std::vector<std::string> flags) {
    std::vector<std::string> args = {"--db", NewDb(name + "_db"), "--listen", "127.0.0.1:0"};
    args.insert(args.end(), flags.begin(), flags.end());
    procs_.push_back(std::make_unique<ChildProcess>(MOEND_REGISTRY_BIN, args, Path(name + ".log")));
    return procs_.back()->WaitForLine("listening on ", kStartup);
  }

  static absl::StatusOr<std::unique_ptr<registry::RegistryClient>> Connect(
      const std::string& address, const ClientSecurity& security,
      absl::Duration connect_timeout = absl::Seconds(10)) {
    registry::RegistryClientOptions options;
    options.target = address;
    options.rpc_timeout = absl::Seconds(10);
    options.connect_timeout = connect_timeout;
    options.security = security;
    return registry::RegistryClient::Connect(options);
  }

  static registry::JobSpec SmallJob(const std::string& id) {
    registry::JobSpec spec;
    spec.job_id = id;
    spec.model = "tinycode";
    spec.seq_len = 384;
    spec.compression_point = 256;
    spec.num_samples = 1;
    spec.dataset = kSrc + "/data/calibration.bin";
    return spec;
  }

  std::string Logs() const {
    std::string all;
    for (const auto& p : procs_) all += p->Log() + "\n----\n";
    return all;
  }

  static fs::path* dir_;
  static TestCerts* certs_;
  std::vector<std::unique_ptr<ChildProcess>> procs_;
};

fs::path* SecurityTest::dir_ = nullptr;
TestCerts* SecurityTest::certs_ = nullptr;

// ---- registry ---------------------------------------------------------------

TEST_F(SecurityTest, TlsRegistryRefusesPlaintextClients) {
  const std::string addr = StartRegistry("refuse_plain", TlsServerFlags(false));
  ASSERT_FALSE(addr.empty()) << Logs();

  // A plaintext channel never becomes ready: the server only speaks TLS.
  auto waiting = Connect(addr, ClientSecurity{}, absl::Seconds(3));
  ASSERT_FALSE(waiting.ok());
  EXPECT_TRUE(absl::IsUnavailable(waiting.status())) << waiting.status();

  // Nor does a call on it get through, with or without a token.
  ClientSecurity plain_with_token;
  plain_with_token.auth_token_file = certs_->token_file;
  auto lazy = Connect(addr, plain_with_token, absl::ZeroDuration());
  ASSERT_TRUE(lazy.ok()) << lazy.status();
  auto models = (*lazy)->ListModels();
  EXPECT_TRUE(absl::IsUnavailable(models.status())) << models.status();
  auto reg = (*lazy)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json");
  EXPECT_TRUE(absl::IsUnavailable(reg.status())) << reg.status();

  // A TLS client that does not trust the server's CA is refused as well.
  ClientSecurity wrong_ca;
  wrong_ca.tls_ca_file = certs_->rogue_ca;
  auto untrusted = Connect(addr, wrong_ca, absl::Seconds(3));
  EXPECT_TRUE(absl::IsUnavailable(untrusted.status())) << untrusted.status();

  // The CA that signed it works.
  auto tls = Connect(addr, Tls(/*token=*/false));
  ASSERT_TRUE(tls.ok()) << tls.status();
  auto listed = (*tls)->ListModels();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty());
}

TEST_F(SecurityTest, MutatingCallsNeedTheTokenAndChangeNothingWithoutIt) {
  const std::string addr = StartRegistry("token", TlsServerFlags(false));
  ASSERT_FALSE(addr.empty()) << Logs();
  auto anonymous = Connect(addr, Tls(/*token=*/false));
  ASSERT_TRUE(anonymous.ok()) << anonymous.status();
  ClientSecurity wrong = Tls(false);
  wrong.auth_token_file = certs_->wrong_token_file;
  auto impostor = Connect(addr, wrong);
  ASSERT_TRUE(impostor.ok()) << impostor.status();
  auto admin = Connect(addr, Tls(/*token=*/true));
  ASSERT_TRUE(admin.ok()) << admin.status();
  const std::string config = kSrc + "/models/tinycode/config.json";
  auto table = ReadSensitivityTable(kSrc + "/data/tables/tinycode_calibration_4096x16.json");
  ASSERT_TRUE(table.ok()) << table.status();

  for (registry::RegistryClient* client : {anonymous->get(), impostor->get()}) {
    auto m = client->RegisterModelFromFile("tinycode", config);
    EXPECT_TRUE(absl::IsUnauthenticated(m.status())) << m.status();
    auto j = client->SubmitJob(SmallJob("job-anon"));
    EXPECT_TRUE(absl::IsUnauthenticated(j.status())) << j.status();
    auto p = client->PublishTable(*table);
    EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << p.status();
  }
  auto missing = (*anonymous)->RegisterModelFromFile("tinycode", config);
  EXPECT_NE(missing.status().message().find("Bearer"), std::string::npos) << missing.status();
  // Reads are open; nothing was stored.
  auto models = (*anonymous)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_TRUE(models->empty());
  EXPECT_TRUE(absl::IsNotFound((*anonymous)->GetModel("tinycode").status()));
  auto jobs = (*anonymous)->ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_TRUE(jobs->empty());

  // With the token: stored, and readable without it.
  auto m = (*admin)->RegisterModelFromFile("tinycode", config);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE((*anonymous)->GetModel("tinycode").ok());
  auto job = (*admin)->SubmitJob(SmallJob("job-1"));
  ASSERT_TRUE(job.ok()) << job.status();

  // Worker calls without the token: no lease is handed out, no heartbeat or
  // report is taken.
  for (registry::RegistryClient* client : {anonymous->get(), impostor->get()}) {
    auto lease = client->LeaseShard("w-anon");
    EXPECT_TRUE(absl::IsUnauthenticated(lease.status())) << lease.status();
  }
  auto shards = (*anonymous)->GetJob("job-1", /*include_shards=*/true);
  ASSERT_TRUE(shards.ok()) << shards.status();
  ASSERT_EQ(shards->shards.size(), 1u);
  EXPECT_EQ(shards->shards[0].state, registry::ShardState::kPending);
  EXPECT_EQ(shards->shards[0].attempts, 0);

  auto lease = (*admin)->LeaseShard("w1");
  ASSERT_TRUE(lease.ok() && lease->has_value()) << lease.status();
  auto hb = (*anonymous)->Heartbeat((*lease)->lease_id, "w1");
  EXPECT_TRUE(absl::IsUnauthenticated(hb.status())) << hb.status();
  std::vector<std::vector<double>> s(12, std::vector<double>((*lease)->spec.tuples.size(), 0.5));
  auto report = (*anonymous)->ReportLease(**lease, s);
  EXPECT_TRUE(absl::IsUnauthenticated(report.status())) << report.status();
  auto after = (*anonymous)->GetJob("job-1");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->shards_done, 0);
  auto version = (*anonymous)->GetModel("tinycode");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->version, 0u);

  // The same calls with the token go through.
  EXPECT_TRUE((*admin)->Heartbeat((*lease)->lease_id, "w1").ok());
  auto done = (*admin)->ReportLease(**lease, s);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(done->job_done);
  auto published = (*admin)->PublishTable(*table);
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(*published, 2u);
}

TEST_F(SecurityTest, AuthReadsGuardsReadsButNotHealthOrReflection) {
  std::vector<std::string> flags = TlsServerFlags(false);
  flags.push_back("--auth-reads");
  const std::string addr = StartRegistry("auth_reads", flags);
  ASSERT_FALSE(addr.empty()) << Logs();
  auto anonymous = Connect(addr, Tls(false));
  ASSERT_TRUE(anonymous.ok()) << anonymous.status();
  EXPECT_TRUE(absl::IsUnauthenticated((*anonymous)->ListModels().status()));
  auto admin = Connect(addr, Tls(true));
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_TRUE((*admin)->ListModels().ok());

  auto channel = Channel(addr, Tls(false));
  auto health = HealthCheck(channel.get(), "moend.v1.Registry");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, 1);
  auto services = ListServices(channel.get());
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_TRUE(Contains(*services, "moend.v1.Registry"));
}

TEST_F(SecurityTest, ClientCaRequiresAClientCertificateItSigned) {
  const std::string addr = StartRegistry("mtls", TlsServerFlags(/*client_ca=*/true));
  ASSERT_FALSE(addr.empty()) << Logs();

  auto no_cert = Connect(addr, Tls(/*token=*/true), absl::Seconds(3));
  EXPECT_TRUE(absl::IsUnavailable(no_cert.status())) << no_cert.status();

  ClientSecurity rogue = Tls(true);
  rogue.tls_client_cert_file = certs_->rogue_client_cert;
  rogue.tls_client_key_file = certs_->rogue_client_key;
  auto rogue_client = Connect(addr, rogue, absl::Seconds(3));
  EXPECT_TRUE(absl::IsUnavailable(rogue_client.status())) << rogue_client.status();

  auto ok = Connect(addr, Tls(/*token=*/true, /*client_cert=*/true));
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto m = (*ok)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json");
  EXPECT_TRUE(m.ok()) << m.status();
  // A certificate is not a token: mutating calls still need it.
  auto cert_only = Connect(addr, Tls(/*token=*/false, /*client_cert=*/true));
  ASSERT_TRUE(cert_only.ok()) << cert_only.status();
  EXPECT_TRUE(absl::IsUnauthenticated((*cert_only)->SubmitJob(SmallJob("job-x")).status()));
}

TEST_F(SecurityTest, BadSecurityFilesFailStartupNamingTheFile) {
  struct Case {
    std::vector<std::string> flags;
    std::string expected;  // in the error
  };
  const std::string not_pem = Path("not_pem.txt");
  std::ofstream(not_pem) << "hello\n";
  const std::string empty_token = Path("empty_token");
  std::ofstream(empty_token) << "  \n";
  const std::vector<Case> cases = {
      {{"--tls-cert", Path("missing.pem"), "--tls-key", certs_->server_key}, "missing.pem"},
      {{"--tls-cert", certs_->server_cert, "--tls-key", not_pem}, "not_pem.txt"},
      {{"--tls-cert", certs_->server_cert}, "private key"},
      {{"--tls-client-ca", certs_->ca}, "needs TLS"},
      {{"--auth-token-file", Path("no_token")}, "no_token"},
      {{"--auth-token-file", empty_token}, "is empty"},
      {{"--tls-cert", certs_->server_cert, "--tls-key", certs_->server_key, "--bind-worker-ids"},
       "needs mutual TLS"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<std::string> args = {"--db", NewDb("bad_db" + std::to_string(i)), "--listen",
                                     "127.0.0.1:0"};
    args.insert(args.end(), cases[i].flags.begin(), cases[i].flags.end());
    ChildProcess registry(MOEND_REGISTRY_BIN, args);
    const int status = registry.WaitExit(absl::Seconds(20));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << registry.Log();
    EXPECT_NE(registry.Log().find(cases[i].expected), std::string::npos)
        << "case " << i << ": " << registry.Log();
    EXPECT_EQ(registry.Log().find("listening on"), std::string::npos) << registry.Log();
  }
  // A client's bad CA file is an error before any connection.
  ClientSecurity bad;
  bad.tls_ca_file = Path("missing-ca.pem");
  auto c = Connect("127.0.0.1:1", bad, absl::ZeroDuration());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("missing-ca.pem"), std::string::npos) << c.status();
}

TEST_F(SecurityTest, WorkerCanReportOnlyForTheShardItLeases) {
  const std::string addr = StartRegistry("lease_check", TlsServerFlags(false));
  ASSERT_FALSE(addr.empty()) << Logs();
  auto client = Connect(addr, Tls(true));
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(
      (*client)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json").ok());
  ASSERT_TRUE((*client)->SubmitJob(SmallJob("job-a")).ok());
  ASSERT_TRUE((*client)->SubmitJob(SmallJob("job-b")).ok());
  auto lease_a = (*client)->LeaseShard("w1", "job-a");
  ASSERT_TRUE(lease_a.ok() && lease_a->has_value()) << lease_a.status();
  auto lease_b = (*client)->LeaseShard("w2", "job-b");
  ASSERT_TRUE(lease_b.ok() && lease_b->has_value()) << lease_b.status();
  const registry::Lease& a = **lease_a;
  const registry::Lease& b = **lease_b;
  std::vector<std::vector<double>> s(12, std::vector<double>(a.spec.tuples.size(), 0.25));

  auto report_as = [&](const std::string& lease_id, const std::string& worker,
                       const std::string& job) {
    registry::ShardReport r;
    r.lease_id = lease_id;
    r.worker_id = worker;
    r.job_id = job;
    r.shard_index = 0;
    r.model = "tinycode";
    r.table.layer_begin = 0;
    r.table.layer_end = 12;
    r.table.samples = 1;
    r.table.tuples = a.spec.tuples;
    r.table.s = s;
    return (*client)->ReportShard(r);
  };
  // w1 reports for job-b with its lease of job-a.
  auto cross = report_as(a.lease_id, "w1", "job-b");
  EXPECT_TRUE(absl::IsFailedPrecondition(cross.status())) << cross.status();
  // w1 reports for job-b under w2's lease.
  auto stolen = report_as(b.lease_id, "w1", "job-b");
  EXPECT_TRUE(absl::IsFailedPrecondition(stolen.status())) << stolen.status();
  EXPECT_NE(stolen.status().message().find("held by worker 'w2'"), std::string::npos)
      << stolen.status();
  // w1 reports for job-b with a lease id it made up.
  auto forged = report_as("job-b/0/7", "w1", "job-b");
  EXPECT_TRUE(absl::IsFailedPrecondition(forged.status())) << forged.status();
  // w1 heartbeats w2's lease.
  auto hb = (*client)->Heartbeat(b.lease_id, "w1");
  EXPECT_TRUE(absl::IsFailedPrecondition(hb.status())) << hb.status();
  auto job_b = (*client)->GetJob("job-b");
  ASSERT_TRUE(job_b.ok());
  EXPECT_EQ(job_b->shards_done, 0);

  // Each worker's own report is taken.
  auto own_a = (*client)->ReportLease(a, s);
  ASSERT_TRUE(own_a.ok()) << own_a.status();
  EXPECT_TRUE(own_a->job_done);
  auto own_b = (*client)->ReportLease(b, s);
  ASSERT_TRUE(own_b.ok()) << own_b.status();
  EXPECT_TRUE(own_b->job_done);
}

TEST_F(SecurityTest, BoundWorkerIdsMustBeNamesOfTheClientCertificate) {
  std::vector<std::string> flags = TlsServerFlags(/*client_ca=*/true);
  flags.push_back("--bind-worker-ids");
  const std::string addr = StartRegistry("bind_ids", flags);
  ASSERT_FALSE(addr.empty()) << Logs();
  EXPECT_NE(Logs().find("worker ids bound to certificates"), std::string::npos) << Logs();
  ClientSecurity as_worker = Tls(/*token=*/true);
  as_worker.tls_client_cert_file = certs_->worker_cert;
  as_worker.tls_client_key_file = certs_->worker_key;
  auto worker = Connect(addr, as_worker);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto other = Connect(addr, Tls(/*token=*/true, /*client_cert=*/true));  // CN "client"
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(
      (*other)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json").ok());
  registry::JobSpec spec = SmallJob("job-bound");
  spec.num_samples = 2;
  spec.samples_per_shard = 1;  // two shards
  ASSERT_TRUE((*other)->SubmitJob(spec).ok());

  // Leasing under a name the certificate does not carry: refused, nothing leased.
  auto impostor = (*worker)->LeaseShard("worker-b", "job-bound");
  ASSERT_TRUE(absl::IsPermissionDenied(impostor.status())) << impostor.status();
  EXPECT_NE(impostor.status().message().find("'worker-b'"), std::string::npos) << impostor.status();
  EXPECT_NE(impostor.status().message().find("'worker-a'"), std::string::npos) << impostor.status();
  EXPECT_NE(impostor.status().message().find("--bind-worker-ids"), std::string::npos)
      << impostor.status();
  auto job = (*other)->GetJob("job-bound", /*include_shards=*/true);
  ASSERT_TRUE(job.ok()) << job.status();
  for (const auto& shard : job->shards) EXPECT_TRUE(shard.worker_id.empty()) << shard.worker_id;

  // The subject CN and the DNS alternative name are both the worker's.
  auto by_cn = (*worker)->LeaseShard("worker-a", "job-bound");
  ASSERT_TRUE(by_cn.ok() && by_cn->has_value()) << by_cn.status();
  auto by_san = (*worker)->LeaseShard("gpu-a.fleet", "job-bound");
  ASSERT_TRUE(by_san.ok() && by_san->has_value()) << by_san.status();
  EXPECT_TRUE((*worker)->Heartbeat((*by_cn)->lease_id, "worker-a").ok());

  // Another certificate cannot heartbeat or report for worker-a, even with
  // worker-a's lease id and the token.
  auto hb = (*other)->Heartbeat((*by_cn)->lease_id, "worker-a");
  EXPECT_TRUE(absl::IsPermissionDenied(hb.status())) << hb.status();
  EXPECT_NE(hb.status().message().find("'client'"), std::string::npos) << hb.status();
  std::vector<std::vector<double>> s(12, std::vector<double>((*by_cn)->spec.tuples.size(), 0.25));
  auto stolen = (*other)->ReportLease(**by_cn, s);
  EXPECT_TRUE(absl::IsPermissionDenied(stolen.status())) << stolen.status();
  job = (*other)->GetJob("job-bound");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->shards_done, 0);

  // The worker's own reports are taken.
  auto own = (*worker)->ReportLease(**by_cn, s);
  ASSERT_TRUE(own.ok()) << own.status();
  auto own_san = (*worker)->ReportLease(**by_san, s);
  ASSERT_TRUE(own_san.ok()) << own_san.status();
  EXPECT_TRUE(own_san->job_done);

  // Reads and admin calls are not worker calls: unaffected.
  EXPECT_TRUE((*other)->ListJobs("tinycode").ok());
}

TEST_F(SecurityTest, HealthzOnTheMetricsPortAnswersForATlsOnlyServer) {
  // What a Kubernetes httpGet probe sees where its gRPC probe cannot connect
  // (TLS only, client certificates, token on reads too).
  std::vector<std::string> flags = TlsServerFlags(/*client_ca=*/true);
  for (const char* f : {"--auth-reads", "--metrics", "127.0.0.1:0"}) flags.push_back(f);
  const std::string addr = StartRegistry("healthz", flags);
  ASSERT_FALSE(addr.empty()) << Logs();
  std::string metrics = procs_.back()->WaitForLine("metrics on http://", kStartup);
  ASSERT_FALSE(metrics.empty()) << Logs();
  metrics = metrics.substr(0, metrics.find('/'));
  std::string ok = testing::HttpGet(metrics, "/healthz");
  EXPECT_NE(ok.find("200 OK"), std::string::npos) << ok;
  EXPECT_NE(ok.find("SERVING"), std::string::npos) << ok;
  EXPECT_NE(testing::HttpGet(metrics, "/nothing").find("404"), std::string::npos);

}

TEST_F(SecurityTest, CertificateCommonNameReadsTheSubjectCnOrNamesTheBadFile) {
  auto worker = rpc::CertificateCommonName(certs_->worker_cert);
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ(*worker, "worker-a");
  auto client = rpc::CertificateCommonName(certs_->client_cert);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(*client, "client");
  const std::string key_only = Path("key_only.pem");
  std::ifstream in(certs_->worker_key);
  std::ofstream(key_only) << in.rdbuf();
  auto not_cert = rpc::CertificateCommonName(key_only);
  EXPECT_TRUE(absl::IsInvalidArgument(not_cert.status())) << not_cert.status();
  EXPECT_NE(not_cert.status().message().find("key_only.pem"), std::string::npos) << not_cert.status();
  auto missing = rpc::CertificateCommonName(Path("missing-cert.pem"));
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing-cert.pem"), std::string::npos) << missing.status();
}

// ---- defaults ---------------------------------------------------------------

TEST_F(SecurityTest, PlaintextDefaultsServeHealthAndReflectionAndNeedNoToken) {
  const std::string reg = StartRegistry("plain", {});
  ASSERT_FALSE(reg.empty()) << Logs();
  procs_.push_back(std::make_unique<ChildProcess>(
      MOEND_ROUTER_BIN, std::vector<std::string>{"--registry", reg, "--listen", "127.0.0.1:0"},
      Path("plain_router.log")));
  const std::string rtr = procs_.back()->WaitForLine("listening on ", kStartup);
  ASSERT_FALSE(rtr.empty()) << Logs();

  auto client = Connect(reg, ClientSecurity{});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(
      (*client)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json").ok());

  for (const auto& [addr, service] : {std::pair<std::string, std::string>{reg, "moend.v1.Registry"},
                                      {rtr, "moend.v1.Router"}}) {
    auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    for (const std::string& name : {std::string(), service}) {
      auto health = HealthCheck(channel.get(), name);
      ASSERT_TRUE(health.ok()) << service << " '" << name << "': " << health.status();
      EXPECT_EQ(*health, 1) << service << " '" << name << "' is not SERVING";
    }
    auto unknown = HealthCheck(channel.get(), "no.such.Service");
    EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();
    auto services = ListServices(channel.get());
    ASSERT_TRUE(services.ok()) << services.status();
    EXPECT_TRUE(Contains(*services, service)) << service;
    EXPECT_TRUE(Contains(*services, "grpc.health.v1.Health")) << service;
    EXPECT_TRUE(Contains(*services, "grpc.reflection.v1alpha.ServerReflection")) << service;
  }
  auto registry_methods = ReflectedMethods(
      grpc::CreateChannel(reg, grpc::InsecureChannelCredentials()).get(), "moend.v1.Registry");
  ASSERT_TRUE(registry_methods.ok()) << registry_methods.status();
  EXPECT_TRUE(Contains(*registry_methods, "RegisterModel"));
  EXPECT_TRUE(Contains(*registry_methods, "WatchModelVersions"));
  auto router_methods = ReflectedMethods(
      grpc::CreateChannel(rtr, grpc::InsecureChannelCredentials()).get(), "moend.v1.Router");
  ASSERT_TRUE(router_methods.ok()) << router_methods.status();
  EXPECT_TRUE(Contains(*router_methods, "SolvePlan"));
  EXPECT_TRUE(Contains(*router_methods, "WatchPlans"));
}

TEST_F(SecurityTest, TokenWithoutTlsStillGuardsMutatingCalls) {
  // Loopback development behind a TLS-terminating mesh: token, no TLS.
  const std::string addr = StartRegistry("plain_token", {"--auth-token-file", certs_->token_file});
  ASSERT_FALSE(addr.empty()) << Logs();
  auto anonymous = Connect(addr, ClientSecurity{});
  ASSERT_TRUE(anonymous.ok()) << anonymous.status();
  ClientSecurity with_token;
  with_token.auth_token_file = certs_->token_file;
  auto admin = Connect(addr, with_token);
  ASSERT_TRUE(admin.ok()) << admin.status();
  const std::string config = kSrc + "/models/tinycode/config.json";
  auto refused = (*anonymous)->RegisterModelFromFile("tinycode", config);
  EXPECT_TRUE(absl::IsUnauthenticated(refused.status())) << refused.status();
  auto models = (*anonymous)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_TRUE(models->empty());
  auto accepted = (*admin)->RegisterModelFromFile("tinycode", config);
  EXPECT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_NE(procs_.back()->Log().find("in clear"), std::string::npos) << procs_.back()->Log();
}

// ---- the whole chain --------------------------------------------------------

TEST_F(SecurityTest, SecureChainOfRegistryRouterNodeAndWorker) {
  // Every server: TLS, client certificates from the test CA, and the token;
  // the registry binds worker ids to certificates.
  std::vector<std::string> registry_flags = TlsServerFlags(true);
  registry_flags.push_back("--bind-worker-ids");
  const std::string reg = StartRegistry("chain_registry", registry_flags);
  ASSERT_FALSE(reg.empty()) << Logs();
  auto admin = Connect(reg, Tls(true, true));
  ASSERT_TRUE(admin.ok()) << admin.status();
  ASSERT_TRUE(
      (*admin)->RegisterModelFromFile("tinycode", kSrc + "/models/tinycode/config.json").ok());
  auto table = ReadSensitivityTable(kSrc + "/data/tables/tinycode_calibration_4096x16.json");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE((*admin)->PublishTable(*table).ok());

  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  // The router takes one token file for both directions; the client flags
  // repeat it, which is allowed.
  procs_.push_back(std::make_unique<ChildProcess>(
      MOEND_ROUTER_BIN,
      with(with({"--registry", reg, "--listen", "127.0.0.1:0"}, TlsServerFlags(true)),
           TlsClientFlags(true)),
      Path("chain_router.log")));
  const std::string rtr = procs_.back()->WaitForLine("listening on ", kStartup);
  ASSERT_FALSE(rtr.empty()) << Logs();

  procs_.push_back(std::make_unique<ChildProcess>(
      MOEND_NODE_BIN,
      with(with({"--model", kSrc + "/models/tinycode", "--listen", "127.0.0.1:0", "--router", rtr,
                 "--ratio", "8", "--context", "4096", "--threads", "1"},
                TlsServerFlags(true)),
           TlsClientFlags(true)),
      Path("chain_node.log"), std::vector<std::string>{"OMP_NUM_THREADS=1"}));
  const std::string node = procs_.back()->WaitForLine("listening on ", kStartup);
  ASSERT_FALSE(node.empty()) << Logs();

  // Health and reflection on all three, over mutual TLS without the token.
  const std::vector<std::pair<std::string, std::string>> servers = {
      {reg, "moend.v1.Registry"}, {rtr, "moend.v1.Router"}, {node, "moend.v1.InferenceNode"}};
  for (const auto& [addr, service] : servers) {
    auto channel = Channel(addr, Tls(false, true));
    auto health = HealthCheck(channel.get(), service);
    ASSERT_TRUE(health.ok()) << service << ": " << health.status();
    EXPECT_EQ(*health, 1) << service << " is not SERVING";
    auto services = ListServices(channel.get());
    ASSERT_TRUE(services.ok()) << service << ": " << services.status();
    EXPECT_TRUE(Contains(*services, service)) << service;
    EXPECT_TRUE(Contains(*services, "grpc.health.v1.Health")) << service;
    // Plaintext is refused here too.
    auto plain = HealthCheck(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()).get(),
                             service);
    EXPECT_TRUE(absl::IsUnavailable(plain.status())) << service << ": " << plain.status();
  }

  // Generate needs the token; with it, the node runs the router's plan.
  auto anonymous_node = v1::InferenceNode::NewStub(Channel(node, Tls(false, true)));
  auto node_stub = v1::InferenceNode::NewStub(Channel(node, Tls(true, true)));
  v1::GenerateRequest req;
  req.set_prompt(std::string(300, 'x') + "\ndef main():\n");
  req.set_max_new_tokens(4);
  {
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    grpc::Status s = anonymous_node->Generate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  auto generate_until_version = [&](uint64_t version, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    v1::GenerateResponse resp;
    while (absl::Now() < deadline) {
      grpc::ClientContext ctx;
      resp.Clear();
      grpc::Status s = node_stub->Generate(&ctx, req, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok() || resp.plan_version() >= version) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return resp;
  };
  v1::GenerateResponse first = generate_until_version(1, absl::Seconds(30));
  ASSERT_EQ(first.plan_version(), 1u) << Logs();
  EXPECT_EQ(first.generated_tokens(), 4);
  EXPECT_LT(first.kv_cache_bytes(), first.full_cache_bytes());

  // A calibration through the secure fleet: moendctl submits, a worker
  // without the token is turned away, one with it computes the shard, and
  // the new table reaches the node through the router.
  const std::string out = Path("chain_table.json");
  procs_.push_back(std::make_unique<ChildProcess>(
      MOENDCTL_BIN,
      with({"calibrate", "--registry", reg, "--model", kSrc + "/models/tinycode", "--data",
            kSrc + "/data/calibration.bin", "--seq-len", "384", "--probes", "128", "--samples",
            "1", "--out", out, "--timeout", "300"},
           TlsClientFlags(true)),
      Path("chain_moendctl.log")));
  ChildProcess* ctl = procs_.back().get();
  bool submitted = false;
  for (int i = 0; i < 300 && !submitted; ++i) {
    auto jobs = (*admin)->ListJobs("tinycode");
    submitted = jobs.ok() && !jobs->empty();
    if (!submitted) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(submitted) << Logs();

  std::vector<std::string> no_token_flags = {"--tls-ca", certs_->ca, "--tls-client-cert",
                                             certs_->client_cert, "--tls-client-key",
                                             certs_->client_key};
  ChildProcess intruder(MOEND_WORKER_BIN,
                        with({"--registry", reg, "--id", "intruder", "--models", kSrc + "/models",
                              "--threads", "1", "--exit-when-idle"},
                             no_token_flags),
                        Path("chain_intruder.log"));
  const int intruder_status = intruder.WaitExit(absl::Seconds(30));
  EXPECT_TRUE(WIFEXITED(intruder_status) && WEXITSTATUS(intruder_status) != 0) << intruder.Log();
  EXPECT_NE(intruder.Log().find("Bearer"), std::string::npos) << intruder.Log();
  auto pending = (*admin)->ListJobs("tinycode");
  ASSERT_TRUE(pending.ok() && pending->size() == 1);
  EXPECT_EQ(pending->front().shards_done, 0);

  // Token and certificate, but a worker id the certificate does not carry.
  ChildProcess impostor(MOEND_WORKER_BIN,
                        with({"--registry", reg, "--id", "w1", "--models", kSrc + "/models",
                              "--threads", "1", "--exit-when-idle"},
                             TlsClientFlags(true)),
                        Path("chain_impostor.log"));
  const int impostor_status = impostor.WaitExit(absl::Seconds(30));
  EXPECT_TRUE(WIFEXITED(impostor_status) && WEXITSTATUS(impostor_status) != 0) << impostor.Log();
  EXPECT_NE(impostor.Log().find("is not a name of this client's certificate"), std::string::npos)
      << impostor.Log();
  pending = (*admin)->ListJobs("tinycode");
  ASSERT_TRUE(pending.ok() && pending->size() == 1);
  EXPECT_EQ(pending->front().shards_done, 0);

  // No --id: the worker takes its certificate's CN ("client").
  ChildProcess worker(MOEND_WORKER_BIN,
                      with({"--registry", reg, "--models", kSrc + "/models",
                            "--threads", "1", "--exit-when-idle"},
                           TlsClientFlags(true)),
                      Path("chain_worker.log"), std::vector<std::string>{"OMP_NUM_THREADS=1"});
  const int ctl_status = ctl->WaitExit(absl::Seconds(300));
  ASSERT_TRUE(WIFEXITED(ctl_status) && WEXITSTATUS(ctl_status) == 0) << Logs() << worker.Log();
  EXPECT_NE(worker.Log().find("moend-worker client: serving registry"), std::string::npos) << worker.Log();
  auto calibrated = ReadSensitivityTable(out);
  ASSERT_TRUE(calibrated.ok()) << calibrated.status();
  EXPECT_EQ(calibrated->samples, 1);
  auto model = (*admin)->GetModel("tinycode");
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->version, 2u);

  v1::GenerateResponse second = generate_until_version(2, absl::Seconds(30));
  EXPECT_EQ(second.plan_version(), 2u) << Logs();
}

}  // namespace
}  // namespace moend
