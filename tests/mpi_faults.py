"""`scratchgpt train` with a fault injected on one rank, for tests/test_distributed.py:

    mpiexec -n 2 python3 -m mpi_faults KIND RANK STEP train ARGS...

KIND: raise (a RuntimeError), kill (SIGKILL to itself), hang (sleeps 600 s), nan (its first
forward of the step returns a NaN loss), term (SIGTERM to itself); the fault happens
on rank RANK when it starts optimizer step STEP (counting from 0), before that step's forward.
"""
import os
import signal
import sys
import time

from scratchgpt import cli, train


def main():
    kind, rank, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    step_fn = train.train_step
    calls = {"n": 0}

    def faulty_step(model, mp, sampler, args, lr, dp=None):
        if dp is not None and dp.rank == rank and calls["n"] == at:
            if kind == "raise":
                raise RuntimeError("injected fault")
            if kind in ("kill", "term"):
                os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            if kind == "hang":
                time.sleep(600)
            if kind == "nan":
                forward = model.forward

                def nan_once(x, y):
                    model.forward = forward
                    logits, _ = forward(x, y)
                    return logits, float("nan")
                model.forward = nan_once
        calls["n"] += 1
        return step_fn(model, mp, sampler, args, lr, dp)

    train.train_step = faulty_step
    return cli.main(sys.argv[4:])


if __name__ == "__main__":
    sys.exit(main())
