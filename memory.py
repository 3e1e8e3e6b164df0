"""What a run costs, memory and time, estimated from its settings before anything is
allocated or compiled: the one-line refusal of a setting too large for this machine, and the
one-line notice of a run that will be long.

The estimate is arithmetic on the settings, not a trial allocation: the largest arrays
of the data set, the network with its optimiser state and one minibatch's activations,
and the evaluation. It is meant to stay below what a run really takes (it leaves out
Python, Theano and most temporaries: the 8x8 digits with the code preset need 28 MiB by
this count and peaked at 271 MiB), so that it refuses absurd values (T=1000000000000,
n_hidden=1000000000) and not a run that would fit.
"""
import math

import datasets
import presets
import backend

F32, F64 = 4, 8
UNIT_BYTES = 200  # a Python tuple of the bound's list of work units (bound.heldout_bound)
# examples in the image files (train and test together), before they are loaded
IMAGE_EXAMPLES = {'MNIST': 70000, 'CIFAR10': 60000, 'digits': 1797, 'mnist5k': 5000, 'deadleaves': datasets.DEADLEAVES_COUNT}
IMAGE_CHANNELS = {'CIFAR10': 3}
IMAGE_SIDE = {'MNIST': 28, 'CIFAR10': 32, 'digits': 8, 'mnist5k': 28}
BUILTIN_TEXTURE_PIXELS = 3 * 512 * 512  # bark without a folder: scikit-image's three textures


def available_bytes():
    """Memory this process can have now: MemAvailable plus free swap (Linux), within the
    cgroup's limit when there is one; None where that cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:]}
    except (OSError, ValueError, IndexError):
        return None
    free = info.get('MemAvailable', info.get('MemFree'))
    if free is None:
        return None
    free += info.get('SwapFree', 0)
    for limit, usage in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                         ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                          '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
        try:
            with open(limit) as a, open(usage) as b:
                free = min(free, int(a.read()) - int(b.read()))
        except (OSError, ValueError):  # no such cgroup file, or 'max' (no limit)
            continue
    return free


def readable(n_bytes):
    """'7.3 TiB', '512 MiB'."""
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        if n_bytes < 1024 or unit == 'PiB':
            return '{:.3g} {}'.format(n_bytes, unit)
        n_bytes /= 1024


# ---------------------------------------------------------------- what a run holds

def bound_bytes(n, n_t, T_steps, batch_size):
    """The held-out bound of n examples with n_t draws each (bound.heldout_bound): the steps,
    weights and offsets of every draw and the list of work units."""
    return n * n_t * F64 * 3 + n_t * math.ceil(n / batch_size) * UNIT_BYTES + T_steps * F64 * 4


def toy_bytes(dataset, a, batch_size):
    """Swiss roll or heartbeat: data, network, minibatch and evaluation."""
    T_steps, n = a['T'], a['n_train'] + a['n_eval']
    batch_size = min(batch_size, a['n_train'])  # a minibatch holds at most the training set
    dims = 2 if dataset == 'swissroll' else datasets.HEARTBEAT_LENGTH
    data = n * dims * F64 * 2  # made in float64, kept in float32
    if dataset == 'swissroll':
        features = a['n_hidden'] * (1, 3, 6)[('constant', 'linear', 'quadratic').index(a['expert'])]
        params = features * T_steps * 4 + a['n_basis']
        activations = batch_size * (T_steps * 4 + features)  # every step's read-out, then one picked
        setup = a['n_hidden'] ** 2 * F64 + a['n_basis'] * T_steps * F64
    else:
        per_step = a['n_basis'] if a['readout'] == 'basis' else T_steps
        params = a['n_hidden'] ** 2 * (a['n_layers'] - 1) + a['n_hidden'] * dims * (1 + per_step)
        activations = batch_size * (dims * per_step + a['n_hidden'] * a['n_layers'])
        setup = (a['n_basis'] * T_steps * F64 if a['readout'] == 'basis' else 0)
    final = a.get('n_final_eval') or a['n_eval']
    evaluation = bound_bytes(final, T_steps - 1, T_steps, 2000) + 2000 * activations / max(batch_size, 1)
    return data + setup + params * F32 * 4 + activations * F32 * 2 + evaluation


def image_shape(dataset, a):
    """(examples, channels, side) of an image data set, before it is loaded."""
    if dataset == 'bark':
        side = a['patch']
        return max(1, BUILTIN_TEXTURE_PIXELS // side ** 2), 1, side
    if dataset == 'folder':
        return len(datasets.folder_image_paths(a['folder'])), a['channels'], a['image_size']
    side = a['image_size'] if dataset == 'deadleaves' else IMAGE_SIDE[dataset]
    return IMAGE_EXAMPLES[dataset], IMAGE_CHANNELS.get(dataset, 1), side


def image_bytes(dataset, a, batch_size):
    """Image data sets: the uint8 images, the network, a minibatch, and the bound's."""
    n, C, side = image_shape(dataset, a)
    batch_size = min(batch_size, n)
    data = n * C * side ** 2 + (side ** 2 * 300 if dataset == 'deadleaves' else 0)  # + one image being made
    pixels, train_pixels = side ** 2, (a['crop'] or side) ** 2
    J, hidden, layers = a['n_temporal_basis'], a['n_hidden_conv'], a['n_layers_conv']
    params = (C + hidden * layers) * hidden * 9 * a['n_scales'] if a['conv_path'] else 0
    per_pixel = (hidden * layers * 2 if a['conv_path'] else 0) + a['n_hidden_dense_upper'] * a['n_layers_dense_upper']
    largest = 0  # the largest weight matrix, made in float64 (orthogonal initialisation)
    dense = 0
    if a['dense_path']:
        depth = layers if a['dense_depth_from_conv'] else a['n_layers_dense_lower']
        lower, out = a['n_hidden_dense_lower'], a['n_hidden_dense_lower_output']
        params += C * pixels * lower + lower ** 2 * max(depth - 2, 0) + lower * out * pixels
        largest = max(C * pixels, out * pixels) * lower
        dense = lower * depth
        per_pixel += out
    params += a['n_hidden_dense_upper'] ** 2 * a['n_layers_dense_upper'] + a['n_hidden_dense_upper'] * C * 2 * J

    def example(p):  # the floats of one example's activations on p pixels
        return p * (per_pixel + C * 4) + dense
    minibatch = batch_size * example(train_pixels) * F32 * 2
    evaluation = 100 * example(pixels) * F32 + bound_bytes(n // 10, 20, a['T'], 100)
    return data + params * F32 * 4 + largest * F64 * 2 + minibatch + evaluation + J * a['T'] * F64 * 2


def training_bytes(dataset, args, batch_size):
    """The memory a training run of `dataset` with model arguments `args` needs, bytes."""
    if dataset in presets.IMAGES:
        return image_bytes(dataset, args, batch_size)
    return toy_bytes(dataset, args, batch_size)


def evaluation_bytes(n_examples, dims, T_steps, n_t, batch_size, iw_k, iw_n, parzen_samples):
    """evaluate.py's own arrays: the bound's draws, the importance weights (max(iw_k) forward
    trajectories per example) and the Parzen samples with their distance chunks."""
    k = max(iw_k, default=0)
    weights = iw_n * k * F64 + k * dims * F64 * 4
    parzen = parzen_samples * dims * F64 * 2 + 100 * parzen_samples * F64 * 3
    return bound_bytes(n_examples, n_t, T_steps, batch_size) + weights + parzen


# ---------------------------------------------------------------- the refusal

def too_large(estimate, settings, defaults, flag_of, processes=1, whole='this run'):
    """None when estimate(settings) times `processes` (the processes on this machine) fits
    in the memory available now; else one line naming the setting that takes it over: of
    those that differ from `defaults`, the one whose default value shrinks the estimate most.
    flag_of(key) -> how the user wrote the setting ('--model-args T=...'); `whole` is named
    when every setting has its default."""
    available = available_bytes()
    need = estimate(settings) * processes
    if available is None or need <= available:
        return None
    changed = [k for k in settings if k in defaults and settings[k] != defaults[k]]
    culprit = min(changed, key=lambda k: estimate(dict(settings, **{k: defaults[k]})), default=None)
    what = flag_of(culprit) if culprit is not None else whole
    return '{} needs at least {} of memory{}, and this machine has {} available: make it smaller'.format(
        what, readable(need), ' ({} processes)'.format(processes) if processes > 1 else '', readable(available))


def check_training(dataset, fidelity, args, batch_size):
    """One line naming the model argument or --batch-size that makes a training run too
    large for this machine, or None."""
    defaults = dict(presets.model_args(dataset, fidelity, {}), batch_size=presets.RUN_DEFAULTS[dataset]['batch_size'])
    sizes = {k: v for k, v in dict(args, batch_size=batch_size).items()
             if isinstance(v, int) and not isinstance(v, bool)}

    def estimate(s):
        return training_bytes(dataset, dict(args, **s), s['batch_size'])

    def flag_of(key):
        return '--batch-size {}'.format(batch_size) if key == 'batch_size' else \
            '--model-args {}={!r}'.format(key, args[key])
    return too_large(estimate, sizes, defaults, flag_of, backend.launched_processes()[1])


def check_evaluation(flags, defaults, n_examples, dims, T_steps):
    """One line naming the evaluate.py flag (flags: {'n_t', 'batch_size', 'iw_k' (a tuple),
    'iw_n', 'parzen_samples'}) that makes the evaluation too large, or None."""
    def estimate(f):
        return evaluation_bytes(n_examples, dims, T_steps, f['n_t'], f['batch_size'], f['iw_k'], f['iw_n'],
                                f['parzen_samples'])

    def flag_of(key):
        value = flags[key]
        return '--{} {}'.format(key.replace('_', '-'), ','.join(map(str, value)) if key == 'iw_k' else value)
    return too_large(estimate, flags, defaults, flag_of, backend.launched_processes()[1], 'this evaluation')


def check_sampling(n, n_frames, dims):
    """One line naming sampler.py's --n or --frames when the samples (float32 (n, dims)), the
    frames kept (n_frames of them) and their copies in data units are too large, or None."""
    def estimate(s):
        return F32 * s['n'] * dims * (2 * s['n_frames'] + 6)  # state, noise, mean, variance, samples, frames

    def flag_of(key):
        return '--{} {}'.format('n' if key == 'n' else 'frames', n if key == 'n' else n_frames)
    return too_large(estimate, {'n': n, 'n_frames': n_frames}, {'n': 49, 'n_frames': 8}, flag_of,
                     backend.launched_processes()[1], 'this sampling')


# ---------------------------------------------------------------- what a run takes in time

# Seconds per training minibatch at the data set's default batch size (presets.RUN_DEFAULTS),
# one process on this machine (2-core Xeon, AVX-512), the paper preset unless said: README.md's
# table of runs and bench.py. MNIST and CIFAR10: the code preset's networks (the paper's
# MNIST network costs less). deadleaves: the fast preset's long run, one thread (0.36 s with
# two); mnist5k: the fast preset's dense-only network, one thread. bark and folder were not
# timed: dead leaves' network as it was before conv3x3's cache-sized blocks.
STEP_S = {'swissroll': 0.0074, 'heartbeat': 0.0068, 'digits': 0.032, 'deadleaves': 0.40, 'bark': 0.77,
          'folder': 0.60, 'MNIST': 0.50, 'mnist5k': 0.04, 'CIFAR10': 4.1}
FORWARD_SHARE = 1 / 3  # a forward pass of the network: about a third of a training step's work
LONG_S = 10 * 60        # a command that will take longer says so before it starts
ABSURD_S = 365 * 86400  # and one that would take longer than a year is refused


def training_seconds(dataset, batch_size, n_batches):
    """n_batches training minibatches of batch_size examples: STEP_S scaled by the batch size."""
    return n_batches * STEP_S[dataset] * batch_size / presets.RUN_DEFAULTS[dataset]['batch_size']


def forward_seconds(dataset, passes, args, side):
    """`passes` forward passes of one example through the network of model arguments `args`
    (a reverse step, a draw of the bound): FORWARD_SHARE of a training step's time per
    example, times the whole image's pixels over a training crop's (`crop`) for images of
    side `side`."""
    crop = args.get('crop') or side
    return (passes * FORWARD_SHARE * STEP_S[dataset] / presets.RUN_DEFAULTS[dataset]['batch_size']
            * (side / crop) ** 2)


def readable_time(seconds):
    """'40 s', '12 min', '3.2 h', '5.1 days', '230 years'."""
    for unit, size in (('years', 365 * 86400), ('days', 86400), ('h', 3600), ('min', 60)):
        if seconds >= 2 * size:
            return '{:,.{}f} {}'.format(seconds / size, 0 if seconds >= 10 * size else 1, unit)
    return '{:.0f} s'.format(seconds)


def check_time(seconds, what, work, basis):
    """(refusal, notice): one line refusing `what` (the setting that sets the work) when its
    `work` ('training') would take over ABSURD_S, else one line giving the expected time when
    over LONG_S; None for each that does not apply. `basis`: what the estimate rests on."""
    said = '{}: about {} of {} ({})'.format(what, readable_time(seconds), work, basis)
    if seconds > ABSURD_S:
        return said + '; make it smaller', None
    return None, (said if seconds > LONG_S else None)


def check_training_time(dataset, s, args, iterations_done=0, seconds_done=0.0):
    """check_time of the minibatches a run of model arguments `args` plans (settings `s`:
    --max-batches, --max-epochs, --max-minutes), from iterations_done and seconds_done of
    training (a resumed run's) on."""
    n_train = args['n_train'] if dataset not in presets.IMAGES else image_shape(dataset, args)[0] * 9 // 10
    batch_size = min(s['batch_size'], n_train)  # at most the training set (settings.check_batch_size)
    per_epoch = -(-n_train // batch_size)  # about: the image sets' test share varies
    limits = {'--max-batches {}'.format(s['max_batches']): s['max_batches'],
              '--max-epochs {}'.format(s['max_epochs']): s['max_epochs'] and s['max_epochs'] * per_epoch}
    what, planned = min(((k, v) for k, v in limits.items() if v), key=lambda kv: kv[1], default=(None, None))
    seconds = math.inf if planned is None else training_seconds(dataset, batch_size, max(planned - iterations_done, 0))
    basis = '{} s per minibatch of {} measured for {} on one process, scaled to {}'.format(
        STEP_S[dataset], presets.RUN_DEFAULTS[dataset]['batch_size'], dataset, batch_size)
    if s['max_minutes'] and s['max_minutes'] * 60 - seconds_done < seconds:
        what, seconds = '--max-minutes {}'.format(s['max_minutes']), max(s['max_minutes'] * 60 - seconds_done, 0)
        basis = 'the time left of the limit, which counts from the run\'s start'  # no speed needed
    if what is None:
        return None, None
    return check_time(seconds, what, 'training', basis)


def check_sampling_time(exp, n):
    """check_time of sampler.py's n samples of the experiment `exp`, T reverse steps each."""
    dataset, T_steps = exp.dataset, exp.diffusion.T_steps
    basis = '{:,} reverse steps of the network, a third of a training step\'s time per example each'.format(
        n * T_steps)
    seconds = forward_seconds(dataset, n * T_steps, exp.args, exp.test_x.shape[-1])
    return check_time(seconds, '--n {}'.format(n), 'sampling', basis)


def check_evaluation_time(exp, n_examples, n_t, iw_k, iw_n, parzen_samples):
    """check_time of evaluate.py on the experiment `exp`: the bound's n_t draws of each of
    n_examples, the importance weights' max(iw_k) trajectories of T steps for iw_n examples,
    and the Parzen window's samples of T steps; the flag of the largest named."""
    T_steps = exp.diffusion.T_steps
    passes = {'--n-t {}'.format(n_t): n_examples * n_t,
              '--iw-n {} --iw-k {}'.format(iw_n, ','.join(map(str, iw_k))): min(iw_n, n_examples) * max(iw_k, default=0) * T_steps,
              '--parzen-samples {}'.format(parzen_samples): parzen_samples * T_steps}
    what = max(passes, key=passes.get)
    basis = '{:,} forward passes of the network, a third of a training step\'s time per example each'.format(
        sum(passes.values()))
    seconds = forward_seconds(exp.dataset, sum(passes.values()), exp.args, exp.test_x.shape[-1])
    return check_time(seconds, what, 'evaluation', basis)
