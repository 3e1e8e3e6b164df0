"""One session of a training run (what a checkpoint's 'sessions' lists): its directory and
lock, the experiment, the main loop with its extensions, the final bound and results.json;
a signal, a full disk or a run gone non-finite each end in one line saying what was kept."""
import math
import os
import sys
import time

import numpy as np

import bound
import checkpoints
import cli
import estimators
import experiments
import extensions as E
import figures
import mainloop
import memory
import meter
import parallel
import presets
import provenance
import rundirs
import settings
import steprules
import streams


def lr_schedule(s, lr_start, iterations_done, n_train):
    """The learning-rate schedule of a run (extensions.LearningRateSchedule arguments).

    With --lr-final: an exponential decay from the current learning rate to lr_final over
    the minibatches still planned (--max-batches, else --max-epochs x minibatches per
    epoch), then held at lr_final; otherwise the released code's schedule. A new run plans
    from --lr; a resumed run keeps its stored schedule, and is re-planned from its current
    learning rate only when --lr-final is given again with another value. So extending a
    run with a larger --max-batches keeps the planned decay and holds lr_final after it.
    """
    if s['lr_final'] is None:
        return dict(E.RELEASED_SCHEDULE)
    total = s['max_batches'] or s['max_epochs'] * -(-n_train // s['batch_size'])
    return E.exponential_decay(lr_start, s['lr_final'], max(total - iterations_done, 1))


def build_extensions(s, exp, run_dir, lr, plot_before_training, comm, average=None):
    """The extensions of a run: every process stops, schedules and evaluates (collectively);
    the writer process alone prints and writes files. With an average of the parameters,
    the monitor, the figures and the samples are the average's."""
    every = s['ext_every_n']
    max_s = s['max_minutes'] * 60 if s['max_minutes'] else None
    finish = E.FinishAfter(s['max_batches'], s['max_epochs'], max_s, -(-len(exp.train_x) // s['batch_size']))
    everywhere = [finish,
                  E.LearningRateSchedule(lr, **s['lr_schedule']),
                  E.HeldOutBound(exp, every_n_batches=every, before_training=plot_before_training, comm=comm,
                                 average=average),
                  E.NonFiniteGuard()]
    if not comm.is_writer:
        return everywhere
    checkpoint = os.path.join(run_dir, 'checkpoint.npz')
    return everywhere + [
        E.Plots(exp, run_dir, every_n_batches=every, average=average),
        E.SamplePlots(exp, run_dir, every_n_batches=every, average=average),
        E.Printing(every, finish, os.path.join(run_dir, 'progress.csv'), lr),
        E.JSONLog(os.path.join(run_dir, 'log.jsonl')),
        E.Checkpoint(checkpoint, every_n_batches=every, best_path=os.path.join(run_dir, 'best.npz'),
                     resume_hint=settings.resume_command(run_dir)),
    ]


def final_evaluation(loop, exp, run_dir, average=None):
    """The bound on the held-out set (exp.final_examples of it, exp.final_draws stratified
    draws each; estimators.heldout_report: the factor T - 1, and for a network trained on
    crops also held-out crops), the experiment's figures, and RUN_DIR/results.json, which lists
    where a paper-preset run is not the paper (presets.non_paper_choices). With an average
    of the parameters, all of it is the average's, and the bound of the last parameters
    themselves, on the monitor's examples, is beside it (without_ema). The bound is
    computed by every process; the writer alone writes."""
    x = exp.test_x[:exp.final_examples]
    print('The held-out bound on {} examples, {} stratified draws each ...'.format(len(x), exp.final_draws),
          flush=True)
    with steprules.averaged(average):
        r = estimators.heldout_report(exp, x, exp.final_draws, seed=2, comm=loop.comm, progress=loop.comm.is_writer)
    if average is not None:
        raw = bound.heldout_bound(exp, exp.test_x[:exp.n_monitor], exp.monitor_draws, seed=2, comm=loop.comm,
                                  progress=loop.comm.is_writer)
        r['ema'] = average.rate
        r['without_ema'] = {k: raw[k] for k in ('K_bits', 'K_minus_Lnull_bits', 'stderr_bits', 'n_eval', 'n_t')}
    if not loop.comm.is_writer:
        return None
    with steprules.averaged(average):
        figures.experiment_figures(exp, run_dir, seed=loop.status['seed'])
    r.update(exp.reference_values())
    s = loop.status
    out = {'seed': s['seed'], 'iterations': s['iterations_done'], 'epochs': s['epochs_done'],
           'wall_s': round(s['wall_s'], 2), 'resumed_from': s['resumed_from']}
    out.update(loop.config['results'], **r)
    if out['fidelity'] in ('paper', 'fast'):
        out['not_the_paper'] = presets.non_paper_choices(exp.dataset, exp.args, out['fidelity'],
                                                         loop.config['args']['optimizer'])
    out['sessions'] = loop.config['sessions']
    rundirs.write_json(os.path.join(run_dir, 'results.json'), out)
    return out


def print_results(results, run_dir):
    print('Held-out bound: K = {K_bits:.3f} +- {stderr_bits:.3f} {unit}, K - L_null = '
          '{K_minus_Lnull_bits:.3f} (n_eval {n_eval}, {n_t} stratified draws each)'.format(**results))
    if 'crops' in results:
        print('On held-out {crop}x{crop} crops: K = {K_bits:.3f} +- {stderr_bits:.3f}, K - L_null = '
              '{K_minus_Lnull_bits:.3f}'.format(**results['crops']))
    if 'without_ema' in results:
        print('Those are the parameters\' average (ema {}); the last parameters themselves give K = {K_bits:.3f} '
              '+- {stderr_bits:.3f} (n_eval {n_eval}, {n_t} draws each)'.format(results['ema'], **results['without_ema']))
    references = [('paper', 'paper_K_bits'), ('exact log likelihood', 'exact_ll_bits'),
                  ('true log likelihood', 'true_ll_bits'), ('best factorised kernel', 'factorised_optimum_K_bits')]
    known = ['{} {:.3f}'.format(name, results[key]) for name, key in references if key in results]
    if known:
        print('Compare: ' + ', '.join(known))
    print('Results written to {}'.format(os.path.join(run_dir, 'results.json')))


def settings_and_experiment(args):
    """(settings, checkpoint or None, overrides, experiment): everything checked, nothing
    written; a user error is one line and exit 2."""
    given = {k: v for k, v in vars(args).items()
             if k not in ('resume', 'plot_before_training', 'convert_checkpoint', 'overwrite')}
    checkpoint, overrides = None, []
    if args.resume:
        try:
            checkpoint = checkpoints.load_checkpoint(args.resume)
            settings.check_resumable(checkpoint, args.resume)
        except ValueError as e:
            cli.fail(str(e))
        s, overrides = settings.resumed_settings(given, dict(settings.DEFAULTS, **checkpoint['config']['args']),
                                                 presets.checkpoint_model_config(checkpoint))
    else:
        s = settings.new_run_settings(given)
    settings.check_settings(s)
    try:
        config = (settings.resumed_model_config(checkpoint, s) if checkpoint else
                  presets.model_args(s['dataset'], s['fidelity'], s['model_args']))
        too_large = memory.check_training(s['dataset'], s['fidelity'], config, s['batch_size'])
        if too_large:
            cli.fail(too_large)
        done = checkpoint['status'] if checkpoint else {}
        refusal, notice = memory.check_training_time(s['dataset'], s, config, done.get('iterations_done', 0),
                                                     done.get('wall_s', 0.0))
        if refusal:
            cli.fail(refusal)
        if notice:
            print(notice, flush=True)
        exp = experiments.build(s['dataset'], config, s['seed'], s['data_path'])
        settings.check_batch_size(s, len(exp.train_x), args.batch_size is not None and not checkpoint)
        if checkpoint:  # before anything is compiled (the main loop loads them again, with the rest)
            experiments.load_parameters(exp, checkpoint, args.resume)
    except (ValueError, KeyError) as e:  # a bad --model-args value, a missing data file
        cli.fail(str(e).strip('"\''))
    return s, checkpoint, overrides, exp


def resumed_log(run_dir, checkpoint):
    """Check RUN_DIR/log.jsonl before a resume (JSONLog cuts it back to the checkpoint): a
    checkpoint alone in its folder starts a new log, said in one line; a log shorter than
    the checkpoint's records is another run's, one line and exit 2."""
    log, status = os.path.join(run_dir, 'log.jsonl'), checkpoint['status']
    if not os.path.exists(log):
        if status.get('log_bytes') != 0:
            print('No log.jsonl beside the checkpoint: a new one starts at minibatch {} (the records before '
                  'it are not in {}).'.format(status['iterations_done'], run_dir), file=sys.stderr)
        status['log_bytes'] = 0
    elif status.get('log_bytes') and os.path.getsize(log) < status['log_bytes']:
        cli.fail('{} has {} bytes and the checkpoint expects at least {}: it is not this run\'s log; move it '
                  'away to start a new log at minibatch {}'.format(log, os.path.getsize(log), status['log_bytes'],
                                                                  status['iterations_done']))


def run_directory(s, args, checkpoint, overrides, comm):
    """The run's directory: the checkpoint's for a resumed run; else made by the writer."""
    if checkpoint:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        target = os.path.join(run_dir, 'checkpoint.npz')
        if os.path.abspath(args.resume) != target and os.path.exists(target) and not args.overwrite:
            cli.fail('resuming {} would replace {} (and cut log.jsonl back to {} minibatches): add --overwrite, '
                      'or copy it into a folder of its own'.format(args.resume, target,
                                                                 checkpoint['status']['iterations_done']))
        if comm.is_writer:
            resumed_log(run_dir, checkpoint)
        print('Resuming {} from {} ({} minibatches done).'.format(
            s['dataset'], args.resume, checkpoint['status']['iterations_done']))
        for o in overrides:
            print('{flag} {given} replaces the checkpoint\'s {checkpoint!r}'.format(**o))
        return run_dir
    if not comm.is_writer:
        return None
    try:
        os.makedirs(s['output_dir'], exist_ok=True)
        return rundirs.make_run_dir(s['output_dir'], 'diffusion', settings.run_name(s), s['suffix'])
    except OSError as e:
        cli.fail('--output-dir {}: {}'.format(s['output_dir'], e.strerror or e))


def main_loop(s, exp, checkpoint, overrides, step_rule, comm, average=None):
    """The main loop of the run, its state loaded from the checkpoint if there is one, and
    the learning-rate schedule planned (lr_schedule). The checkpoint holds the parameters,
    the optimiser's state, the step sampler's (an adaptive proposal) and the average's, but
    for an average begun at this resume (--model-args ema=RATE on a run without one)."""
    print('Compiling the training function (the first run takes a minute or two) ...', flush=True)
    start = time.time()
    with meter.waiting('compiling the training function'):
        step, n_nonfinite = exp.compile_train(step_rule, comm, average)
    print('Compiled in {:.1f} s.'.format(time.time() - start), flush=True)
    state = exp.params + step_rule.state + list(exp.steps.state) + (average.state if average else [])
    shared = {p.name: p for p in state}
    shared.update({'optimizer.lr': step_rule.lr, 'optimizer.n_nonfinite': n_nonfinite})
    stream = streams.DataStream(streams.ArrayDataset(features=exp.train_x),
                                streams.ShuffledScheme(len(exp.train_x), s['batch_size'], s['seed']))
    previous = checkpoint['config'] if checkpoint else {}
    done = checkpoint['status']['iterations_done'] if checkpoint else 0
    for o in overrides:
        o['iteration'] = done
    session = {'from_iteration': done, 'processes': comm.size, 'mpi': comm.library(),
               'environment': provenance.environment()}
    config = {'args': s, 'model': exp.args, 'overrides': previous.get('overrides', []) + overrides,
              'sessions': previous.get('sessions', []) + [session],
              'results': {'dataset': s['dataset'], 'fidelity': s['fidelity'], 'T': exp.args['T']}}
    loop = mainloop.MainLoop(step, stream, shared, [], s['seed'], config, comm)
    if checkpoint:
        # an average begun at this resume starts as the parameters loaded (settings_and_experiment
        # loaded them before ParameterAverage copied them), its count at 0
        begun = average.state if average and not presets.checkpoint_model_config(checkpoint).get('ema') else []
        try:
            loop.load_state_dict(checkpoint, begun=[v.name for v in begun])
        except ValueError as e:
            cli.fail('the checkpoint does not fit this model: {}'.format(e))
        loop.status['resumed_from'] = done
    flags = {o['flag'] for o in overrides}
    if '--lr' in flags:
        step_rule.lr.set_value(np.asarray(s['lr'], dtype=step_rule.lr.dtype))
    if 'lr_schedule' not in s:  # a new run, or a checkpoint of the old format: the run's plan
        s['lr_schedule'] = lr_schedule(s, s['lr'], 0, len(exp.train_x))
    elif '--lr-final' in flags:  # re-planned from here
        s['lr_schedule'] = lr_schedule(s, float(step_rule.lr.get_value()), done, len(exp.train_x))
    return loop


def lock_run_directory(run_dir, comm):
    """The writer's lock on the run directory (rundirs.RunLock), None on the other processes;
    one line and exit 2 while another process holds it."""
    if not comm.is_writer:
        return None
    lock = rundirs.RunLock(run_dir)
    try:
        previous = lock.acquire()
    except ValueError as e:
        cli.fail(str(e))
    if previous and previous.get('pid') != os.getpid():
        print('{} of process {} on {}, which no longer runs, is taken over.'.format(
            lock.path, previous.get('pid', '?'), previous.get('host', '?')), file=sys.stderr)
    return lock


def kept(run_dir):
    """What a stopped run leaves: 'kept: RUN_DIR/checkpoint.npz (N minibatches); resume
    with: python train.py --resume RUN_DIR', or that there is no checkpoint."""
    path = os.path.join(run_dir, 'checkpoint.npz') if run_dir else None
    try:
        done = checkpoints.load_checkpoint(path)['status']['iterations_done'] if path else None
    except ValueError:
        done = None
    if done is None:
        return 'no checkpoint was written'
    return 'kept: {} ({} minibatches); resume with: {}'.format(path, done, settings.resume_command(run_dir))


def run(args, comm):
    """Set up, train and evaluate; a signal outside the minibatches, an error writing the
    run directory and a run gone non-finite each end in one line saying what was kept."""
    run_dir = lock = None
    try:
        s, checkpoint, overrides, exp = settings_and_experiment(args)
        run_dir = run_directory(s, args, checkpoint, overrides, comm)
        lock = lock_run_directory(run_dir, comm)
        return train_and_evaluate(s, args, checkpoint, overrides, exp, run_dir, comm)
    except mainloop.Interrupted as e:
        if comm.is_writer:
            print('train.py: stopped by {}; {}'.format(e, kept(run_dir)), file=sys.stderr)
        sys.exit(parallel.INTERRUPTED)
    except OSError as e:
        if run_dir is None:
            raise
        cli.fail('cannot write {}: {}; {}'.format(e.filename or run_dir, e.strerror or e, kept(run_dir)))
    finally:
        if lock:
            lock.release()
        if not args.resume and run_dir and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # a new run stopped before it wrote anything


def train_and_evaluate(s, args, checkpoint, overrides, exp, run_dir, comm):
    if comm.size > 1:
        print('{} processes; each takes its share of every minibatch of {}'.format(comm.size, s['batch_size']))
    print('Run directory: {}'.format(run_dir), flush=True)
    step_rule = steprules.step_rule(s['optimizer'], s['lr'], presets.STEP_RULE_ARGS[s['fidelity']])
    average = steprules.ParameterAverage(exp.params, exp.args['ema']) if exp.args.get('ema') else None
    loop = main_loop(s, exp, checkpoint, overrides, step_rule, comm, average)
    loop.extensions = build_extensions(s, exp, run_dir, step_rule.lr, args.plot_before_training, comm, average)
    loop.run()
    if loop.interrupted:  # every process, after the same minibatch
        raise parallel.SharedExit(parallel.INTERRUPTED)
    if loop.nonfinite:
        if comm.is_writer:
            print('train.py: error: the run went non-finite: {}; {} (try a lower --lr than {:g}, or other '
                  '--model-args)'.format(loop.nonfinite, kept(run_dir), s['lr']), file=sys.stderr)
        raise parallel.SharedExit(parallel.NONFINITE)
    results = final_evaluation(loop, exp, run_dir, average)
    if results:
        print_results(results, run_dir)
        if not math.isfinite(results['K_bits']):
            print('train.py: error: the held-out bound is not a number (null in {}): the model gives no finite '
                  'bound; check --model-args and --lr'.format(os.path.join(run_dir, 'results.json')),
                  file=sys.stderr)
            raise parallel.SharedExit(parallel.NONFINITE)  # the writer alone, the others' part done
    return results


def train(args):
    """Train as `args` (train.py's parsed command line) say, one writer process among
    those of an MPI launch."""
    with parallel.abort_on_error() as comm, mainloop.signals_raise():
        if not comm.is_writer:  # one writer: process 0 prints and writes
            sys.stdout = open(os.devnull, 'w')
        return run(args, comm)
