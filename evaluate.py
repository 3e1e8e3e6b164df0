"""Evaluate a trained diffusion model from its checkpoint: the bound K on a whole
held-out set (bound.py), its per-step KL costs, discrete bits per dimension, the
importance-weighted bound, the MNIST Parzen estimate and the entropy bounds of Eq. 24.

    python evaluate.py runs/<run>                        # K on the whole test set
    python evaluate.py runs/<run>/checkpoint.npz --n-t 10 --iw-k 1,4,16 --iw-n 200
    python evaluate.py runs/<run> --parzen-samples 10000 --entropy-n 100

Results go to RUN_DIR/evaluation_<split>.json (and .png figures) beside the
checkpoint, or to --output-dir; --json prints them on stdout (and nothing else). A long
evaluation saves its partial sums to evaluation_<split>_partial.npz after every chunk and
picks them up when started again with the same arguments. REPORT.md over runs: report.py.

Units: K is in the paper's units (Table 1): bits per data vector for the toy
sets, bits per pixel of z-scored continuous data for images (all colour channels of
a pixel together). Natural logarithms inside, divided by ln 2 at the end.
"""
import backend  # noqa: F401  (before numpy and Theano load)

import cli


def build_parser():
    p = cli.command_parser(__doc__)
    p.add_argument('path', help='a run directory (its checkpoint.npz) or a checkpoint file')
    p.add_argument('--split', default='test', choices=('test', 'train'), help='the examples bounded')
    p.add_argument('--n-t', type=int, default=10, help='draws of (t, noise) per example')
    p.add_argument('--seed', type=int, default=0, help='seed of those draws')
    p.add_argument('--n-examples', type=int, help='only the first N examples (quick runs; default: all)')
    p.add_argument('--batch-size', type=int, help='examples per network evaluation (default: the data set\'s)')
    p.add_argument('--iw-k', default='', help='importance-weighted bound for these k, e.g. 1,4,16 (default: none)')
    p.add_argument('--iw-n', type=int, default=100, help='examples for the importance-weighted bound')
    p.add_argument('--parzen-samples', type=int, default=0,
                   help='Parzen estimate from this many samples (image data sets)')
    p.add_argument('--entropy-n', type=int, default=0, help='entropy bounds (Eq. 24) over this many examples')
    p.add_argument('--output-dir', '--out-dir', dest='output_dir',
                   help='folder for the results and figures (default: the run directory)')
    p.add_argument('--data-path', help='folder of data files (default: $FUEL_DATA_PATH)')
    p.add_argument('--no-ema', dest='ema', action='store_false',
                   help='evaluate the last parameters, not their average (runs with --model-args ema=...)')
    p.add_argument('--json', action='store_true', help='print the results as JSON on stdout, and nothing else')
    return p


def check_arguments(args):
    """One-line error and exit 2 for a value outside its range."""
    for flag, value in (('--n-t', args.n_t), ('--iw-n', args.iw_n)):
        if value < 1:
            cli.fail('{} {}: must be an integer >= 1'.format(flag, value))
    for flag, value in (('--n-examples', args.n_examples), ('--batch-size', args.batch_size)):
        if value is not None and value < 1:
            cli.fail('{} {}: must be an integer >= 1'.format(flag, value))
    for flag, value in (('--parzen-samples', args.parzen_samples), ('--entropy-n', args.entropy_n)):
        if value < 0:
            cli.fail('{} {}: must be an integer >= 0'.format(flag, value))
    cli.check_seed(args.seed)
    try:
        ks = tuple(int(k) for k in args.iw_k.split(',') if k.strip())
    except ValueError:
        cli.fail('--iw-k takes integers separated by commas, e.g. 1,4,16')
    if any(k < 1 for k in ks):
        cli.fail('--iw-k {}: every k must be >= 1'.format(args.iw_k))
    return ks


def main(argv=None):
    args = build_parser().parse_args(argv)
    ks = check_arguments(args)
    import estimators  # Theano loads here, after the command line is read
    return estimators.command(args, ks)


if __name__ == '__main__':
    main()
