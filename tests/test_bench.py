"""bench.py's pieces that need no timing: op names of the per-op table, flag checks, the
parameter count it reports."""
import pytest
import theano.tensor as T

import bench

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


def test_cifar_configuration_reports_the_released_networks_parameter_count():
    """13,385,280 parameters, counted by hand from the released code's CIFAR-10 architecture
    with the untied biases of its Blocks convolutions (docs/paper_and_code.md, section 5):
    dense 3072-1000x5-5120, conv 3-100x6 with biases of 100 x 34 x 34 per layer, per-pixel
    105-100-100-100, read-out 100-60; the schedule has no parameters in the code preset."""
    dense = 3072 * 1000 + 4 * 1000 * 1000 + 1000 * 5120 + 5 * 1000 + 5120
    conv = 3 * 100 * 9 + 5 * 100 * 100 * 9 + 6 * 100 * 34 * 34
    per_pixel = (105 * 100 + 100) + 2 * (100 * 100 + 100) + (100 * 60 + 60)
    exp, _, _ = bench.build('cifar')
    assert bench.n_params(exp) == dense + conv + per_pixel == 13385280
