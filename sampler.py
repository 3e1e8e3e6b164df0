"""Sampling from a trained model, and from the model multiplied by a second
distribution r(x): inpainting, denoising and Eq. 61 (paper section 2.5, Appendix C). The
command of reverse.py, whose docstring says how each mode conditions the reverse process.

    python sampler.py runs/<run> --mode sample
    python sampler.py runs/<run> --mode inpaint --mask centre
    python sampler.py runs/<run>/best.npz --mode denoise --noise-std 1.0
"""
import backend  # noqa: F401  (before numpy and Theano load)

import math
import os

import cli

MODES = ('sample', 'inpaint', 'denoise')  # reverse.MODES, which reverse.run checks


def build_parser():
    p = cli.command_parser(__doc__)
    p.add_argument('checkpoint', help='a run directory (its checkpoint.npz) or a checkpoint file')
    p.add_argument('--mode', default='sample', choices=MODES, help='what to draw')
    p.add_argument('--n', type=int, default=49, help='number of samples')
    p.add_argument('--seed', type=int, default=0, help='seed of the noise')
    p.add_argument('--noise-std', type=float, default=1.0,
                   help='denoise: std s of the added noise in model units (z-scored pixels for '
                        'images); the paper\'s Figure 3 used variance 1')
    p.add_argument('--mask', default='centre',
                   help='inpaint: left (left half unknown), centre (centred square of half the side '
                        'unknown) or a PNG file (nonzero = known)')
    p.add_argument('--frames', type=int, default=8, help='number of frame times shown and stored')
    p.add_argument('--output-dir', '--out', dest='output_dir',
                   help='folder for the samples and figures (default: the checkpoint\'s folder)')
    p.add_argument('--batch-size', type=int, default=100, help='examples per network evaluation')
    p.add_argument('--data-path', help='folder of data files (default: $FUEL_DATA_PATH)')
    p.add_argument('--no-ema', dest='ema', action='store_false',
                   help='sample with the last parameters, not their average (runs with --model-args ema=...)')
    p.add_argument('--skip-last-step', choices=('yes', 'no'),
                   help='stop at x^1 like the released code (default: the model arg skip_last_step)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.frames < 1 or args.batch_size < 1:
        cli.fail('--n, --frames and --batch-size must be positive')
    if not (math.isfinite(args.noise_std) and args.noise_std > 0):
        cli.fail('--noise-std {}: must be a finite number > 0'.format(args.noise_std))
    cli.check_seed(args.seed)
    if args.mode == 'inpaint' and args.mask not in ('left', 'centre') and not os.path.isfile(args.mask):
        cli.fail('--mask {!r} is neither left, centre nor a file'.format(args.mask))
    sample(args)


def sample(args):
    """Draw as the checked command line `args` says and write the arrays and figures;
    Theano loads here."""
    import numpy as np

    import checkpoints
    import experiments
    import figures
    import parallel
    import reverse
    with parallel.abort_on_error() as comm:  # under mpiexec the processes share the samples
        try:
            checkpoint = checkpoints.checkpoint_in(args.checkpoint)
            exp = experiments.from_checkpoint(checkpoint, args.data_path, args.ema)
        except ValueError as e:
            cli.fail(str(e))
        skip = None if args.skip_last_step is None else args.skip_last_step == 'yes'
        notice = check_sizes(args, exp, exp.args.get('skip_last_step', False) if skip is None else skip)
        if notice and comm.is_writer:
            print(notice, flush=True)
        try:
            result = reverse.run(exp, args.mode, args.n, args.seed, args.noise_std, args.mask, args.frames,
                         args.batch_size, skip, progress=comm.is_writer, comm=comm)
        except ValueError as e:
            cli.fail(str(e))
        if not np.isfinite(result['samples']).all():
            cli.fail('the samples hold NaN or inf: the checkpoint\'s model does not sample (nothing written)')
        if comm.is_writer:
            for path in figures.save_samples(result, exp, args.output_dir or os.path.dirname(os.path.abspath(checkpoint)), args.mode):
                print(path)


def check_sizes(args, exp, skip_last_step):
    """One-line error and exit 2 for more frames than the reverse process has states, or
    samples and frames that do not fit in memory or would take over a year (before anything
    is computed). Returns the line to print for sampling that will take over ten minutes, or None."""
    import memory
    states = exp.diffusion.T_steps + (0 if skip_last_step else 1)  # x^T .. x^0 (x^1 if the last step is skipped)
    if args.frames > states:
        cli.fail('--frames {}: the reverse process has {} states to show; give at most {}'.format(
            args.frames, states, states))
    too_large = memory.check_sampling(args.n, args.frames, exp.test_x[0].size)
    if too_large:
        cli.fail(too_large)
    refusal, notice = memory.check_sampling_time(exp, args.n)
    if refusal:
        cli.fail(refusal)
    return notice


if __name__ == '__main__':
    main()
