// Starts the real moend-registry binary, makes acknowledged writes, kills it
// with SIGKILL, restarts it on the same --db and checks that every
// acknowledged write is there.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/registry/registry_client.h"
#include "tests/registry/registry_test_util.h"
#include "tests/storage/temp_dir.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using testing::ExpectedTable;
using testing::ShardRows;
using testing::SmallTuples;
using testing::TinyConfigPath;

// A moend-registry child process with its stdout+stderr on a pipe.
class RegistryProcess {
 public:
  explicit RegistryProcess(std::vector<std::string> args) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      std::vector<char*> argv;
      static std::string bin = MOEND_REGISTRY_BIN;
      argv.push_back(bin.data());
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
  }
  ~RegistryProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  // Reads output until a line contains `marker`; returns that line's text
  // after the marker, or "" on EOF / timeout.
  std::string WaitForLine(const std::string& marker, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        output_ += line + "\n";
        if (size_t at = line.find(marker); at != std::string::npos) {
          return line.substr(at + marker.size());
        }
      }
      pollfd p{out_, POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (::poll(&p, 1, std::max(ms, 1)) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(out_, buf, sizeof(buf));
      if (n <= 0) break;
      buffer_.append(buf, n);
    }
    return "";
  }

  // Sends `sig`; returns the exit status (as waitpid reports it), or -1 if the
  // process has not ended within `timeout`.
  int Signal(int sig, absl::Duration timeout) {
    ::kill(pid_, sig);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return status;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return -1;
  }

  int WaitExit(absl::Duration timeout) { return Signal(0, timeout); }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  bool reaped_ = false;
  std::string buffer_;
  std::string output_;
};

std::unique_ptr<RegistryClient> ConnectTo(const std::string& address) {
  auto client = RegistryClient::Connect({.target = address});
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(client).value() : nullptr;
}

TEST(RegistryDurabilityTest, AcknowledgedWritesSurviveKill9) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  std::string done_job, partial_job, live_lease_id;
  std::vector<Lease> done_leases;
  {
    RegistryProcess proc({"--db", db, "--listen", "127.0.0.1:0"});
    std::string address = proc.WaitForLine("listening on ", absl::Seconds(20));
    ASSERT_FALSE(address.empty()) << proc.output();
    auto client = ConnectTo(address);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());

    // Job 1 runs to completion: version 1.
    JobSpec spec{.model = "tinycode", .tuples = SmallTuples(), .seq_len = 4096,
                 .num_samples = 16, .samples_per_shard = 4};
    auto job1 = client->SubmitJob(spec);
    ASSERT_TRUE(job1.ok()) << job1.status();
    done_job = job1->spec.job_id;
    for (int i = 0; i < 4; ++i) {
      auto lease = client->LeaseShard("w1", done_job);
      ASSERT_TRUE(lease.ok() && lease->has_value());
      ASSERT_TRUE(client->ReportLease(**lease, ShardRows((*lease)->shard, 3)).ok());
    }
    // Job 2: two of four shards reported, a third leased.
    auto job2 = client->SubmitJob(spec);
    ASSERT_TRUE(job2.ok());
    partial_job = job2->spec.job_id;
    for (int i = 0; i < 2; ++i) {
      auto lease = client->LeaseShard("w2", partial_job);
      ASSERT_TRUE(lease.ok() && lease->has_value());
      ASSERT_TRUE(client->ReportLease(**lease, ShardRows((*lease)->shard, 3)).ok());
      done_leases.push_back(**lease);
    }
    auto live = client->LeaseShard("w3", partial_job);
    ASSERT_TRUE(live.ok() && live->has_value());
    live_lease_id = (*live)->lease_id;
    // The last acknowledged write, then kill -9 at once.
    int status = proc.Signal(SIGKILL, absl::Seconds(10));
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }

  RegistryProcess proc({"--db", db, "--listen", "127.0.0.1:0"});
  std::string address = proc.WaitForLine("listening on ", absl::Seconds(20));
  ASSERT_FALSE(address.empty()) << proc.output();
  auto client = ConnectTo(address);
  ASSERT_NE(client, nullptr);

  auto model = client->GetModel("tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->version, 1u);
  auto table = client->GetTable("tinycode", 1);
  ASSERT_TRUE(table.ok()) << table.status();
  auto expected = ExpectedTable(12, 16, 3);
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 3; ++t) EXPECT_NEAR(table->table.s[l][t], expected[l][t], 1e-12);
  }
  EXPECT_EQ(client->GetJob(done_job)->state, JobState::kDone);

  auto partial = client->GetJob(partial_job, /*include_shards=*/true);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->shards_done, 2);
  EXPECT_EQ(partial->shards[2].lease_id, live_lease_id);
  EXPECT_TRUE(client->Heartbeat(live_lease_id, "w3").ok()) << "the live lease survived";
  // Reports acknowledged before the kill are duplicates now.
  auto dup = client->ReportLease(done_leases[0], ShardRows(done_leases[0].shard, 3));
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate);
  // Finishing the job merges reports from before and after the kill.
  auto live = client->GetJob(partial_job, true);
  Lease l3;
  l3.lease_id = live_lease_id;
  l3.worker_id = "w3";
  l3.job_id = partial_job;
  l3.shard = live->shards[2];
  l3.spec = live->spec;
  ASSERT_TRUE(client->ReportLease(l3, ShardRows(l3.shard, 3)).ok());
  auto last = client->LeaseShard("w4", partial_job);
  ASSERT_TRUE(last.ok() && last->has_value());
  auto r = client->ReportLease(**last, ShardRows((*last)->shard, 3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->job_done);
  EXPECT_EQ(r->model_version, 2u);

  // SIGTERM shuts down cleanly.
  int status = proc.Signal(SIGTERM, absl::Seconds(10));
  ASSERT_NE(status, -1) << "moend-registry did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << proc.output();
}

TEST(RegistryDurabilityTest, UnusableDbFolderFailsWithAMessage) {
  TempDir dir;
  std::ofstream(dir.Sub("file")) << "x";
  RegistryProcess proc({"--db", dir.Sub("file"), "--listen", "127.0.0.1:0"});
  std::string line = proc.WaitForLine("moend-registry: ", absl::Seconds(20));
  EXPECT_NE(line.find("not a folder"), std::string::npos) << proc.output();
  int status = proc.WaitExit(absl::Seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}

TEST(RegistryDurabilityTest, BadFlagsAreUsageErrors) {
  RegistryProcess proc({"--listen", "127.0.0.1:0"});
  std::string line = proc.WaitForLine("--db is required", absl::Seconds(20));
  int status = proc.WaitExit(absl::Seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << proc.output();
}

}  // namespace
}  // namespace moend::registry
