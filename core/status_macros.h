// Status helpers missing from Debian's Abseil (20220623).
#ifndef MOEND_CORE_STATUS_MACROS_H_
#define MOEND_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOEND_CONCAT_INNER_(a, b) a##b
#define MOEND_CONCAT_(a, b) MOEND_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the caller if not OK.
#define MOEND_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::absl::Status moend_status_ = (expr);           \
    if (!moend_status_.ok()) return moend_status_;   \
  } while (false)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status.
#define MOEND_ASSIGN_OR_RETURN(lhs, rexpr) \
  MOEND_ASSIGN_OR_RETURN_IMPL_(MOEND_CONCAT_(moend_statusor_, __LINE__), lhs, rexpr)

#define MOEND_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // MOEND_CORE_STATUS_MACROS_H_
