# A unit of work for the worker pool (vbus/_worker.pyx): a C struct of
# nogil callbacks, so that any engine (a venet pump, a switch, a
# vhost-user virtqueue) runs on the same workers with no change to them.
#
# The engine fills ctx, run, peek and poll_ns and declares its fds with
# vbus_task_fd(); everything below "worker-private" belongs to the worker
# while the task is registered.
from libc.stdint cimport uint32_t, uint64_t, int64_t
from shmsignal.includes.osdefs cimport epoll_event, epoll_ctl, EPOLL_CTL_MOD, EPOLLIN, EPOLLET

cdef enum:
    # What run() returns.
    VBUS_TASK_IDLE = 0      # armed its signals and re-checked: sleep on its fds
    VBUS_TASK_MORE = 1      # work left: run again after the others
    VBUS_TASK_DONE = 2      # finished for good: the worker drops it and reports it
    VBUS_TASK_POLL = 3      # did work lately, none now, signals NOT armed: the
                            # worker busy-polls it (peek) and, before it sleeps,
                            # runs it once more with VBUS_EV_ARM
    # Bits of run()'s `events` the worker sets (an fd's own bits are 0..23).
    VBUS_EV_FDS = 0x00ffffff
    VBUS_EV_ADDED = 1 << 24     # the first turn after the task was added
    VBUS_EV_POLLED = 1 << 25    # the worker's busy-poll found work for it
    VBUS_EV_ARM = 1 << 26       # the worker is about to sleep: arm, re-check,
                                # return IDLE (or MORE); POLL is not an answer
    VBUS_TASK_MAX_FDS = 8
    # Task flags (worker-private).
    VBUS_TF_QUEUED = 1          # on the ready list
    VBUS_TF_POLLING = 2         # on the busy-poll list
    VBUS_TF_DONE = 4            # dropped after DONE, not yet reported


cdef struct vbus_task_fd_t:
    void *task                  # the vbus_task_t (epoll's data.ptr points here)
    int fd
    uint32_t bit                # set in `events` when the fd is ready
    uint32_t mode               # EPOLLIN, or EPOLLIN | EPOLLET (a doorbell)
    bint armed                  # a level fd in the interest set (vbus_task_arm_fd)


cdef struct vbus_task_t:
    void *ctx
    # One turn, bounded by the task's own budget: IDLE, MORE, DONE or POLL.
    int (*run)(vbus_task_t *t, uint32_t events) noexcept nogil
    # Busy-poll probe: work visible without a syscall (may be NULL).
    bint (*peek)(vbus_task_t *t) noexcept nogil
    int64_t poll_ns             # 0: never busy-poll for this task
    # ---- worker-private ----
    int epfd                    # the serving worker's epoll (-1: none)
    vbus_task_t *next           # ready list
    vbus_task_t *pnext          # busy-poll list
    uint32_t pending            # event bits gathered for the next turn
    uint32_t flags              # VBUS_TF_*
    int nfds
    vbus_task_fd_t fds[VBUS_TASK_MAX_FDS]


cdef inline int vbus_task_fd(vbus_task_t *t, int fd, uint32_t bit, bint edge) noexcept nogil:
    """Declare fd (before the task is added): `bit` in run()'s events when
    it is ready; edge-triggered for a doorbell (never read to re-arm),
    level for a port the task may disarm (vbus_task_arm_fd).  Returns its
    index, or -1 when the table is full or the bit is not an fd bit."""
    if t.nfds >= VBUS_TASK_MAX_FDS or bit == 0 or bit & ~(<uint32_t>VBUS_EV_FDS) or t.epfd >= 0:
        return -1
    cdef vbus_task_fd_t *f = &t.fds[t.nfds]
    f.task = t
    f.fd = fd
    f.bit = bit
    f.mode = EPOLLIN | (EPOLLET if edge else 0)
    f.armed = True
    t.nfds += 1
    return t.nfds - 1


cdef inline void vbus_task_arm_fd(vbus_task_t *t, int i, bint on) noexcept nogil:
    """Watch a level fd (index i) again, or stop watching it (a port whose
    frames must wait: the out ring is full).  From run() only, or before
    the task is added."""
    cdef epoll_event ev
    cdef vbus_task_fd_t *f = &t.fds[i]
    if on == f.armed:
        return
    f.armed = on
    if t.epfd >= 0:
        ev.events = f.mode if on else 0
        ev.data.ptr = f
        epoll_ctl(t.epfd, EPOLL_CTL_MOD, f.fd, &ev)


cdef inline void vbus_task_init(vbus_task_t *t) noexcept nogil:
    t.ctx = NULL
    t.run = NULL
    t.peek = NULL
    t.poll_ns = 0
    t.epfd = -1
    t.next = NULL
    t.pnext = NULL
    t.pending = 0
    t.flags = 0
    t.nfds = 0
