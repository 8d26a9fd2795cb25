"""Data parallelism: ranks started by MPI, gradients summed in a fixed order (MPI on CPUs, NCCL on
GPUs), ZeRO-1 sharding of AdamW's moments (and of the fp32 master weights under bf16 / fp16).
docs/distributed.md has the design and the numbers.

    mpiexec -n 2 scratchgpt train --preset mini --batch-size 8             # = --grad-accum 2 alone
    mpiexec -n 2 scratchgpt train --preset mini --batch-size 8 --zero 1    # AdamW moments sharded
    mpiexec -n 1 scratchgpt train --resume runs/mini --grad-accum 2        # (--resume adapts it)

What one step does on N ranks (train.train_step calls the three methods of DataParallel):

    micro_batches   every rank draws all N * A micro-batches of the global step from the same
                    sampler (same seed), keeps its own A (rank r: r*A .. r*A+A-1) and sets dropout's
                    step counter to the one that micro-batch has in one process: micro-batch k of
                    a step is the same tokens and the same dropout masks as grad-accum micro-batch k
    reduce          the losses of every rank (so all stop on the same NaN), and the gradients:
                    flat buckets, an all-to-all (rank j receives chunk j of every rank's bucket),
                    a sum in rank order (chunk_0 + chunk_1, then + chunk_2, ...), an all-gather
    optimizer       AdamW, or with --zero 1 ShardedAdamW: each rank updates its 1/N of the flat
                    parameter vector with its 1/N of the moments, then the parameters are
                    all-gathered; under bf16 / fp16 it keeps only its 1/N of the fp32 masters
                    too, and the all-gather moves the 16-bit weights the forward reads

Bit identity. One process with --grad-accum N sums its micro-batch gradients as
((g0 + g1) + g2) + ...; the rank-order sum does the same float additions, element by element, so
`mpiexec -n N ... --grad-accum 1` equals `--grad-accum N` alone bit for bit for every N (numpy, host
and cuda backends alike). With A > 1 micro-batches per rank the local sums come first
((g0 + g1) + (g2 + g3) for N = 2, A = 2): equal up to float rounding only. ZeRO-1 is AdamW applied
to slices of the same tensors (an element-wise update), so it is bit-identical to AdamW; with
sharded masters each rank rounds its own masters to 16 bits, which is element-wise too. MPI's own
Allreduce and NCCL's ring do not promise an order; this is why the sum is ours.

Faults. A rank that raises prints `rank R of N failed: <cause>` and calls MPI_Abort, which ends
every rank at once. A rank that is killed is named by the others' peer monitor (pidfds of the
ranks on the same host), or by the launcher when it ends the others first (MPICH: "BAD TERMINATION
... PID P ... Killed (signal 9)"; rank 0 prints the pid of every rank at start, so P names the
rank). Every collective waits under a watchdog (--dist-timeout): a rank that hangs makes the others
abort with the collective's name and the ranks found dead. Arguments that differ
between ranks are refused before anything is read. Rank 0 alone prints, plots and writes
checkpoints (atomically, checkpoint.py), so the newest complete checkpoint stays loadable.
"""
import contextlib
import hashlib
import json
import os
import pickle
import select
import socket
import sys
import threading
import time

import numpy as np

from .errors import Interrupted, ScratchError, UsageError
from .optim import AdamW
from .precision import check_precision, storage_dtype, to_storage
from .reference.adamw import decays

# the launchers' size variables: MPICH / Intel MPI (hydra), Open MPI, PMIx
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
DEFAULT_BUCKET_MB = 25          # PyTorch DDP's default bucket size
DEFAULT_TIMEOUT_S = 300.0
# waits that are not hangs: ranks that start (import, read checkpoints) at different speeds, and
# rank 0 tokenizing a corpus while the others wait for its shards
STARTUP_TIMEOUT_S, DATA_TIMEOUT_S = 600.0, 3600.0


# flags a resumed run may change (checkpoints hold whole moments, whatever --zero was)
RESUMABLE = ("zero", "dist_timeout", "bucket_mb")


def add_arguments(p):
    from .cli import positive_float
    p.add_argument("--zero", type=int, default=0, choices=(0, 1),
                   help="1: shard AdamW's moments across the MPI ranks (ZeRO-1; on one rank "
                   "it is plain AdamW); default 0")
    p.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                   metavar="SECONDS",
                   help="under mpiexec: seconds a collective may wait for the other ranks "
                   f"before every rank is ended (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--bucket-mb", type=positive_float, default=DEFAULT_BUCKET_MB, metavar="MB",
                   help=f"gradient all-reduce bucket size in MB (default {DEFAULT_BUCKET_MB})")


def launched_size():
    """The world size the launcher announced (1 when not started by mpiexec)."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


# --------------------------------------------------------------------------------- watchdog
class Watchdog:
    """Waits for a collective to complete, polling with a growing sleep (so a waiting rank
    leaves its core to the others), and ends every rank when it has not completed in time."""

    def __init__(self, timeout_s, rank, size, peers, abort):
        self.timeout_s, self.rank, self.size = timeout_s, rank, size
        self.peers, self.abort = peers, abort          # peers: [(host, pid)] by rank

    def wait(self, done, what, timeout_s=None):
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        pause = 0.0
        while not done():
            if time.monotonic() > deadline:
                self.fail(what, timeout_s or self.timeout_s)
            time.sleep(pause)
            pause = min(2e-3, pause * 2 or 2e-5)

    def dead_ranks(self):
        host = socket.gethostname()
        dead = []
        for r, (h, pid) in enumerate(self.peers):
            if h == host and r != self.rank:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    dead.append(r)
                except OSError:
                    pass
        return dead

    def fail(self, what, timeout_s):
        dead = self.dead_ranks()
        cause = (f"rank {', '.join(map(str, dead))} is gone (killed or crashed)" if dead else
                 "another rank hangs, died on another host, or took another path")
        print(f"scratchgpt: error: rank {self.rank} of {self.size}: {what} did not complete "
              f"within {timeout_s:g} s: {cause}; ending every rank (--dist-timeout)",
              file=sys.stderr, flush=True)
        self.abort(1)


class PeerMonitor(threading.Thread):
    """Watches the other ranks on this host through pidfds and ends every rank, naming the one
    that ended, when one ends before training is over (a kill -9 or a crash reports nothing
    itself, and the launcher may name the pid of a rank it cleaned up instead)."""

    def __init__(self, dp):
        super().__init__(name="scratchgpt-peer-monitor", daemon=True)
        self.dp, self.fds = dp, {}
        host = socket.gethostname()
        for r, (h, pid) in enumerate(dp.peers):
            if h == host and r != dp.rank:
                with contextlib.suppress(OSError):
                    self.fds[os.pidfd_open(pid)] = (r, pid)

    def run(self):
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLIN)
        events = poller.poll()
        if self.dp.finishing:
            return
        gone = sorted(self.fds[fd] for fd, _ in events)
        print(f"scratchgpt: error: rank {self.dp.rank} of {self.dp.size}: "
              + ", ".join(f"rank {r} (pid {pid})" for r, pid in gone)
              + " ended during training (killed or crashed, unless its own error is printed "
              "above); ending every rank", file=sys.stderr, flush=True)
        self.dp.abort(1)


# ------------------------------------------------------------------------------- transports
class MpiTransport:
    """The two flat-buffer collectives the reduction needs, on NumPy arrays through MPI."""

    bits16 = np.uint16           # how bf16 / fp16 travel (MPI has no bf16; all-gather copies)

    def __init__(self, comm, watchdog):
        self.comm, self.watchdog = comm, watchdog
        self.xp = np

    def alltoall(self, send, recv, what):
        """send, recv: flat arrays of size * n; chunk j of send goes to rank j, chunk i of recv
        comes from rank i."""
        req = self.comm.Ialltoall(send, recv)
        self.watchdog.wait(req.Test, what)

    def allgather(self, send, recv, what):
        req = self.comm.Iallgather(send, recv)
        self.watchdog.wait(req.Test, what)


NCCL_TYPES = {"float32": 7, "float64": 8, "float16": 6, "bfloat16": 9}   # nccl.pxd, CuPy 14.0.0


class NcclTransport:
    """The same collectives on device arrays through an NcclCommunicator (cupy.cuda.nccl):
    the all-to-all as grouped send / recv to every peer (NCCL >= 2.7), the all-gather as
    ncclAllGather, both on the current stream. `nccl` is the module holding groupStart /
    groupEnd (cupy.cuda.nccl, or a stand-in with the same interface)."""

    bits16 = np.float16          # how bf16 / fp16 travel (NCCL has no uint16; all-gather copies)

    def __init__(self, comm, nccl, xp, watchdog):
        self.comm, self.nccl, self.xp, self.watchdog = comm, nccl, xp, watchdog
        self.rank, self.size = comm.rank_id(), comm.size()

    def _args(self, a):
        return a.data.ptr, NCCL_TYPES[a.dtype.name]

    def alltoall(self, send, recv, what):
        n = send.size // self.size
        stream = self.xp.cuda.get_current_stream()
        step = send.itemsize * n
        (sp, dtype), (rp, _) = self._args(send), self._args(recv)
        self.nccl.groupStart()
        try:
            for peer in range(self.size):
                self.comm.send(sp + peer * step, n, dtype, peer, stream.ptr)
                self.comm.recv(rp + peer * step, n, dtype, peer, stream.ptr)
        finally:
            self.nccl.groupEnd()
        self._wait(stream, what)

    def allgather(self, send, recv, what):
        stream = self.xp.cuda.get_current_stream()
        (sp, dtype), (rp, _) = self._args(send), self._args(recv)
        self.comm.allGather(sp, rp, send.size, dtype, stream.ptr)
        self._wait(stream, what)

    def _wait(self, stream, what):
        self.watchdog.wait(lambda: stream.done, what)


def nccl_communicator(mpi_comm, device_id):
    """A real NcclCommunicator over the MPI ranks: rank 0's unique id broadcast over MPI."""
    from cupy.cuda import nccl
    import cupy
    if not nccl.available:
        raise ScratchError("NCCL is not installed", "--backend cuda under mpiexec",
                           "the nvidia-nccl-cu13 wheel (pip install nvidia-nccl-cu13)")
    cupy.cuda.Device(device_id).use()
    uid = nccl.get_unique_id() if mpi_comm.rank == 0 else None
    uid = mpi_comm.bcast(uid, root=0)
    return nccl, nccl.NcclCommunicator(mpi_comm.size, uid, mpi_comm.rank)


# ---------------------------------------------------------------------------- the reduction
class Layout:
    """Named tensors laid end to end in a flat vector padded to a multiple of the world size,
    cut into buckets of about bucket_bytes whose lengths are multiples of the world size."""

    def __init__(self, shapes, size, bucket_bytes, itemsize):
        self.size = size
        self.entries = []                 # (name, offset in the flat vector, element count)
        offset = 0
        for name, shape in shapes:
            n = int(np.prod(shape, dtype=np.int64))
            self.entries.append((name, offset, n))
            offset += n
        self.numel = offset
        self.padded = -(-offset // size) * size
        per_bucket = max(size, (int(bucket_bytes) // itemsize) // size * size)
        self.buckets = []                 # (start, stop) in the flat vector
        start = 0
        while start < self.padded:
            stop = min(self.padded, start + per_bucket)
            self.buckets.append((start, stop))
            start = stop

    def pieces(self, start, stop):
        """(name, lo, hi, flat offset) for each tensor's elements lo..hi inside [start, stop)."""
        for name, offset, n in self.entries:
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                yield name, lo - offset, hi - offset, lo


def flat(a):
    return a.reshape(-1)


class OrderedReducer:
    """Sums gradients across ranks in rank order, bucket by bucket (see the module's docstring).
    Buckets run in reverse parameter order, the order a backward produces them, so that a
    backward that hands over each layer's gradients could start a bucket while the earlier
    layers are still being computed."""

    def __init__(self, transport, names_shapes, dtype, bucket_bytes, size):
        self.t, self.size, self.xp = transport, size, transport.xp
        self.layout = Layout(list(reversed(names_shapes)), size, bucket_bytes,
                             np.dtype(dtype).itemsize)
        self.dtype = dtype
        self.calls = 0
        self.buffers = None

    def reduce(self, grads):
        xp, n = self.xp, self.size
        if self.buffers is None:                 # one bucket's worth, reused by every bucket
            most = max(stop - start for start, stop in self.layout.buckets)
            self.buffers = (xp.zeros(most, self.dtype), xp.empty(most, self.dtype),
                            xp.empty(most // n, self.dtype))
        for b, (start, stop) in enumerate(self.layout.buckets):
            length = stop - start
            bucket, recv, total = (self.buffers[0][:length], self.buffers[1][:length],
                                   self.buffers[2][:length // n])
            filled = 0
            for name, lo, hi, at in self.layout.pieces(start, stop):
                bucket[at - start:at - start + hi - lo] = flat(grads[name])[lo:hi]
                filled = at - start + hi - lo
            bucket[filled:] = 0                  # the padding of the last bucket
            where = f"(bucket {b} of optimizer step {self.calls})"
            self.t.alltoall(bucket, recv, f"gradient all-to-all {where}")
            chunk = length // n
            total[...] = recv[:chunk]
            for i in range(1, n):                       # rank order: the grad-accum order
                total += recv[i * chunk:(i + 1) * chunk]
            self.t.allgather(total, bucket, f"gradient all-gather {where}")
            for name, lo, hi, at in self.layout.pieces(start, stop):
                flat(grads[name])[lo:hi] = bucket[at - start:at - start + hi - lo]
        self.calls += 1
        return grads


# ------------------------------------------------------------------------------------- ZeRO-1
class ShardedAdamW(AdamW):
    """AdamW whose moments are sharded (ZeRO-1): rank r keeps m and v of elements
    [r*S, (r+1)*S) of the flat parameter vector (S = padded size / N), updates those elements
    after the global-norm clip (computed from the full, already reduced gradients, as AdamW
    does), and all-gathers the parameters. state_dict() gathers the full moments (every rank
    takes part; checkpoints hold them whole, so a run resumes on any number of ranks).

    Under bf16 / fp16 (precision) the fp32 master weights are sharded the same way: the rank
    keeps its 1/N of the masters in `masters`, and `params` (the model's dict) then holds the 16-bit
    weights the forward reads, views of one flat vector that the step all-gathers. Each rank
    rounds its own updated masters to 16 bits and the 16-bit shards are gathered: rounding is
    element-wise, so this is the copy one process's sync_lowp makes, bit for bit, at half the
    bytes of gathering fp32. whole_masters() puts the gathered fp32 masters in `params` while
    a checkpoint is written."""

    def __init__(self, params, backend, transport, rank, size, precision="fp32", **hyper):
        self.t, self.rank, self.size = transport, rank, size
        self.dtype = next(iter(params.values())).dtype       # the masters' and moments'
        self.layout = Layout([(k, p.shape) for k, p in params.items()], size, 1 << 62,
                             self.dtype.itemsize)
        shard = self.layout.padded // size
        self.shard = (rank * shard, (rank + 1) * shard)
        self.buffers = None
        self.precision, self.masters = check_precision(precision), None
        super().__init__(params, backend, **hyper)
        if storage_dtype(precision) is not None:
            self._shard_masters()

    def _pieces(self):
        return self.layout.pieces(*self.shard)

    # AdamW.__init__ makes full moments; a shard's own are made here instead
    @property
    def m(self):
        return self._m

    @m.setter
    def m(self, full):
        self._m = self._shard_of(full)

    @property
    def v(self):
        return self._v

    @v.setter
    def v(self, full):
        self._v = self._shard_of(full)

    def _shard_of(self, full):
        return {name: flat(full[name])[lo:hi].copy() for name, lo, hi, _ in self._pieces()}

    def _shard_masters(self):
        """Keep this rank's fp32 masters; replace the params dict's full fp32 arrays (dropped
        here) by 16-bit views of `lowp`, rounded from the full masters every rank starts with."""
        self.masters = self._shard_of(self.params)
        self.lowp = self.be.xp.zeros(self.layout.padded, storage_dtype(self.precision))
        self.lowp_send = self.be.xp.zeros(self.shard[1] - self.shard[0], self.lowp.dtype)
        for name, offset, n in self.layout.entries:
            shape = self.params[name].shape
            self.lowp[offset:offset + n] = to_storage(flat(self.params[name]), self.precision)
            self.params[name] = self.lowp[offset:offset + n].reshape(shape)

    def moment_bytes(self):
        return sum(a.nbytes for a in self._m.values()) + sum(a.nbytes for a in self._v.values())

    def master_bytes(self):
        """The bytes of fp32 masters this rank holds (all of them without mixed precision,
        where the masters are the parameters themselves)."""
        held = self.masters if self.masters is not None else self.params
        return sum(a.nbytes for a in held.values())

    def step(self, grads, lr=None, max_grad_norm=None):
        if set(grads) != set(self.params):
            raise ValueError("grads: keys must match the parameters")
        op = self.be.adamw
        norm = op.clip_by_global_norm([grads[k] for k in self.params], max_grad_norm)
        self.step_count += 1
        lr = self.lr if lr is None else lr
        for name, lo, hi, _ in self._pieces():
            p = self.params[name]
            own = flat(p)[lo:hi] if self.masters is None else self.masters[name]
            op.update(own, flat(grads[name])[lo:hi], self._m[name], self._v[name],
                      self.step_count, lr, self.betas[0], self.betas[1], self.eps,
                      self.weight_decay if decays(name, p) else 0.0)
        if self.masters is None:
            self._gather(lambda name, lo, hi: flat(self.params[name])[lo:hi],
                         lambda name, lo, hi, src: flat(self.params[name]).__setitem__(
                             slice(lo, hi), src), "parameter all-gather")
        else:
            self._pack(self.lowp_send,
                       lambda name, lo, hi: to_storage(self.masters[name], self.precision))
            bits = self.t.bits16                 # 16-bit payload: the collective only copies
            self.t.allgather(self.lowp_send.view(bits), self.lowp.view(bits),
                             f"{self.precision} parameter all-gather")
        return norm

    def _allgather_flat(self, own, what):
        """The flat padded fp32 vector whose shard on this rank own(name, lo, hi) gives. Its
        buffers are kept when the parameters are fp32 and whole anyway (a fresh vector per
        step costs page faults); with sharded masters they are made per call, at checkpoints."""
        xp = self.be.xp
        buffers = self.buffers or (xp.zeros(self.shard[1] - self.shard[0], self.dtype),
                                   xp.empty(self.layout.padded, self.dtype))
        if self.masters is None:
            self.buffers = buffers
        send, full = buffers
        self._pack(send, own)
        self.t.allgather(send, full, what)
        return full

    def _pack(self, send, own):
        """This rank's shard into send, each tensor's piece from own(name, lo, hi)."""
        start = self.shard[0]
        for name, lo, hi, at in self._pieces():
            send[at - start:at - start + hi - lo] = own(name, lo, hi)

    def _gather(self, own, put, what):
        """All-gather the flat vector whose own shard own(name, lo, hi) gives; put each
        tensor's piece back with put(name, lo, hi, values)."""
        full = self._allgather_flat(own, what)
        for name, lo, hi, at in self.layout.pieces(0, self.layout.numel):
            put(name, lo, hi, full[at:at + hi - lo])

    @contextlib.contextmanager
    def whole_masters(self):
        """With sharded masters: `params` holds the full fp32 masters (gathered; every rank takes
        part) inside the block, the 16-bit views again after it. Without: nothing to do."""
        if self.masters is None:
            yield
            return
        full = self._allgather_flat(lambda name, lo, hi: self.masters[name], "fp32 master gather")
        lowp = dict(self.params)
        self.params.update({name: full[offset:offset + n].reshape(lowp[name].shape)
                            for name, offset, n in self.layout.entries})
        try:
            yield
        finally:
            self.params.update(lowp)

    def state_dict(self):
        xp = self.be.xp
        full = {}
        for which, moments in (("m", self._m), ("v", self._v)):
            out = {k: xp.empty(p.shape, self.dtype) for k, p in self.params.items()}
            self._gather(lambda name, lo, hi: moments[name],
                         lambda name, lo, hi, src: flat(out[name]).__setitem__(slice(lo, hi), src),
                         f"ZeRO-1 {which} gather")
            full[which] = out
        return {"step": self.step_count, "m": full["m"], "v": full["v"], "lr": self.lr,
                "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, state):
        # AdamW's casts the moments to the parameters' dtype, 16-bit here with sharded masters
        xp = self.be.xp
        self.step_count = int(state["step"])
        self.m = {k: xp.asarray(state["m"][k]).astype(self.dtype) for k in self.params}
        self.v = {k: xp.asarray(state["v"][k]).astype(self.dtype) for k in self.params}


# --------------------------------------------------------------------------------- the world
class SameOnEveryRank:
    """Marks an error raised by every rank at the same point: rank 0 reports it, the others
    exit with its status quietly."""


class EveryRankUsageError(UsageError, SameOnEveryRank):
    """A usage error every rank finds at the same point (the arguments are the same on all)."""


class DataParallel:
    """This process's place among the ranks; one process (size 1) when not under mpiexec."""

    def __init__(self, comm=None, timeout_s=DEFAULT_TIMEOUT_S):
        self.comm = comm
        self.rank = comm.rank if comm is not None else 0
        self.size = comm.size if comm is not None else 1
        self.peers = [(socket.gethostname(), os.getpid())]
        self.watchdog = None
        self.transport = None
        self.reducer = None
        self.finishing = False
        if comm is not None:
            self.peers = comm.allgather(self.peers[0])
            self.watchdog = Watchdog(timeout_s, self.rank, self.size, self.peers, self.abort)
            self.mpi = MpiTransport(comm, self.watchdog)
            self.transport = self.mpi
            monitor = PeerMonitor(self) if hasattr(os, "pidfd_open") else None
            if monitor is not None and monitor.fds:
                monitor.start()

    def finish(self):
        """The end of the command on every rank: from here a rank may exit."""
        if self.finishing:
            return
        self.finishing = True            # first: a rank that passes the barrier may exit at once
        self.allgather_obj(None, "the final barrier")

    @property
    def is_writer(self):
        return self.rank == 0

    def abort(self, code=1):
        if self.transport is not None and hasattr(self.transport, "comm") and \
                self.transport is not self.mpi:
            with contextlib.suppress(Exception):
                self.transport.comm.abort()        # NCCL: frees ranks blocked on the device
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)                             # MPI_Abort may return before the launcher acts

    def describe(self):
        if self.size == 1:
            return ""
        return (f"; data parallel over {self.size} ranks (pids "
                + ", ".join(f"{r}: {pid}" for r, (_, pid) in enumerate(self.peers)) + ")")

    # -------------------------------------------------------------------- small agreements
    def allgather_obj(self, obj, what, timeout_s=None):
        """Every rank's obj, in rank order, under the watchdog."""
        if self.size == 1:
            return [obj]
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        counts = np.empty(self.size, np.int64)
        req = self.comm.Iallgather(np.array([data.size], np.int64), counts)
        self.watchdog.wait(req.Test, what, timeout_s)
        buf = np.empty(int(counts.sum()), np.uint8)
        req = self.comm.Iallgatherv(data, [buf, counts])
        self.watchdog.wait(req.Test, what, timeout_s)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return [pickle.loads(buf[bounds[i]:bounds[i + 1]].tobytes()) for i in range(self.size)]

    def first(self, value, what="signal agreement"):
        """The first value that is not None, in rank order, of every rank's value."""
        if self.size == 1:
            return value
        return next((v for v in self.allgather_obj(value, what) if v is not None), None)

    def check_same_arguments(self, args, ignore=("func", "_defaults")):
        """Refuse arguments that differ between ranks (every rank raises the same error)."""
        if self.size == 1:
            return
        mine = {k: v for k, v in vars(args).items() if k not in ignore}
        digest = hashlib.sha256(json.dumps(mine, sort_keys=True, default=str).encode()).hexdigest()
        every = self.allgather_obj((digest, mine), "argument check",
                                   max(STARTUP_TIMEOUT_S, self.watchdog.timeout_s))
        if all(d == every[0][0] for d, _ in every):
            return
        for r, (d, theirs) in enumerate(every):
            if d != every[0][0]:
                keys = sorted(k for k in set(theirs) | set(every[0][1])
                              if theirs.get(k) != every[0][1].get(k))
                diff = ", ".join(f"{k}: rank 0 {every[0][1].get(k)!r}, rank {r} "
                                 f"{theirs.get(k)!r}" for k in keys)
                raise EveryRankUsageError(
                    f"the ranks were started with different arguments ({diff})", "mpiexec",
                    "the same command line on every rank")

    @contextlib.contextmanager
    def rank0_first(self, what):
        """Rank 0 runs the block first (it writes shared files, e.g. the tokenized data); the
        others run it after, finding them. A failure on rank 0 aborts every rank."""
        if self.size > 1 and self.rank != 0:
            self.allgather_obj(None, what, timeout_s=max(DATA_TIMEOUT_S, self.watchdog.timeout_s))
        yield
        if self.size > 1 and self.rank == 0:
            self.allgather_obj(None, what, timeout_s=max(DATA_TIMEOUT_S, self.watchdog.timeout_s))

    # ------------------------------------------------------------------------- the step
    def global_accum(self, accum):
        return accum * self.size

    def micro_batches(self, sampler, model, accum):
        """This rank's (x, y) of the global step's size * accum micro-batches, with dropout's
        step counter set to the micro-batch's place in the global step."""
        if self.size == 1:
            for _ in range(accum):
                yield sampler.next_batch()
            return
        first, total = self.rank * accum, self.size * accum
        step0 = model.dropout_step
        advances = model._dropping()        # a training forward with dropout counts one step
        for k in range(total):
            x, y = sampler.next_batch()
            if first <= k < first + accum:
                if advances:
                    model.dropout_step = step0 + k
                yield x, y
        if advances:
            model.dropout_step = step0 + total

    def reduce(self, losses, grads, accum):
        """(every rank's losses in global micro-batch order, the summed gradients, or None
        when some loss is not finite: then no rank reduces, all stop on the same step)."""
        if self.size == 1:
            return losses, grads
        every = self.allgather_obj(losses, "loss gather")
        losses = [x for rank_losses in every for x in rank_losses]
        if len(losses) != self.size * accum or not all(np.isfinite(losses)):
            return losses, None
        return losses, self._reducer(grads).reduce(grads)

    def _reducer(self, grads):
        if self.reducer is None:
            first = next(iter(grads.values()))
            self.reducer = OrderedReducer(self.transport, [(k, g.shape) for k, g in grads.items()],
                                          first.dtype, self.bucket_bytes, self.size)
        return self.reducer

    bucket_bytes = DEFAULT_BUCKET_MB * 2 ** 20

    # ------------------------------------------------------------------------ optimizer
    def optimizer(self, params, backend, zero=0, precision="fp32", **hyper):
        """AdamW, or ShardedAdamW for --zero 1 on several ranks (which under bf16 / fp16 shards
        the fp32 masters too: `params` then holds the 16-bit weights, see ShardedAdamW)."""
        if zero and self.size > 1:
            return ShardedAdamW(params, backend, self.transport, self.rank, self.size,
                                precision, **hyper)
        return AdamW(params, backend, **hyper)

    def take_part_in_save(self, opt):
        """A rank other than 0 at a checkpoint: ZeRO-1's moments are gathered for rank 0."""
        if isinstance(opt, ShardedAdamW):
            opt.state_dict()

    def whole_masters(self, opt):
        """Around a checkpoint, on every rank: the model's params are the full fp32 masters
        (gathered when ZeRO-1 shards them, see ShardedAdamW.whole_masters)."""
        if isinstance(opt, ShardedAdamW):
            return opt.whole_masters()
        return contextlib.nullcontext()

    def describe_optimizer(self, opt):
        """'; ZeRO-1 per rank: ... bytes' (this rank's shard), or '' when nothing is sharded."""
        if not isinstance(opt, ShardedAdamW):
            return ""
        masters = opt.master_bytes() if opt.masters is not None else None
        return (f"; ZeRO-1 per rank: {opt.moment_bytes():,} bytes of AdamW moments"
                + (f", {masters:,} bytes of fp32 masters" if masters is not None else ""))

    def use_device(self, backend):
        """cuda under mpiexec: one GPU per rank (by local rank) and NCCL for the gradients."""
        if self.size == 1 or backend != "cuda":
            return
        from .kernels import emulating_cuda
        if emulating_cuda():
            raise EveryRankUsageError("the emulated device has no NCCL",
                                      "--backend cuda under mpiexec",
                                      "--backend numpy or host for several ranks on CPUs")
        from mpi4py import MPI
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED).rank
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        nccl, comm = nccl_communicator(self.comm, local % count)
        self.transport = NcclTransport(comm, nccl, cupy, self.watchdog)

    def fit_accumulation(self, args):
        """On --resume with another number of ranks: the same global batch, so per-rank
        --grad-accum = saved ranks * saved grad-accum / ranks (refused when it does not divide)."""
        saved = int(getattr(args, "world_size", 1) or 1)
        if args.resume and saved != self.size:
            total = args.grad_accum * saved
            if total % self.size:
                raise EveryRankUsageError(
                    f"the run's global step holds {total} micro-batches ({saved} ranks x "
                    f"--grad-accum {args.grad_accum}), which {self.size} ranks cannot share",
                    f"--resume {args.resume} on {self.size} ranks",
                    f"a number of ranks dividing {total}")
            args.grad_accum = total // self.size
        args.world_size = self.size


_WORLD = None


def join(args):
    """This process's DataParallel (MPI initialised once, when started by mpiexec with more than
    one rank), its arguments checked against every rank's."""
    global _WORLD
    if _WORLD is None:
        if launched_size() > 1:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ScratchError("started by mpiexec with several ranks, but mpi4py is not "
                                   "installed", "mpiexec", "pip install 'scratchgpt[mpi]' "
                                   "(mpi4py and mpich)") from None
            _WORLD = DataParallel(MPI.COMM_WORLD, getattr(args, "dist_timeout", DEFAULT_TIMEOUT_S))
        else:
            _WORLD = DataParallel()
        if _WORLD.size > 1 and not _WORLD.is_writer:
            sys.stdout = open(os.devnull, "w")            # rank 0 alone prints
    _WORLD.bucket_bytes = int(getattr(args, "bucket_mb", DEFAULT_BUCKET_MB) * 2 ** 20)
    _WORLD.check_same_arguments(args)
    return _WORLD


@contextlib.contextmanager
def ending_all_ranks_on_error(command="train"):
    """Around a command under mpiexec: an error on one rank ends every rank (MPI_Abort) after
    one line naming the rank and the cause; an error every rank raised at the same point
    (SameOnEveryRank, Interrupted) is printed by rank 0 alone."""
    try:
        yield
    except BaseException as e:
        world = _WORLD
        if world is None or world.size == 1 or (isinstance(e, SystemExit) and not e.code):
            raise
        code = getattr(e, "exit_code", 1)
        if isinstance(e, (SameOnEveryRank, Interrupted)):
            world.finish()
            if world.rank == 0:
                raise
            sys.exit(code)
        cause = str(e) if isinstance(e, ScratchError) else f"{type(e).__name__}: {e}"
        print(f"scratchgpt {command}: error: rank {world.rank} of {world.size} failed: {cause}; "
              "ending every rank", file=sys.stderr, flush=True)
        if not isinstance(e, (ScratchError, KeyboardInterrupt)):
            import traceback
            traceback.print_exc()
        world.abort(code if isinstance(code, int) and code > 0 else 1)
    else:
        if _WORLD is not None:
            _WORLD.finish()


# ------------------------------------------------------------------- the NCCL check (a GPU)
def _nccl_check():
    """One GPU: a 1-rank NCCL communicator runs the bucketed reduction and ZeRO-1's all-gather
    on a small cuda model's gradients; prints JSON. (benchmarks/device_check.sh)"""
    from .config import GPTConfig
    from .model import GPT
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as e:
        print(json.dumps({"ok": False, "reason": f"CuPy is not installed ({e})"}))
        return 2
    if not nccl.available:
        print(json.dumps({"ok": False, "reason": "NCCL is not installed (nvidia-nccl-cu13)"}))
        return 2
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    watchdog = Watchdog(60.0, 0, 1, [], lambda code: os._exit(code))
    transport = NcclTransport(comm, nccl, cupy, watchdog)
    cfg = GPTConfig.preset("nano", vocab_size=64)
    model = GPT(cfg, backend="cuda", dtype="float32", seed=0)
    idx = np.random.default_rng(0).integers(0, 64, (4, cfg.block_size))
    model.forward(idx, idx)
    grads = model.backward()
    before = {k: cupy.asnumpy(g) for k, g in grads.items()}
    reducer = OrderedReducer(transport, [(k, g.shape) for k, g in grads.items()], np.float32,
                             4096, 1)
    reducer.reduce(grads)
    same_grads = all(np.array_equal(before[k], cupy.asnumpy(grads[k])) for k in grads)
    twin = GPT(cfg, backend="cuda", dtype="float32", seed=0)
    sharded = ShardedAdamW(model.params, model.be, transport, 0, 1, lr=1e-3)
    plain = AdamW(twin.params, twin.be, lr=1e-3)
    sharded.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
    plain.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
    same_step = all(np.array_equal(cupy.asnumpy(model.params[k]), cupy.asnumpy(twin.params[k]))
                    for k in model.params)
    result = {"ok": same_grads and same_step, "nccl_version": nccl.get_version(),
              "buckets": len(reducer.layout.buckets), "grads_unchanged": same_grads,
              "zero1_equals_adamw": same_step}
    print(json.dumps(result))
    comm.destroy()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["nccl-check"]:
        sys.exit(_nccl_check())
    print("usage: python3 -m scratchgpt.distributed nccl-check", file=sys.stderr)
    sys.exit(2)
