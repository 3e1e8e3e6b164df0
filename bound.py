"""The bound K (Eq. 14) on held-out data: one estimator for the training monitor, the
final evaluation of train.py and evaluate.py.

Each draw is -(T - 1) KL(q(x^{t-1}|x^t,x^0) || p(x^{t-1}|x^t)) + the edge entropies, at a
step t in 2..T and noise drawn for it: the Monte Carlo estimate of Eq. 14 with t uniform
(Sec. 2.4). The factor is the paper's T - 1 whatever the preset; the released code's T
(docs/paper_and_code.md, section 3, item 11) is a bias, reported separately (with_kl_multiplier).

The steps are stratified twice. Each example's n_t draws are evenly spaced over 2..T from
a random offset, and the offsets of the examples are consecutive random permutations of
the T - 1 steps, so over the set every t is used equally often (to within one). Every
single draw is still uniform on 2..T, so each example's average is an unbiased estimate
of its K(x^0); with n_t = T - 1 every example visits every step once.

Optionally (t_mix > 0) the steps are drawn from a proposal that visits the first steps
more often, q(t) = (1 - t_mix) / (T - 1) + t_mix (1 / (t - 1)) / H_{T-1}, the same way (each
draw is a quantile of q, evenly spaced per example, balanced over the set), and each KL
is weighted by 1 / ((T - 1) q(t)): the same expectation. For images the cost of a step
falls steeply with t ((T - 1) KL is hundreds of bits per pixel at t = 2 for a network
in training, under one at t = 500), so uniform draws give standard errors of tenths of a
bit per pixel, and this proposal brings them down by an order of magnitude.

The work is split into units (one draw of one minibatch), each with its own generator
(seed, unit), so the result depends on the seed and the batch size only: not on the
order the units are done in, nor on which process does them.
"""
import backend  # noqa: F401  (configures Theano before it is imported)

import json
import os
import sys
import zipfile

import numpy as np
import theano

import meter
import parallel
import rundirs
import util

floatX = theano.config.floatX


def t_proposal(T_steps, t_mix):
    """q(t) for t = 2..T (see the module's doc): uniform for t_mix = 0."""
    harmonic = 1.0 / np.arange(1, T_steps)
    return (1 - t_mix) / (T_steps - 1) + t_mix * harmonic / harmonic.sum()


def stratified_steps(n, n_t, T_steps, rng, t_mix=0.0):
    """Steps t and their importance weights 1 / ((T - 1) q(t)), (n_t, n), and the offsets:
    draw i of example j is at the quantile ((u_j + v_j + i (T - 1) / n_t) mod (T - 1)) / (T - 1)
    of q, with the offsets u_j consecutive random permutations of 0..T-2 and v_j uniform on
    [0, 1) (see the module's doc). For uniform q (t_mix = 0) no v_j is needed (the u_j are
    uniform already): t = 2 + (u_j + floor(i (T - 1) / n_t)) mod (T - 1), every weight 1."""
    n_steps = T_steps - 1
    n_blocks = -(-n // n_steps)
    offsets = np.concatenate([rng.permutation(n_steps) for _ in range(n_blocks)])[:n]
    positions = (offsets[None, :] + np.arange(n_t)[:, None] * n_steps // n_t) % n_steps  # integers
    if not t_mix:
        return (2 + positions).astype('int64'), np.ones(positions.shape), offsets
    q = t_proposal(T_steps, t_mix)  # the quantiles of q at the positions, jittered within their unit
    index = np.minimum(np.searchsorted(np.cumsum(q) * n_steps, positions + rng.random(n)[None, :], side='right'),
                       n_steps - 1)
    return (2 + index).astype('int64'), 1.0 / (n_steps * q[index]), offsets


def stratified_stderr(values, offsets, n_steps, per_bin=20):
    """Standard error of the mean of per-example values whose examples are stratified by
    their step offsets: sqrt(sum_b n_b s_b^2) / n over bins b of adjacent offsets (about
    `per_bin` examples each; s_b^2 the variance within bin b). With one draw per example
    this removes the spread between steps t, by far the largest part of the plain
    standard error; with every step visited it is close to the plain one."""
    n = len(values)
    n_bins = max(1, min(n_steps, n // per_bin))
    bins = offsets * n_bins // n_steps
    total = 0.0
    for b in range(n_bins):
        v = values[bins == b]
        if len(v) > 1:
            total += len(v) * v.var(ddof=1)
    return float(np.sqrt(total) / n)


def compile_terms(exp):
    """(x0, t, noise) -> (summed KL at step t, edge entropies), per example, nats."""
    d = exp.diffusion
    return theano.function([exp.x0, exp.t, exp.noise],
                           [d.kl_term(exp.x0, exp.t, exp.noise), d.edge_entropies(exp.x0)])


def heldout_bound(exp, x, n_t=1, seed=0, fn=None, batch_size=None, partial_path=None, progress=False, comm=None):
    """K (Eq. 14) on every example of x, n_t stratified draws of (t, noise) each, t from the
    experiment's proposal (exp.t_mix, see the module's doc).

    fn: compile_terms(exp) (compiled here if None). With partial_path the running sums are
    saved there after every unit and picked up by a new call with the same settings (a
    long evaluation survives interruption). comm (parallel.world()): each process does
    every comm.size-th unit and the sums are added; the result is the same (up to the
    order of the sums), and so is each process's partial file, named by its rank.

    Returns K_bits and K_minus_Lnull_bits (per data vector; per pixel for images, channels
    together), stderr_bits (stratified_stderr of the per-example averages), n_eval, n_t,
    kl_factor ('T-1'), edge_bits, kl_bits (the mean summed KL per draw, so that
    K_bits = edge_bits - (T - 1) kl_bits), kl_bits_by_t ((T - 1) times the mean KL at each
    t = 2..T: what a draw at step t costs) with count_by_t, t_mix, and unit.
    """
    if fn is None:
        with meter.waiting('compiling the bound', sys.stderr, enabled=progress):
            fn = compile_terms(exp)
    comm = comm or parallel.SingleProcess()
    T_steps, n = exp.diffusion.T_steps, len(x)
    batch_size = batch_size or exp.eval_batch_size
    steps, weights, offsets = stratified_steps(n, n_t, T_steps, np.random.default_rng([seed, 1]), exp.t_mix)
    starts = list(range(0, n, batch_size))
    units = parallel.rank_units(list(enumerate((i, s) for i in range(n_t) for s in starts)), comm)
    params_sum = sum(float(np.abs(p.get_value()).sum()) for p in exp.params)  # which checkpoint
    signature = np.array(json.dumps([int(n), int(n_t), int(seed), int(batch_size), int(T_steps), float(exp.t_mix),
                                     params_sum, comm.rank, comm.size]))  # a string: no pickle whatever the seed
    partial_path = partial_path and partial_file(partial_path, comm)
    state = {'kl_sum': np.zeros(n), 'edge_sum': np.zeros(n), 'kl_by_t': np.zeros(T_steps + 1),
             'kl2_by_t': np.zeros(T_steps + 1), 'count_by_t': np.zeros(T_steps + 1), 'units_done': 0}
    if partial_path and os.path.exists(partial_path):
        state = load_partial(partial_path, signature) or state
    bar = meter.bar(len(units), 'bound K', initial=state['units_done'], enabled=progress, leave=False)
    for done in range(state['units_done'], len(units)):
        u, (i, s) = units[done]
        t = steps[i, s:s + batch_size]
        x0, _, noise = exp.draw_inputs(np.random.default_rng([seed, 2, u]), x[s:s + batch_size],
                                       evaluation=True, t=t)
        kl, edges = (np.asarray(v, np.float64) for v in fn(x0, t, noise))
        state['kl_sum'][s:s + batch_size] += weights[i, s:s + batch_size] * kl
        state['edge_sum'][s:s + batch_size] += edges
        np.add.at(state['kl_by_t'], t, kl)
        np.add.at(state['kl2_by_t'], t, np.square(kl))
        np.add.at(state['count_by_t'], t, 1)
        state['units_done'] = done + 1
        if partial_path:
            save_npz(partial_path, dict(state, signature=signature))
        bar.update(1)
    bar.close()
    sums = {k: comm.allreduce_sum(state[k]) for k in ('kl_sum', 'edge_sum', 'kl_by_t', 'kl2_by_t', 'count_by_t')}
    return result_from_sums(exp, sums, n_t, offsets, exp.n_pixels(x))


def result_from_sums(exp, state, n_t, offsets, n_pixels):
    """heldout_bound's result from its sums; K per data vector is divided by n_pixels."""
    T_steps = exp.diffusion.T_steps
    to_bits = 1.0 / (util.LOG2 * n_pixels)
    kl = state['kl_sum'] / n_t * to_bits
    edges = state['edge_sum'] / n_t * to_bits
    per_example = edges - (T_steps - 1) * kl
    counts = np.maximum(state['count_by_t'][2:], 1)
    cost_by_t = (T_steps - 1) * state['kl_by_t'][2:] / counts * to_bits
    cost2_by_t = (T_steps - 1) ** 2 * state['kl2_by_t'][2:] / counts * to_bits ** 2
    K_bits = float(per_example.mean())
    return {'K_bits': K_bits, 'K_minus_Lnull_bits': K_bits - exp.null_bits,
            'stderr_bits': stratified_stderr(per_example, offsets, T_steps - 1),
            'n_eval': int(len(per_example)), 'n_t': int(n_t), 'kl_factor': 'T-1',
            'edge_bits': float(edges.mean()), 'kl_bits': float(kl.mean()),
            'kl_bits_by_t': cost_by_t.tolist(), 'count_by_t': state['count_by_t'][2:].astype(int).tolist(),
            'unit': exp.unit, 't_per_example': 'stratified', 't_mix': exp.t_mix,
            'training_estimate_std_bits': training_estimate_spread(cost_by_t, cost2_by_t)}


def estimate_std(cost_by_t, cost2_by_t, q):
    """Standard deviation of the one-draw estimate w(t) c_t of mean_t c_t with t ~ q over
    2..T, from the mean c_t and second moment of each step's cost (T - 1) KL_t:
    sqrt(sum_t q_t w_t^2 E[c_t^2] - (mean_t c_t)^2)."""
    w = importance_weights(q, np.arange(2, len(q) + 2))
    return float(np.sqrt(max(np.sum(q * w ** 2 * cost2_by_t) - np.mean(cost_by_t) ** 2, 0.0)))


def training_estimate_spread(cost_by_t, cost2_by_t, shares=(0.5, 0.1, 0.01)):
    """How noisy one example's training estimate of K is under each train_t (bits): uniform
    steps; the harmonic proposal and the proposal proportional to each step's root mean
    square cost (what the adaptive sampler learns), each with a uniform share u. Measured
    at the evaluated parameters; steps never drawn count as costing nothing."""
    n_steps = len(cost_by_t)
    uniform = np.full(n_steps, 1.0 / n_steps)
    rms = np.sqrt(cost2_by_t)
    out = {'uniform': estimate_std(cost_by_t, cost2_by_t, uniform)}
    for u in shares:
        out['harmonic u={}'.format(u)] = estimate_std(cost_by_t, cost2_by_t, t_proposal(n_steps + 1, 1 - u))
        if rms.sum() > 0:
            out['adaptive u={}'.format(u)] = estimate_std(cost_by_t, cost2_by_t,
                                                          (1 - u) * rms / rms.sum() + u * uniform)
    return out


def partial_file(path, comm):
    """The file of this process's partial sums: `path` itself for one process."""
    return path if comm.size == 1 else '{}.rank{}of{}.npz'.format(path[:-len('.npz')], comm.rank, comm.size)


def with_kl_multiplier(result, multiplier):
    """K in bits had the KL sample been multiplied by `multiplier` instead of T - 1 (the released
    code's kl_factor 'T', multiplier T: docs/paper_and_code.md, section 3, item 11)."""
    return result['edge_bits'] - multiplier * result['kl_bits']


def load_partial(path, signature):
    """The sums saved in the partial file `path` when its signature is `signature`, else
    None (other settings, or a file of an older version or damaged: it is started again)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if saved['signature'].dtype.kind != 'U' or str(saved['signature']) != str(signature):
                return None
            return {k: saved[k] if k != 'units_done' else int(saved[k])
                    for k in ('kl_sum', 'edge_sum', 'kl_by_t', 'kl2_by_t', 'count_by_t', 'units_done')}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def save_npz(path, arrays):
    """np.savez, atomically (a crash mid-write leaves the previous file)."""
    tmp = path + '.tmp.npz'
    with rundirs.naming(path):
        np.savez(tmp, **arrays)
        os.replace(tmp, path)


# ---------------------------------------------------------------- steps of the training estimate
#
# Training minimises -K estimated from one step t per example (Eq. 14). Drawing t from a
# proposal q(t) instead of uniformly, and weighting the KL of step t by
# w(t) = 1 / ((T - 1) q(t)), keeps the estimate of K and of its gradient unbiased while
# drawing the costly first steps more often: their KL is hundreds of times the later
# steps' for a network in training, so with uniform steps they dominate the variance.

def importance_weights(q, t):
    """w(t) = 1 / ((T - 1) q(t)) for steps t (array, 2..T) under q over 2..T."""
    return 1.0 / (len(q) * q[np.asarray(t) - 2])


class UniformSteps:
    """t uniform on 2..T, weight 1: the paper's and the released code's training estimate
    (the diffusion's own draw_t, so runs of the presets keep their numbers)."""

    weighted = False
    state = ()

    def __init__(self, diffusion):
        self.diffusion = diffusion

    def draw(self, rng, n, per_minibatch=False):
        """(t, weights) for n examples; one t for all if per_minibatch (released code)."""
        t = self.diffusion.draw_t(rng, 1 if per_minibatch else n)
        return (np.repeat(t, n) if per_minibatch else t), np.ones(n, floatX)

    def record(self, t, losses):
        """Nothing to learn from the losses."""


class ProposalSteps(UniformSteps):
    """t from a fixed proposal q over 2..T, with importance weights w(t)."""

    weighted = True

    def __init__(self, diffusion, q):
        super().__init__(diffusion)
        self.q = q

    def proposal(self):
        return self.q

    def draw(self, rng, n, per_minibatch=False):
        q = self.proposal()
        t = 2 + rng.choice(len(q), size=1 if per_minibatch else n, p=q)
        t = np.repeat(t, n) if per_minibatch else t
        return t.astype('int64'), importance_weights(q, t).astype(floatX)


class HarmonicSteps(ProposalSteps):
    """q(t) = (1 - u) / (T - 1) + u (1 / (t - 1)) / H_{T-1}: the held-out bound's proposal
    (t_proposal), a share u uniform."""

    def __init__(self, diffusion, uniform_share):
        super().__init__(diffusion, t_proposal(diffusion.T_steps, 1 - uniform_share))


class AdaptiveSteps(ProposalSteps):
    """q(t) proportional to the root mean square of the last `history` losses (the summed
    KL of Eq. 14 at step t) recorded at each t, mixed with a uniform share u; uniform until
    every t has its `history` losses. The variance of the weighted estimate is smallest
    for q(t) proportional to sqrt(E[KL_t^2]); the recent losses estimate it as training
    moves. (After improved-diffusion's loss-second-moment sampler, Nichol & Dhariwal 2021.)

    Its state, the losses and their counts, lives in shared variables so that checkpoints
    carry it and a resumed run draws the same steps.
    """

    def __init__(self, diffusion, uniform_share, history):
        n_steps = diffusion.T_steps - 1
        super().__init__(diffusion, np.full(n_steps, 1.0 / n_steps))
        self.uniform_share, self.history = uniform_share, history
        self.losses = theano.shared(np.zeros((n_steps, history)), name='train_t.losses')
        self.count = theano.shared(np.zeros(n_steps, 'int64'), name='train_t.count')
        self.state = (self.losses, self.count)

    def proposal(self):
        count = self.count.get_value()
        if count.min() < self.history:
            return self.q
        rms = np.sqrt(np.mean(np.square(self.losses.get_value()), axis=1))
        return (1 - self.uniform_share) * rms / rms.sum() + self.uniform_share * self.q

    def record(self, t, losses):
        """Keep each example's loss in the ring of its step, in minibatch order."""
        table, count = self.losses.get_value(), self.count.get_value()
        for step, loss in zip(np.asarray(t) - 2, np.asarray(losses, np.float64)):
            table[step, count[step] % self.history] = loss
            count[step] += 1
        self.losses.set_value(table)
        self.count.set_value(count)



def training_steps(diffusion, train_t='uniform', uniform_share=0.5, history=10):
    """The step sampler of a training run: --model-args train_t (and train_t_uniform,
    train_t_history). 'adaptive' and 'gradient' are the same sampler, fed each example's
    KL or the norm of its gradient with respect to the network's outputs
    (experiments.Experiment.training_terms)."""
    if train_t == 'uniform':
        return UniformSteps(diffusion)
    if train_t == 'harmonic':
        return HarmonicSteps(diffusion, uniform_share)
    return AdaptiveSteps(diffusion, uniform_share, history)
