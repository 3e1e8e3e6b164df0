"""A wider network that starts where a trained one stands: the checkpoint of a fully
convolutional image network (dead leaves, bark) with n_hidden_conv channels, written as the
checkpoint of the same network with more channels that computes the same function.

    python widen.py models/deadleaves runs/deadleaves64 --n-hidden-conv 64
    python train.py --resume runs/deadleaves64 --max-minutes 1000

Not in the paper or the released code, which train each network from the start: a way to
spend more channels without training again what the narrow network already knows. The
weights into each new channel are a fresh draw of the network's initialisation
(regression.ImageNetwork, the run's seed); every weight from a new channel into an old
channel or into the per-pixel layers is 0, so the old channels, the features and K are
unchanged until training moves them (Net2Net, Chen et al. 2016, widens by copying channels
instead). The average of the parameters widens the same way; Adam's first moment of a new
weight starts at 0 and its second at the mean of the old weights' in the same array, so the
first steps of the new weights are of about the usual size. The minibatch count, the monitor's
curve, the learning rate and the schedule go on from the checkpoint; the folder gets the
run's log.jsonl and progress.csv, and the checkpoint's record of overrides says where the
network was widened.
"""
import argparse
import os
import re
import shutil

import numpy as np

import checkpoints
import cli
import presets

# (output axis, input axis) of each kind of weight: MultiScaleConv's W<scale> (out, in, 3, 3),
# Dense's W (in, out); biases have the output axis alone.
AXES = ((re.compile(r'conv\d+\.W\d+$'), (0, 1)), (re.compile(r'(dense_upper\d+|readout)\.W$'), (1, 0)),
        (re.compile(r'.*\.b\d*$'), (0, None)))
ADAM_MOMENTS = ('.adam_m', '.adam_v')


def axes_of(name):
    """(output axis, input axis or None) of the parameter `name`."""
    for pattern, axes in AXES:
        if pattern.match(name):
            return axes
    raise ValueError('widen.py does not know the layout of parameter {}'.format(name))


def embed(old, fresh, axes):
    """`fresh` (the wider parameter's initial value) with `old` in its leading block and 0 where
    an old output reads a new input: the old outputs compute what they did."""
    out_axis, in_axis = axes
    wide = np.array(fresh, dtype=old.dtype)
    wide[tuple(slice(0, n) for n in old.shape)] = old
    if in_axis is not None and old.shape[in_axis] < wide.shape[in_axis]:
        cross = [slice(None)] * wide.ndim
        cross[out_axis], cross[in_axis] = slice(0, old.shape[out_axis]), slice(old.shape[in_axis], None)
        wide[tuple(cross)] = 0
    return wide


def fresh_parameters(state, config):
    """{name: initial value} of the network of model configuration `config`, drawn as a new run
    of the checkpoint's seed would draw it."""
    import experiments  # Theano loads here, after the command line has been read
    import regression
    C = state['shared']['readout.W'].shape[1] // (2 * config['n_temporal_basis'])  # channels of the images
    side = config.get('image_size') or config['crop']  # any size the scales allow: the biases are tied
    net = regression.ImageNetwork((C, side, side), np.random.default_rng([state['config']['args']['seed'], 0]),
                                  **{k: config[k] for k in experiments.IMAGE_NET_KEYS})
    return {p.name: p.get_value() for p in net.params}


def widened_shared(shared, fresh):
    """The checkpoint's arrays for the wider network: parameters and their averages embedded
    (embed), Adam's moments grown (0 and the old mean), everything else as it was."""
    import steprules  # Theano loads here
    out = dict(shared)
    for name, value in fresh.items():
        if shared[name].shape == value.shape:
            continue
        axes = axes_of(name)
        out[name] = embed(shared[name], value, axes)
        average = steprules.AVERAGE_PREFIX + name
        if average in shared:  # the new weights start in the average as they are in the parameters
            out[average] = embed(shared[average], value, axes)
        for suffix, start in zip(ADAM_MOMENTS, (0.0, None)):
            if name + suffix in shared:
                old = shared[name + suffix]
                grown = np.full(value.shape, old.mean() if start is None else start, old.dtype)
                grown[tuple(slice(0, n) for n in old.shape)] = old
                out[name + suffix] = grown
    return out


def widen(state, n_hidden_conv):
    """The checkpoint `state` of a fully convolutional image network, widened to
    n_hidden_conv channels; ValueError (one line) for another network or a narrower width."""
    config = presets.checkpoint_model_config(state)
    if not config.get('conv_path') or config.get('dense_path') or 'n_hidden_conv' not in config:
        raise ValueError('widen.py widens the fully convolutional networks (dead leaves, bark: no dense path)')
    if n_hidden_conv <= config['n_hidden_conv']:
        raise ValueError('--n-hidden-conv {} is not wider than the checkpoint\'s {}'.format(
            n_hidden_conv, config['n_hidden_conv']))
    wide = dict(config, n_hidden_conv=n_hidden_conv)
    args = state['config']['args']
    done = state['status']['iterations_done']
    override = {'flag': 'widen.py --n-hidden-conv', 'checkpoint': config['n_hidden_conv'], 'given': n_hidden_conv,
                'iteration': done}
    run_config = dict(state['config'], model=wide, overrides=state['config'].get('overrides', []) + [override],
                      args=dict(args, model_args=dict(args.get('model_args') or {}, n_hidden_conv=n_hidden_conv)))
    return {'shared': widened_shared(state['shared'], fresh_parameters(state, wide)), 'config': run_config,
            'status': dict(state['status'])}


def main(argv=None):
    p = cli.OneLineParser(description=__doc__.split('\n\n')[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='a run directory or released model (its checkpoint.npz), or a checkpoint file')
    p.add_argument('out_dir', help='the new run directory (made; must not hold a checkpoint)')
    p.add_argument('--n-hidden-conv', type=int, required=True, help='channels of the wider network')
    args = p.parse_args(argv)
    path = checkpoints.checkpoint_in(args.run)
    target = os.path.join(args.out_dir, 'checkpoint.npz')
    if os.path.exists(target):
        cli.fail('{} exists: give a new folder'.format(target))
    try:
        state = checkpoints.load_checkpoint(path)
        wide = widen(state, args.n_hidden_conv)
    except ValueError as e:
        cli.fail(str(e))
    os.makedirs(args.out_dir, exist_ok=True)
    source = os.path.dirname(os.path.abspath(path))
    for name in ('log.jsonl', 'progress.csv'):  # the run's history goes on in the new folder
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(args.out_dir, name))
    checkpoints.save_checkpoint(target, wide)
    print('Wrote {}: {} -> {} channels at minibatch {:,}; resume it with python train.py --resume {}'.format(
        target, presets.checkpoint_model_config(state)['n_hidden_conv'], args.n_hidden_conv,
        state['status']['iterations_done'], args.out_dir))


if __name__ == '__main__':
    main()
