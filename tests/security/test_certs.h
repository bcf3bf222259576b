// Test PKI made with the openssl command line at test time: a CA, a server
// certificate for 127.0.0.1/localhost, a client certificate (CN "client"), a
// worker's client certificate (CN "worker-a", DNS name "gpu-a.fleet"), and a
// second ("rogue") CA with its own client certificate that servers must refuse.
#ifndef MOEND_TESTS_SECURITY_TEST_CERTS_H_
#define MOEND_TESTS_SECURITY_TEST_CERTS_H_

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace moend::testing {

struct TestCerts {
  std::string ca;  // PEM of the CA that signed server and client
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string worker_cert, worker_key;  // CN worker-a, subjectAltName DNS:gpu-a.fleet
  std::string rogue_ca, rogue_client_cert, rogue_client_key;  // another CA's client
  std::string token_file, wrong_token_file;
  std::string token;
};

namespace internal {
inline bool Run(const std::string& command, const std::string& log) {
  return std::system((command + " >>" + log + " 2>&1").c_str()) == 0;
}
}  // namespace internal

// Writes everything under `dir` (which must exist). FailedPrecondition when
// openssl is missing or fails (its output is in dir/openssl.log).
inline absl::StatusOr<TestCerts> MakeTestCerts(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const std::string log = (dir / "openssl.log").string();
  const std::string d = dir.string() + "/";
  auto fail = [&](const std::string& what) {
    return absl::FailedPreconditionError(
        absl::StrCat("openssl failed to ", what, "; see ", log, " (is openssl installed?)"));
  };
  // EC P-256 keys: quick to make.
  const std::string key = "openssl ecparam -name prime256v1 -genkey -noout -out ";
  auto make_ca = [&](const std::string& name) {
    return internal::Run(key + d + name + ".key", log) &&
           internal::Run("openssl req -x509 -new -key " + d + name + ".key -out " + d + name +
                             ".pem -days 2 -subj /CN=" + name +
                             " -addext basicConstraints=critical,CA:TRUE"
                             " -addext keyUsage=critical,keyCertSign,cRLSign",
                         log);
  };
  auto make_leaf = [&](const std::string& ca, const std::string& name, const std::string& ext) {
    std::ofstream(d + name + ".ext") << ext << "\n";
    return internal::Run(key + d + name + ".key", log) &&
           internal::Run("openssl req -new -key " + d + name + ".key -out " + d + name +
                             ".csr -subj /CN=" + name,
                         log) &&
           internal::Run("openssl x509 -req -in " + d + name + ".csr -CA " + d + ca +
                             ".pem -CAkey " + d + ca + ".key -CAcreateserial -out " + d + name +
                             ".pem -days 2 -extfile " + d + name + ".ext",
                         log);
  };
  if (!make_ca("ca")) return fail("make the CA");
  if (!make_ca("rogue-ca")) return fail("make the rogue CA");
  if (!make_leaf("ca", "server",
                 "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                 "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth")) {
    return fail("make the server certificate");
  }
  const std::string client_ext =
      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth";
  if (!make_leaf("ca", "client", client_ext)) return fail("make the client certificate");
  if (!make_leaf("ca", "worker-a", client_ext + "\nsubjectAltName=DNS:gpu-a.fleet")) {
    return fail("make the worker certificate");
  }
  if (!make_leaf("rogue-ca", "rogue-client", client_ext)) {
    return fail("make the rogue client certificate");
  }
  TestCerts c;
  c.ca = d + "ca.pem";
  c.server_cert = d + "server.pem";
  c.server_key = d + "server.key";
  c.client_cert = d + "client.pem";
  c.client_key = d + "client.key";
  c.worker_cert = d + "worker-a.pem";
  c.worker_key = d + "worker-a.key";
  c.rogue_ca = d + "rogue-ca.pem";
  c.rogue_client_cert = d + "rogue-client.pem";
  c.rogue_client_key = d + "rogue-client.key";
  c.token = "s3cret-token-for-tests";
  c.token_file = d + "token";
  c.wrong_token_file = d + "wrong-token";
  std::ofstream(c.token_file) << c.token << "\n";
  std::ofstream(c.wrong_token_file) << "not-the-token\n";
  if (!fs::exists(c.server_cert) || !fs::exists(c.client_key)) return fail("write the files");
  return c;
}

}  // namespace moend::testing

#endif  // MOEND_TESTS_SECURITY_TEST_CERTS_H_
