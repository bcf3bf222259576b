// A fixed set of threads that run posted tasks in order of posting, with a
// bound on the tasks waiting. The router runs its cache misses here (the
// table-source call and the solve), off the gRPC callback threads.
#ifndef MOEND_SERVICES_ROUTER_WORK_QUEUE_H_
#define MOEND_SERVICES_ROUTER_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace moend::router {

class WorkQueue {
 public:
  // `threads` >= 1 workers; at most `max_waiting` tasks wait for one.
  WorkQueue(int threads, size_t max_waiting);
  // Runs every task already posted, then joins the threads.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // False (and `task` is dropped, not run) when max_waiting tasks wait.
  bool Post(absl::AnyInvocable<void() &&> task);

  size_t waiting() const;

 private:
  void Work();

  const size_t max_waiting_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_WORK_QUEUE_H_
