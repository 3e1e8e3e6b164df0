"""Performance figures of this machine and of the released code's image networks.

    python bench.py                          # every configuration, a readable report
    python bench.py --config mnist --steps 10 --verbose
    python bench.py --config all --json > bench.json

Measured in one process, after one warm-up call of each function:
- peak: Theano's float32 matrix product (Dot22, 2048^3), the best of several, GFLOP/s;
- the full training step that train.py runs (z-scoring, dequantisation and noise in
  numpy, then network + diffusion bound + RMSProp update) for the released code's MNIST
  defaults (batch 512, 1x28x28), its CIFAR-10 configuration (batch 200, 3x32x32) and
  that configuration with n_scales=3, all with --fidelity code (the released network),
  and the dead-leaves network of --fidelity fast (batch 100, 32x32 crops of 1x64x64, Adam,
  the adaptive proposal of t: the long dead-leaves run's step); the median step, its
  min and max, images per second, and GFLOP/s from the analytic count of the network's
  multiply-adds (forward x 3 for forward + backward) as a fraction of the peak;
- one reverse sampling step for 49 images, and the bound on 1,000 held-out images;
- the process's peak resident memory, and the compile times of the training function:
  cold (a fresh Theano compile directory, in a child process, for one configuration:
  the C code is the same for all of them) and cached (a second compile in this process).
The images are random uint8 stand-ins of the right shape, so no data files are needed.
Other jobs on the machine slow every figure down: run it on an idle machine.

GFLOP/s always counts a direct convolution's multiply-adds (9 per input channel, output
channel and pixel), whatever conv_impl computes: Winograd's fewer multiplies show as a
higher fraction of the peak. --verbose adds the time of each kind of Theano op in a
profiled training step.

Under MPI (`mpiexec -n N python bench.py ...`) the step is train.py's data-parallel one:
the figures are the whole job's (global minibatch, images per second, the peak summed
over the processes), printed by process 0. `--processes 1,2` runs the configuration once
per count (each under mpiexec, the machine's cores shared out as train.py does) and
prints the speed-up against the first.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import theano
import theano.tensor as T

import bound
import experiments
import parallel
import presets
import provenance
import reverse
import settings
import steprules

# name: (data set, --fidelity, --model-args overrides); batch size, learning rate and step rule
# as train.py sets them for the data set and preset (settings.new_run_settings). 'code': the
# released code's network and training choices; deadleaves: the fast preset's fully
# convolutional network on 32x32 crops of 64x64 images, with Adam and the adaptive proposal
# of t, as the long dead-leaves run trains it.
CONFIGS = {'mnist': ('MNIST', 'code', {}), 'cifar': ('CIFAR10', 'code', {}),
           'cifar3': ('CIFAR10', 'code', {'n_scales': 3}), 'deadleaves': ('deadleaves', 'fast', {})}
IMAGE_SHAPES = {'MNIST': (1, 28, 28), 'CIFAR10': (3, 32, 32), 'deadleaves': (1, 64, 64)}  # deadleaves: image_size
PEAK_SIZE, PEAK_REPEATS = 2048, 7
N_SAMPLES, N_BOUND = 49, 1000  # images per reverse step (a 7 x 7 figure); held-out images


# ---------------------------------------------------------------- the machine

def machine():
    """provenance.machine, with the cores this process may use, the load at the start and Theano's
    floatX and openmp."""
    return dict(provenance.machine(), cores_usable=len(os.sched_getaffinity(0)), load_average_1min=os.getloadavg()[0],
                floatX=theano.config.floatX, openmp=theano.config.openmp)


def peak_gflops(size=PEAK_SIZE, repeats=PEAK_REPEATS):
    """Best GFLOP/s of a float32 (size x size) product through Theano, and its op names."""
    rng = np.random.default_rng(0)
    a, b = (theano.shared(rng.standard_normal((size, size)).astype('float32')) for _ in range(2))
    fn = theano.function([], T.dot(a, b))
    fn()
    best = min(timed(fn)[1] for _ in range(repeats))
    ops = sorted({type(node.op).__name__ for node in fn.maker.fgraph.apply_nodes})
    return 2.0 * size ** 3 / best / 1e9, ops


# ---------------------------------------------------------------- the network's arithmetic

def network_flops(exp):
    """Forward multiply-adds of the image network per image, as (layer, shape, FLOPs) rows:
    2 k^2 C_in C_out h w per convolution and scale, 2 n_in n_out per dense layer (times
    H W for the per-pixel layers and the read-out). Element-wise work (biases,
    nonlinearities, pooling, the temporal read-out, the bound) is not counted."""
    net = exp.diffusion.net.net  # TemporalReadout -> ImageNetwork
    _, H, W = (None, exp.crop, exp.crop) if exp.crop else exp.train_x.shape[1:]  # what a training step sees
    rows = []
    for layer in net.conv:
        for s, w in enumerate(layer.W):
            c_out, c_in, k, _ = w.get_value().shape
            h, v = H // 2 ** s, W // 2 ** s
            rows.append(('{} scale {}'.format(layer.name, s), '{}x{}x{}x{} at {}x{}'.format(
                c_out, c_in, k, k, h, v), 2 * k * k * c_in * c_out * h * v))
    for layer in net.dense_lower:
        n_in, n_out = layer.W.get_value().shape
        rows.append((layer.name, '{}x{}'.format(n_in, n_out), 2 * n_in * n_out))
    for layer in net.dense_upper + [net.readout]:
        n_in, n_out = layer.W.get_value().shape
        rows.append((layer.name, '{}x{} per pixel'.format(n_in, n_out), 2 * n_in * n_out * H * W))
    return rows


# ---------------------------------------------------------------- one configuration

def n_params(exp):
    """The number of the network's parameters (with the code preset's untied biases, every
    position of each scale's 'full' convolution output; docs/paper_and_code.md, section 5)."""
    return int(sum(p.get_value().size for p in exp.params))


def stand_in_images(shape, n, seed=0):
    """n random uint8 images (n, C, H, W)."""
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_settings(name, batch=None):
    """train.py's settings of a new run of configuration `name` (settings.new_run_settings):
    data set, fidelity, batch_size, lr, optimizer; batch: another batch size."""
    dataset, fidelity, _ = CONFIGS[name]
    run = settings.new_run_settings({'dataset': dataset, 'fidelity': fidelity, 'batch_size': batch, 'lr': None,
                                     'optimizer': None})
    return {k: run[k] for k in ('dataset', 'fidelity', 'batch_size', 'lr', 'optimizer')}


def build(name, conv_impl=None, batch=None):
    """(Experiment on stand-in images, its run settings, its build time in seconds); conv_impl
    and batch None: the data set's defaults."""
    _, _, overrides = CONFIGS[name]
    run = run_settings(name, batch)
    args = presets.model_args(run['dataset'], run['fidelity'],
                              dict(overrides, **({'conv_impl': conv_impl} if conv_impl else {})))
    train, test = (stand_in_images(IMAGE_SHAPES[run['dataset']], n, seed)
                   for seed, n in enumerate((max(run['batch_size'], N_SAMPLES), N_BOUND)))
    exp, build_s = timed(experiments.from_arrays, run['dataset'], args, 0, train, test)
    return exp, run, build_s


def compile_step(exp, run, comm=None):
    """(train.py's step function with the run's step rule, seconds to compile it)."""
    rule = steprules.step_rule(run['optimizer'], run['lr'], presets.STEP_RULE_ARGS[run['fidelity']])
    (step, _), compile_s = timed(exp.compile_train, rule, comm)
    return step, compile_s


def op_group(op):
    """A readable name for a kind of Theano op: its class, the scalar op of an element-wise
    one, the accumulator of a sum."""
    name = type(op).__name__
    if hasattr(op, 'scalar_op') and name == 'Elemwise':
        return 'Elemwise{{{}}}'.format(type(op.scalar_op).__name__)
    if getattr(op, 'acc_dtype', None):
        return '{}{{acc {}}}'.format(name, op.acc_dtype)
    return name


def op_times(exp, run, n_steps=2):
    """{op group: seconds per step} from Theano's profiler over n_steps training steps (one
    process), the first not counted."""
    batch = run['batch_size']
    theano.config.profile = True
    try:
        step, _ = compile_step(exp, run)
        profile = theano.compile.profiling._atexit_print_list[-1]
    finally:
        theano.config.profile = False
    rng = np.random.default_rng(0)
    for i in range(n_steps + 1):
        if i == 1:
            profile.apply_time.clear()
        step({'features': exp.train_x[rng.choice(len(exp.train_x), batch, replace=False)]},
             np.random.default_rng([0, i]))
    groups = {}
    for node, seconds in profile.apply_time.items():
        groups[op_group(node.op)] = groups.get(op_group(node.op), 0.0) + seconds / n_steps
    return groups


def print_cold_compile(name):
    """Child process of measure_cold_compile: build and compile, print the times as JSON."""
    exp, run, build_s = build(name)
    _, compile_s = compile_step(exp, run)
    print(json.dumps({'build_s': build_s, 'compile_s': compile_s}))


def measure_cold_compile(name):
    """Compile times in a child process whose Theano compile directory starts empty."""
    folder = tempfile.mkdtemp(prefix='bench_theano_')
    env = dict(os.environ, THEANO_FLAGS=os.environ['THEANO_FLAGS'] + ',base_compiledir=' + folder)
    code = 'import bench; bench.print_cold_compile({!r})'.format(name)
    try:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        wall_s = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if out.returncode:
        raise RuntimeError('cold compile of {} failed:\n{}'.format(name, out.stderr[-2000:]))
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return {'config': name, 'compile_cold_s': times['compile_s'], 'build_s': times['build_s'],
            'process_cold_s': wall_s}  # process: Theano's import and its own modules included


def sampling_and_bound_times(exp, name, comm, log):
    """{'reverse_step_49_s', 'bound_per_1000_s'}: one reverse step of N_SAMPLES images, the
    bound on N_BOUND held-out images."""
    rng = np.random.default_rng(1)
    kernel = reverse.compile_reverse_kernel(exp.diffusion, 4)
    xt = rng.standard_normal((N_SAMPLES,) + exp.train_x.shape[1:]).astype('float32')
    t = np.full(N_SAMPLES, exp.args['T'], dtype='int64')
    kernel(xt, t)
    reverse_s = float(np.median([timed(kernel, xt, t)[1] for _ in range(3)]))
    bound_fn = bound.compile_terms(exp)
    bound_fn(*exp.draw_inputs(rng, exp.test_x[:exp.eval_batch_size], evaluation=True))
    _, bound_s = timed(bound.heldout_bound, exp, exp.test_x[:N_BOUND], 1, 0, bound_fn, comm=comm)
    log('{}: reverse step ({} images) {:.3f} s, bound on {} images {:.1f} s'.format(
        name, N_SAMPLES, reverse_s, N_BOUND, bound_s))
    return {'reverse_step_{}_s'.format(N_SAMPLES): reverse_s, 'bound_per_{}_s'.format(N_BOUND): bound_s}


def bench_config(name, n_steps, peak, log, conv_impl=None, comm=None, batch=None, step_only=False):
    comm = comm or parallel.SingleProcess()
    exp, run, build_s = build(name, conv_impl, batch)
    batch = run['batch_size']
    log('{}: built in {:.1f} s, compiling the training step ...'.format(name, build_s))
    _, compile_first_s = compile_step(exp, run, comm)
    step, compile_cached_s = compile_step(exp, run, comm)  # the same graph again: every C module cached
    log('{}: compiled in {:.1f} s (again, cached: {:.1f} s)'.format(name, compile_first_s, compile_cached_s))
    rng = np.random.default_rng(0)
    step_s, step_cpu_s = [], []
    for i in range(n_steps + 1):  # the first is the warm-up
        batch_x = exp.train_x[rng.choice(len(exp.train_x), batch, replace=False)]
        cpu_start = time.process_time()
        _, seconds = timed(step, {'features': batch_x}, np.random.default_rng([0, i]))
        step_s.append(seconds)
        step_cpu_s.append(time.process_time() - cpu_start)
        log('{}: step {} {:.3f} s{}'.format(name, i, seconds, ' (warm-up)' if i == 0 else ''))
    step_s, step_cpu_s = step_s[1:], step_cpu_s[1:]
    flops = network_flops(exp)
    forward = sum(f for _, _, f in flops)
    median = float(np.median(step_s))
    gflops = 3 * forward * batch / median / 1e9
    result = {
        'dataset': exp.dataset, 'fidelity': run['fidelity'], 'optimizer': run['optimizer'],
        'model_args': CONFIGS[name][2], 'crop': exp.crop,
        'conv_impl': exp.args['conv_impl'], 'processes': comm.size,
        'image_shape': list(exp.train_x.shape[1:]), 'batch_size': batch,
        'n_params': n_params(exp),
        'steps_timed': n_steps, 'step_s': step_s, 'step_s_median': median,
        'step_s_min': min(step_s), 'step_s_max': max(step_s),
        # CPU seconds of the process's threads: with one thread, the step's own work, which other
        # jobs sharing its core do not lengthen as they do the wall-clock time
        'step_cpu_s': step_cpu_s, 'step_cpu_s_median': float(np.median(step_cpu_s)),
        'images_per_s': batch / median,
        'forward_gflop_per_image': forward / 1e9,
        'forward_mflop_per_layer': {layer: f / 1e6 for layer, _, f in flops}, 'train_gflop_per_step': 3 * forward * batch / 1e9,
        'gflops_per_s': gflops, 'peak_fraction': gflops / peak,
        'build_s': build_s, 'compile_first_s': compile_first_s, 'compile_cached_s': compile_cached_s,
        # the process's high-water mark: configurations run smallest first
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if not step_only:
        result.update(sampling_and_bound_times(exp, name, comm, log))
    return result, flops, exp


# ---------------------------------------------------------------- report

def print_flops(name, flops, batch):
    total = sum(f for _, _, f in flops)
    print('\n{}: forward multiply-adds per image (x3 for a training step)'.format(name))
    for layer, shape, f in flops:
        print('  {:<22} {:<28} {:10.2f} MFLOP {:5.1f}%'.format(layer, shape, f / 1e6, 100.0 * f / total))
    print('  {:<51} {:10.2f} MFLOP; a step of {} images: {:.1f} GFLOP'.format(
        'total', total / 1e6, batch, 3 * total * batch / 1e9))


def print_op_times(name, groups):
    total = sum(groups.values())
    print('\n{}: time per profiled training step by kind of op (profiling adds overhead)'.format(name))
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:15]:
        print('  {:<40} {:8.3f} s {:5.1f}%'.format(group, seconds, 100 * seconds / total))
    print('  {:<40} {:8.3f} s'.format('total', total))


def run_processes(counts, args):
    """{count: this script's JSON report} from one child job per process count, one after
    the other (count 1 runs without a launcher)."""
    here = os.path.dirname(os.path.abspath(__file__))
    launcher = parallel.mpiexec()
    reports = {}
    for n in counts:
        command = [sys.executable, os.path.join(here, 'bench.py'), '--config', args.config,
                   '--steps', str(args.steps), '--cold-compile', 'none', '--json']
        command += ['--conv-impl', args.conv_impl] if args.conv_impl else []
        command += ['--batch-size', str(args.batch_size)] if args.batch_size else []
        command += ['--step-only'] if args.step_only else []
        if n > 1:
            if launcher is None:
                raise SystemExit('bench.py: --processes needs mpiexec (pip install mpich, or a system MPI)')
            command = [launcher, '-n', str(n)] + command
        env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS')}
        print('running {} process{} ...'.format(n, 'es' if n > 1 else ''), file=sys.stderr, flush=True)
        out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=here)
        if out.returncode:
            raise SystemExit('bench.py with {} processes failed:\n{}'.format(n, out.stderr[-2000:]))
        reports[n] = json.loads(out.stdout)
    return reports


def print_scaling(reports, names):
    first = min(reports)
    print('Processes on this machine ({} cores), each process with cores / processes threads'.format(os.cpu_count()))
    print('{:<8} {:>9} {:>8} {:>9} {:>10} {:>6} {:>9}'.format(
        'config', 'processes', 'threads', 'step s', 'images/s', 'peak', 'speed-up'))
    for name in names:
        for n, report in sorted(reports.items()):
            r = report[name]
            print('{:<8} {:>9} {:>8} {:>9.3f} {:>10.1f} {:>5.0f}% {:>8.2f}x'.format(
                name, n, report['machine']['openblas_threads'], r['step_s_median'], r['images_per_s'],
                100 * r['peak_fraction'], r['images_per_s'] / reports[first][name]['images_per_s']))
    print('(speed-up: images per second against {} process{} on the same cores; the peak is '
          'summed over the processes)'.format(first, 'es' if first > 1 else ''))


def print_report(report):
    m = report['machine']
    print('Machine: {} ({} cores; load average {:.1f} at the start)'.format(
        m['cpu'], m['cores'], m['load_average_1min']))
    print('BLAS: {} (core {}, {} threads; OPENBLAS_CORETYPE={}), Theano openmp={}, floatX={}, '
          'denormals {}'.format(m['blas'], m.get('openblas_core'), m.get('openblas_threads'),
                                m['OPENBLAS_CORETYPE'], m['openmp'], m['floatX'],
                                'flushed' if m.get('denormals_flushed') else 'kept'))
    print('Peak: {:.1f} GFLOP/s (float32 {}^3 product, {}, best of {})'.format(
        report['peak_gflops'], PEAK_SIZE, '/'.join(report['peak_ops']), PEAK_REPEATS))
    print('Networks: random stand-in images; {} process{}'.format(
        report['processes'], 'es' if report['processes'] > 1 else ''))
    header = '{:<10} {:>8} {:>9} {:>6} {:>10} {:>9} {:>15} {:>7} {:>10} {:>8} {:>6} {:>11} {:>11} {:>8} {:>9}'
    print('\n' + header.format('config', 'fidelity', 'conv', 'batch', 'params', 'step s', 'min-max s', 'CPU s', 'images/s',
                               'GFLOP/s', 'peak', 'reverse49 s', 'bound1k s', 'RSS MB', 'compile s'))
    for name in CONFIGS:
        if name in report:
            r = report[name]
            print('{:<10} {:>8} {:>9} {:>6} {:>10,} {:>9.3f} {:>15} {:>7.3f} {:>10.1f} {:>8.1f} {:>5.0f}% {:>11.3f} {:>11.1f} '
                  '{:>8.0f} {:>9.1f}'.format(
                      name, r['fidelity'], r['conv_impl'], r['batch_size'], r['n_params'], r['step_s_median'],
                      '{:.3f}-{:.3f}'.format(r['step_s_min'], r['step_s_max']), r['step_cpu_s_median'], r['images_per_s'],
                      r['gflops_per_s'], 100 * r['peak_fraction'], r.get('reverse_step_49_s', np.nan),
                      r.get('bound_per_1000_s', np.nan), r['peak_rss_mb'], r['compile_cached_s']))
    print('(step s: median of {} steps after a warm-up, min-max over them; CPU s: the median CPU time of '
          'the process\'s threads per step; deadleaves trains on 32x32 crops; '
          'RSS: the process\'s peak so far; compile s: cached)'.format(report['steps']))
    cold = report.get('cold_compile')
    if cold:
        print('Cold compile ({}, empty compile directory): training function {:.1f} s, whole process '
              '{:.1f} s; measured for one configuration only'.format(
                  cold['config'], cold['compile_cold_s'], cold['process_cold_s']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='all', choices=sorted(CONFIGS) + ['all'])
    p.add_argument('--steps', type=int, default=5, help='timed training steps after one warm-up')
    p.add_argument('--cold-compile', default='mnist', choices=sorted(CONFIGS) + ['none'],
                   help='configuration whose compile time from an empty cache is measured')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of the report')
    p.add_argument('--verbose', action='store_true',
                   help='per-step progress, FLOPs per layer and time per kind of op')
    p.add_argument('--conv-impl', choices=('auto', 'corrmm', 'winograd', 'im2col'),
                   help='the convolution (--model-args conv_impl); default: the data sets\' default')
    p.add_argument('--batch-size', type=int, help='the global minibatch (default: the data set\'s)')
    p.add_argument('--step-only', action='store_true',
                   help='time the training step only, not the reverse step and the bound')
    p.add_argument('--processes', help='comma-separated process counts, e.g. 1,2: one job each, compared')
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error('--steps must be at least 1')
    if args.batch_size is not None and args.batch_size < 1:
        p.error('--batch-size must be at least 1')
    names = list(CONFIGS) if args.config == 'all' else [args.config]
    if args.processes:
        try:
            counts = sorted({int(n) for n in args.processes.split(',')})
        except ValueError:
            p.error('--processes takes comma-separated counts, e.g. 1,2')
        if counts[0] < 1:
            p.error('--processes: counts must be at least 1')
        reports = run_processes(counts, args)
        if args.json:
            print(json.dumps({str(n): r for n, r in reports.items()}, indent=2))
        else:
            print_scaling(reports, names)
        return reports
    with parallel.abort_on_error() as comm:
        return measure(args, names, comm)


def measure(args, names, comm):
    """The report of the configurations `names`, printed by the writer."""
    def log(message):
        if args.verbose and comm.is_writer:
            print(message, file=sys.stderr, flush=True)

    report = {'machine': machine(), 'steps': args.steps, 'processes': comm.size}
    peak, report['peak_ops'] = peak_gflops()
    report['peak_gflops'] = float(comm.allreduce_sum(np.array([peak]))[0])  # the processes' cores together
    report['machine'].update(provenance.openblas_info())  # now that Theano has loaded the library
    log('peak {:.1f} GFLOP/s'.format(report['peak_gflops']))
    if args.cold_compile != 'none' and comm.is_writer:
        log('cold compile of {} in a child process ...'.format(args.cold_compile))
        report['cold_compile'] = measure_cold_compile(args.cold_compile)
    for name in names:
        report[name], flops, exp = bench_config(name, args.steps, report['peak_gflops'], log, args.conv_impl,
                                                comm, args.batch_size, args.step_only)
        if args.verbose and comm.size == 1:
            report[name]['op_s_per_step'] = op_times(exp, run_settings(name, args.batch_size))
        if args.verbose and not args.json and comm.is_writer:
            print_flops(name, flops, report[name]['batch_size'])
            if 'op_s_per_step' in report[name]:
                print_op_times(name, report[name]['op_s_per_step'])
        del exp
        gc.collect()
    if not comm.is_writer:
        return report
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return report


if __name__ == '__main__':
    main()
