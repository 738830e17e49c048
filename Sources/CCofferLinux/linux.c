#define _GNU_SOURCE
#include "CCofferLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

int coffer_harden_process(void) {
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) != 0) return -1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return -1;
    return 0;
}

int coffer_is_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

int coffer_peercred(int fd, coffer_ucred *out) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    if (len != sizeof(cred)) { errno = EPROTO; return -1; }
    out->pid = cred.pid;
    out->uid = cred.uid;
    out->gid = cred.gid;
    return 0;
}

int coffer_create_exclusive(const char *path, unsigned int mode) {
    /* Invariant 7: O_NOFOLLOW|O_CLOEXEC|O_EXCL and the final mode at creation. */
    mode_t old = umask(0077);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    umask(old);
    if (fd >= 0 && fchmod(fd, (mode_t)mode) != 0) {
        int e = errno; close(fd); unlink(path); errno = e; return -1;
    }
    return fd;
}

int coffer_open_read_nofollow(const char *path) {
    return open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
}

int coffer_lock_file(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno; close(fd); errno = e; return -1;
    }
    return fd;
}

int coffer_user_groups(const char *user, unsigned int gid, unsigned int *groups, int max) {
    int n = max;
    if (getgrouplist(user, (gid_t)gid, (gid_t *)groups, &n) < 0) return -1;
    return n;
}

void coffer_syslog(int priority, const char *message) {
    static int opened = 0;
    if (!opened) { openlog("cofferd", LOG_PID | LOG_NDELAY, LOG_AUTHPRIV); opened = 1; }
    syslog(priority, "%s", message);
}

int coffer_unix_connect(const char *path) {
    struct sockaddr_un addr;
    size_t n = strlen(path);
    if (n >= sizeof(addr.sun_path)) { errno = ENAMETOOLONG; return -1; }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, n);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int rc;
    do { rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr)); } while (rc != 0 && errno == EINTR);
    if (rc != 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}
