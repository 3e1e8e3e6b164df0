"""The compiled Theano graphs of an image model: float32 throughout, and the matrix
products and convolutions on BLAS (Dot22 / Gemm, CorrMM), which is where the time goes
(docs/paper_and_code.md, section 7). A float64 constant slipped into the model upcasts
the whole chain
behind it and runs at half speed; these tests find it by the variables' dtypes (Sum's
internal acc_dtype=float64 is an op parameter, not a variable, and does not count)."""
import numpy as np
import pytest
import theano

import experiments
import presets
import regression as R
import reverse
import steprules

pytestmark = pytest.mark.slow  # compiles the training graphs (python -m pytest -m "not slow" leaves it out)

SMALL = dict(T=20, n_temporal_basis=3, n_hidden_dense_lower=8, n_hidden_dense_lower_output=2,
             n_hidden_dense_upper=4, n_hidden_conv=4, n_layers_conv=2, n_layers_dense_lower=2,
             n_layers_dense_upper=2, n_scales=2, conv_path=True)
BLAS_PRODUCTS = {'Dot22', 'Dot22Scalar', 'Gemm'}
CONVOLUTIONS = {'CorrMM', 'CorrMM_gradInputs', 'CorrMM_gradWeights'}


@pytest.fixture
def compiled(monkeypatch, stand_in_images):
    """compiled(fidelity) -> (Experiment on 1 x 8 x 8 stand-in images, the functions it
    has compiled so far); theano.function is wrapped to keep what it returns."""
    images = stand_in_images(300, 20, (1, 8, 8))
    functions = []
    original = theano.function

    def keep(*args, **kwargs):
        functions.append(original(*args, **kwargs))
        return functions[-1]
    monkeypatch.setattr(theano, 'function', keep)

    def build(fidelity):
        args = presets.model_args('MNIST', fidelity, SMALL)
        return experiments.from_arrays('MNIST', args, 0, images['train'], images['test']), functions
    return build


def float64_nodes(fn):
    """The nodes of a compiled function that take or give a float64 variable."""
    return [str(node) for node in fn.maker.fgraph.apply_nodes
            if any(getattr(v, 'dtype', None) == 'float64' for v in node.inputs + node.outputs)]


def op_names(fn):
    return {type(node.op).__name__ for node in fn.maker.fgraph.apply_nodes}


@pytest.mark.parametrize('fidelity', ['code', 'paper'])
def test_training_step_graph_is_float32_on_blas(compiled, fidelity):
    exp, functions = compiled(fidelity)
    step, _ = exp.compile_train(steprules.RMSProp())
    (fn,) = functions
    assert float64_nodes(fn) == []
    names = op_names(fn)
    assert names & BLAS_PRODUCTS and CONVOLUTIONS <= names
    assert 'Dot' not in names and not any(n.startswith('AbstractConv') for n in names)  # no fallbacks
    outputs = fn(*exp.draw_inputs(np.random.default_rng(0), exp.train_x[:10]))
    assert outputs[0].dtype == np.float32
    assert all(p.get_value().dtype == np.float32 for p in exp.params)


def test_each_matrix_product_is_computed_once(compiled):
    """Forward, weight gradient and input gradient of each dense layer: 3 products per
    layer, less the input gradient of the first (the data); the first per-pixel layer takes
    each lower path with its own rows of its weights, 3 products per path; the read-out
    at each example's step is 3 batched products, and its bias 2 more (forward and
    gradient). Theano's Dot22Scalar rewrite used to add a second copy of every product
    that a scalar multiplied (the learning rate, the leaky ReLU's slopes), which
    backend.BASE_FLAGS switches off."""
    exp, functions = compiled('code')
    exp.compile_train(steprules.RMSProp())
    (fn,) = functions
    net = exp.diffusion.net.net
    n_dense = len(net.dense_lower) + len(net.dense_upper)
    n_paths = len(net.n_features)  # 2: convolutional and dense
    names = [type(node.op).__name__ for node in fn.maker.fgraph.apply_nodes]
    assert sum(name in BLAS_PRODUCTS for name in names) == 3 * n_dense - 1 + 3 * (n_paths - 1) + 2
    assert names.count('BatchedDot') == 3
    joins = [node for node in fn.maker.fgraph.apply_nodes if type(node.op).__name__ in ('Join', 'Split')
             and any(getattr(v, 'ndim', 0) > 1 for v in node.inputs)]
    assert joins == []  # the lower paths' channels are never concatenated (shape vectors may be)


def test_temporal_basis_has_no_denormals():
    """Float32 values below 1.2e-38 make every product they enter ~10x slower."""
    for width in ('paper', 'code'):
        g = R.temporal_basis(1000, 10, width)
        assert g.dtype == np.float32 and g[g > 0].min() > 1e-30
        np.testing.assert_allclose(g.sum(axis=0), 1, rtol=1e-6)


def test_sampling_graph_is_float32_on_blas(compiled):
    exp, functions = compiled('code')
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 4)
    assert functions == [kernel]
    assert float64_nodes(kernel) == []
    names = op_names(kernel)
    assert 'Dot22' in names and 'CorrMM' in names and 'Dot' not in names
    mu, sigma = kernel(np.zeros((3, 1, 8, 8), np.float32), np.array([5, 10, 20]))
    assert mu.dtype == sigma.dtype == np.float32
