"""The installed console commands: diffusion-train, -evaluate, -sample, -report, -datasets,
-ceiling, -baseline and -bench (setup.py's COMMANDS), each what `python <module>.py` is in
the checkout.

The modules import each other by bare name (`import util`), as in the flat checkout.
Installed, they live in the package folder diffusion_thermodynamics, away from other
projects' top-level names; a command puts that folder first on sys.path, for its own
process only, and runs its module as `__main__`."""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(module):
    sys.path.insert(0, HERE)
    runpy.run_module(module, run_name='__main__', alter_sys=True)


def train():
    run('train')


def evaluate():
    run('evaluate')


def sampler():
    run('sampler')


def report():
    run('report')


def datasets():
    run('datasets')


def ceiling():
    run('ceiling')


def baseline():
    run('baseline')


def bench():
    run('bench')
