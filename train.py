"""Train a diffusion probabilistic model (Sohl-Dickstein et al. 2015).

    python train.py --dataset swissroll
    python train.py --dataset heartbeat --max-batches 2000
    python train.py --dataset deadleaves --fidelity code --max-batches 200
    python train.py --dataset folder:PATH
    python train.py --resume runs/<run> [--max-batches N]
    python train.py --convert-checkpoint runs/.../checkpoint.pkl

Each run writes into its own directory under --output-dir: log.jsonl (every
monitored value), progress.csv (the printed progress lines), checkpoint.npz, figures,
and results.json at the end.

A resumed run takes every setting from its checkpoint. Given again, --max-batches,
--max-epochs, --max-minutes, --ext-every-n, --lr, --lr-final and --data-path override
the stored value (the run says so); the settings that define the model and the data
order cannot change, but for --model-args ema=RATE, which begins an average of the
parameters at the resume (or gives the run's average another rate).
"""
import backend  # noqa: F401  (before numpy and Theano load)

import argparse
import ast

import checkpoints
import cli
import presets


def parse_model_args(text):
    """'key=value,key=value' -> dict; values are Python literals (ast.literal_eval,
    never eval) or else plain strings. ValueError (one line) for an empty item, an item
    without a key and '=', and a key given twice; presets.model_args refuses a key the
    data set does not have."""
    out = {}
    for item in (s.strip() for s in text.split(',')):
        if not item:
            raise ValueError('--model-args {!r} has an empty item: give key=value,key=value'.format(text))
        key, equals, value = (s.strip() for s in item.partition('='))
        if not (key and equals):
            raise ValueError('--model-args item {!r} is not key=value'.format(item))
        if key in out:
            raise ValueError('--model-args gives {} twice ({!r}): give each key once'.format(key, text))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def model_args_type(text):
    """parse_model_args for argparse: its message, not argparse's generic one."""
    try:
        return parse_model_args(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser():
    """Every option defaults to None, so that the options given can be told apart (resume)."""
    per_set = ' (default: the data set\'s, presets.RUN_DEFAULTS)'
    p = cli.command_parser(__doc__)
    p.add_argument('--dataset', help='one of: ' + ', '.join(d for d in presets.MODEL_ARGS if d != 'folder') + ' (any case; default swissroll), '
                   'or folder:PATH for the PNG/JPEG images under PATH')
    p.add_argument('--fidelity', choices=sorted(presets.PRESETS),
                   help='paper (default): the paper\'s choices; code: the released code\'s '
                        '(docs/paper_and_code.md, section 3); fast: the paper\'s model and bound, '
                        'trained the fastest way measured here')
    p.add_argument('--model-args', type=model_args_type,
                   help='key=value,... overriding the preset\'s model arguments (default: none); with --resume, '
                        'ema=RATE alone may change')
    p.add_argument('--batch-size', type=int, help='examples per minibatch' + per_set)
    p.add_argument('--lr', type=float, help='initial learning rate' + per_set)
    p.add_argument('--lr-final', type=float,
                   help='decay the learning rate exponentially to this value over --max-batches; '
                        'without it, the released code\'s schedule' + per_set)
    p.add_argument('--optimizer', choices=presets.OPTIMIZERS, help='default: rmsprop (adam with --fidelity fast)')
    p.add_argument('--seed', type=int, help='seed of the data order, the noise and the initial parameters '
                                            '(default: 0)')
    p.add_argument('--max-batches', type=int,
                   help='stop after this many minibatches, counted from the run\'s start' + per_set)
    p.add_argument('--max-epochs', type=int,
                   help='stop after this many passes over the training set (default: no limit)')
    p.add_argument('--max-minutes', type=float,
                   help='stop after this much training time, counted from the run\'s start (default: no limit)')
    p.add_argument('--ext-every-n', type=int, help='evaluate, print and checkpoint every N minibatches' + per_set)
    p.add_argument('--output-dir', help='folder in which the run makes its own directory (default: runs)')
    p.add_argument('--suffix', help='added to the run directory\'s name (default: none)')
    p.add_argument('--data-path', help='folder of data files (default: $FUEL_DATA_PATH)')
    p.add_argument('--resume', metavar='RUN_DIR',
                   help='continue the run in RUN_DIR (from its checkpoint.npz); a checkpoint file is taken too')
    p.add_argument('--resume_file', '--resume-file', dest='resume', help=argparse.SUPPRESS)  # the old names
    p.add_argument('--plot_before_training', '--plot-before-training', action='store_true',
                   help='evaluate the held-out bound once before the first minibatch')
    p.add_argument('--convert-checkpoint', metavar='OLD.pkl',
                   help='write the .npz form of an old pickle checkpoint beside it, and exit')
    p.add_argument('--overwrite', action='store_true',
                   help='let --convert-checkpoint replace an existing .npz, and --resume of a file other '
                        'than RUN_DIR/checkpoint.npz replace that one')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag, value, what in (('--resume', args.resume, 'the run directory or the checkpoint\'s file'),
                              ('--convert-checkpoint', args.convert_checkpoint, 'the checkpoint\'s file')):
        if value is not None and not value.strip():
            cli.fail('{} is empty: give {}'.format(flag, what))
    if args.resume:
        args.resume = checkpoints.checkpoint_in(args.resume)
    if args.convert_checkpoint:
        try:
            print(checkpoints.convert_checkpoint(args.convert_checkpoint, args.overwrite))
        except ValueError as e:
            cli.fail(str(e))
        return None
    import session  # Theano loads here, after the command line is read
    return session.train(args)


if __name__ == '__main__':
    main()
