#include "services/common/process.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace moend::rpc {
namespace {

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &b, 1);
}

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShutdownSignal>> ShutdownSignal::Install() {
  if (g_signal_pipe[0] >= 0) return absl::FailedPreconditionError("signal handlers already installed");
  if (::pipe(g_signal_pipe) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  return std::unique_ptr<ShutdownSignal>(new ShutdownSignal());
}

int ShutdownSignal::Wait() {
  unsigned char sig = 0;
  while (::read(g_signal_pipe[0], &sig, 1) != 1) {
  }
  return sig;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> metrics) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.empty() || host == "localhost") host = host.empty() ? "0.0.0.0" : "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': host must be an IPv4 address"));
  }
  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  server->fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(server->fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (server->fd_ < 0 ||
      ::bind(server->fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(server->fd_, 16) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", address, "': ", std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(server->fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  server->address_ = absl::StrCat(host, ":", ntohs(addr.sin_port));
  server->metrics_ = std::move(metrics);
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

void MetricsServer::SetHealthCheck(std::function<bool()> check) {
  std::lock_guard<std::mutex> lock(health_mu_);
  health_ = std::move(check);
}

MetricsServer::~MetricsServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

void MetricsServer::Serve() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // Read the request head (bounded in size and time).
    std::string request;
    char buf[2048];
    while (request.size() < 8192 && request.find("\r\n\r\n") == std::string::npos &&
           request.find("\n\n") == std::string::npos) {
      pollfd c{conn, POLLIN, 0};
      if (::poll(&c, 1, 2000) <= 0) break;
      const ssize_t n = ::recv(conn, buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    auto is_get = [&request](const std::string& path) {
      return request.rfind("GET " + path + " ", 0) == 0 || request.rfind("GET " + path + "?", 0) == 0;
    };
    std::string status = "404 Not Found", body = "not found\n";
    if (is_get("/healthz")) {
      std::lock_guard<std::mutex> lock(health_mu_);
      const bool serving = health_ && health_();
      status = serving ? "200 OK" : "503 Service Unavailable";
      body = serving ? "SERVING\n" : "NOT_SERVING\n";
    } else if (is_get("/metrics")) {
      std::ostringstream out;
      prometheus::TextSerializer().Serialize(out, metrics_->Collect());
      status = "200 OK";
      body = out.str();
    }
    WriteAll(conn, absl::StrCat("HTTP/1.1 ", status,
                                "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
                                "\r\nContent-Length: ",
                                body.size(), "\r\nConnection: close\r\n\r\n", body));
    ::close(conn);
  }
}

MemoryTrimmer::MemoryTrimmer(absl::Duration period, size_t slack) {
  // Blocks of 256 KiB and more come from mmap and go back on free. glibc's
  // default threshold rises to the largest block freed so far (up to 32 MiB),
  // after which a burst of large requests is served from, and fragments, the
  // arenas that malloc_trim can only partly give back.
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  thread_ = std::thread([this, period, slack] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!wake_.wait_for(lock, absl::ToChronoNanoseconds(period), [this] { return stop_; })) {
      if (mallinfo2().fordblks > slack) malloc_trim(0);
    }
  });
}

MemoryTrimmer::~MemoryTrimmer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

absl::StatusOr<MetricsEndpoint> ServeMetrics(const std::string& address,
                                             std::shared_ptr<prometheus::Registry> metrics) {
  auto server = MetricsServer::Start(address, std::move(metrics));
  if (!server.ok()) return server.status();
  MetricsEndpoint endpoint;
  endpoint.address = (*server)->address();
  endpoint.server = *std::move(server);
  return endpoint;
}

absl::StatusOr<std::unique_ptr<ServerMain>> ServerMain::Start(std::string program,
                                                              const std::string& metrics_address) {
  std::unique_ptr<ServerMain> main(new ServerMain());
  main->program_ = std::move(program);
  absl::StatusOr<std::unique_ptr<ShutdownSignal>> shutdown = ShutdownSignal::Install();
  if (!shutdown.ok()) return shutdown.status();
  main->shutdown_ = std::move(shutdown).value();
  main->metrics_ = std::make_shared<prometheus::Registry>();
  if (!metrics_address.empty()) {
    absl::StatusOr<MetricsEndpoint> endpoint = ServeMetrics(metrics_address, main->metrics_);
    if (!endpoint.ok()) return endpoint.status();
    main->endpoint_ = std::move(endpoint).value();
  }
  return main;
}

int ServerMain::ServeUntilSignal(const std::string& address, std::function<bool()> serving) {
  std::cout << program_ << " listening on " << address << std::endl;
  if (endpoint_.server) {
    endpoint_.server->SetHealthCheck(std::move(serving));
    std::cout << program_ << " metrics on http://" << endpoint_.address << "/metrics" << std::endl;
  }
  const int sig = shutdown_->Wait();
  std::cout << program_ << ": signal " << sig << ", shutting down" << std::endl;
  if (endpoint_.server) endpoint_.server->SetHealthCheck(nullptr);
  return sig;
}

int ExitFailure(const char* program, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", program, std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace moend::rpc
