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
/// For a client that holds values (coffer run, secret get): not dumpable (no core,
/// no ptrace by its user; execve resets it for the command) and the crash signals at
/// their defaults (the Swift runtime's backtracer prints memory). 0 or -1.
int coffer_protect_values(void);

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


/* ---- coffer run: secrets on a tmpfs for one command ---- */

/// One file to write on the run's tmpfs.
typedef struct {
    const char *name;            /* one path segment, checked by the caller */
    const unsigned char *data;
    unsigned long length;
    unsigned int mode;
    unsigned int uid;
    unsigned int gid;
} coffer_run_file;

/// What `coffer_run_spawn` does. With `private_mount`, the child unshares a mount
/// namespace (and a network namespace with `private_network`), makes every mount
/// private, mounts a tmpfs at `dir` (size, mode 0700, nosuid,nodev,noexec, noswap
/// unless refused and `allow_swap`), writes the files, makes the directory
/// `dir_mode` owned by dir_uid:dir_gid and the mount read-only. Without it the files
/// are written into `dir` (an existing directory the caller owns, on a tmpfs the
/// daemon mounted). With `pid_namespace` (and `private_mount`), the child is cloned
/// straight into the new namespaces and is the init of its PID namespace (a small
/// reaper forwarding signals) that runs the command: when the command ends,
/// everything it left behind is killed and the namespace, and so the mount, is freed.
/// Returns the child's pid (-1 and errno when it could not be made).
typedef struct {
    int private_mount;
    int private_network;
    int pid_namespace;
    int allow_swap;
    /* a root command of a run without network: no CAP_SYS_ADMIN, CAP_NET_ADMIN,
     * CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_BPF (nothing to leave its namespaces with) */
    int drop_escape_caps;
    /* a container's injection (the OCI hook): the tmpfs is made in the mount namespace
     * of container_pid and attached at `dir` resolved inside container_root (an
     * absolute path there, before pivot_root), creating missing directories; no
     * command runs (exe NULL) */
    int container_pid;
    const char *container_root;
    const char *dir;
    unsigned long size_bytes;
    unsigned int dir_mode;
    unsigned int dir_uid;
    unsigned int dir_gid;
    const coffer_run_file *files;
    int file_count;
    const char *exe;             /* absolute path, already resolved */
    char *const *argv;
    char *const *envp;
} coffer_run_spec;

/// Reports from the child before the command starts (read from `report_fd`).
enum {
    COFFER_RUN_NOTE_SWAP = 1,    /* noswap refused; went on without (allow_swap) */
    COFFER_RUN_FAILED = 2,       /* stage + errno follow; nothing ran */
};
enum {
    COFFER_STAGE_UNSHARE = 1, COFFER_STAGE_PRIVATE = 2, COFFER_STAGE_MOUNT = 3, COFFER_STAGE_NOSWAP = 4,
    COFFER_STAGE_WRITE = 5, COFFER_STAGE_SEAL = 6, COFFER_STAGE_FORK = 7, COFFER_STAGE_EXEC = 8, COFFER_STAGE_NETWORK = 9, COFFER_STAGE_ATTACH = 10,
    COFFER_STAGE_SHARED = 11,  /* the target is on a mount that propagates to other namespaces */
};
typedef struct { int kind; int stage; int err; int index; } coffer_run_report;

/// Forks the run. Returns the child's pid (the command itself, or the process that
/// holds the namespaces) and a read end of the report pipe in *report_fd, or -1.
/// With a PID namespace and a command, *status_fd (when not NULL) is a pipe on which
/// the namespace's init sends the command's status the moment it ends (else -1).
int coffer_run_spawn(const coffer_run_spec *spec, int *report_fd, int *status_fd);

/// A private run's namespaces made ahead, while cofferd answers the run's start:
/// PID 1 of new mount and PID namespaces (every mount private) holding a new tmpfs
/// (size, 0700, nosuid,nodev,noexec, noswap unless refused and `allow_swap`), not
/// yet attached, waiting for the rest of the run on *feed_fd (coffer_run_feed); its
/// failures come on *report_fd, the command's status on *status_fd. Returns its pid,
/// or -1 and errno. Closing *feed_fd unfed ends it (coffer_run_abandon).
int coffer_run_prepare(unsigned long size_bytes, int allow_swap, int *feed_fd, int *report_fd, int *status_fd);

/// Sends a prepared run the rest of its spec (dir, owner, mode, files, exe, argv,
/// envp: the other fields are the prepared ones), wipes this process's copy of it and
/// closes feed_fd; signals to this process are passed on from now. 0, or -1 and errno
/// (the init is gone: its report says why).
int coffer_run_feed(int pid, int feed_fd, const coffer_run_spec *spec);

/// Ends a prepared run that will not be fed (the start was refused): kills and reaps it.
int coffer_run_abandon(int pid, int feed_fd, int report_fd, int status_fd);

/// A run without network: starts this very program again (/proc/self/exe with argv
/// and envp) as PID 1 of new mount, PID and network namespaces — with `userns`, of a
/// new user namespace too, where the caller's uid and gid map to themselves and
/// CAP_SYS_ADMIN and CAP_NET_ADMIN survive the exec as ambient capabilities (for the
/// tmpfs; the command gets none) — with every mount private, a /proc of its own and
/// only loopback, up. The program asks cofferd for the secrets from in there. Returns
/// its pid and the report pipe in *report_fd, or -1 and errno.
int coffer_run_isolated(char *const argv[], char *const envp[], int userns, int *report_fd);

/// Waits for `pid`, forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it; after
/// `ttl_seconds` (0: none) it is killed (SIGKILL) and *expired set. Returns the
/// shell-style status: the exit code, or 128 + the signal that ended it.
int coffer_run_wait(int pid, unsigned int ttl_seconds, int *expired);

/// coffer_run_wait, but with a status pipe from coffer_run_spawn (-1: none): the
/// command's status is returned as soon as the namespace's init sends it, before the
/// init is reaped (*reaped 0: call coffer_run_reap later; the kernel tears the
/// namespace down meanwhile). Closes status_fd.
int coffer_run_wait_status(int pid, int status_fd, unsigned int ttl_seconds, int *expired, int *reaped);

/// Waits for `pid` (EINTR retried): its shell-style status, or -1.
int coffer_run_reap(int pid);

/// A tmpfs for an unprivileged caller's run (by cofferd): mode 0700 owned by uid:gid,
/// nosuid,nodev,noexec, size-bounded, noswap (when `noswap`). 0 or -1 with errno.
int coffer_mount_tmpfs(const char *dir, unsigned long size_bytes, unsigned int uid, unsigned int gid, int noswap);

/// Before a run's tmpfs is detached: removes everything in it (no symlink followed,
/// no other mount entered) and remounts it read-only, so that a process the command
/// left behind (its working directory there) holds an empty file system it cannot
/// fill. 0; -1 when something could not be removed; -2 when it could not be made
/// read-only (a file held open for writing).
int coffer_wipe_and_seal(const char *dir);

/// Detaches a mount (MNT_DETACH|UMOUNT_NOFOLLOW). 0 or -1 with errno.
int coffer_unmount(const char *dir);

/// pidfd_open; -1 with errno.
int coffer_pidfd_open(int pid);

/// malloc_trim(0): returns the heap's free memory to the system (after the start's
/// one-time checks). Returns 1 when memory was released.
int coffer_malloc_trim(void);
/// 1 when the process behind the pidfd has exited, 0 while it runs, -1 on error.
int coffer_pidfd_exited(int pidfd);
/// pidfd_send_signal; 0 or -1 with errno.
int coffer_pidfd_kill(int pidfd, int sig);
/* Live rotation: NAME written anew (new file + rename) in the tmpfs at TARGET as the
 * process PID (0: cofferd itself) sees it; PIDFD must still be that process's. NOSYMLINKS:
 * bit 0 resolves TARGET without symbolic links, bit 1 marks a mount Coffer sealed
 * read-only (it is left read-only). */
int coffer_rotate_file(int pidfd, int pid, const char *target, int nosymlinks, const unsigned long long *excluded, int excluded_count,
                       const char *name, const unsigned char *data, unsigned long length,
                       unsigned int mode, unsigned int uid, unsigned int gid, int *stage);
/* What the kernel says of a run's tmpfs as its holder sees it: "M <mountinfo line>",
 * then "F <mode octal> <uid> <gid> <size> <name>" per entry, NUL-ended in OUT. 0 or -1. */
int coffer_inspect_mount(int pidfd, int pid, const char *target, int nosymlinks, char *out, unsigned long cap);

/// Of descriptor `targetfd` of the process behind `pidfd` (a copy taken with
/// pidfd_getfd, closed again): its socket domain, for a socket of the IP family (or
/// any but AF_UNIX) the inode of its network namespace (SIOCGSKNS), for AF_UNIX the
/// pid of its peer (SO_PEERCRED). 0, or -1 and errno (not a socket: ENOTSOCK).
int coffer_socket_facts(int pidfd, int targetfd, int *domain, unsigned long long *netns_inode, int *peer_pid);


/// epoll for the purpose-built request loop (issue 16, design (b), a measured
/// prototype): the kernel's packed epoll_event stays on this side.
int coffer_epoll_create(void);
/// EPOLL_CTL_ADD (op 1), MOD (3) or DEL (2) of fd with a 64-bit tag.
int coffer_epoll_ctl(int ep, int op, int fd, unsigned int events, unsigned long long tag);
/// Waits; fills tags[i] and events[i]; returns the count or -1 with errno.
int coffer_epoll_wait(int ep, unsigned long long *tags, unsigned int *events, int max, int timeout_ms);
/// A non-blocking, close-on-exec eventfd.
int coffer_eventfd(void);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; -1 with errno (EAGAIN: none waiting).
int coffer_accept_nonblock(int fd);

#endif
