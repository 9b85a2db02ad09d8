/* The fake GPU's device state: capacity, residency, eviction, dead-process reclamation,
 * and the per-process report written at exit. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakegpu.h"

int fg_config_from_env(fg_config_t *c);

#define FG_MAX_PROCS 1024
#define FG_MAX_RANGES 65536
#define FG_MAGIC "FAKEGPU\0"
#define FG_VERSION 5

struct fg_range {
    uint32_t owner;       /* process slot + 1; 0 = free */
    uint16_t dev;
    uint8_t kind;
    uint8_t flags;        /* FLAG_* */
    uint32_t next_free;
    uint64_t size;
    uint64_t resident;
    uint64_t last_use;
};
enum { FLAG_EVICTABLE = 1, FLAG_PREFER_HOST = 2 };

/* A process's slot. Whether it is alive is not read from its pid, which names nothing
 * outside the process's PID namespace: a live process holds an open-file-description
 * lock on its slot's byte of the state file (LIVE_BASE + slot, past the end), which the
 * kernel drops when the process is gone, however it goes and wherever its namespace. */
struct fg_proc {
    int32_t pid;          /* 0 = free; for NVML's process list and legacy IPC handles */
    uint32_t devices;     /* bit d: the process has had a context on physical device d */
    uint64_t start_time;  /* /proc/PID/stat starttime: a reused pid is not the same process */
    uint64_t evicted_bytes;
};

struct fg_region {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t region_size;
    uint64_t device_mem[FG_MAX_DEVICES]; /* by physical device: never CUDA_VISIBLE_DEVICES's order */
    uint32_t device_count, managed, pools, pad;
    pthread_mutex_t lock;
    uint64_t clock;
    uint32_t free_head;    /* free list of ranges */
    uint32_t high_water;   /* ranges[0..high_water) have ever been used */
    uint32_t procs_high;   /* procs[0..procs_high) have ever been used */
    uint64_t used[FG_MAX_DEVICES];
    /* CLOCK_MONOTONIC ns at which each device's link is free, to the device [0] and to
     * the host [1] (FAKE_CUDA_LINK_GBPS). */
    uint64_t link_free_ns[FG_MAX_DEVICES][2];
    struct fg_proc procs[FG_MAX_PROCS];
    struct fg_range ranges[FG_MAX_RANGES];
};

static fg_config_t config;
static struct fg_region *R;
static int self_slot = -1;         /* this process's slot in R->procs */
static int live_fd = -1;           /* this process's own open file description of the state */
#define LIVE_BASE ((off_t)sizeof(struct fg_region))
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc = -1;

static struct {
    uint64_t device_cur, device_peak, managed_cur, managed_peak, advise, prefetch, oom;
} stats;

struct calls_table { const char *const *names; uint64_t *counters; int n; };
static struct calls_table call_tables[4];
static int n_call_tables;

static struct { uint64_t count, bytes; char list[2048]; size_t len; } leaks;

/* ---- process identity ------------------------------------------------------------ */

static uint64_t proc_start_time(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p) return 0;
    /* fields after the name start at field 3; starttime is field 22 */
    for (int field = 2; field < 22 && p; field++) p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* F_OFD_SETLK or F_OFD_GETLK of `type` on slot s's liveness byte. */
static int live_lock(int cmd, short type, int s, struct flock *l) {
    *l = (struct flock){.l_type = type, .l_whence = SEEK_SET, .l_start = LIVE_BASE + s, .l_len = 1};
    return fcntl(live_fd, cmd, l);
}

/* Whether the process in slot s is alive: someone holds its lock. Unknown: alive. */
static int proc_alive(int s) {
    if (R->procs[s].pid == 0) return 0;
    struct flock l;
    if (live_lock(F_OFD_GETLK, F_WRLCK, s, &l) != 0) return 1;
    return l.l_type != F_UNLCK;
}

/* ---- ranges (lock held) ---------------------------------------------------------- */

static void release_range_locked(uint32_t r) {
    struct fg_range *g = &R->ranges[r];
    R->used[g->dev] -= g->resident;
    memset(g, 0, sizeof *g);
    g->next_free = R->free_head;
    R->free_head = r;
}

/* Frees everything owned by processes that died without cleaning up (SIGKILL, _exit),
 * as the real driver does when a process goes away. */
static void reclaim_dead_locked(void) {
    for (int s = 0; s < (int)R->procs_high; s++) {
        struct fg_proc *p = &R->procs[s];
        if (p->pid == 0 || s == self_slot || proc_alive(s)) continue;
        for (uint32_t r = 0; r < R->high_water; r++)
            if (R->ranges[r].owner == (uint32_t)s + 1) release_range_locked(r);
        memset(p, 0, sizeof *p);
    }
}

/* Recomputes the counters from the ranges: after a process died holding the lock. */
static void recount_locked(void) {
    memset(R->used, 0, sizeof R->used);
    for (uint32_t r = 0; r < R->high_water; r++)
        if (R->ranges[r].owner) R->used[R->ranges[r].dev] += R->ranges[r].resident;
}

static uint64_t free_bytes(int dev) {
    uint64_t cap = config.device_mem[dev];
    return R->used[dev] >= cap ? 0 : cap - R->used[dev];
}

/* Makes `need` bytes free on `dev` if it can: reclaims dead processes, then evicts
 * least-recently-used managed ranges (never `keep`). Returns the bytes free afterwards. */
/* Bytes this thread moved between host and each device, to it [0] and back [1], since it
 * took the lock: fg_unlock takes their time on the link (FAKE_CUDA_LINK_GBPS). */
static __thread uint64_t link_bytes[FG_MAX_DEVICES][2];
static __thread int link_pending; /* any of link_bytes is not zero */

static uint64_t make_room_locked(int dev, uint64_t need, uint32_t keep) {
    if (free_bytes(dev) >= need) return free_bytes(dev);
    reclaim_dead_locked();
    while (free_bytes(dev) < need) {
        uint32_t victim = FG_NO_RANGE;
        for (uint32_t r = 0; r < R->high_water; r++) {
            struct fg_range *g = &R->ranges[r];
            if (!g->owner || r == keep || g->dev != dev || g->kind != FG_MANAGED ||
                !(g->flags & FLAG_EVICTABLE) || g->resident == 0)
                continue;
            if (victim == FG_NO_RANGE || g->last_use < R->ranges[victim].last_use) victim = r;
        }
        if (victim == FG_NO_RANGE) break;
        struct fg_range *g = &R->ranges[victim];
        uint64_t take = need - free_bytes(dev);
        take = (take + FG_BLOCK - 1) / FG_BLOCK * FG_BLOCK;
        if (take > g->resident) take = g->resident;
        g->resident -= take;
        R->used[dev] -= take;
        R->procs[g->owner - 1].evicted_bytes += take;
        link_bytes[dev][1] += take; /* written back to the host */
        link_pending = 1;
    }
    return free_bytes(dev);
}

static void account(enum fg_kind kind, uint64_t size, int add) {
    uint64_t *cur = kind == FG_MANAGED ? &stats.managed_cur : &stats.device_cur;
    uint64_t *peak = kind == FG_MANAGED ? &stats.managed_peak : &stats.device_peak;
    if (add) {
        *cur += size;
        if (*cur > *peak) *peak = *cur;
    } else {
        *cur -= size;
    }
}

uint32_t fg_range_new(int dev, enum fg_kind kind, uint64_t size) {
    int fits_now = kind == FG_FIXED || !config.managed;
    if (fits_now && make_room_locked(dev, size, FG_NO_RANGE) < size) return FG_NO_RANGE;
    uint32_t r = R->free_head;
    if (r == FG_NO_RANGE) {
        if (R->high_water == FG_MAX_RANGES) return FG_NO_RANGE;
        r = R->high_water++;
    } else {
        R->free_head = R->ranges[r].next_free;
    }
    struct fg_range *g = &R->ranges[r];
    *g = (struct fg_range){.owner = (uint32_t)self_slot + 1, .dev = (uint16_t)dev,
                           .kind = (uint8_t)kind, .size = size, .last_use = ++R->clock};
    if (kind == FG_MANAGED && config.managed) g->flags = FLAG_EVICTABLE;
    if (fits_now) {
        g->resident = size;
        R->used[dev] += size;
    }
    account(kind, size, 1);
    return r;
}

void fg_range_free(uint32_t r) {
    account(R->ranges[r].kind, R->ranges[r].size, 0);
    release_range_locked(r);
}

int fg_range_resize(uint32_t r, uint64_t size) {
    struct fg_range *g = &R->ranges[r];
    if (size > g->size) {
        uint64_t grow = size - g->size;
        if (make_room_locked(g->dev, grow, r) < grow) return -1;
        R->used[g->dev] += grow;
        account(g->kind, grow, 1);
    } else {
        R->used[g->dev] -= g->size - size;
        account(g->kind, g->size - size, 0);
    }
    g->size = g->resident = size;
    return 0;
}

void fg_range_touch(uint32_t r, int prefetch) {
    struct fg_range *g = &R->ranges[r];
    g->last_use = ++R->clock;
    if (g->kind != FG_MANAGED || g->resident == g->size) return;
    if ((g->flags & FLAG_PREFER_HOST) && !prefetch) return;
    uint64_t need = g->size - g->resident;
    uint64_t room = make_room_locked(g->dev, need, r);
    uint64_t in = room < need ? room : need;
    g->resident += in;
    R->used[g->dev] += in;
    link_bytes[g->dev][0] += in;
    link_pending = 1;
}

void fg_range_evict(uint32_t r) {
    struct fg_range *g = &R->ranges[r];
    if (g->kind != FG_MANAGED || !(g->flags & FLAG_EVICTABLE)) return;
    R->used[g->dev] -= g->resident;
    link_bytes[g->dev][1] += g->resident;
    link_pending = 1;
    g->resident = 0;
}

void fg_range_prefer_host(uint32_t r, int on) {
    if (on)
        R->ranges[r].flags |= FLAG_PREFER_HOST;
    else
        R->ranges[r].flags &= (uint8_t)~FLAG_PREFER_HOST;
}

uint64_t fg_range_resident(uint32_t r) { return R->ranges[r].resident; }

int fg_range_dev(uint32_t r) { return R->ranges[r].dev; }

uint64_t fg_device_used(int dev) {
    reclaim_dead_locked();
    return R->used[dev];
}

void fg_note_context(int phys) {
    if (!R || self_slot < 0 || phys < 0 || phys >= FG_MAX_DEVICES) return;
    fg_lock();
    R->procs[self_slot].devices |= 1u << phys;
    fg_unlock();
}

int fg_device_processes(int phys, fg_proc_usage_t *out, int max) {
    static uint64_t used[FG_MAX_PROCS]; /* lock held: one caller at a time */
    reclaim_dead_locked();
    memset(used, 0, sizeof(uint64_t) * R->procs_high);
    for (uint32_t r = 0; r < R->high_water; r++) {
        const struct fg_range *g = &R->ranges[r];
        if (g->owner && g->dev == phys) used[g->owner - 1] += g->resident;
    }
    int n = 0;
    for (uint32_t s = 0; s < R->procs_high; s++) {
        const struct fg_proc *p = &R->procs[s];
        if (p->pid == 0 || (!(p->devices & (1u << phys)) && used[s] == 0)) continue;
        if (n < max) out[n] = (fg_proc_usage_t){.pid = p->pid, .used = used[s]};
        n++;
    }
    return n;
}

void fg_range_owner(uint32_t r, int32_t *pid, uint64_t *start_time) {
    const struct fg_proc *p = &R->procs[R->ranges[r].owner - 1];
    *pid = p->pid;
    *start_time = p->start_time;
}

int fg_range_is(uint32_t r, int32_t pid, uint64_t start_time, uint64_t size) {
    if (r >= R->high_water || !R->ranges[r].owner || R->ranges[r].size != size) return 0;
    int s = (int)R->ranges[r].owner - 1;
    const struct fg_proc *p = &R->procs[s];
    return p->pid == pid && p->start_time == start_time && (s == self_slot || proc_alive(s));
}

void fg_count_advise(void) { stats.advise++; }
void fg_count_prefetch(void) { stats.prefetch++; }
void fg_count_oom(void) { stats.oom++; }

/* ---- lock ------------------------------------------------------------------------ */

void fg_lock(void) {
    int rc = pthread_mutex_lock(&R->lock);
    if (rc == EOWNERDEAD) { /* a process died inside the lock: repair, then go on */
        reclaim_dead_locked();
        recount_locked();
        pthread_mutex_consistent(&R->lock);
    }
}

void fg_link_moved(int dev, int to_device, uint64_t bytes) {
    if (dev >= 0 && dev < FG_MAX_DEVICES) {
        link_bytes[dev][to_device ? 0 : 1] += bytes;
        link_pending = 1;
    }
}

/* No move takes longer than an hour on the link (a tiny FAKE_CUDA_LINK_GBPS is clamped),
 * so a reservation further ahead than that is stale. */
#define LINK_STALE_NS (3600ull * 1000000000ull)

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void fg_unlock(void) {
    /* Under the lock: this thread's moves take the next free time of their link's
     * direction, after the moves of every process before them. */
    uint64_t until = 0;
    double gbps = config.link_gbps;
    for (int d = 0; link_pending && d < FG_MAX_DEVICES; d++) {
        for (int dir = 0; dir < 2; dir++) {
            uint64_t moved = link_bytes[d][dir];
            if (moved == 0) continue;
            link_bytes[d][dir] = 0;
            if (gbps <= 0) continue;
            uint64_t now = monotonic_ns(), *free_at = &R->link_free_ns[d][dir];
            /* A reservation more than an hour ahead is another boot's (the state file
             * outlived it, and CLOCK_MONOTONIC started again): the link is free. */
            if (*free_at > now + LINK_STALE_NS) *free_at = now;
            uint64_t start = *free_at > now ? *free_at : now;
            double ns = (double)moved / gbps; /* GB/s is bytes/ns */
            *free_at = start + (ns < (double)LINK_STALE_NS ? (uint64_t)ns : LINK_STALE_NS);
            if (*free_at > until) until = *free_at;
        }
    }
    link_pending = 0;
    pthread_mutex_unlock(&R->lock);
    if (until == 0) return;
    /* After the lock: a process waiting for its transfer holds up no other. */
    struct timespec t = {.tv_sec = (time_t)(until / 1000000000u),
                         .tv_nsec = (long)(until % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
    }
}

/* ---- attaching the state ----------------------------------------------------------- */

static int init_region(struct fg_region *g) {
    memset(g, 0, offsetof(struct fg_region, procs));
    memcpy(g->magic, FG_MAGIC, 8);
    g->version = FG_VERSION;
    g->header_size = (uint32_t)offsetof(struct fg_region, procs);
    g->region_size = sizeof *g;
    memcpy(g->device_mem, config.device_mem, sizeof g->device_mem);
    g->device_count = (uint32_t)config.device_count;
    g->managed = (uint32_t)config.managed;
    g->pools = (uint32_t)config.pools;
    g->free_head = FG_NO_RANGE;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&g->lock, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? -1 : 0;
}

static int state_error(const char *what) {
    fprintf(stderr, "fake-cuda: FAKE_CUDA_STATE=\"%s\": %s; CUDA initialization fails\n",
            config.state_path, what);
    return -1;
}

static int attach_shared_file(void) {
    int fd = open(config.state_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return state_error(strerror(errno));
    struct stat st;
    int rc = -1;
    flock(fd, LOCK_EX); /* serializes creation between processes starting together */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        state_error("not a regular file");
        goto out;
    }
    if (st.st_size == 0 && ftruncate(fd, sizeof *R) != 0) {
        state_error(strerror(errno));
        goto out;
    }
    if (st.st_size != 0 && st.st_size != (off_t)sizeof *R) {
        state_error("not a fake GPU state file of this version (wrong size)");
        goto out;
    }
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (R == MAP_FAILED) {
        R = NULL;
        state_error(strerror(errno));
        goto out;
    }
    if (st.st_size == 0) {
        rc = init_region(R);
    } else if (memcmp(R->magic, FG_MAGIC, 8) != 0 || R->version != FG_VERSION) {
        state_error("not a fake GPU state file of this version (bad magic or version)");
    } else if (memcmp(R->device_mem, config.device_mem, sizeof R->device_mem) != 0 ||
               R->device_count != (uint32_t)config.device_count ||
               R->managed != (uint32_t)config.managed || R->pools != (uint32_t)config.pools) {
        char sizes[FG_MAX_DEVICES * 21 + 1] = "", msg[sizeof sizes + 160];
        size_t len = 0;
        for (uint32_t d = 0; d < R->device_count && d < FG_MAX_DEVICES; d++)
            len += (size_t)snprintf(sizes + len, sizeof sizes - len, "%s%llu", d ? "," : "",
                                    (unsigned long long)R->device_mem[d]);
        snprintf(msg, sizeof msg,
                 "it describes %u devices of %s bytes, managed=%u, pools=%u; "
                 "this process's FAKE_CUDA_* settings differ",
                 R->device_count, R->device_count ? sizes : "0", R->managed, R->pools);
        state_error(msg);
    } else {
        rc = 0;
    }
    if (rc != 0 && R) {
        munmap(R, sizeof *R);
        R = NULL;
    }
out:
    flock(fd, LOCK_UN);
    if (rc == 0)
        live_fd = fd; /* kept: this process's own description, for its liveness lock */
    else
        close(fd);
    return rc;
}

/* Takes a free slot, or a dead process's, and holds its liveness lock. 0, or -1 after
 * saying why (then CUDA initialization fails). */
static int claim_slot(void) {
    if (live_fd < 0) {
        fprintf(stderr, "fake-cuda: this process could not open the device state of its parent "
                        "for its own (a forked child needs /proc/self/fd); CUDA initialization fails\n");
        return -1;
    }
    fg_lock();
    pid_t pid = getpid();
    for (int s = 0; s < FG_MAX_PROCS && self_slot < 0; s++) {
        struct fg_proc *p = &R->procs[s];
        if (p->pid != 0 && proc_alive(s)) continue;
        struct flock l;
        if (live_lock(F_OFD_SETLK, F_WRLCK, s, &l) != 0) continue; /* its owner is leaving */
        if (p->pid != 0) { /* a dead process's slot: reclaim its ranges first */
            for (uint32_t r = 0; r < R->high_water; r++)
                if (R->ranges[r].owner == (uint32_t)s + 1) release_range_locked(r);
        }
        *p = (struct fg_proc){.pid = pid, .start_time = proc_start_time(pid)};
        self_slot = s;
        if ((uint32_t)s >= R->procs_high) R->procs_high = (uint32_t)s + 1;
    }
    fg_unlock();
    if (self_slot < 0) {
        fprintf(stderr, "fake-cuda: all %d process slots of the device state are taken; CUDA "
                        "initialization fails\n", FG_MAX_PROCS);
        return -1;
    }
    return 0;
}

static void at_fork_prepare(void) { if (R) fg_lock(); }
static void at_fork_parent(void) { if (R) fg_unlock(); }
static void at_fork_child(void) {
    /* The child is a new process on the same GPU: it owns nothing yet. The lock stays
     * with the parent's thread, which releases it in at_fork_parent. The child must not
     * share its parent's file description, whose locks would keep the parent alive for as
     * long as the child lives: it opens the file again, as its own (or goes without, and
     * fails CUDA initialization if it uses CUDA). */
    if (live_fd >= 0) {
        char path[32] = "/proc/self/fd/";
        char digits[12];
        int n = 0, fd = live_fd;
        do digits[n++] = (char)('0' + fd % 10); while ((fd /= 10) && n < 11);
        size_t len = strlen(path);
        while (n) path[len++] = digits[--n];
        path[len] = 0;
        int own = open(path, O_RDWR | O_CLOEXEC);
        close(live_fd);
        live_fd = own;
    }
    self_slot = -1;
    memset(&stats, 0, sizeof stats);
    memset(&leaks, 0, sizeof leaks);
    for (int t = 0; t < n_call_tables; t++)
        memset(call_tables[t].counters, 0, sizeof(uint64_t) * (size_t)call_tables[t].n);
}

static void do_init(void) {
    if (fg_config_from_env(&config) != 0) return;
    if (config.state_path) {
        if (attach_shared_file() != 0) return;
    } else { /* a private GPU: an unnamed file, shared with forked children */
        live_fd = memfd_create("fake-gpu-state", MFD_CLOEXEC);
        if (live_fd < 0 || ftruncate(live_fd, sizeof *R) != 0 ||
            (R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED, live_fd, 0)) == MAP_FAILED ||
            init_region(R) != 0) {
            fprintf(stderr, "fake-cuda: cannot map the device state: %s\n", strerror(errno));
            R = NULL;
            return;
        }
    }
    pthread_atfork(at_fork_prepare, at_fork_parent, at_fork_child);
    init_rc = 0;
}

int fg_init(void) {
    pthread_once(&init_once, do_init);
    if (init_rc == 0 && self_slot < 0 && claim_slot() != 0) init_rc = -1; /* said once */
    return init_rc;
}

const fg_config_t *fg_config(void) { return &config; }

/* ---- report ------------------------------------------------------------------------ */

void fg_register_calls(const char *const *names, uint64_t *counters, int n) {
    if (n_call_tables < (int)(sizeof call_tables / sizeof call_tables[0]))
        call_tables[n_call_tables++] = (struct calls_table){names, counters, n};
}

void fg_report_leak(const char *kind, uint64_t ptr, uint64_t bytes) {
    leaks.count++;
    leaks.bytes += bytes;
    if (leaks.len + 96 < sizeof leaks.list) {
        int n = snprintf(leaks.list + leaks.len, sizeof leaks.list - leaks.len,
                         "%s{\"kind\":\"%s\",\"ptr\":%llu,\"bytes\":%llu}", leaks.len ? "," : "",
                         kind, (unsigned long long)ptr, (unsigned long long)bytes);
        leaks.len += (size_t)n;
    }
}

static void write_report(void) {
    size_t cap = 16384, len = 0;
    char *buf = malloc(cap);
    if (!buf) return;
#define PUT(...)                                                                       \
    do {                                                                               \
        int n_ = snprintf(buf + len, cap - len, __VA_ARGS__);                          \
        if (n_ < 0) break;                                                             \
        if ((size_t)n_ >= cap - len) {                                                 \
            cap = (cap + (size_t)n_) * 2;                                              \
            char *b_ = realloc(buf, cap);                                              \
            if (!b_) { free(buf); return; }                                            \
            buf = b_;                                                                  \
            snprintf(buf + len, cap - len, __VA_ARGS__);                               \
        }                                                                              \
        len += (size_t)n_;                                                             \
    } while (0)
    uint64_t resident = 0, nonresident = 0, evicted = 0;
    if (R && self_slot >= 0) {
        fg_lock();
        for (uint32_t r = 0; r < R->high_water; r++) {
            struct fg_range *g = &R->ranges[r];
            if (g->owner != (uint32_t)self_slot + 1 || g->kind != FG_MANAGED) continue;
            resident += g->resident;
            nonresident += g->size - g->resident;
        }
        evicted = R->procs[self_slot].evicted_bytes;
        fg_unlock();
    }
    PUT("{\"pid\":%d,\"calls\":{", (int)getpid());
    int first = 1;
    for (int t = 0; t < n_call_tables; t++)
        for (int i = 0; i < call_tables[t].n; i++) {
            uint64_t c = __atomic_load_n(&call_tables[t].counters[i], __ATOMIC_RELAXED);
            if (!c) continue;
            PUT("%s\"%s\":%llu", first ? "" : ",", call_tables[t].names[i], (unsigned long long)c);
            first = 0;
        }
    PUT("},\"device_bytes\":{\"peak\":%llu,\"final\":%llu}", (unsigned long long)stats.device_peak,
        (unsigned long long)stats.device_cur);
    PUT(",\"managed_bytes\":{\"peak\":%llu,\"final\":%llu}", (unsigned long long)stats.managed_peak,
        (unsigned long long)stats.managed_cur);
    PUT(",\"managed_resident_bytes\":%llu,\"managed_nonresident_bytes\":%llu",
        (unsigned long long)resident, (unsigned long long)nonresident);
    PUT(",\"evicted_bytes_total\":%llu,\"advise_calls\":%llu,\"prefetch_calls\":%llu",
        (unsigned long long)evicted, (unsigned long long)stats.advise,
        (unsigned long long)stats.prefetch);
    PUT(",\"oom_errors\":%llu", (unsigned long long)stats.oom);
    PUT(",\"leaked\":{\"count\":%llu,\"bytes\":%llu,\"first\":[%s]}}\n",
        (unsigned long long)leaks.count, (unsigned long long)leaks.bytes, leaks.list);
#undef PUT
    int fd = open(config.report_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        flock(fd, LOCK_EX);
        for (size_t off = 0; off < len;) {
            ssize_t w = write(fd, buf + off, len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        flock(fd, LOCK_UN);
        close(fd);
    } else {
        fprintf(stderr, "fake-cuda: FAKE_CUDA_REPORT=\"%s\": %s\n", config.report_path,
                strerror(errno));
    }
    free(buf);
}

/* At exit the process's device memory goes back to the GPU, as with the real driver. */
__attribute__((destructor)) static void at_exit(void) {
    if (init_rc != 0) return;
    if (config.report_path) write_report();
    if (!R || self_slot < 0) return;
    fg_lock();
    for (uint32_t r = 0; r < R->high_water; r++)
        if (R->ranges[r].owner == (uint32_t)self_slot + 1) release_range_locked(r);
    memset(&R->procs[self_slot], 0, sizeof R->procs[self_slot]);
    struct flock l;
    live_lock(F_OFD_SETLK, F_UNLCK, self_slot, &l);
    self_slot = -1;
    fg_unlock();
}
