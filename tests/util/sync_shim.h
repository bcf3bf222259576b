// The counters of tests/util/sync_shim.c (an LD_PRELOAD shim): what a process
// wrote to the RocksDB WAL files of one folder and what of it is synced.
#ifndef MOEND_TESTS_UTIL_SYNC_SHIM_H_
#define MOEND_TESTS_UTIL_SYNC_SHIM_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct SyncShimState {
  uint64_t wal_opens;       // watched WAL files opened
  uint64_t wal_bytes;       // bytes written to them
  uint64_t unsynced_bytes;  // of those, on open descriptors and not yet
                            // covered by fsync/fdatasync
  uint64_t closed_unsynced_bytes;  // of those, on descriptors closed unsynced
  uint64_t syncs;           // fsync/fdatasync calls on them that returned 0
  uint64_t range_syncs;     // sync_file_range calls on them (no durability)
};

// This process's counters (when MOEND_SYNC_SHIM_FILE was unset at start, the
// only copy). Look it up with dlsym: it exists only when the shim is loaded.
struct SyncShimState* moend_sync_shim_state(void);

#ifdef __cplusplus
}
#endif

#endif  // MOEND_TESTS_UTIL_SYNC_SHIM_H_
