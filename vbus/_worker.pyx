# cython: language_level=3, boundscheck=False, wraparound=False
"""The worker pool: a fixed set of threads, each waiting on one epoll for
many tasks (vbus/worker.pxd), instead of a thread per device.

A Worker is one thread (or, for Worker.run, the calling thread) serving
its tasks round-robin: each ready task gets one turn, bounded by its own
budget, then the next; a task that has work left (MORE) goes to the back
of the list, and after every round a zero-timeout epoll_wait lets tasks
woken meanwhile join it, so one busy task cannot starve the others.  When
no task is ready the worker busy-polls the tasks that asked for it (POLL:
peek, a zero-timeout epoll_wait, sched_yield between, in an adaptive
window), then sleeps in epoll_wait with no timeout: an idle worker is
woken by a peer's kick, a port's frame or a command, never by a clock.

Commands (add, remove, stop) come from any thread through a queue and an
eventfd; add and remove wait for the worker's answer with the GIL
released, bounded in time.  After remove() returns the worker has dropped
the task and never touches it again.  A task that returns DONE is dropped
by the worker and reported to its on_done callback, on the worker's own
thread with the GIL held, outside the loop.

A Pool is N workers (default one per usable CPU), each optionally pinned to
one CPU.  It holds a reference to every task it serves.  This module knows
nothing of what a task moves: venet's pump (venet/devices/_pump.pyx) is
one kind of task.
"""
import logging
import os
import threading

from libc.errno cimport errno, EINTR, ETIMEDOUT, EBUSY, ENOENT
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from posix.unistd cimport read, write, close
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC
from shmsignal.includes.atomics cimport shm_now_ns, shm_cpu_relax
from shmsignal.includes.osdefs cimport *
from vbus.worker cimport *

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_condattr_init(pthread_condattr_t *a)
    int pthread_condattr_setclock(pthread_condattr_t *a, int clock)
    int pthread_condattr_destroy(pthread_condattr_t *a)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)

log = logging.getLogger("vbus.worker")

cdef enum:
    CMD_ADD = 1
    CMD_REMOVE = 2
    LOOP_STOP = 0
    LOOP_DONE = 1
    LOOP_TIMEOUT = 2
    LOOP_ERROR = 3
    MAX_EVENTS = 64
    MIN_POLL_NS = 20_000        # the shortest adaptive poll window
    POLL_SPINS = 64             # peeks between two syscalls of a busy-poll: fewer syscalls, bounded in count
    # Between rounds of busy tasks the worker looks for newly woken ones at
    # most this often: a look costs a syscall, and a task that did some
    # work and will find none on its next turn should not pay it each time.
    RECHECK_NS = 20_000

MAX_WORKERS = 256
REMOVE_TIMEOUT = 5.0            # a worker never blocks on a peer: this is a bug's bound


cdef class Task:
    """Base of every task's Python object: holds the C task (self.task) and
    the Worker serving it."""

    def __cinit__(self, *args, **kwargs):
        vbus_task_init(&self.task)
        self.task.ctx = <void *>self
        self.worker = None

    @property
    def running(self):
        """serve_alone() is serving the task, or a pool's worker is."""
        return self.alone or self.task.epfd >= 0

    def stop(self):
        """Ask serve_alone() to return (safe from any thread).  A task
        served by a pool is let go by the pool's remove()."""
        self.stop_asked = True
        w = self.private
        if w is not None:
            w.stop()

    def serve_alone(self, double timeout=-1, bint until_done=False):
        """Serve the task alone on a private worker in the calling thread
        until stop() ('stopped'), `timeout` seconds ('timeout') or, with
        until_done, its DONE ('done').  The worker is gone when it returns."""
        if self.task.epfd >= 0 or self.alone:
            raise RuntimeError("the task is already being served")
        w = Worker()
        self.private = w
        result = "stopped"
        try:
            if self.stop_asked:
                self.stop_asked = False
                return "stopped"
            self.alone = True
            w.add(self)
            result = w.run(timeout, until_done=until_done)
            if result == "stopped":
                self.stop_asked = False
        finally:
            w.remove(self)
            self.private = None
            self.alone = False
            w.close()
        return result


cdef class Worker:
    """One epoll serving many tasks.  start() gives it a thread of its own
    (pinned to `cpu` unless it is -1); run() serves in the calling thread."""

    def __cinit__(self, *args, **kwargs):
        self.epfd = -1
        self.cmd_fd = -1

    def __init__(self, int cpu=-1, int index=0):
        cdef pthread_condattr_t ca
        if self.epfd >= 0:
            raise RuntimeError("a Worker is initialised once")
        self.cpu = cpu
        self.index = index
        self.tasks = {}
        self.owner = None
        self.started = threading.Event()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        self.cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.cmd_fd < 0:
            raise OSError(errno, "eventfd")
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.ptr = NULL              # NULL: the command eventfd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.cmd_fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl add")
        pthread_mutex_init(&self.mu, NULL)
        pthread_condattr_init(&ca)
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)
        pthread_cond_init(&self.cv, &ca)
        pthread_condattr_destroy(&ca)
        self.have_sync = True
        self.window = 0

    def __dealloc__(self):
        cdef vbus_cmd_t *c
        if self.epfd >= 0:
            close(self.epfd)
        if self.cmd_fd >= 0:
            close(self.cmd_fd)
        if self.have_sync:
            while self.cmds != NULL:
                c = self.cmds
                self.cmds = c.next
                free(c)
            pthread_cond_destroy(&self.cv)
            pthread_mutex_destroy(&self.mu)

    # ---- the control side (any thread, GIL held) --------------------------

    def start(self, name=None):
        """Serve in a thread of its own until stop()."""
        if self.thread is not None:
            raise RuntimeError("the worker is already started")
        self.thread = threading.Thread(target=self._main, name=name or f"vbus-worker-{self.index}",
                                       daemon=True)
        self.thread.start()
        # Until the thread is in its loop, commands would be run inline.
        self.started.wait()

    def _main(self):
        self.tid = threading.get_native_id()
        if self.cpu >= 0:
            try:
                os.sched_setaffinity(0, {self.cpu})
            except OSError as e:
                log.warning("worker %d: cannot run on CPU %d (%s); left to the scheduler",
                            self.index, self.cpu, e.strerror)
        try:
            self.run()
        finally:
            self.tid = 0

    def run(self, double timeout=-1, bint until_done=False):
        """Serve in the calling thread until stop() ('stopped'), `timeout`
        seconds ('timeout'), or, with until_done, a task's DONE ('done');
        the DONE callbacks are called here, between turns of the loop."""
        cdef uint64_t deadline = 0
        cdef int r
        if self.owner is not None:
            raise RuntimeError("the worker is already being served")
        if timeout >= 0:
            deadline = shm_now_ns() + <uint64_t>(timeout * 1e9)
            if deadline == 0:
                deadline = 1
        self.owner = threading.get_ident()
        self.started.set()
        try:
            while True:
                with nogil:
                    r = self._loop(deadline)
                self._report()
                if r == LOOP_STOP:
                    return "stopped"
                if r == LOOP_TIMEOUT:
                    return "timeout"
                if r == LOOP_ERROR:
                    raise OSError(errno, "epoll_wait")
                if until_done:
                    return "done"
        finally:
            self.owner = None

    def _report(self):
        """Hand the tasks dropped after DONE to their callbacks."""
        cdef vbus_task_t *t
        cdef Task task
        while self.done != NULL:
            t = self.done
            self.done = t.next
            t.next = NULL
            t.flags &= ~(<uint32_t>VBUS_TF_DONE)
            entry = self.tasks.pop(<size_t>t, None)
            if entry is None:
                continue
            task = entry[0]
            on_done = entry[1]
            task.worker = None
            if on_done is not None:
                try:
                    on_done(task)
                except Exception:
                    log.exception("worker %d: a task's on_done failed", self.index)

    def stop(self):
        """Ask the loop to return (safe from any thread, never waits)."""
        cdef uint64_t one = 1
        pthread_mutex_lock(&self.mu)
        self.stopping = True
        pthread_mutex_unlock(&self.mu)
        write(self.cmd_fd, &one, 8)

    def join(self, timeout=None):
        """After stop(): wait for the thread; True once it has ended."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def add(self, Task task not None, on_done=None, double timeout=REMOVE_TIMEOUT):
        """Serve `task` (kept alive until it is removed or reported DONE).
        on_done(task): called on the worker's thread, the GIL held, once the
        worker has dropped a task that returned DONE."""
        if task.worker is not None:
            raise RuntimeError("the task is already served by a worker")
        key = <size_t>&task.task
        self.tasks[key] = (task, on_done)
        task.worker = self
        try:
            self._call(CMD_ADD, task, timeout)
        except TimeoutError:
            # The request stays queued: the worker will add the task, so it
            # stays referenced, and a remove follows it (a bug's path).
            try:
                self._call(CMD_REMOVE, task, 0)
            except TimeoutError:
                pass
            raise
        except BaseException:
            if self.tasks.get(key, (None,))[0] is task:
                del self.tasks[key]
            task.worker = None
            raise

    def remove(self, Task task not None, double timeout=REMOVE_TIMEOUT):
        """Stop serving `task`: once this returns the worker has dropped it
        and never touches it again.  A task already dropped after DONE (its
        report pending or made) is not an error.  TimeoutError when the
        worker does not answer in time: it may still use the task until it
        gets to the request, which stays queued."""
        if task.worker is not self:
            return
        self._call(CMD_REMOVE, task, timeout)
        self.tasks.pop(<size_t>&task.task, None)
        task.worker = None

    cdef int _call(self, int op, Task task, double timeout) except? -1:
        cdef vbus_task_t *t = &task.task
        cdef vbus_cmd_t *c
        cdef int res, rc = 0
        cdef uint64_t one = 1
        cdef timespec ts
        if self.owner is None or self.owner == threading.get_ident():
            # Nobody is in the loop, or we are its thread between turns
            # (an on_done callback): the worker's state is ours to change.
            res = self._exec(op, t)
        else:
            c = <vbus_cmd_t *>malloc(sizeof(vbus_cmd_t))
            if c == NULL:
                raise MemoryError()
            c.op = op
            c.task = t
            c.result = 0
            c.done = False
            c.abandoned = False
            c.next = NULL
            clock_gettime(CLOCK_MONOTONIC, &ts)
            ts.tv_sec += <long>timeout
            ts.tv_nsec += <long>((timeout - <long>timeout) * 1e9)
            if ts.tv_nsec >= 1000000000:
                ts.tv_sec += 1
                ts.tv_nsec -= 1000000000
            with nogil:
                pthread_mutex_lock(&self.mu)
                if self.cmds_tail == NULL:
                    self.cmds = c
                else:
                    self.cmds_tail.next = c
                self.cmds_tail = c
                pthread_mutex_unlock(&self.mu)
                write(self.cmd_fd, &one, 8)
                pthread_mutex_lock(&self.mu)
                while not c.done and rc != ETIMEDOUT:
                    rc = pthread_cond_timedwait(&self.cv, &self.mu, &ts)
                if c.done:
                    res = c.result
                    free(c)
                else:
                    # Left queued: the worker still carries it out (a task
                    # it should drop is dropped once it gets there) and
                    # frees it.
                    res = -ETIMEDOUT
                    c.abandoned = True
                pthread_mutex_unlock(&self.mu)
            if res == -ETIMEDOUT:
                raise TimeoutError(f"worker {self.index} did not answer within {timeout:g} s")
        if op == CMD_ADD and res < 0:
            if res == -EBUSY:
                raise RuntimeError("the task is already served by a worker")
            raise OSError(-res, f"worker {self.index}: cannot watch the task's fds: {os.strerror(-res)}")
        return 0

    def close(self):
        """Stop the thread (bounded), drop every task, close the fds."""
        if self.thread is not None:
            self.stop()
            if not self.join(REMOVE_TIMEOUT):
                raise TimeoutError(f"worker {self.index} did not stop within {REMOVE_TIMEOUT:g} s")
            self.thread = None
        for entry in list(self.tasks.values()):
            self.remove(entry[0])
        self.tasks.clear()

    def stats(self):
        return {"index": self.index, "cpu": self.cpu, "tid": self.tid, "tasks": self.ntasks,
                "wakeups": self.st_wakeups, "turns": self.st_turns, "busy_polls": self.st_busy_polls}

    # ---- the worker side (its thread, GIL released) -------------------------

    cdef int _exec(self, int op, vbus_task_t *t) noexcept nogil:
        cdef int i, e
        cdef epoll_event ev
        cdef vbus_task_fd_t *f
        cdef vbus_task_t *p
        cdef vbus_task_t *q
        if op == CMD_ADD:
            if t.epfd >= 0 or t.flags:
                return -EBUSY
            for i in range(t.nfds):
                f = &t.fds[i]
                ev.events = f.mode if f.armed else 0
                ev.data.ptr = f
                if epoll_ctl(self.epfd, EPOLL_CTL_ADD, f.fd, &ev) < 0:
                    e = errno
                    while i > 0:
                        i -= 1
                        epoll_ctl(self.epfd, EPOLL_CTL_DEL, t.fds[i].fd, &ev)
                    return -e
            t.epfd = self.epfd
            t.next = NULL
            t.pnext = NULL
            t.pending = VBUS_EV_ADDED
            self.ntasks += 1
            self._enqueue(t)
            return 0
        # CMD_REMOVE
        if t.flags & VBUS_TF_DONE:
            # Dropped after DONE, not yet reported: it will not be.
            p = NULL
            q = self.done
            while q != NULL and q != t:
                p = q
                q = q.next
            if q != NULL:
                if p == NULL:
                    self.done = t.next
                else:
                    p.next = t.next
            t.next = NULL
            t.flags = 0
            return 0
        if t.epfd != self.epfd:
            return -ENOENT
        self._drop(t)
        return 0

    cdef void _commands(self) noexcept nogil:
        cdef vbus_cmd_t *c
        cdef vbus_cmd_t *nxt
        cdef int res
        pthread_mutex_lock(&self.mu)
        c = self.cmds
        self.cmds = self.cmds_tail = NULL
        if self.stopping:
            self.stop_seen = True
        pthread_mutex_unlock(&self.mu)
        while c != NULL:
            nxt = c.next
            res = self._exec(c.op, c.task)
            pthread_mutex_lock(&self.mu)
            if c.abandoned:
                free(c)
            else:
                c.result = res
                c.done = True       # the requester frees it from here on
            pthread_cond_broadcast(&self.cv)
            pthread_mutex_unlock(&self.mu)
            c = nxt

    cdef void _enqueue(self, vbus_task_t *t) noexcept nogil:
        if t.flags & VBUS_TF_QUEUED:
            return
        t.flags |= VBUS_TF_QUEUED
        t.next = NULL
        if self.rtail == NULL:
            self.rhead = t
        else:
            self.rtail.next = t
        self.rtail = t
        self.nready += 1

    cdef void _unlink(self, vbus_task_t *t) noexcept nogil:
        """Take t off the ready and busy-poll lists."""
        cdef vbus_task_t *p = NULL
        cdef vbus_task_t *q
        if t.flags & VBUS_TF_QUEUED:
            q = self.rhead
            while q != NULL and q != t:
                p = q
                q = q.next
            if q != NULL:
                if p == NULL:
                    self.rhead = t.next
                else:
                    p.next = t.next
                if self.rtail == t:
                    self.rtail = p
                self.nready -= 1
            t.flags &= ~(<uint32_t>VBUS_TF_QUEUED)
            t.next = NULL
        if t.flags & VBUS_TF_POLLING:
            p = NULL
            q = self.polls
            while q != NULL and q != t:
                p = q
                q = q.pnext
            if q != NULL:
                if p == NULL:
                    self.polls = t.pnext
                else:
                    p.pnext = t.pnext
            t.flags &= ~(<uint32_t>VBUS_TF_POLLING)
            t.pnext = NULL

    cdef void _drop(self, vbus_task_t *t) noexcept nogil:
        """Forget t: its fds out of the epoll set, off every list."""
        cdef int i
        cdef epoll_event ev
        self._unlink(t)
        for i in range(t.nfds):
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, t.fds[i].fd, &ev)
        t.epfd = -1
        t.pending = 0
        t.flags = 0
        self.ntasks -= 1

    cdef void _turn(self, vbus_task_t *t, uint32_t extra) noexcept nogil:
        cdef uint32_t ev
        cdef int r
        self._unlink(t)
        ev = t.pending | extra
        t.pending = 0
        r = t.run(t, ev)
        self.st_turns += 1
        if r == VBUS_TASK_MORE:
            self._enqueue(t)
        elif r == VBUS_TASK_POLL and not (ev & VBUS_EV_ARM):
            t.flags |= VBUS_TF_POLLING
            t.pnext = self.polls
            self.polls = t
        elif r == VBUS_TASK_DONE:
            self._drop(t)
            t.flags = VBUS_TF_DONE
            t.next = self.done
            self.done = t
        # IDLE: it sleeps on its fds.

    cdef void _dispatch(self, void *evs_, int n) noexcept nogil:
        cdef epoll_event *evs = <epoll_event *>evs_
        cdef int i
        cdef uint64_t cnt
        cdef vbus_task_fd_t *f
        cdef vbus_task_t *t
        for i in range(n):
            if evs[i].data.ptr == NULL:
                read(self.cmd_fd, &cnt, 8)
                self.cmd_flag = True
                continue
            f = <vbus_task_fd_t *>evs[i].data.ptr
            t = <vbus_task_t *>f.task
            t.pending |= f.bit
            if t.flags & VBUS_TF_POLLING:
                t.pending |= VBUS_EV_POLLED
            self._enqueue(t)

    cdef bint _busy_poll(self) noexcept nogil:
        """Poll the polling tasks (peek) and the fds (a zero-timeout
        epoll_wait) for at most the window.  True when work turned up.
        Adaptive: a window that caught work doubles (up to the largest
        poll_ns asked), one that expired empty halves, so sporadic work
        stops buying full windows."""
        cdef epoll_event evs[MAX_EVENTS]
        cdef vbus_task_t *t
        cdef int64_t cap = 0, floor_ns
        cdef uint64_t pdead
        cdef int n, spin
        cdef bint hit = False
        t = self.polls
        while t != NULL:
            if t.poll_ns > cap:
                cap = t.poll_ns
            t = t.pnext
        if cap <= 0:
            return False
        floor_ns = MIN_POLL_NS if MIN_POLL_NS < cap else cap
        if self.window > cap or self.window == 0:
            self.window = cap
        if self.window < floor_ns:
            self.window = floor_ns
        pdead = shm_now_ns() + <uint64_t>self.window
        while True:
            # Peeks cost no syscall: a run of them with PAUSE between sees
            # a frame within a cache-line transfer when the peer has a CPU
            # of its own.
            for spin in range(POLL_SPINS):
                t = self.polls
                while t != NULL:
                    if t.peek != NULL and t.peek(t):
                        t.pending |= VBUS_EV_POLLED
                        self._enqueue(t)
                        hit = True
                    t = t.pnext
                if hit:
                    break
                shm_cpu_relax()
            if hit:
                break
            n = epoll_wait(self.epfd, evs, MAX_EVENTS, 0)
            if n > 0:
                self._dispatch(evs, n)
                hit = True
            if hit or shm_now_ns() >= pdead:
                break
            # Then a yield: on few CPUs the task we wait for (the peer's
            # pump, the app) is often queued behind us on this CPU, and it
            # runs only when we step aside.
            sched_yield()
        if hit:
            self.st_busy_polls += 1
            self.window = self.window * 2 if self.window * 2 < cap else cap
            return True
        self.window = self.window // 2 if self.window // 2 > floor_ns else floor_ns
        return False

    cdef void _arm_polls(self) noexcept nogil:
        """The poll window expired empty: each polling task arms its
        signals (a turn with VBUS_EV_ARM) before the worker sleeps."""
        cdef vbus_task_t *t
        while self.polls != NULL:
            self._turn(self.polls, VBUS_EV_ARM)

    cdef int _loop(self, uint64_t deadline) noexcept nogil:
        cdef epoll_event evs[MAX_EVENTS]
        cdef int n, ms
        cdef uint32_t round_
        cdef uint64_t now
        cdef vbus_task_t *t
        while True:
            if self.cmd_flag:
                self.cmd_flag = False
                self._commands()
            if self.stop_seen:
                return LOOP_STOP
            if self.done != NULL:
                return LOOP_DONE
            if self.rhead != NULL:
                # One round: each task ready now gets one turn.
                round_ = self.nready
                while round_ > 0 and self.rhead != NULL:
                    round_ -= 1
                    self._turn(self.rhead, 0)
                if self.rhead != NULL:
                    # Tasks woken meanwhile join the next round (looked for
                    # at most every RECHECK_NS: a wait bounded in time).
                    now = shm_now_ns()
                    if now - self.last_check >= RECHECK_NS:
                        self.last_check = now
                        n = epoll_wait(self.epfd, evs, MAX_EVENTS, 0)
                        if n > 0:
                            self._dispatch(evs, n)
                continue
            if self.polls != NULL:
                if not self._busy_poll():
                    self._arm_polls()
                continue
            ms = -1
            if deadline:
                now = shm_now_ns()
                if now >= deadline:
                    return LOOP_TIMEOUT
                ms = <int>((deadline - now) // 1000000) + 1
            n = epoll_wait(self.epfd, evs, MAX_EVENTS, ms)
            self.last_check = shm_now_ns()
            if n < 0:
                if errno == EINTR:
                    continue
                return LOOP_ERROR
            if n > 0:
                self.st_wakeups += 1
                self._dispatch(evs, n)


class Pool:
    """N workers (default: one per usable CPU), worker i pinned to the i-th
    usable CPU when pin is true.  add() places a task on the worker of a
    CPU, or on the least loaded one."""

    def __init__(self, workers=None, pin=True):
        cpus = sorted(os.sched_getaffinity(0))
        n = len(cpus) if workers is None else workers
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}")
        self.workers = []
        try:
            for i in range(n):
                w = Worker(cpus[i % len(cpus)] if pin else -1, i)
                self.workers.append(w)
                w.start()
        except BaseException:
            self.close()
            raise

    def pick(self, cpu=None):
        """The worker for a task that wants `cpu` (None: any): the least
        loaded of those pinned to it, else the least loaded of all."""
        pool = [w for w in self.workers if cpu is not None and w.cpu == cpu] or self.workers
        return min(pool, key=lambda w: (w.ntasks, w.index))

    def add(self, Task task, cpu=None, on_done=None):
        """Serve task on the worker pick(cpu) names; returns that worker."""
        if not self.workers:
            raise RuntimeError("the pool is closed")
        w = self.pick(cpu)
        w.add(task, on_done)
        return w

    def remove(self, Task task, timeout=REMOVE_TIMEOUT):
        """Synchronous: see Worker.remove."""
        w = task.worker
        if w is not None:
            w.remove(task, timeout)

    def stats(self):
        return [w.stats() for w in self.workers]

    def thread_ids(self):
        return [w.tid for w in self.workers if w.tid]

    def close(self):
        """Stop and join every worker; the tasks are dropped."""
        workers, self.workers = self.workers, []
        for w in workers:
            w.stop()
        for w in workers:
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
