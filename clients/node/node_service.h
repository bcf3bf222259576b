// gRPC adapter of the InferenceNode service (proto/moend/v1/node.proto).
#ifndef MOEND_CLIENTS_NODE_NODE_SERVICE_H_
#define MOEND_CLIENTS_NODE_NODE_SERVICE_H_

#include "clients/node/inference_node.h"
#include "moend/v1/node.grpc.pb.h"

namespace moend::node {

class NodeService final : public v1::InferenceNode::Service {
 public:
  explicit NodeService(InferenceNode* node) : node_(node) {}
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;

 private:
  InferenceNode* node_;
};

}  // namespace moend::node

#endif  // MOEND_CLIENTS_NODE_NODE_SERVICE_H_
