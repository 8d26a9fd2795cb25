"""A recording stand-in for `cupy.cuda.nccl` (module functions and NcclCommunicator) for one
process on the emulated device, where no NCCL exists: it records every call and performs it
for a world of one rank (allGather copies, send / recv to oneself inside a group copy), with
memmove on the emulated device's host memory.

It accepts and refuses what CuPy v14.0.0's cupy_backends/cuda/libs/nccl.pyx does for the calls
scratchgpt.distributed uses (checked against that source):
  - NcclCommunicator(int ndev, bytes commId, int rank): commId must be bytes (14.0 changed
    get_unique_id() to return bytes, no longer a tuple) of length NCCL_UNIQUE_ID_BYTES = 128,
    else ValueError; ndev and rank are C ints (a float is a TypeError);
  - send(intptr_t sendbuf, size_t count, int datatype, int peer, intptr_t stream), recv(same),
    allGather(intptr_t sendbuf, intptr_t recvbuf, size_t count, int datatype, intptr_t stream):
    pointers and streams are integers (Cython's intptr_t: a float or an array is a TypeError),
    counts are size_t (negative: OverflowError), datatypes the ncclDataType_t constants 0..9
    (NCCL answers another value with ncclInvalidArgument, raised as NcclError);
  - groupStart() / groupEnd(): module functions; NCCL refuses a groupEnd without a groupStart
    (ncclInvalidUsage).
What a world of one cannot show it refuses rather than fakes: ndev != 1, and a send to oneself
outside a group (real NCCL would wait forever for the matching recv).
"""
import ctypes
import operator

NCCL_UNIQUE_ID_BYTES = 128
NCCL_SUM, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_BFLOAT16 = 0, 6, 7, 8, 9
_BYTES = {0: 1, 1: 1, 2: 4, 3: 4, 4: 8, 5: 8, 6: 2, 7: 4, 8: 8, 9: 2}
available = True


_STATUS = ("ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
           "ncclInvalidArgument", "ncclInvalidUsage")


class NcclError(RuntimeError):
    """As cupy_backends.cuda.libs.nccl.NcclError: status 4 ncclInvalidArgument,
    5 ncclInvalidUsage."""

    def __init__(self, status, what):
        self.status = status
        super().__init__(f"{_STATUS[status]}: {what}")


def _c_int(x, bits, signed=True):
    """Cython's conversion to a C integer: __index__ (int, bool, NumPy integers), TypeError for
    anything else (float, array), OverflowError out of range."""
    v = operator.index(x)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= v <= hi:
        raise OverflowError(f"value {v} out of range for a {'signed' if signed else 'unsigned'} "
                            f"{bits}-bit C integer")
    return v


calls = []                     # ("groupStart",), ("send", ptr, count, dtype, peer, stream), ...
_group = {"depth": 0, "pending": []}


def get_version():
    return 22703                 # the NCCL the stand-in claims to be (2.27.3): send / recv exist


def get_unique_id():
    return bytes(range(NCCL_UNIQUE_ID_BYTES))


def groupStart():
    calls.append(("groupStart",))
    _group["depth"] += 1


def groupEnd():
    if _group["depth"] == 0:
        raise NcclError(5, "groupEnd without groupStart")
    calls.append(("groupEnd",))
    _group["depth"] -= 1
    if _group["depth"] == 0:
        pending, _group["pending"] = _group["pending"], []
        sends = [p for p in pending if p[0] == "send"]
        recvs = [p for p in pending if p[0] == "recv"]
        if len(sends) != len(recvs):
            raise NcclError(5, "unmatched send / recv in the group (NCCL would hang)")
        for (_, src, nbytes_s), (_, dst, nbytes_r) in zip(sends, recvs):
            if nbytes_s != nbytes_r:
                raise NcclError(4, "send and recv of different sizes")
            ctypes.memmove(dst, src, nbytes_s)


class NcclCommunicator:
    def __init__(self, ndev, commId, rank, config=None):
        ndev, rank = _c_int(ndev, 32), _c_int(rank, 32)
        if type(commId) is not bytes:
            raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got "
                            f"{type(commId).__name__})")
        if len(commId) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"commId length {len(commId)} != {NCCL_UNIQUE_ID_BYTES}.")
        if not 0 <= rank < ndev:
            raise NcclError(4, f"rank {rank} of {ndev}")
        if ndev != 1:
            raise NotImplementedError("the stand-in is a world of one rank")
        self.ndev, self.rank = ndev, rank

    def rank_id(self):
        return self.rank

    def size(self):
        return self.ndev

    def abort(self):
        calls.append(("abort",))

    def destroy(self):
        calls.append(("destroy",))

    def _buffer(self, ptr, count, datatype, stream):
        ptr, count = _c_int(ptr, 64), _c_int(count, 64, signed=False)
        datatype, stream = _c_int(datatype, 32), _c_int(stream, 64)
        if datatype not in _BYTES:
            raise NcclError(4, f"datatype {datatype}")
        if count and not ptr:
            raise NcclError(4, "null buffer")
        return ptr, count, datatype, stream, count * _BYTES[datatype]

    def _peer(self, peer):
        peer = _c_int(peer, 32)
        if not 0 <= peer < self.ndev:
            raise NcclError(4, f"peer {peer} of {self.ndev}")
        if _group["depth"] == 0:
            raise NotImplementedError("send / recv to oneself outside a group: NCCL would hang")
        return peer

    def send(self, sendbuf, count, datatype, peer, stream):
        ptr, count, datatype, stream, nbytes = self._buffer(sendbuf, count, datatype, stream)
        peer = self._peer(peer)
        calls.append(("send", ptr, count, datatype, peer, stream))
        _group["pending"].append(("send", ptr, nbytes))

    def recv(self, recvbuf, count, datatype, peer, stream):
        ptr, count, datatype, stream, nbytes = self._buffer(recvbuf, count, datatype, stream)
        peer = self._peer(peer)
        calls.append(("recv", ptr, count, datatype, peer, stream))
        _group["pending"].append(("recv", ptr, nbytes))

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        sp, count, datatype, stream, nbytes = self._buffer(sendbuf, count, datatype, stream)
        rp = self._buffer(recvbuf, count, datatype, stream)[0]
        calls.append(("allGather", sp, rp, count, datatype, stream))
        if sp != rp:
            ctypes.memmove(rp, sp, nbytes)
