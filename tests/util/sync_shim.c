// An LD_PRELOAD shim that counts what a process writes to RocksDB WAL files
// (<digits>.log) in one folder and what of it was made durable, for tests
// that check "every acknowledged write is synced" (a kill -9 keeps the page
// cache, so a test that only kills the process cannot tell).
//
// Environment, read by the shim:
//   MOEND_SYNC_SHIM_DIR   the folder whose WAL files are watched (read at each
//                         open; unset: nothing is watched)
//   MOEND_SYNC_SHIM_FILE  if set at start, the counters live in this file
//                         (created, sizeof(struct SyncShimState) bytes) so
//                         that another process can read them; otherwise in
//                         this process, from moend_sync_shim_state().
//   MOEND_SYNC_SHIM_NOOP  "1": fsync and fdatasync of watched files do
//                         nothing (a store that does not sync), so a test can
//                         show that it would notice.
//
// Bytes written with write/pwrite/writev/pwritev to a watched file count as
// unsynced until fsync or fdatasync of that descriptor returns 0 (taken
// before the real call, so a write racing with it stays unsynced); a
// descriptor closed before that moves them to closed_unsynced_bytes.
// sync_file_range is counted but is no durability barrier (no metadata, no
// device cache flush), so it syncs nothing here.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tests/util/sync_shim.h"

#define MAX_FDS 65536

static struct SyncShimState local_state;
static struct SyncShimState* state = &local_state;
static uint64_t fd_unsynced[MAX_FDS];  // unsynced bytes per watched descriptor
static unsigned char fd_watched[MAX_FDS];

struct SyncShimState* moend_sync_shim_state(void) { return state; }

__attribute__((constructor)) static void SyncShimInit(void) {
  const char* file = getenv("MOEND_SYNC_SHIM_FILE");
  if (file == NULL || *file == '\0') return;
  int (*real_open)(const char*, int, ...) = (int (*)(const char*, int, ...))dlsym(RTLD_NEXT, "open");
  const int fd = real_open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  if (ftruncate(fd, sizeof(struct SyncShimState)) == 0) {
    void* p = mmap(NULL, sizeof(struct SyncShimState), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) state = (struct SyncShimState*)p;
  }
  close(fd);
}

// Whether `path` is <MOEND_SYNC_SHIM_DIR>/<digits>.log.
static int IsWatchedWal(const char* path) {
  const char* dir = getenv("MOEND_SYNC_SHIM_DIR");
  if (dir == NULL || *dir == '\0' || path == NULL) return 0;
  const size_t n = strlen(dir);
  if (strncmp(path, dir, n) != 0) return 0;
  const char* name = path + n;
  while (*name == '/') ++name;
  const char* p = name;
  while (*p >= '0' && *p <= '9') ++p;
  return p > name && strcmp(p, ".log") == 0;
}

// Notes what a successful open returned; returns `fd`.
static int Opened(int fd, const char* path) {
  if (fd < 0 || fd >= MAX_FDS) return fd;
  fd_watched[fd] = (unsigned char)IsWatchedWal(path);
  fd_unsynced[fd] = 0;
  if (fd_watched[fd]) __atomic_add_fetch(&state->wal_opens, 1, __ATOMIC_SEQ_CST);
  return fd;
}

static void Wrote(int fd, ssize_t n) {
  if (n <= 0 || fd < 0 || fd >= MAX_FDS || !fd_watched[fd]) return;
  __atomic_add_fetch(&fd_unsynced[fd], (uint64_t)n, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&state->wal_bytes, (uint64_t)n, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&state->unsynced_bytes, (uint64_t)n, __ATOMIC_SEQ_CST);
}

// Runs a sync call of `fd`; a watched descriptor's bytes written before it
// are synced when it returns 0.
static int Synced(int fd, int (*call)(int)) {
  if (fd < 0 || fd >= MAX_FDS || !fd_watched[fd]) return call(fd);
  const char* noop = getenv("MOEND_SYNC_SHIM_NOOP");
  if (noop != NULL && strcmp(noop, "1") == 0) return 0;
  const uint64_t covered = __atomic_exchange_n(&fd_unsynced[fd], 0, __ATOMIC_SEQ_CST);
  const int rc = call(fd);
  if (rc == 0) {
    __atomic_sub_fetch(&state->unsynced_bytes, covered, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&state->syncs, 1, __ATOMIC_SEQ_CST);
  } else {
    __atomic_add_fetch(&fd_unsynced[fd], covered, __ATOMIC_SEQ_CST);
  }
  return rc;
}

// The next definition of `name` (libc's), looked up once.
#define REAL(name)                                  \
  static __typeof__(&name) real_##name = NULL;      \
  if (real_##name == NULL) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

static mode_t ModeArg(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

// open, open64, openat, openat64: the real call, then Opened. RocksDB opens
// by absolute path; a relative one (to a dirfd) is never watched.
#define DEFINE_OPEN(name)                                   \
  int name(const char* path, int flags, ...) {              \
    REAL(name);                                             \
    va_list ap;                                             \
    va_start(ap, flags);                                    \
    const mode_t mode = ModeArg(flags, ap);                 \
    va_end(ap);                                             \
    return Opened(real_##name(path, flags, mode), path);    \
  }
#define DEFINE_OPENAT(name)                                        \
  int name(int dirfd, const char* path, int flags, ...) {          \
    REAL(name);                                                    \
    va_list ap;                                                    \
    va_start(ap, flags);                                           \
    const mode_t mode = ModeArg(flags, ap);                        \
    va_end(ap);                                                    \
    return Opened(real_##name(dirfd, path, flags, mode), path);    \
  }
DEFINE_OPEN(open)
DEFINE_OPEN(open64)
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)

int creat(const char* path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int close(int fd) {
  REAL(close);
  if (fd >= 0 && fd < MAX_FDS && fd_watched[fd]) {
    fd_watched[fd] = 0;  // bytes it did not sync stay unsynced
    const uint64_t left = __atomic_exchange_n(&fd_unsynced[fd], 0, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&state->unsynced_bytes, left, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&state->closed_unsynced_bytes, left, __ATOMIC_SEQ_CST);
  }
  return real_close(fd);
}

ssize_t write(int fd, const void* buf, size_t n) {
  REAL(write);
  const ssize_t r = real_write(fd, buf, n);
  Wrote(fd, r);
  return r;
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  REAL(pwrite);
  const ssize_t r = real_pwrite(fd, buf, n, off);
  Wrote(fd, r);
  return r;
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t off) {
  REAL(pwrite64);
  const ssize_t r = real_pwrite64(fd, buf, n, off);
  Wrote(fd, r);
  return r;
}

ssize_t writev(int fd, const struct iovec* iov, int count) {
  REAL(writev);
  const ssize_t r = real_writev(fd, iov, count);
  Wrote(fd, r);
  return r;
}

ssize_t pwritev(int fd, const struct iovec* iov, int count, off_t off) {
  REAL(pwritev);
  const ssize_t r = real_pwritev(fd, iov, count, off);
  Wrote(fd, r);
  return r;
}

int fsync(int fd) {
  REAL(fsync);
  return Synced(fd, real_fsync);
}

int fdatasync(int fd) {
  REAL(fdatasync);
  return Synced(fd, real_fdatasync);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
  REAL(sync_file_range);
  if (fd >= 0 && fd < MAX_FDS && fd_watched[fd]) {
    __atomic_add_fetch(&state->range_syncs, 1, __ATOMIC_SEQ_CST);
  }
  return real_sync_file_range(fd, offset, nbytes, flags);
}
