#define _GNU_SOURCE
#include "CCofferLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <signal.h>
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
    /* The Swift runtime's crash backtracer catches these and prints, for the crashed
     * thread, every register and the 16 bytes each one points at: a key or a value
     * being decrypted would reach the log. Back to the kernel's default: the process
     * dies at once, and with no core (above). */
    static const int crash_signals[] = {SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV};
    for (size_t i = 0; i < sizeof(crash_signals) / sizeof(crash_signals[0]); i++) {
        if (signal(crash_signals[i], SIG_DFL) == SIG_ERR) return -1;
    }
    return 0;
}

int coffer_protect_values(void) {
    /* no core dump and no ptrace by the same user: the values are in this process's
     * memory (reset by execve: the command is dumpable as usual) */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return -1;
    static const int crash_signals[] = {SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV};
    for (size_t i = 0; i < sizeof(crash_signals) / sizeof(crash_signals[0]); i++) signal(crash_signals[i], SIG_DFL);
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

/* ---- coffer run ---------------------------------------------------------- */

#include <dirent.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <pthread.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef MS_NOSYMFOLLOW
#define MS_NOSYMFOLLOW 256
#endif

static volatile pid_t coffer_forward_target = 0;
static volatile sig_atomic_t coffer_expired = 0;
static const int coffer_forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

/* Signals a user or a supervisor sends (kill, systemd, CI runners) are passed on;
 * ones the terminal sends (SI_KERNEL) reach the whole foreground process group,
 * the command included, already: passing those on would deliver them twice. */
static void coffer_forward(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    int saved = errno;
    if (coffer_forward_target > 0 && (info == NULL || info->si_code != SI_KERNEL)) kill(coffer_forward_target, sig);
    errno = saved;
}

static void coffer_on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    coffer_expired = 1;
    if (coffer_forward_target > 0) kill(coffer_forward_target, SIGKILL);
    errno = saved;
}

static void coffer_install_forwarding(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = coffer_forward;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (unsigned i = 0; i < sizeof(coffer_forwarded) / sizeof(coffer_forwarded[0]); i++) sigaction(coffer_forwarded[i], &sa, NULL);
}

static void coffer_block_forwarded(sigset_t *old) {
    sigset_t set;
    sigemptyset(&set);
    for (unsigned i = 0; i < sizeof(coffer_forwarded) / sizeof(coffer_forwarded[0]); i++) sigaddset(&set, coffer_forwarded[i]);
    sigprocmask(SIG_BLOCK, &set, old);
}

/* The command starts as a process normally does: default handlers, nothing
 * blocked (whatever mask coffer run inherited, e.g. from a test runner's thread). */
static void coffer_default_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (unsigned i = 0; i < sizeof(coffer_forwarded) / sizeof(coffer_forwarded[0]); i++) sigaction(coffer_forwarded[i], &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* and without the capabilities a user namespace's runner kept for its setup
     * (ambient and inheritable: nothing carries into a program's file capabilities) */
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) == 0 && (d[0].inheritable || d[1].inheritable)) {
        d[0].inheritable = 0;
        d[1].inheritable = 0;
        syscall(SYS_capset, &h, d);
    }
}

/* The signals forwarded (and SIGALRM, the TTL) must reach the processes that
 * forward them: unblocked whatever mask was inherited. */
static void coffer_unblock_forwarded(void) {
    sigset_t set;
    sigemptyset(&set);
    for (unsigned i = 0; i < sizeof(coffer_forwarded) / sizeof(coffer_forwarded[0]); i++) sigaddset(&set, coffer_forwarded[i]);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static void coffer_report(int fd, int kind, int stage, int err, int index) {
    coffer_run_report r = {kind, stage, err, index};
    ssize_t n;
    do { n = write(fd, &r, sizeof(r)); } while (n < 0 && errno == EINTR);
}

static _Noreturn void coffer_fail(int fd, int stage, int index) {
    coffer_report(fd, COFFER_RUN_FAILED, stage, errno, index);
    _exit(125);
}

static int coffer_status_code(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 1;
}

static int coffer_write_all(int fd, const unsigned char *p, unsigned long n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (unsigned long)w;
    }
    return 0;
}

static int coffer_loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) { int e = errno; close(s); errno = e; return -1; }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) { int e = errno; close(s); errno = e; return -1; }
    close(s);
    return 0;
}

/* Runs in the forked child only: system calls, no allocation.
 *
 * A private run's tmpfs is made with the new mount API: fsopen/fsmount give a file
 * descriptor of a detached mount, the files are written relative to it (so no path
 * the caller names can send a write to the host's file systems), it is made
 * read-only, and only then attached at `dir` in the private namespace. */
/* Takes from this process, for good (bounding set too), the capabilities a root
 * command could leave its namespaces with: setns and mount/umount (CAP_SYS_ADMIN),
 * interfaces (CAP_NET_ADMIN), other processes (CAP_SYS_PTRACE), the kernel itself
 * (CAP_SYS_MODULE, CAP_BPF). */
static int coffer_drop_escape_caps(void) {
    static const int caps[] = {CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_MODULE, 39 /* CAP_BPF */};
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) return -1;
    for (unsigned i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        if (prctl(PR_CAPBSET_DROP, caps[i], 0, 0, 0) != 0 && errno != EINVAL) return -1;
        unsigned w = (unsigned)caps[i] / 32, b = 1u << ((unsigned)caps[i] % 32);
        d[w].effective &= ~b;
        d[w].permitted &= ~b;
        d[w].inheritable &= ~b;
    }
    return (int)syscall(SYS_capset, &h, d);
}

/* `dir` (absolute) inside the directory `root`, every component resolved as if root
 * were / (RESOLVE_IN_ROOT: no symbolic link or .. leads out), missing directories
 * made 0755; an O_PATH descriptor of it, or -1. */
static int coffer_open_in_root(const char *root, const char *dir) {
    int rootfd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (rootfd < 0) return -1;
    char part[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(part) || dir[0] != '/') { close(rootfd); errno = EINVAL; return -1; }
    int cur = -1;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && dir[i] != '/') continue;
        memcpy(part, dir, i);
        part[i] = 0;
        struct open_how how;
        memset(&how, 0, sizeof(how));
        how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
        int fd = (int)syscall(SYS_openat2, rootfd, part, &how, sizeof(how));
        if (fd < 0 && errno == ENOENT) {
            /* made in the directory resolved so far (cur, or the root) */
            const char *name = strrchr(part, '/') + 1;
            if (mkdirat(cur >= 0 ? cur : rootfd, name, 0755) != 0 && errno != EEXIST) { int e = errno; if (cur >= 0) close(cur); close(rootfd); errno = e; return -1; }
            fd = (int)syscall(SYS_openat2, rootfd, part, &how, sizeof(how));
        }
        if (fd < 0) { int e = errno; if (cur >= 0) close(cur); close(rootfd); errno = e; return -1; }
        if (cur >= 0) close(cur);
        cur = fd;
    }
    close(rootfd);
    return cur;
}

static int coffer_mount_line(int fd, int procfd, char *line, size_t cap, int require_root);

/* A detached tmpfs for a run (size-bounded, 0700, nosuid,nodev,noexec,nosymfollow,
 * noswap unless refused and allowed): its mount fd and its root opened. */
static void coffer_make_tmpfs(int fd, const char *size_text, int allow_swap, int *mfd_out, int *dfd_out) {
    int fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
    if (fsfd < 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "source", "coffer-run", 0) != 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "size", size_text, 0) != 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "mode", "0700", 0) != 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "nr_inodes", "1024", 0) != 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    if (fsconfig(fsfd, FSCONFIG_SET_FLAG, "noswap", NULL, 0) != 0) {
        if (!allow_swap) coffer_fail(fd, COFFER_STAGE_NOSWAP, -1);
        coffer_report(fd, COFFER_RUN_NOTE_SWAP, COFFER_STAGE_NOSWAP, errno, -1);
    }
    if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    int mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOSYMFOLLOW);
    if (mfd < 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    close(fsfd);
    /* the mount fd is an O_PATH one: its root opened for fchown/fchmod */
    int dfd = openat(mfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) coffer_fail(fd, COFFER_STAGE_MOUNT, -1);
    *mfd_out = mfd;
    *dfd_out = dfd;
}

static void coffer_run_fill(const coffer_run_spec *spec, int fd, int status_fd, const sigset_t *mask, int mfd, int dfd, int procfd);

static void coffer_run_child(const coffer_run_spec *spec, const char *size_text, int fd, int status_fd, const sigset_t *mask) {
    int dfd, mfd = -1, procfd = -1;
    if (spec->private_mount && spec->container_pid > 0) {
        /* into the container's mount namespace (its propagation is the runtime's); this
         * process's entry of the host's /proc kept for reading that namespace's mounts */
        procfd = open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC);
        char ns[64];
        snprintf(ns, sizeof(ns), "/proc/%d/ns/mnt", spec->container_pid);
        int nsfd = open(ns, O_RDONLY | O_CLOEXEC);
        if (nsfd < 0 || setns(nsfd, CLONE_NEWNS) != 0) coffer_fail(fd, COFFER_STAGE_UNSHARE, -1);
        close(nsfd);
    } else if (spec->private_mount) {
        /* with a PID namespace this process was cloned into its namespaces already */
        if (!spec->pid_namespace) {
            int flags = CLONE_NEWNS;
            if (spec->private_network) flags |= CLONE_NEWNET;
            if (unshare(flags) != 0) coffer_fail(fd, COFFER_STAGE_UNSHARE, -1);
        }
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) coffer_fail(fd, COFFER_STAGE_PRIVATE, -1);
    }
    if (spec->private_mount) {
        if (spec->private_network && coffer_loopback_up() != 0) coffer_fail(fd, COFFER_STAGE_NETWORK, -1);
        coffer_make_tmpfs(fd, size_text, spec->allow_swap, &mfd, &dfd);
    } else {
        dfd = open(spec->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) coffer_fail(fd, COFFER_STAGE_WRITE, -1);
    }
    coffer_run_fill(spec, fd, status_fd, mask, mfd, dfd, procfd);
}

/* The files, the directory's owner and mode, the mount sealed read-only and attached,
 * then the command (as the child of this PID namespace's init when there is one). */
static void coffer_run_fill(const coffer_run_spec *spec, int fd, int status_fd, const sigset_t *mask, int mfd, int dfd, int procfd) {
    for (int i = 0; i < spec->file_count; i++) {
        const coffer_run_file *f = &spec->files[i];
        int ffd = openat(dfd, f->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (ffd < 0) coffer_fail(fd, COFFER_STAGE_WRITE, i);
        if (coffer_write_all(ffd, f->data, f->length) != 0) coffer_fail(fd, COFFER_STAGE_WRITE, i);
        if (spec->private_mount && fchown(ffd, f->uid, f->gid) != 0) coffer_fail(fd, COFFER_STAGE_WRITE, i);
        if (fchmod(ffd, f->mode) != 0) coffer_fail(fd, COFFER_STAGE_WRITE, i);
        close(ffd);
        /* this process's copy of the value is no longer needed: zeroed (it lives on as
         * the reaper or namespace holder while the command runs) */
        memset((void *)f->data, 0, f->length);
    }
    if (spec->private_mount && fchown(dfd, spec->dir_uid, spec->dir_gid) != 0) coffer_fail(fd, COFFER_STAGE_SEAL, -1);
    if (fchmod(dfd, spec->dir_mode) != 0) coffer_fail(fd, COFFER_STAGE_SEAL, -1);
    close(dfd);
    if (spec->private_mount) {
        struct mount_attr ro;
        memset(&ro, 0, sizeof(ro));
        ro.attr_set = MOUNT_ATTR_RDONLY;
        if (mount_setattr(mfd, "", AT_EMPTY_PATH, &ro, sizeof(ro)) != 0) coffer_fail(fd, COFFER_STAGE_SEAL, -1);
        /* the mount point opened once, without following any symbolic link (in a
         * container: resolved inside its root only, missing directories made), and
         * the mount attached to that very directory */
        int tfd;
        if (spec->container_pid > 0) {
            tfd = coffer_open_in_root(spec->container_root, spec->dir);
        } else {
            struct open_how how;
            memset(&how, 0, sizeof(how));
            how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
            how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
            tfd = (int)syscall(SYS_openat2, AT_FDCWD, spec->dir, &how, sizeof(how));
        }
        if (tfd < 0) coffer_fail(fd, COFFER_STAGE_ATTACH, -1);
        if (spec->container_pid > 0) {
            /* a mount under a shared one would propagate to its peers (the host's, for a
             * shared volume): refused, so nothing of it can outlive the container */
            static char line[8192];
            if (procfd < 0 || !coffer_mount_line(tfd, procfd, line, sizeof(line), 0)) coffer_fail(fd, COFFER_STAGE_ATTACH, -1);
            char *sep = strstr(line, " - ");
            if (sep) *sep = 0;
            if (strstr(line, " shared:")) { errno = EPERM; coffer_fail(fd, COFFER_STAGE_SHARED, -1); }
        }
        if (move_mount(mfd, "", tfd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) coffer_fail(fd, COFFER_STAGE_ATTACH, -1);
        close(tfd);
        close(mfd);
    }

    if (spec->exe == NULL) _exit(0);  /* an injection only: the container is the consumer */
    if (!spec->pid_namespace) {
        coffer_default_signals();
        if (spec->drop_escape_caps && coffer_drop_escape_caps() != 0) coffer_fail(fd, COFFER_STAGE_EXEC, -1);
        execve(spec->exe, spec->argv, spec->envp);
        coffer_fail(fd, COFFER_STAGE_EXEC, -1);
    }

    /* This process is PID 1 of the new PID namespace: it starts the command and
     * reaps everything; when the command ends, so does the namespace (the kernel
     * kills what is left in it). */
    /* a /proc of the new PID namespace (best effort: some hosts lock /proc) */
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    /* a bare clone: no atfork handlers (this process may have been cloned from a
     * multi-threaded one and must not take a glibc lock) */
    pid_t cmd = (pid_t)syscall(SYS_clone, SIGCHLD, NULL, NULL, NULL, NULL);
    if (cmd < 0) coffer_fail(fd, COFFER_STAGE_FORK, -1);
    if (cmd == 0) {
        coffer_default_signals();
        execve(spec->exe, spec->argv, spec->envp);
        coffer_fail(fd, COFFER_STAGE_EXEC, -1);
    }
    close(fd);
    coffer_forward_target = cmd;
    sigprocmask(SIG_SETMASK, mask, NULL);
    coffer_unblock_forwarded();
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, 0);
        if (w == cmd) {
            /* the command's status to coffer run at once: it reports the end to cofferd
             * while the kernel tears this namespace down (it reaps this process after) */
            int code = coffer_status_code(st);
            if (status_fd >= 0) {
                ssize_t n;
                do { n = write(status_fd, &code, sizeof(code)); } while (n < 0 && errno == EINTR);
            }
            _exit(code);
        }
        if (w < 0 && errno != EINTR) _exit(1);
    }
}

/* In a forked child: killed when coffer run dies (PDEATHSIG), and gone at once if it
 * died before that was set — watched through a pidfd of it where getppid() cannot
 * tell (PID 1 of a new namespace sees 0), else by getppid() against `parent` (0: not). */
static void coffer_die_with_parent(int parent_fd, pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (parent_fd >= 0) {
        struct pollfd pf = {parent_fd, POLLIN, 0};
        if (poll(&pf, 1, 0) != 0) _exit(125);
        close(parent_fd);
    } else if (parent > 0 && getppid() != parent) {
        _exit(125);
    }
}

int coffer_run_spawn(const coffer_run_spec *spec, int *report_fd, int *status_fd) {
    char size_text[32];
    snprintf(size_text, sizeof(size_text), "%lu", spec->size_bytes);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    /* the command's status from the namespace's init (close-on-exec: never the command's) */
    int sfds[2] = {-1, -1};
    if (status_fd) *status_fd = -1;
    if (status_fd && spec->private_mount && spec->pid_namespace && spec->exe && spec->container_pid <= 0 && pipe2(sfds, O_CLOEXEC) != 0) {
        int e = errno;
        close(fds[0]); close(fds[1]);
        errno = e;
        return -1;
    }
    sigset_t old;
    coffer_block_forwarded(&old);
    coffer_install_forwarding();
    pid_t parent = getpid();
    pid_t pid;
    int parent_fd = -1;
    if (spec->private_mount && spec->pid_namespace) {
        /* Straight into new mount, PID (and network) namespaces: the child is PID 1
         * of its namespace at once (one process less than fork + unshare + fork).
         * getppid() is 0 there: the parent is watched through a pidfd instead. */
        parent_fd = (int)syscall(SYS_pidfd_open, parent, 0);
        unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | SIGCHLD;
        if (spec->private_network) flags |= CLONE_NEWNET;
        pid = (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, NULL);
        if (pid < 0 && parent_fd >= 0) { int e = errno; close(parent_fd); errno = e; }
    } else {
        pid = fork();
    }
    if (pid < 0) {
        int e = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(fds[0]); close(fds[1]);
        if (sfds[0] >= 0) { close(sfds[0]); close(sfds[1]); }
        errno = e;
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        if (sfds[0] >= 0) close(sfds[0]);
        coffer_die_with_parent(parent_fd, parent);
        coffer_run_child(spec, size_text, fds[1], sfds[1], &old);
        _exit(125);
    }
    if (parent_fd >= 0) close(parent_fd);
    close(fds[1]);
    if (sfds[1] >= 0) close(sfds[1]);
    coffer_forward_target = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
    *report_fd = fds[0];
    if (status_fd) *status_fd = sfds[0];
    return pid;
}

/* ---- a private run's namespaces made while cofferd answers ---- */

/* The feed: u64 total length, then u32 dir_mode, dir_uid, dir_gid, file_count, argc,
 * envc; dir; per file: name, u32 mode, uid, gid, u64 length, bytes; exe; argv; envp.
 * Strings are u32 length + bytes + NUL (used in place). Written by coffer run itself
 * over a socket pair only the two hold; read whole, bounded, into memory the init maps
 * (no malloc: it may be the clone of a multi-threaded process). */

static int coffer_read_all(int fd, unsigned char *p, unsigned long n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r; n -= (unsigned long)r;
    }
    return 0;
}

typedef struct { unsigned char *p; unsigned long left; int bad; } coffer_cursor;

static unsigned int coffer_take_u32(coffer_cursor *c) {
    unsigned int v = 0;
    if (c->left < 4) { c->bad = 1; return 0; }
    memcpy(&v, c->p, 4); c->p += 4; c->left -= 4;
    return v;
}

static unsigned long coffer_take_u64(coffer_cursor *c) {
    unsigned long v = 0;
    if (c->left < 8) { c->bad = 1; return 0; }
    memcpy(&v, c->p, 8); c->p += 8; c->left -= 8;
    return v;
}

static const unsigned char *coffer_take_bytes(coffer_cursor *c, unsigned long n) {
    if (c->left < n) { c->bad = 1; return NULL; }
    const unsigned char *b = c->p;
    c->p += n; c->left -= n;
    return b;
}

static char *coffer_take_string(coffer_cursor *c) {
    unsigned int n = coffer_take_u32(c);
    if (c->bad || n == 0xFFFFFFFFu || c->left < (unsigned long)n + 1 || c->p[n] != 0 || memchr(c->p, 0, n) != NULL) { c->bad = 1; return NULL; }
    char *s = (char *)c->p;
    c->p += n + 1; c->left -= (unsigned long)n + 1;
    return s;
}

static _Noreturn void coffer_prepared_child(int fd, int status_fd, int feed, const char *size_text, unsigned long size_bytes, int allow_swap, const sigset_t *mask) {
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) coffer_fail(fd, COFFER_STAGE_PRIVATE, -1);
    int mfd = -1, dfd = -1;
    coffer_make_tmpfs(fd, size_text, allow_swap, &mfd, &dfd);
    /* the rest when coffer run has the values; end of file: it gave up (refused) */
    unsigned long total = 0;
    if (coffer_read_all(feed, (unsigned char *)&total, sizeof(total)) != 0) _exit(125);
    /* the files fit the tmpfs; arguments and environment are bounded by the kernel's own limit */
    if (total < 24 || total > size_bytes + (64UL << 20)) { errno = EINVAL; coffer_fail(fd, COFFER_STAGE_WRITE, -1); }
    unsigned char *buf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) coffer_fail(fd, COFFER_STAGE_WRITE, -1);
    madvise(buf, total, MADV_DONTDUMP);
    if (coffer_read_all(feed, buf, total) != 0) _exit(125);
    close(feed);
    coffer_cursor c = {buf, total, 0};
    coffer_run_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.private_mount = 1;
    spec.pid_namespace = 1;
    spec.allow_swap = allow_swap;
    spec.dir_mode = coffer_take_u32(&c);
    spec.dir_uid = coffer_take_u32(&c);
    spec.dir_gid = coffer_take_u32(&c);
    unsigned int files = coffer_take_u32(&c), argc = coffer_take_u32(&c), envc = coffer_take_u32(&c);
    if (c.bad || files > 4096 || argc == 0 || argc > (1u << 20) || envc > (1u << 20)) { errno = EINVAL; coffer_fail(fd, COFFER_STAGE_WRITE, -1); }
    unsigned long table = (unsigned long)files * sizeof(coffer_run_file) + ((unsigned long)argc + envc + 2) * sizeof(char *);
    unsigned char *tab = mmap(NULL, table, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tab == MAP_FAILED) coffer_fail(fd, COFFER_STAGE_WRITE, -1);
    coffer_run_file *fl = (coffer_run_file *)tab;
    char **argv = (char **)(tab + (unsigned long)files * sizeof(coffer_run_file));
    char **envp = argv + argc + 1;
    spec.dir = coffer_take_string(&c);
    for (unsigned int i = 0; i < files && !c.bad; i++) {
        fl[i].name = coffer_take_string(&c);
        fl[i].mode = coffer_take_u32(&c);
        fl[i].uid = coffer_take_u32(&c);
        fl[i].gid = coffer_take_u32(&c);
        fl[i].length = coffer_take_u64(&c);
        fl[i].data = coffer_take_bytes(&c, fl[i].length);
    }
    spec.exe = coffer_take_string(&c);
    for (unsigned int i = 0; i < argc && !c.bad; i++) argv[i] = coffer_take_string(&c);
    for (unsigned int i = 0; i < envc && !c.bad; i++) envp[i] = coffer_take_string(&c);
    argv[argc] = NULL;
    envp[envc] = NULL;
    if (c.bad || c.left != 0) { errno = EINVAL; coffer_fail(fd, COFFER_STAGE_WRITE, -1); }
    spec.files = fl;
    spec.file_count = (int)files;
    spec.argv = argv;
    spec.envp = envp;
    /* signals stay blocked (queued) until the command runs, then are passed to it */
    coffer_install_forwarding();
    coffer_run_fill(&spec, fd, status_fd, mask, mfd, dfd, -1);
    _exit(125);
}

int coffer_run_prepare(unsigned long size_bytes, int allow_swap, int *feed_fd, int *report_fd, int *status_fd) {
    char size_text[32];
    snprintf(size_text, sizeof(size_text), "%lu", size_bytes);
    int fds[2], sfds[2], feed[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    if (pipe2(sfds, O_CLOEXEC) != 0) { int e = errno; close(fds[0]); close(fds[1]); errno = e; return -1; }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, feed) != 0) {
        int e = errno; close(fds[0]); close(fds[1]); close(sfds[0]); close(sfds[1]); errno = e; return -1;
    }
    /* cloned with the forwarded signals blocked: the init queues them until its command runs */
    sigset_t old;
    coffer_block_forwarded(&old);
    pid_t parent = getpid();
    int parent_fd = (int)syscall(SYS_pidfd_open, parent, 0);
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid == 0) {
        close(fds[0]); close(sfds[0]); close(feed[0]);
        coffer_die_with_parent(parent_fd, parent);
        coffer_prepared_child(fds[1], sfds[1], feed[1], size_text, size_bytes, allow_swap, &old);
    }
    int e = errno;
    if (parent_fd >= 0) close(parent_fd);
    close(fds[1]); close(sfds[1]); close(feed[1]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        close(fds[0]); close(sfds[0]); close(feed[0]);
        errno = e;
        return -1;
    }
    *feed_fd = feed[0];
    *report_fd = fds[0];
    *status_fd = sfds[0];
    return pid;
}

static void coffer_put_u32(unsigned char **p, unsigned int v) { memcpy(*p, &v, 4); *p += 4; }
static void coffer_put_u64(unsigned char **p, unsigned long v) { memcpy(*p, &v, 8); *p += 8; }
static void coffer_put_string(unsigned char **p, const char *s) {
    unsigned int n = (unsigned int)strlen(s);
    coffer_put_u32(p, n);
    memcpy(*p, s, n + 1);
    *p += n + 1;
}

int coffer_run_feed(int pid, int feed_fd, const coffer_run_spec *spec) {
    unsigned long total = 24 + 4 + strlen(spec->dir) + 1 + 4 + strlen(spec->exe) + 1;
    int argc = 0, envc = 0;
    while (spec->argv[argc]) total += 4 + strlen(spec->argv[argc++]) + 1;
    while (spec->envp[envc]) total += 4 + strlen(spec->envp[envc++]) + 1;
    for (int i = 0; i < spec->file_count; i++) total += 4 + strlen(spec->files[i].name) + 1 + 12 + 8 + spec->files[i].length;
    unsigned char *buf = malloc(8 + total);
    if (!buf) { close(feed_fd); return -1; }
    unsigned char *p = buf;
    coffer_put_u64(&p, total);
    coffer_put_u32(&p, spec->dir_mode);
    coffer_put_u32(&p, spec->dir_uid);
    coffer_put_u32(&p, spec->dir_gid);
    coffer_put_u32(&p, (unsigned int)spec->file_count);
    coffer_put_u32(&p, (unsigned int)argc);
    coffer_put_u32(&p, (unsigned int)envc);
    coffer_put_string(&p, spec->dir);
    for (int i = 0; i < spec->file_count; i++) {
        const coffer_run_file *f = &spec->files[i];
        coffer_put_string(&p, f->name);
        coffer_put_u32(&p, f->mode);
        coffer_put_u32(&p, f->uid);
        coffer_put_u32(&p, f->gid);
        coffer_put_u64(&p, f->length);
        memcpy(p, f->data, f->length);
        p += f->length;
    }
    coffer_put_string(&p, spec->exe);
    for (int i = 0; i < argc; i++) coffer_put_string(&p, spec->argv[i]);
    for (int i = 0; i < envc; i++) coffer_put_string(&p, spec->envp[i]);
    /* from here signals to coffer run are passed to the init, which passes them on */
    sigset_t old;
    coffer_block_forwarded(&old);
    coffer_install_forwarding();
    coffer_forward_target = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
    int rc = 0;
    unsigned long n = 8 + total, off = 0;
    while (off < n) {
        ssize_t w = send(feed_fd, buf + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { rc = -1; break; }
        off += (unsigned long)w;
    }
    int e = errno;
    /* the values in this buffer are no longer needed here */
    explicit_bzero(buf, n);
    free(buf);
    close(feed_fd);
    errno = e;
    return rc;
}

int coffer_run_abandon(int pid, int feed_fd, int report_fd, int status_fd) {
    if (feed_fd >= 0) close(feed_fd);
    if (report_fd >= 0) close(report_fd);
    if (status_fd >= 0) close(status_fd);
    kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return 0;
}

static int coffer_write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Keeps CAP_SYS_ADMIN and CAP_NET_ADMIN (of the new user namespace) across the exec
 * of the runner, whose uid there is not 0: ambient capabilities. */
static int coffer_keep_setup_caps(void) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) return -1;
    d[0].inheritable |= (1u << CAP_SYS_ADMIN) | (1u << CAP_NET_ADMIN);
    if (syscall(SYS_capset, &h, d) != 0) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0) != 0) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0) != 0) return -1;
    return 0;
}

int coffer_run_isolated(char *const argv[], char *const envp[], int userns, int *report_fd) {
    int fds[2], sync[2] = {-1, -1};
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    if (userns && pipe2(sync, O_CLOEXEC) != 0) { close(fds[0]); close(fds[1]); return -1; }
    sigset_t old;
    coffer_block_forwarded(&old);
    coffer_install_forwarding();
    uid_t uid = getuid();
    gid_t gid = getgid();
    int parent_fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | SIGCHLD;
    if (userns) flags |= CLONE_NEWUSER;
    pid_t pid = (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, NULL);
    if (pid < 0) {
        int e = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(fds[0]); close(fds[1]);
        if (userns) { close(sync[0]); close(sync[1]); }
        if (parent_fd >= 0) close(parent_fd);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        int fd = fds[1];
        close(fds[0]);
        coffer_die_with_parent(parent_fd, 0);
        if (userns) {
            /* wait until the parent has mapped our uid and gid */
            char c;
            close(sync[1]);
            ssize_t n;
            do { n = read(sync[0], &c, 1); } while (n < 0 && errno == EINTR);
            if (n != 1) _exit(125);
            close(sync[0]);
        }
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) coffer_fail(fd, COFFER_STAGE_PRIVATE, -1);
        /* a /proc of the new PID namespace (best effort: some hosts lock /proc) */
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        if (coffer_loopback_up() != 0) coffer_fail(fd, COFFER_STAGE_NETWORK, -1);
        if (userns && coffer_keep_setup_caps() != 0) coffer_fail(fd, COFFER_STAGE_UNSHARE, -1);
        /* the forwarded signals stay blocked through the exec: this process is the
         * init of its PID namespace, which the kernel spares every signal it has no
         * handler for, so one passed on before the program below installs its own
         * would be lost; blocked, it waits (queued) until that program starts its
         * command and passes it on (coffer_run_wait unblocks them) */
        sigset_t keep = old;
        for (unsigned i = 0; i < sizeof(coffer_forwarded) / sizeof(coffer_forwarded[0]); i++) sigaddset(&keep, coffer_forwarded[i]);
        sigprocmask(SIG_SETMASK, &keep, NULL);
        /* nothing but stdin, stdout and stderr goes in: a socket opened outside the
         * namespace would still reach the network it came from */
        syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
        execve("/proc/self/exe", argv, envp);
        coffer_fail(fd, COFFER_STAGE_EXEC, -1);
    }
    if (parent_fd >= 0) close(parent_fd);
    close(fds[1]);
    if (userns) {
        close(sync[0]);
        char path[64], map[64];
        int ok = 1;
        snprintf(path, sizeof(path), "/proc/%d/setgroups", pid);
        if (coffer_write_file(path, "deny") != 0) ok = 0;
        snprintf(path, sizeof(path), "/proc/%d/uid_map", pid);
        snprintf(map, sizeof(map), "%u %u 1", uid, uid);
        if (ok && coffer_write_file(path, map) != 0) ok = 0;
        snprintf(path, sizeof(path), "/proc/%d/gid_map", pid);
        snprintf(map, sizeof(map), "%u %u 1", gid, gid);
        if (ok && coffer_write_file(path, map) != 0) ok = 0;
        int e = errno;
        if (ok) {
            ssize_t n;
            do { n = write(sync[1], "1", 1); } while (n < 0 && errno == EINTR);
        }
        close(sync[1]);
        if (!ok) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            close(fds[0]);
            sigprocmask(SIG_SETMASK, &old, NULL);
            errno = e;
            return -1;
        }
    }
    coffer_forward_target = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
    *report_fd = fds[0];
    return pid;
}

int coffer_run_wait(int pid, unsigned int ttl_seconds, int *expired) {
    return coffer_run_wait_status(pid, -1, ttl_seconds, expired, NULL);
}

int coffer_run_reap(int pid) {
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, 0);
        if (w == pid) return coffer_status_code(st);
        if (w < 0 && errno != EINTR) return -1;
    }
}

int coffer_run_wait_status(int pid, int status_fd, unsigned int ttl_seconds, int *expired, int *reaped) {
    coffer_forward_target = pid;
    coffer_unblock_forwarded();
    coffer_expired = 0;
    if (ttl_seconds > 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = coffer_on_alarm;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGALRM, &sa, NULL);
        alarm(ttl_seconds);
    }
    int st = 0;
    if (reaped) *reaped = 1;
    if (status_fd >= 0) {
        /* the status the namespace's init sends when the command ends (end of file: it
         * died first, killed by the TTL or a signal: then its own status, below) */
        int code = 0;
        ssize_t n;
        do { n = read(status_fd, &code, sizeof(code)); } while (n < 0 && errno == EINTR);
        close(status_fd);
        if (n == (ssize_t)sizeof(code) && code >= 0 && code <= 255 + 128) {
            alarm(0);
            coffer_forward_target = 0;
            *expired = coffer_expired;
            if (reaped) *reaped = 0;
            return code;
        }
    }
    /* as a PID namespace's init (a run without network), orphans are ours to reap */
    pid_t which = getpid() == 1 ? -1 : pid;
    for (;;) {
        int s2 = 0;
        pid_t w = waitpid(which, &s2, 0);
        if (w == pid) { st = s2; break; }
        if (w < 0 && errno != EINTR) return 1;
    }
    alarm(0);
    coffer_forward_target = 0;
    *expired = coffer_expired;
    return coffer_status_code(st);
}

int coffer_mount_tmpfs(const char *dir, unsigned long size_bytes, unsigned int uid, unsigned int gid, int noswap) {
    char opts[160];
    snprintf(opts, sizeof(opts), "size=%lu,nr_inodes=1024,mode=0700,uid=%u,gid=%u%s", size_bytes, uid, gid, noswap ? ",noswap" : "");
    return mount("coffer-run", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOSYMFOLLOW, opts);
}

/* Empties a directory tree on one file system (never following a symbolic link,
 * never crossing into another mount). */
static int coffer_wipe_at(int dfd, dev_t dev, int depth) {
    if (depth > 64) { close(dfd); return -1; }
    DIR *d = fdopendir(dfd);
    if (!d) { close(dfd); return -1; }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dev) { rc = -1; continue; }
        if (S_ISDIR(st.st_mode)) {
            fchmodat(dirfd(d), e->d_name, 0700, 0);
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0 || coffer_wipe_at(sub, dev, depth + 1) != 0) rc = -1;
            if (unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) != 0) rc = -1;
        } else if (unlinkat(dirfd(d), e->d_name, 0) != 0) {
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}

int coffer_wipe_and_seal(const char *dir) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return -1;
    struct stat st;
    if (fstat(dfd, &st) != 0) { close(dfd); return -1; }
    fchmod(dfd, 0700);
    int rc = coffer_wipe_at(dfd, st.st_dev, 0);
    /* read-only from now on: what a process left behind cannot refill it (a write
     * in progress makes the remount fail with EBUSY: a few tries) */
    int sealed = -1;
    for (int i = 0; i < 20 && sealed != 0; i++) {
        sealed = mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOSYMFOLLOW, NULL);
        if (sealed != 0) usleep(5000);
    }
    if (sealed != 0) return -2;
    return rc;
}

int coffer_unmount(const char *dir) {
    return umount2(dir, MNT_DETACH | UMOUNT_NOFOLLOW);
}

int coffer_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int coffer_pidfd_exited(int pidfd) {
    struct pollfd p = {pidfd, POLLIN, 0};
    int r = poll(&p, 1, 0);
    if (r < 0) return -1;
    return r > 0 ? 1 : 0;
}

int coffer_pidfd_kill(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

#ifndef SIOCGSKNS
#define SIOCGSKNS 0x894C
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* A copy of a requester's socket is closed on a thread of its own: if the requester
 * closed its descriptor meanwhile, ours is the last and close() waits out SO_LINGER,
 * which the requester chose — never on a thread that serves requests. */
static void *coffer_close_later(void *arg) {
    close((int)(intptr_t)arg);
    return NULL;
}

static void coffer_close_detached(int fd) {
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    if (pthread_create(&t, &a, coffer_close_later, (void *)(intptr_t)fd) != 0) close(fd);
    pthread_attr_destroy(&a);
}

int coffer_socket_facts(int pidfd, int targetfd, int *domain, unsigned long long *netns_inode, int *peer_pid) {
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, 0);
    if (fd < 0) return -1;
    int d = 0;
    socklen_t len = sizeof(d);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &d, &len) != 0) { int e = errno; coffer_close_detached(fd); errno = e; return -1; }
    *domain = d;
    *netns_inode = 0;
    *peer_pid = 0;
    if (d == AF_UNIX) {
        struct ucred cred;
        len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) *peer_pid = cred.pid;
    } else {
        int ns = ioctl(fd, SIOCGSKNS);
        if (ns >= 0) {
            struct stat st;
            if (fstat(ns, &st) == 0) *netns_inode = (unsigned long long)st.st_ino;
            close(ns);
        }
    }
    coffer_close_detached(fd);
    return 0;
}

/* Live rotation (cofferd, as root): writes NAME in the run's tmpfs at TARGET as seen by
 * the process behind PIDFD (pid PID; 0: cofferd's own namespace and root) — a new file
 * with the owner and mode given, then renamed over the old one, so a reader sees the old
 * value or the new one, never part of either. The tmpfs is made writable only for the
 * swap when it was read-only. Done in a child (setns into the holder's mount namespace
 * needs a process of one thread); 0, or -1 with errno (stage in *stage). */
#include <stdlib.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <linux/magic.h>
/* The mountinfo line (this process's current mount namespace, read through PROCFD, its
 * entry of the host's /proc) of the mount FD is the root of: 1 and LINE filled, else 0. */
static int coffer_mount_line(int fd, int procfd, char *line, size_t cap, int require_root) {
    struct statx sx;
    memset(&sx, 0, sizeof(sx));
    if (statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) != 0 || !(sx.stx_mask & STATX_MNT_ID)) return 0;
    if (require_root && (!(sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) || !(sx.stx_attributes & STATX_ATTR_MOUNT_ROOT))) return 0;
    /* (the namespace's own /proc may be another PID namespace's; this process's entry
     * shows the namespace it is in when it opens mountinfo) */
    int mi = openat(procfd, "mountinfo", O_RDONLY | O_CLOEXEC);
    if (mi < 0) return 0;
    static char buf[1 << 16];
    size_t used = 0;
    int found = 0, skipping = 0;
    for (;;) {
        ssize_t n = read(mi, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t i = 0; i < n && !found; i++) {
            char c = buf[i];
            if (c != '\n') {
                if (used + 1 < cap) line[used++] = c; else skipping = 1;
                continue;
            }
            line[used] = 0;
            if (!skipping) {
                char *end;
                unsigned long long id = strtoull(line, &end, 10);
                if (end != line && *end == ' ' && id == sx.stx_mnt_id) found = 1;
            }
            if (!found) { used = 0; skipping = 0; }
        }
        if (found) break;
    }
    close(mi);
    return found;
}

/* The root of a tmpfs Coffer made (source coffer-run). */
static int coffer_is_run_mount(int fd, int procfd) {
    static char line[8192];
    if (!coffer_mount_line(fd, procfd, line, sizeof(line), 1)) return 0;
    char *sep = strstr(line, " - ");
    return sep && strncmp(sep + 3, "tmpfs coffer-run ", 17) == 0;
}

/* In a child of cofferd: into the mount namespace of the holder (PID behind PIDFD; 0:
 * cofferd's own) and TARGET opened as it sees it (inside its root only; cofferd's own
 * tmpfs by path without any link). The O_PATH fd, or -1 with errno and *stage. */
#include <linux/nsfs.h>
static int coffer_enter_holder(int pidfd, int pid, const char *target, int nosymlinks, int *procfd, int *stage) {
    int rootfd, nsfd = -1;
    char path[64];
    *stage = 1;
    if (pid > 0) {
        snprintf(path, sizeof(path), "/proc/%d/root", pid);
        rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        snprintf(path, sizeof(path), "/proc/%d/ns/mnt", pid);
        nsfd = open(path, O_RDONLY | O_CLOEXEC);
    } else {
        rootfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    }
    *procfd = open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0 || *procfd < 0 || (pid > 0 && nsfd < 0)) return -1;
    /* both opened while the holder lived: they are its, not a reused pid's */
    if (pidfd >= 0) {
        struct pollfd pf = {pidfd, POLLIN, 0};
        if (poll(&pf, 1, 0) != 0) { errno = ESRCH; return -1; }
    }
    *stage = 2;
    if (nsfd >= 0) {
        /* only a mount namespace of the initial user namespace: one a process made in a
         * user namespace of its own is that process's to fill */
        struct stat mine, theirs;
        int owner = ioctl(nsfd, NS_GET_USERNS);
        if (owner < 0 || fstat(owner, &theirs) != 0 || stat("/proc/self/ns/user", &mine) != 0) return -1;
        close(owner);
        if (theirs.st_ino != mine.st_ino || theirs.st_dev != mine.st_dev) { errno = EPERM; return -1; }
        if (setns(nsfd, CLONE_NEWNS) != 0) return -1;
    }
    *stage = 3;
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = pid > 0 && !nosymlinks ? (RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) : (RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    return (int)syscall(SYS_openat2, rootfd, target[0] == '/' ? target + 1 : target, &how, sizeof(how));
}

/* the tmpfs at DFD is not one of EXCLUDED (cofferd's tmpfs of other runs, which a
 * namespace cloned from the host's may also show) */
static int coffer_not_excluded(int dfd, const unsigned long long *excluded, int excluded_count) {
    struct stat st;
    if (fstat(dfd, &st) != 0) return 0;
    for (int i = 0; i < excluded_count; i++) if ((unsigned long long)st.st_dev == excluded[i]) return 0;
    return 1;
}

static void coffer_rotate_child(int pidfd, int pid, const char *target, int nosymlinks, const unsigned long long *excluded, int excluded_count,
                                const char *name, const unsigned char *data, unsigned long length,
                                unsigned int mode, unsigned int uid, unsigned int gid, int report) {
    int stage = 1, procfd = -1;
    /* bit 0: resolve without symbolic links; bit 1: the mount is one Coffer sealed
     * read-only when it made it (a private or container run): it ends read-only
     * whatever state this child finds it in */
    int sealed = (nosymlinks & 2) != 0;
    nosymlinks &= 1;
    int dfd = coffer_enter_holder(pidfd, pid, target, nosymlinks, &procfd, &stage);
    if (dfd < 0) goto fail;
    if (!coffer_not_excluded(dfd, excluded, excluded_count)) { errno = EPERM; goto fail; }
    struct statfs sfs;
    if (fstatfs(dfd, &sfs) != 0) goto fail;
    if (sfs.f_type != TMPFS_MAGIC) { errno = ENOTDIR; goto fail; }
    /* and the root of a tmpfs Coffer made (source coffer-run), not whatever the holder
     * may have mounted or uncovered there since */
    if (!coffer_is_run_mount(dfd, procfd)) { errno = EPERM; goto fail; }
    stage = 4;
    struct statvfs vfs;
    int wasReadOnly = sealed || (fstatvfs(dfd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY));
    struct mount_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.attr_clr = MOUNT_ATTR_RDONLY;
    if (wasReadOnly && mount_setattr(dfd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0) goto fail;
    stage = 5;
    char tmp[300];
    if (strlen(name) > 255) { errno = ENAMETOOLONG; goto reseal; }
    snprintf(tmp, sizeof(tmp), ".%s.coffer-new", name);
    unlinkat(dfd, tmp, 0);
    int ffd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (ffd < 0) goto reseal;
    if (coffer_write_all(ffd, data, length) != 0 || fchown(ffd, uid, gid) != 0 || fchmod(ffd, mode) != 0) {
        int e = errno;
        close(ffd);
        unlinkat(dfd, tmp, 0);
        errno = e;
        goto reseal;
    }
    close(ffd);
    memset((void *)data, 0, length);
    if (renameat(dfd, tmp, dfd, name) != 0) { int e = errno; unlinkat(dfd, tmp, 0); errno = e; goto reseal; }
    stage = 6;
    attr.attr_clr = 0;
    attr.attr_set = MOUNT_ATTR_RDONLY;
    if (wasReadOnly) {
        /* a write still in progress on the mount makes this fail with EBUSY: a few tries */
        int r = -1;
        for (int i = 0; i < 40 && r != 0; i++) {
            r = mount_setattr(dfd, "", AT_EMPTY_PATH, &attr, sizeof(attr));
            if (r != 0 && errno != EBUSY) break;
            if (r != 0) usleep(5000);
        }
        if (r != 0) goto fail;
    }
    _exit(0);
reseal:
    {
        int e = errno;
        memset((void *)data, 0, length);
        attr.attr_clr = 0;
        attr.attr_set = MOUNT_ATTR_RDONLY;
        if (wasReadOnly) mount_setattr(dfd, "", AT_EMPTY_PATH, &attr, sizeof(attr));
        errno = e;
    }
fail:
    {
        int e = errno;
        int msg[2] = {stage, e};
        (void)!write(report, msg, sizeof(msg));
        _exit(1);
    }
}

/* waits for CHILD at most TIMEOUT_MS, then kills it; its wait status */
static int coffer_wait_child(pid_t child, int timeout_ms) {
    int cfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (cfd >= 0) {
        struct pollfd pf = {cfd, POLLIN, 0};
        int r;
        do { r = poll(&pf, 1, timeout_ms); } while (r < 0 && errno == EINTR);
        if (r == 0) kill(child, SIGKILL);
        close(cfd);
    }
    int st = 0;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR) {}
    return st;
}

int coffer_rotate_file(int pidfd, int pid, const char *target, int nosymlinks, const unsigned long long *excluded, int excluded_count,
                       const char *name, const unsigned char *data, unsigned long length,
                       unsigned int mode, unsigned int uid, unsigned int gid, int *stage) {
    int fds[2];
    *stage = 0;
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    pid_t child = fork();
    if (child < 0) { int e = errno; close(fds[0]); close(fds[1]); errno = e; return -1; }
    if (child == 0) {
        close(fds[0]);
        coffer_rotate_child(pidfd, pid, target, nosymlinks, excluded, excluded_count, name, data, length, mode, uid, gid, fds[1]);
        _exit(1);
    }
    close(fds[1]);
    int st = coffer_wait_child(child, 10000);
    int msg[2] = {0, 0};
    ssize_t n;
    do { n = read(fds[0], msg, sizeof(msg)); } while (n < 0 && errno == EINTR);
    close(fds[0]);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    *stage = n == (ssize_t)sizeof(msg) ? msg[0] : 0;
    errno = n == (ssize_t)sizeof(msg) ? msg[1] : EIO;
    return -1;
}

/* `coffer inject list`: what the kernel says of a run's tmpfs as its holder sees it —
 * "M <mountinfo line>" then "F <mode> <uid> <gid> <size> <name>" per entry (names with
 * bytes outside printable ASCII shown as ?), in OUT (at most CAP-1 bytes, NUL-ended).
 * 0, or -1 with errno (no such mount, the holder gone). */
#include <dirent.h>
static void coffer_inspect_child(int pidfd, int pid, const char *target, int nosymlinks, int report) {
    int stage = 0, procfd = -1;
    int dfd = coffer_enter_holder(pidfd, pid, target, nosymlinks, &procfd, &stage);
    if (dfd < 0) _exit(10 + (errno & 0x7f) % 100);
    static char line[8192];
    if (!coffer_mount_line(dfd, procfd, line, sizeof(line), 1)) _exit(3);
    static char out[60000];  /* below a pipe's capacity: written whole before the parent reads */
    size_t used = 0;
    int n = snprintf(out, sizeof(out), "M %s\n", line);
    used = n > 0 && (size_t)n < sizeof(out) ? (size_t)n : 0;
    int rfd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = rfd >= 0 ? fdopendir(rfd) : NULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            struct stat st;
            if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
            char name[256];
            size_t k = 0;
            for (; e->d_name[k] && k < sizeof(name) - 1; k++) {
                unsigned char c = (unsigned char)e->d_name[k];
                name[k] = (c > 0x20 && c < 0x7f) ? (char)c : '?';
            }
            name[k] = 0;
            n = snprintf(out + used, sizeof(out) - used, "F %o %u %u %lld %s\n", (unsigned)(st.st_mode & 0177777), st.st_uid, st.st_gid,
                         (long long)st.st_size, name);
            if (n < 0 || (size_t)n >= sizeof(out) - used) break;
            used += (size_t)n;
        }
    }
    (void)!write(report, out, used);
    _exit(0);
}

int coffer_inspect_mount(int pidfd, int pid, const char *target, int nosymlinks, char *out, unsigned long cap) {
    int fds[2];
    if (cap == 0) { errno = EINVAL; return -1; }
    out[0] = 0;
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    pid_t child = fork();
    if (child < 0) { int e = errno; close(fds[0]); close(fds[1]); errno = e; return -1; }
    if (child == 0) {
        close(fds[0]);
        coffer_inspect_child(pidfd, pid, target, nosymlinks, fds[1]);
        _exit(1);
    }
    close(fds[1]);
    int st = coffer_wait_child(child, 10000);
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fds[0], out + used, cap - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
        if (used >= cap - 1) break;
    }
    out[used] = 0;
    close(fds[0]);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    errno = WIFEXITED(st) && WEXITSTATUS(st) >= 10 ? WEXITSTATUS(st) - 10 : ENOENT;
    return -1;
}

int coffer_malloc_trim(void) { return malloc_trim(0); }

#include <sys/epoll.h>

int coffer_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int coffer_epoll_ctl(int ep, int op, int fd, unsigned int events, unsigned long long tag) {
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = events;
    e.data.u64 = tag;
    return epoll_ctl(ep, op, fd, &e);
}

int coffer_epoll_wait(int ep, unsigned long long *tags, unsigned int *events, int max, int timeout_ms) {
    struct epoll_event e[256];
    if (max > 256) max = 256;
    int n;
    do { n = epoll_wait(ep, e, max, timeout_ms); } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) { tags[i] = e[i].data.u64; events[i] = e[i].events; }
    return n;
}

#include <sys/eventfd.h>

int coffer_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int coffer_accept_nonblock(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
