"""bench.py's pieces that need no timing: op names of the per-op table, flag checks, the
parameter count it reports."""
import os

import numpy as np
import pytest
import theano.tensor as T

import bench
import regression

pytestmark = pytest.mark.slow  # builds the image networks (python -m pytest -m "not slow" leaves it out)


def test_op_groups_name_the_scalar_op_and_the_accumulator():
    x = T.matrix('x')
    assert bench.op_group((x * 2).owner.op) == 'Elemwise{Mul}'
    assert bench.op_group(x.sum(axis=0, acc_dtype='float64').owner.op) == 'Sum{acc float64}'
    assert bench.op_group(x.sum(axis=0, acc_dtype='float32').owner.op) == 'Sum{acc float32}'
    assert bench.op_group(T.dot(x, x).owner.op) == 'Dot'


@pytest.mark.parametrize('argv', [['--processes', 'two'], ['--processes', '0,2'], ['--batch-size', '0'],
                                  ['--steps', '0'], ['--conv-impl', 'fft']])
def test_bad_flags_exit_before_measuring(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err  # argparse's message


def test_cifar_configuration_reports_the_released_networks_parameter_count(monkeypatch):
    """13,385,280 parameters, counted by hand from the released code's CIFAR-10 architecture
    with the untied biases of its Blocks convolutions (docs/paper_and_code.md, section 5):
    dense 3072-1000x5-5120, conv 3-100x6 with biases of 100 x 34 x 34 per layer, per-pixel
    105-100-100-100, read-out 100-60; the schedule has no parameters in the code preset."""
    dense = 3072 * 1000 + 4 * 1000 * 1000 + 1000 * 5120 + 5 * 1000 + 5120
    conv = 3 * 100 * 9 + 5 * 100 * 100 * 9 + 6 * 100 * 34 * 34
    per_pixel = (105 * 100 + 100) + 2 * (100 * 100 + 100) + (100 * 60 + 60)
    # the count needs the shapes alone: zeros for the dense layers' orthogonal matrices (their
    # QR took 8.4 of the 10.5 s of the build)
    monkeypatch.setattr(regression, 'orthogonal_init', lambda rng, shape: np.zeros(shape))
    exp, _, _ = bench.build('cifar')
    assert bench.n_params(exp) == dense + conv + per_pixel == 13385280


def test_deadleaves_configuration_builds_the_network_train_py_trains():
    """The released dead-leaves model was trained by train.py --dataset deadleaves --fidelity fast
    (models/deadleaves/README.md): bench's configuration has its parameters, array by array
    (those with Adam's state in the checkpoint), 119,838 in all: convolutions 1-32 and 3 x
    32-32 at 4 scales with one bias per filter, per-pixel 32-64-64, read-out 64-20, and the
    learned schedule's 10; and it steps as that run does (Adam, batch 100, 32x32 crops)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models', 'deadleaves')
    with np.load(os.path.join(folder, 'checkpoint.npz')) as checkpoint:
        trained = {k[len('shared/'):]: checkpoint[k].shape for k in checkpoint
                   if k.startswith('shared/') and k + '.adam_m' in checkpoint}
    exp, run, _ = bench.build('deadleaves')
    assert {p.name: p.get_value().shape for p in exp.params} == trained
    conv = 4 * (9 * 32 + 32) + 3 * 4 * (9 * 32 * 32 + 32)
    assert bench.n_params(exp) == conv + (32 * 64 + 64) + (64 * 64 + 64) + (64 * 20 + 20) + 10 == 119838
    assert (run['optimizer'], run['batch_size'], exp.crop, exp.args['train_t']) == ('adam', 100, 32, 'adaptive')
