#ifndef COFFER_CCOFFERLINUX_H
#define COFFER_CCOFFERLINUX_H

#include <sys/types.h>

/// Peer credentials as the kernel reports them (laid out like struct ucred).
typedef struct {
    int pid;
    unsigned int uid;
    unsigned int gid;
} coffer_ucred;

/// Invariant 8: make the process non-dumpable and forbid core files.
/// Returns 0 on success, -1 with errno set otherwise.
int coffer_harden_process(void);

/// Reads PR_GET_DUMPABLE (for tests and status).
int coffer_is_dumpable(void);

/// SO_PEERCRED of a connected Unix socket. Returns 0 or -1 with errno.
int coffer_peercred(int fd, coffer_ucred *out);

/// The fd's underlying open flags include O_NOFOLLOW|O_CLOEXEC|O_EXCL semantics:
/// creates a file with its final mode; returns fd or -1 with errno.
int coffer_create_exclusive(const char *path, unsigned int mode);

/// Opens an existing regular file for reading without following a final symlink.
int coffer_open_read_nofollow(const char *path);

/// Non-blocking exclusive flock. Returns fd holding the lock, -1 with errno
/// (EWOULDBLOCK when another process holds it).
int coffer_lock_file(const char *path);

/// Supplementary groups of a user (getgrouplist). Returns count or -1.
int coffer_user_groups(const char *user, unsigned int gid, unsigned int *groups, int max);

/// Connects a new stream socket (close-on-exec) to a Unix socket path: the one
/// place that fills a sockaddr_un. Returns the fd, or -1 with errno (ENAMETOOLONG
/// when the path does not fit).
int coffer_unix_connect(const char *path);

/// One message to syslog (facility AUTHPRIV, identity "cofferd"), as "%s".
void coffer_syslog(int priority, const char *message);

#endif
