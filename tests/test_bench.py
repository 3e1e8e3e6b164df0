"""bench.py's pieces that need no timing: op names of the per-op table, flag checks."""
import pytest
import theano.tensor as T

import bench


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
