"""Step rules: RMSProp (the released code's) and Adam, the gradient step with what it does
on a non-finite gradient, and an average of the parameters."""
import backend  # noqa: F401  (configures Theano before it is imported)

import contextlib
import functools

import numpy as np
import theano
import theano.tensor as T

floatX = theano.config.floatX


def shared_scalar(value, name, dtype=floatX):
    return theano.shared(np.asarray(value, dtype=dtype), name=name)


def shared_like(p, suffix):
    return theano.shared(np.zeros_like(p.get_value()), name='{}.{}'.format(p.name, suffix))


class RMSProp:
    """RMSProp as in Blocks, which the released code used (decay 0.9, lr 1e-3).

    ms <- decay ms + (1 - decay) g^2;  step = lr g / sqrt(max(ms, 1 / max_scaling^2)).
    The released training passed max_scaling=1e10 (the code preset does too,
    presets.STEP_RULE_ARGS); the default 1e5 is ours, for the paper preset, whose
    paper trained with SFO instead: steps of parameters whose gradients stay below 1e-5
    are then smaller than lr.
    """

    def __init__(self, learning_rate=1e-3, decay=0.9, max_scaling=1e5):
        self.lr = shared_scalar(learning_rate, 'optimizer.lr')
        self.decay = decay
        self.eps = 1.0 / max_scaling ** 2
        self.state = []

    def steps(self, params, grads):
        """Returns (steps, state_updates) for parameters and their gradients."""
        steps, updates = [], []
        for p, g in zip(params, grads):
            ms = shared_like(p, 'rms')
            self.state.append(ms)
            new_ms = self.decay * ms + (1 - self.decay) * T.sqr(g)
            steps.append(self.lr * g / T.sqrt(T.maximum(new_ms, self.eps)))
            updates.append((ms, new_ms))
        return steps, updates


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; an option, not the paper's choice."""

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr = shared_scalar(learning_rate, 'optimizer.lr')
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.t = shared_scalar(0, 'optimizer.t')
        self.state = [self.t]

    def steps(self, params, grads):
        t = self.t + 1
        scale = self.lr * T.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        steps, updates = [], [(self.t, t)]
        for p, g in zip(params, grads):
            m, v = shared_like(p, 'adam_m'), shared_like(p, 'adam_v')
            self.state += [m, v]
            new_m = self.beta1 * m + (1 - self.beta1) * g
            new_v = self.beta2 * v + (1 - self.beta2) * T.sqr(g)
            steps.append(scale * new_m / (T.sqrt(new_v) + self.eps))
            updates += [(m, new_m), (v, new_v)]
        return steps, updates


STEP_RULES = {'rmsprop': RMSProp, 'adam': Adam}


def step_rule(optimizer, lr, rule_args):
    """The step rule `optimizer` (a key of STEP_RULES) with learning rate lr and the keyword
    arguments rule_args gives it ({optimizer: {key: value}}, presets.STEP_RULE_ARGS of a fidelity)."""
    return STEP_RULES[optimizer](lr, **rule_args.get(optimizer, {}))


def descent_updates(cost, params, step_rule, nonfinite='drop_step', average=None):
    """Gradient-descent updates on `cost` (gradient_updates of its gradients)."""
    return gradient_updates(T.grad(cost, params), params, step_rule, nonfinite, average)


def gradient_updates(grads, params, step_rule, nonfinite='drop_step', average=None):
    """Updates that take one step of `step_rule` along `grads`, and the counter `n_nonfinite`
    (returned) of the steps where some gradient entry was NaN or inf. With `average`
    (ParameterAverage), its averages follow the new parameters.

    nonfinite='drop_step' (ours): such a step is dropped: no parameter, no optimiser state
    and no average changes. 'zero_gradient' (the released code's CompositeRule([RemoveNotFinite(), RMSProp]):
    Blocks' rule first, on the raw gradient, one parameter at a time): a parameter whose
    gradient sums to NaN or inf gets the gradient (1 - scaler) x parameter = 0 (scaler 1)
    instead, so the step rule takes a zero step for it (RMSProp: its running mean square
    decays by the factor `decay`), and every other parameter steps as usual."""
    if nonfinite == 'zero_gradient':
        return zeroed_gradient_updates(grads, params, step_rule, average)
    if nonfinite != 'drop_step':
        raise ValueError("nonfinite must be 'drop_step' or 'zero_gradient', not {!r}".format(nonfinite))
    norm2 = sum(T.sum(T.sqr(g)) for g in grads)
    finite = T.and_(T.neq(T.isnan(norm2), 1), T.neq(T.isinf(norm2), 1))
    steps, state_updates = step_rule.steps(params, grads)
    n_nonfinite = shared_scalar(0, 'optimizer.n_nonfinite', 'int64')
    updates = [(p, T.switch(finite, p - s, p)) for p, s in zip(params, steps)]
    if average is not None:
        updates += average.updates([new for _, new in updates], finite)
    updates += [(v, T.switch(finite, new, v)) for v, new in state_updates]
    updates.append((n_nonfinite, n_nonfinite + T.switch(finite, 0, 1)))
    return updates, n_nonfinite


def zeroed_gradient_updates(grads, params, step_rule, average=None):
    """gradient_updates with nonfinite='zero_gradient'."""
    bad = [T.or_(T.isnan(s), T.isinf(s)) for s in (T.sum(g) for g in grads)]
    grads = [T.switch(b, T.zeros_like(g), g) for b, g in zip(bad, grads)]
    steps, state_updates = step_rule.steps(params, grads)
    n_nonfinite = shared_scalar(0, 'optimizer.n_nonfinite', 'int64')
    updates = [(p, p - s) for p, s in zip(params, steps)]
    if average is not None:
        updates += average.updates([new for _, new in updates], T.constant(1, dtype='int8'))
    updates += state_updates
    updates.append((n_nonfinite, n_nonfinite + T.cast(functools.reduce(T.or_, bad), 'int64')))
    return updates, n_nonfinite


def flat_gradient_step(params, step_rule, nonfinite='drop_step', average=None):
    """(fn, n_nonfinite): fn(g) takes one step along the flat float32 vector g, all
    parameters' gradients one after the other (what data-parallel training adds up over
    processes), and returns the counter of steps with a non-finite gradient (gradient_updates:
    dropped, or the affected parameters' gradients zeroed)."""
    flat = T.vector('flat_gradient')
    sizes = np.cumsum([0] + [p.get_value().size for p in params])
    grads = [flat[a:b].reshape(p.shape) for p, a, b in zip(params, sizes[:-1], sizes[1:])]
    updates, n_nonfinite = gradient_updates(grads, params, step_rule, nonfinite, average)
    return theano.function([flat], n_nonfinite, updates=updates), n_nonfinite


AVERAGE_PREFIX = 'ema/'  # the average of parameter <name> is the shared variable 'ema/<name>'


class ParameterAverage:
    """An exponential moving average of the parameters, for evaluation and sampling (not
    in the paper or the released code; Polyak averaging as diffusion models use it):
    a <- r_n a + (1 - r_n) p after each step taken, with r_n = min(rate, (1 + n) / (10 + n))
    at the n-th step, so that early on the average follows the parameters instead of
    remembering their initial values for 1 / (1 - rate) steps.

    Its values ('ema/<name>') and count ('ema.n') are shared variables that checkpoints
    carry; `swapped()` puts them in the parameters' place for a while.
    """

    def __init__(self, params, rate):
        self.params, self.rate = params, rate
        self.averages = [theano.shared(p.get_value(), name=AVERAGE_PREFIX + p.name) for p in params]
        self.n = shared_scalar(0, 'ema.n', 'int64')
        self.state = self.averages + [self.n]

    def updates(self, new_params, finite):
        n = T.cast(self.n, floatX)
        r = T.minimum(np.float32(self.rate), (1 + n) / (10 + n))
        out = [(a, T.switch(finite, r * a + (1 - r) * p, a)) for a, p in zip(self.averages, new_params)]
        return out + [(self.n, self.n + T.switch(finite, 1, 0))]

    @contextlib.contextmanager
    def swapped(self):
        """The averages in the parameters' place inside the `with` block."""
        current = [p.get_value() for p in self.params]
        for p, a in zip(self.params, self.averages):
            p.set_value(a.get_value())
        try:
            yield
        finally:
            for p, value in zip(self.params, current):
                p.set_value(value)


@contextlib.contextmanager
def averaged(average):
    """ParameterAverage.swapped(), or nothing when there is no average."""
    if average is None:
        yield
    else:
        with average.swapped():
            yield
