// gRPC adapter of the InferenceNode service (proto/moend/v1/node.proto).
#ifndef MOEND_CLIENTS_NODE_NODE_SERVICE_H_
#define MOEND_CLIENTS_NODE_NODE_SERVICE_H_

#include "clients/node/inference_node.h"
#include "moend/v1/node.grpc.pb.h"
#include "services/common/security.h"

namespace moend::node {

// Generate needs the bearer token when `auth` has one: it changes no state,
// but it spends the node's compute (and memory) for whoever calls. A client
// that cancels, or whose deadline passes, frees its sequence's cache at once.
class NodeService final : public v1::InferenceNode::Service {
 public:
  explicit NodeService(InferenceNode* node, rpc::TokenAuthorizer auth = rpc::TokenAuthorizer())
      : node_(node), auth_(std::move(auth)) {}
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateChunk>* writer) override;

 private:
  InferenceNode* node_;
  const rpc::TokenAuthorizer auth_;
};

}  // namespace moend::node

#endif  // MOEND_CLIENTS_NODE_NODE_SERVICE_H_
