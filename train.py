"""Train a diffusion probabilistic model (Sohl-Dickstein et al. 2015).

    python train.py --dataset swissroll
    python train.py --dataset heartbeat --max-batches 2000
    python train.py --dataset deadleaves --fidelity code --max-batches 200
    python train.py --dataset swissroll --resume_file runs/.../checkpoint.pkl

Each run writes into its own directory under --output-dir: log.jsonl (every
monitored value), checkpoint.pkl, figures, and results.json at the end.
"""
import util  # configures Theano before it is imported

import ast
import os
import shlex
import sys

import experiments
import extensions as E
import training

# Keys a resumed run takes from its checkpoint, not from the command line.
RUN_KEYS = ('dataset', 'fidelity', 'model_args', 'seed', 'batch_size', 'optimizer', 'lr', 'lr_final')


def parse_model_args(text):
    """'key=value,key=value' -> dict; values are Python literals (ast.literal_eval,
    never eval) or else plain strings."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(','))):
        if '=' not in item:
            raise ValueError('--model-args item {!r} is not key=value'.format(item))
        key, value = (s.strip() for s in item.split('=', 1))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_parser():
    p = util.OneLineParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default='swissroll',
                   help='one of: ' + ', '.join(experiments.MODEL_ARGS))
    p.add_argument('--fidelity', default='paper', choices=sorted(experiments.PRESETS),
                   help='paper: the paper\'s choices; code: the released code\'s (SPEC section 9)')
    p.add_argument('--model-args', default='', help='key=value,... overriding model defaults')
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--lr', type=float, default=None, help='initial learning rate')
    p.add_argument('--lr-final', type=float, default=None,
                   help='decay the learning rate exponentially to this value over --max-batches '
                        '(default for the toy sets); otherwise the released code\'s schedule')
    p.add_argument('--optimizer', default='rmsprop', choices=sorted(training.STEP_RULES))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-batches', type=int, default=None,
                   help='stop after this many minibatches, counted from the run\'s start')
    p.add_argument('--max-epochs', type=int, default=None)
    p.add_argument('--max-minutes', type=float, default=None, help='stop after this much training time')
    p.add_argument('--ext-every-n', type=int, default=None,
                   help='evaluate, print and checkpoint every N minibatches')
    p.add_argument('--output-dir', default='runs')
    p.add_argument('--suffix', default='')
    p.add_argument('--data-path', default=None, help='folder of data files (else $FUEL_DATA_PATH)')
    p.add_argument('--resume_file', '--resume-file', dest='resume_file', default=None)
    p.add_argument('--plot_before_training', '--plot-before-training', action='store_true')
    return p


def resolve(args):
    """Fill defaults, or take the run-defining settings from the checkpoint on resume."""
    checkpoint = None
    if args.resume_file:
        try:
            checkpoint = training.load_checkpoint(args.resume_file)
        except ValueError as e:
            util.fail(str(e))
        saved = checkpoint['config']['args']
        for key in RUN_KEYS:
            setattr(args, key, saved[key])
        print('Resuming {} from {} ({} minibatches done).'.format(
            args.dataset, args.resume_file, checkpoint['status']['iterations_done']))
    if args.dataset not in experiments.MODEL_ARGS:
        util.fail('unknown --dataset {!r}; choose one of: {}'.format(
            args.dataset, ', '.join(experiments.MODEL_ARGS)))
    if not isinstance(args.model_args, dict):
        try:
            args.model_args = parse_model_args(args.model_args)
            experiments.model_args(args.dataset, args.fidelity, args.model_args)
        except (ValueError, KeyError) as e:
            util.fail(str(e).strip('"\''))
    defaults = experiments.RUN_DEFAULTS[args.dataset]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_epochs is not None and args.max_batches == defaults['max_batches']:
        args.max_batches = None
    return checkpoint


def build_extensions(args, exp, run_dir, lr):
    every = args.ext_every_n
    ckpt = os.path.join(run_dir, 'checkpoint.pkl')
    hint = 'python train.py --resume_file {}'.format(shlex.quote(ckpt))
    max_s = args.max_minutes * 60 if args.max_minutes else None
    return [
        E.FinishAfter(args.max_batches, args.max_epochs, max_s),
        E.NonFiniteGuard(),
        E.LearningRateSchedule.for_run(lr, args.lr, args.lr_final, args.max_batches),
        E.HeldOutBound(exp, every_n_batches=every, before_training=args.plot_before_training),
        E.Plots(exp, run_dir, every_n_batches=every),
        E.SamplePlots(exp, run_dir, every_n_batches=every),
        E.Printing(every),
        E.JSONLog(os.path.join(run_dir, 'log.jsonl')),
        E.Checkpoint(ckpt, every_n_batches=every, resume_hint=hint),
    ]


def main(argv=None):
    args = build_parser().parse_args(argv)
    checkpoint = resolve(args)
    if checkpoint:
        run_dir = os.path.dirname(os.path.abspath(args.resume_file))
    else:
        os.makedirs(args.output_dir, exist_ok=True)
        run_dir = util.make_run_dir(args.output_dir, 'diffusion', args.dataset, args.suffix)
    print('Run directory: {}'.format(run_dir), flush=True)

    config = experiments.model_args(args.dataset, args.fidelity, args.model_args)
    try:
        exp = experiments.Experiment(args.dataset, config, args.seed, args.data_path)
    except ValueError as e:  # a missing data file (datasets.DataMissing) or a bad --model-args value
        util.fail(str(e))
    step_rule = training.STEP_RULES[args.optimizer](args.lr)
    print('Compiling the training function (the first run takes a minute or two) ...', flush=True)
    step, n_nonfinite = exp.compile_train(step_rule)
    shared = {p.name: p for p in exp.params + step_rule.state}
    shared.update({'optimizer.lr': step_rule.lr, 'optimizer.n_nonfinite': n_nonfinite})

    import streams
    stream = streams.DataStream(streams.ArrayDataset(features=exp.train_x),
                                streams.ShuffledScheme(len(exp.train_x), args.batch_size, args.seed))
    run_config = {'args': {k: v for k, v in vars(args).items()}, 'model': config,
                  'results': {'dataset': args.dataset, 'fidelity': args.fidelity, 'T': config['T']}}
    loop = training.MainLoop(step, stream, shared, build_extensions(args, exp, run_dir, step_rule.lr),
                             args.seed, run_config)
    if checkpoint:
        loop.load_state_dict(checkpoint)
        loop.status['resumed_from'] = loop.status['iterations_done']
    loop.run()
    if loop.interrupted:
        sys.exit(130)
    results = E.final_evaluation(loop, exp, run_dir)
    print('Held-out bound: K = {K_bits:.3f} +- {stderr_bits:.3f} {unit}, K - L_null = '
          '{K_minus_Lnull_bits:.3f} (n_eval {n_eval}, {n_draws} draws each)'.format(**results))
    references = [('paper', 'paper_K_bits'), ('exact log likelihood', 'exact_ll_bits'),
                  ('true log likelihood', 'true_ll_bits'), ('best factorised kernel', 'factorised_optimum_K_bits')]
    print('Compare: ' + ', '.join('{} {:.3f}'.format(name, results[key]) for name, key in references if key in results))
    print('Results written to {}'.format(os.path.join(run_dir, 'results.json')))
    return results


if __name__ == '__main__':
    main()
