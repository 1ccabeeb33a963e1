/* A fault shim for rulekeeper's storage tests (tests/it/storage.rs), loaded with LD_PRELOAD.
 * It makes libc calls on chosen files fail, as a broken disk would:
 *
 *   RK_FAULT_FSYNC_PATH=P    fsync/fdatasync of the file or directory P fails with EIO.
 *   RK_FAULT_WRITE_PREFIX=P  write() to a file whose path starts with P fails with
 *                            RK_FAULT_ERRNO (ENOSPC, EDQUOT or EIO; default EIO) ...
 *   RK_FAULT_SWITCH=F        ... only while the file F exists (unset: always).
 *
 * Paths are matched through /proc/self/fd, so only what the test names is touched.
 * Renames are not covered: rulekeeper's temp files are renamed by raw syscalls (rustix).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int path_of(int fd, char *buf, size_t len) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, buf, len - 1);
  if (n < 0) return -1;
  buf[n] = 0;
  return 0;
}

static int switched_on(void) {
  const char *sw = getenv("RK_FAULT_SWITCH");
  return sw == NULL || access(sw, F_OK) == 0;
}

static int fault_errno(void) {
  const char *e = getenv("RK_FAULT_ERRNO");
  if (e && strcmp(e, "ENOSPC") == 0) return ENOSPC;
  if (e && strcmp(e, "EDQUOT") == 0) return EDQUOT;
  return EIO;
}

static int fsync_fails(int fd) {
  const char *want = getenv("RK_FAULT_FSYNC_PATH");
  char p[4096];
  return want && switched_on() && path_of(fd, p, sizeof p) == 0 && strcmp(p, want) == 0;
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (fsync_fails(fd)) { errno = EIO; return -1; }
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  if (fsync_fails(fd)) { errno = EIO; return -1; }
  return real(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
  const char *prefix = getenv("RK_FAULT_WRITE_PREFIX");
  if (prefix && fd > 2 && switched_on()) {
    char p[4096];
    if (path_of(fd, p, sizeof p) == 0 && strncmp(p, prefix, strlen(prefix)) == 0) {
      errno = fault_errno();
      return -1;
    }
  }
  return real(fd, buf, count);
}
