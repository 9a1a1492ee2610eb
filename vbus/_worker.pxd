from libc.stdint cimport uint32_t, uint64_t, int64_t
from vbus.worker cimport vbus_task_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass


# A control-thread request to a running worker (add, remove, stop).
cdef struct vbus_cmd_t:
    int op
    vbus_task_t *task
    int result
    bint done
    bint abandoned              # the requester gave up waiting: the worker frees it
    vbus_cmd_t *next


cdef class Task:
    # The Python side of a vbus_task_t: an engine (venet's Pump, ...)
    # subclasses it, fills self.task and declares its fds; a Pool keeps the
    # object alive while a worker serves it.
    cdef vbus_task_t task
    cdef readonly object worker     # the Worker serving it (None: none)
    cdef bint alone                 # serve_alone() serves it on a private worker
    cdef bint stop_asked            # stop() came before or during serve_alone()
    cdef object private             # serve_alone()'s Worker


cdef class Worker:
    cdef int epfd
    cdef int cmd_fd                 # eventfd: commands are waiting
    cdef pthread_mutex_t mu
    cdef pthread_cond_t cv
    cdef bint have_sync
    cdef vbus_cmd_t *cmds           # queued commands (under mu)
    cdef vbus_cmd_t *cmds_tail
    cdef bint stopping              # stop() was called (under mu)
    cdef bint cmd_flag              # the command eventfd fired
    cdef bint stop_seen
    cdef vbus_task_t *rhead         # ready list: round-robin
    cdef vbus_task_t *rtail
    cdef uint32_t nready
    cdef vbus_task_t *polls         # tasks being busy-polled
    cdef vbus_task_t *done          # dropped after DONE, to report
    cdef int64_t window             # the adaptive busy-poll window
    cdef uint64_t last_check        # when the worker last looked for ready fds
    cdef uint64_t st_wakeups, st_turns, st_busy_polls
    cdef readonly int ntasks
    cdef readonly int cpu           # pinned to this CPU (-1: not pinned)
    cdef readonly int index
    cdef readonly long tid          # the serving thread's kernel id (0: none)
    cdef dict tasks                 # id -> (Task, on_done): kept alive while served
    cdef object thread
    cdef object owner               # ident of the thread in the loop (None: nobody)
    cdef object started

    cdef int _call(self, int op, Task task, double timeout) except? -1
    cdef int _exec(self, int op, vbus_task_t *t) noexcept nogil
    cdef void _commands(self) noexcept nogil
    cdef void _enqueue(self, vbus_task_t *t) noexcept nogil
    cdef void _unlink(self, vbus_task_t *t) noexcept nogil
    cdef void _drop(self, vbus_task_t *t) noexcept nogil
    cdef void _turn(self, vbus_task_t *t, uint32_t extra) noexcept nogil
    cdef void _dispatch(self, void *evs, int n) noexcept nogil
    cdef bint _busy_poll(self) noexcept nogil
    cdef void _arm_polls(self) noexcept nogil
    cdef int _loop(self, uint64_t deadline) noexcept nogil
