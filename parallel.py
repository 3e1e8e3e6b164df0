"""Many processes, one run: synchronous data parallelism over MPI (mpiexec, Slurm's srun).

Under a launcher with more than one process (backend.launched_processes), `world()` is an
MPI communicator through mpi4py; otherwise a single process that does the same calls
locally, so every caller is written once. What the processes share and split:
- training: each process takes its contiguous share of every global minibatch, the
  summed gradients are added with one Allreduce of a single float32 buffer, and every
  process applies the same update (mainloop.MainLoop, experiments.Experiment);
- the held-out bound, sampling, the Parzen and importance-weighted estimates: each
  process does its share of the units of work, and the results are added or gathered;
- process 0 alone prints and writes files (`world().is_writer`).
The per-example randomness never depends on the rank, so N processes give one
process's numbers up to the order of floating-point sums.
"""
import os
import shutil
import sys
import traceback
from contextlib import contextmanager

import numpy as np

import backend


class SingleProcess:
    """The world of one process: collectives return their input."""

    rank, size, is_writer = 0, 1, True

    def allreduce_sum(self, array):
        return np.asarray(array)

    def gather_rows(self, array):
        """The rows of every process's array, in rank order (here: this one's)."""
        return np.asarray(array)

    def same_everywhere(self, value):
        """True when `value` (a float) is the same on every process."""
        return True

    def share(self, n):
        """This process's contiguous share [start, stop) of n items."""
        return 0, n

    def abort(self, code):
        sys.exit(code)

    def library(self):
        """The MPI library in use, or None."""
        return None


class MPIWorld(SingleProcess):
    """MPI.COMM_WORLD of mpi4py."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_writer = self.rank == 0

    def allreduce_sum(self, array):
        from mpi4py import MPI  # imported by world() already
        array = np.ascontiguousarray(array)
        out = np.empty_like(array)
        self.comm.Allreduce(array, out, op=MPI.SUM)
        return out

    def gather_rows(self, array):
        parts = self.comm.allgather(np.asarray(array))
        return np.concatenate(parts) if parts else np.asarray(array)

    def same_everywhere(self, value):
        values = self.comm.allgather(float(value))
        return all(v == values[0] for v in values)

    def share(self, n):
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def abort(self, code):
        backend.flush_to_launcher()  # what this process printed, before mpiexec ends
        self.comm.Abort(code)

    def library(self):
        from mpi4py import MPI
        return MPI.Get_library_version().splitlines()[0].strip()


def mpiexec():
    """The launcher to start processes with: the virtual environment's own mpiexec (the
    MPICH wheel's) first, else the first on PATH; None without one."""
    return shutil.which('mpiexec', path=os.path.dirname(sys.executable)) or shutil.which('mpiexec')


def world():
    """The processes of this run: MPIWorld under a launcher of more than one process, else
    SingleProcess. MPI is initialised by the first call (when mpi4py is imported)."""
    if backend.launched_processes()[0] > 1:
        from mpi4py import MPI  # here: MPI starts only when a launcher asked for processes
        return MPIWorld(MPI.COMM_WORLD)
    return SingleProcess()


def rank_units(units, comm=None):
    """The units of work (a list) this process does: every size-th from its rank on."""
    comm = comm or world()
    return units[comm.rank::comm.size]


INTERRUPTED = backend.INTERRUPTED  # the exit code of a command stopped by SIGINT or SIGTERM
NONFINITE = 3  # the exit code of a run stopped because it went NaN or inf


class SharedExit(SystemExit):
    """An exit that leaves no process waiting for this one: every process takes it at the
    same point (a run interrupted, or gone non-finite, after the same minibatch), or the
    others have done their part already (the writer's non-finite final bound). The job then
    ends normally, so that the writer finishes its checkpoint."""


@contextmanager
def abort_on_error():
    """Ends the whole job when this process stops alone: the others would wait for it in a
    collective.

    An exception or any exit but 0 and SharedExit (a one-line user error; a signal outside
    the minibatches, mainloop.Interrupted, exit INTERRUPTED) is reported with the rank in one
    write, and every process is stopped with comm.Abort within seconds. A single process
    just raises.
    """
    comm = world()
    try:
        yield comm
    except SharedExit:
        raise
    except SystemExit as e:
        if comm.size > 1 and e.code not in (0, None):
            sys.stderr.write('process {} of {} stopped (exit {}); ending the job\n'.format(
                comm.rank, comm.size, e.code))
            comm.abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException:
        if comm.size > 1:
            sys.stderr.write('process {} of {} failed:\n{}'.format(comm.rank, comm.size, traceback.format_exc()))
            comm.abort(1)
        raise
