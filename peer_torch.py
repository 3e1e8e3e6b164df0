"""The PyTorch-CPU peer of bench.py: the same image networks, their bare training step timed.

    python -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install -r requirements-peer.txt
    /tmp/peer-venv/bin/python peer_torch.py --config deadleaves --steps 20 --threads 1
    /tmp/peer-venv/bin/python peer_torch.py --config mnist --profile   # torch.profiler's table too

A measurement, not part of the model: nothing imports this file, and PyTorch is installed
only for it (requirements-peer.txt, in a separate environment). Each configuration of
bench.py (name, data set, --fidelity, --model-args) builds the network that
regression.ImageNetwork builds from presets.model_args: the multi-scale convolutions
(pooling, 3x3 'same' convolutions per scale, nearest upsampling, biases tied or untied,
the nonlinearity per scale or after the sum), the dense path, the per-pixel layers and the
read-out through the temporal basis at each example's step t (Appendix D.2.1). The step
is the network's forward pass on a minibatch of standard normal x^t (32x32 crops where the
configuration trains on crops), the loss mean(z^2) of its outputs, the backward pass and the
step rule of train.py (RMSProp, or Adam for --fidelity fast): the bare network, without
the diffusion bound or the input draws of bench.py's step. The forward schedule's
parameters (learn_beta) are not in it.

Printed, as bench.py prints them: the float32 matrix-product peak (a 2048^3 torch.mm,
the best of 7), the median step over --steps after two warm-up steps, its min and max,
images per second, GFLOP/s from the same count of multiply-adds and its fraction of the
peak. Set the threads (--threads) and the instruction set (ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) as docs/performance.md says.
"""
import argparse
import json
import os
import time

import numpy as np

import presets

# bench.CONFIGS and bench.IMAGE_SHAPES (bench.py needs Theano, this file PyTorch)
CONFIGS = {'mnist': ('MNIST', 'code', {}), 'cifar': ('CIFAR10', 'code', {}),
           'cifar3': ('CIFAR10', 'code', {'n_scales': 3}), 'deadleaves': ('deadleaves', 'fast', {})}
IMAGE_SHAPES = {'MNIST': (1, 28, 28), 'CIFAR10': (3, 32, 32), 'deadleaves': (1, 64, 64)}
PEAK_SIZE, PEAK_REPEATS, WARM_UP = 2048, 7, 2
LEAKY_RELU_SLOPE = 0.05  # the released code's (conv3x3.LEAKY_RELU_SLOPE)
NONLINEARITIES = {'paper': {'conv': 'softplus', 'dense': 'tanh'},
                  'code': {'conv': 'leaky_relu', 'dense': 'leaky_relu'}}  # regression.NONLINEARITIES


def configuration(name):
    """(model arguments, data set, fidelity, batch size, learning rate, optimizer) of a
    configuration, as train.py sets them (settings.new_run_settings)."""
    dataset, fidelity, overrides = CONFIGS[name]
    args = presets.model_args(dataset, fidelity, overrides)
    optimizer = presets.FAST_RUN_SETTINGS['optimizer'] if fidelity == 'fast' else 'rmsprop'
    run = presets.RUN_DEFAULTS[dataset]
    return args, dataset, fidelity, run['batch_size'], run['lr'], optimizer


def temporal_basis(T_steps, J, width):
    """g_j(t), (J, T): regression.temporal_basis without a warp (Appendix D.2.1)."""
    u = np.arange(1, T_steps + 1.0)
    centres = np.linspace(1, T_steps, J)
    std = (T_steps - 1) / (J - 1) / (1 if width == 'paper' else 2)
    g = np.exp(-(u[None, :] - centres[:, None]) ** 2 / (2 * std ** 2))
    g[g < 1e-20] = 0
    return (g / g.sum(axis=0, keepdims=True)).astype('float32')


def build_network(torch, args, image_shape):
    """The image network of regression.ImageNetwork for `args`, as a torch.nn.Module whose
    forward(x, g_t) gives z (n, H W, 2C): the read-out at each example's basis weights g_t (n, J)."""
    nn, F = torch.nn, torch.nn.functional
    act = {'softplus': F.softplus, 'tanh': torch.tanh,
           'leaky_relu': lambda v: F.leaky_relu(v, LEAKY_RELU_SLOPE)}
    f = {k: act[v] for k, v in NONLINEARITIES[args['nonlinearity']].items()}
    C, H, W = image_shape

    class MultiScaleConv(nn.Module):
        def __init__(self, n_in, n_out, size):
            super().__init__()
            std = np.sqrt(1.0 / n_out) / 9
            self.convs = nn.ModuleList(nn.Conv2d(n_in, n_out, 3, padding=1, bias=False)
                                       for _ in range(args['n_scales']))
            for conv in self.convs:
                nn.init.normal_(conv.weight, std=std)
            # tied: one bias per filter; untied: one per filter and 'full' output position, cropped
            self.b = nn.ParameterList(nn.Parameter(torch.zeros(
                (n_out, 1, 1) if args['tied_biases'] else (n_out, size // 2 ** s + 2, size // 2 ** s + 2)))
                for s in range(args['n_scales']))

        def bias(self, s):
            return self.b[s] if args['tied_biases'] else self.b[s][:, 1:-1, 1:-1]

        def forward(self, x):
            n_scales, total = len(self.convs), None
            for s in reversed(range(n_scales)):  # coarse to fine: sum, then upsample by 2
                y = self.convs[s](F.avg_pool2d(x, 2 ** s) if s else x) + self.bias(s)
                y = f['conv'](y) if args['scale_nonlinearity'] == 'per_scale' else y
                total = y if total is None else total + y
                total = F.interpolate(total, scale_factor=2, mode='nearest') if s else total
            if args['scale_nonlinearity'] == 'after_sum':
                return f['conv'](total)
            return total / n_scales if n_scales > 1 else total

    class ImageNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            side = args['crop'] or H
            convs = [C] + [args['n_hidden_conv']] * args['n_layers_conv'] if args['conv_path'] else [C]
            self.conv = nn.ModuleList(MultiScaleConv(a, b, side) for a, b in zip(convs[:-1], convs[1:]))
            depth = args['n_layers_conv'] if args['dense_depth_from_conv'] else args['n_layers_dense_lower']
            dense = ([C * H * W] + [args['n_hidden_dense_lower']] * (depth - 1)
                     + [args['n_hidden_dense_lower_output'] * H * W]) if args['dense_path'] else [0]
            self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dense[:-1], dense[1:]))
            features = ([args['n_hidden_conv']] if args['conv_path'] else []) + (
                [args['n_hidden_dense_lower_output']] if args['dense_path'] else [])
            both = args['feature_scaling'] and len(features) == 2
            self.scales = [1 / np.sqrt(n) if both else 1.0 for n in features]
            upper = [sum(features)] + [args['n_hidden_dense_upper']] * (args['n_layers_dense_upper'] - 1)
            self.upper = nn.ModuleList(nn.Linear(a, b) for a, b in zip(upper[:-1], upper[1:]))
            self.readout = nn.Linear(upper[-1], C * 2 * args['n_temporal_basis'])
            for layer in list(self.dense) + list(self.upper) + [self.readout]:
                nn.init.orthogonal_(layer.weight)
                nn.init.zeros_(layer.bias)

        def forward(self, x, g_t):
            n, side = x.shape[0], x.shape[2]
            parts = []
            if len(self.conv):
                c = x
                for layer in self.conv:
                    c = layer(c)
                parts.append(c.permute(0, 2, 3, 1))  # (n, H, W, F)
            if len(self.dense):
                d = x.reshape(n, -1)
                for layer in self.dense:
                    d = f['dense'](layer(d))
                parts.append(d.reshape(n, -1, side, side).permute(0, 2, 3, 1))
            h = torch.cat([p * s if s != 1 else p for p, s in zip(parts, self.scales)], dim=3)
            for layer in self.upper:
                h = f['dense'](layer(h))
            y = self.readout(h).reshape(n, side * side, 2 * C, -1)  # (n, H W, 2C, J)
            return torch.einsum('npcj,nj->npc', y, g_t)  # z = sum_j g_j(t) y_j

    return ImageNetwork()


def network_flops(net, side):
    """Forward multiply-adds per image as bench.network_flops counts them: 2 k^2 C_in C_out
    h w per convolution and scale, 2 n_in n_out per dense layer (times H W per pixel)."""
    total = 0
    for layer in net.conv:
        for s, conv in enumerate(layer.convs):
            c_out, c_in, k, _ = conv.weight.shape
            total += 2 * k * k * c_in * c_out * (side // 2 ** s) ** 2
    total += sum(2 * lin.in_features * lin.out_features for lin in net.dense)
    total += sum(2 * lin.in_features * lin.out_features * side ** 2 for lin in list(net.upper) + [net.readout])
    return total


def peak_gflops(torch):
    """Best GFLOP/s of a float32 PEAK_SIZE^3 torch.mm."""
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    torch.mm(a, b)
    best = min(timed(torch.mm, a, b)[1] for _ in range(PEAK_REPEATS))
    return 2.0 * PEAK_SIZE ** 3 / best / 1e9


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def timed_cpu(fn, *args):
    """(wall-clock seconds, CPU seconds of the process's threads) of fn(*args)."""
    cpu_start = time.process_time()
    _, seconds = timed(fn, *args)
    return seconds, time.process_time() - cpu_start


def training_step(torch, net, optimizer, x, g_t):
    """One bare training step: forward, mean(z^2), backward, the step rule; the loss."""
    optimizer.zero_grad(set_to_none=True)
    z = net(x, g_t)
    loss = (z * z).mean()
    loss.backward()
    optimizer.step()
    return loss.item()


def measure(torch, name, n_steps, profile):
    """The figures of configuration `name` (and torch.profiler's table if profile)."""
    args, dataset, fidelity, batch, lr, rule = configuration(name)
    torch.manual_seed(0)
    C, H, W = IMAGE_SHAPES[dataset]
    side = args['crop'] or H
    net = build_network(torch, args, (C, H, W))
    optimizer = (torch.optim.Adam(net.parameters(), lr=lr) if rule == 'adam' else
                 torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.9, eps=1e-10))  # steprules.RMSProp's decay
    x = torch.randn(batch, C, side, side)
    basis = torch.from_numpy(temporal_basis(args['T'], args['n_temporal_basis'], args['basis_width']))
    g_t = basis[:, torch.randint(1, args['T'], (batch,))].T.contiguous()  # (n, J)
    times = [timed_cpu(training_step, torch, net, optimizer, x, g_t) for _ in range(WARM_UP + n_steps)][WARM_UP:]
    step_s, step_cpu_s = [t for t, _ in times], [c for _, c in times]
    median = float(np.median(step_s))
    flops = 3 * network_flops(net, side) * batch
    result = {'config': name, 'dataset': dataset, 'fidelity': fidelity, 'optimizer': rule, 'batch_size': batch,
              'image_side': side, 'n_params': sum(p.numel() for p in net.parameters()), 'step_s': step_s,
              'step_s_median': median, 'step_s_min': min(step_s), 'step_s_max': max(step_s),
              'step_cpu_s': step_cpu_s, 'step_cpu_s_median': float(np.median(step_cpu_s)),
              'images_per_s': batch / median, 'gflops_per_s': flops / median / 1e9}
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                training_step(torch, net, optimizer, x, g_t)
        result['profile'] = prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15)
    return result


def print_result(r, peak):
    print('{:<10} {:>8} {:>8} {:>6} {:>10,} {:>9.3f} {:>15} {:>7.3f} {:>10.1f} {:>8.1f} {:>5.0f}%'.format(
        r['config'], r['fidelity'], r['optimizer'], r['batch_size'], r['n_params'], r['step_s_median'],
        '{:.3f}-{:.3f}'.format(r['step_s_min'], r['step_s_max']), r['step_cpu_s_median'], r['images_per_s'], r['gflops_per_s'],
        100 * r['gflops_per_s'] / peak))
    if 'profile' in r:
        print('\n{}: torch.profiler over 2 training steps, by self CPU time\n{}'.format(r['config'], r['profile']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='all', choices=sorted(CONFIGS) + ['all'])
    p.add_argument('--steps', type=int, default=5, help='timed training steps after two warm-up steps')
    p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                   help='torch.set_num_threads (default: the cores this process may use)')
    p.add_argument('--profile', action='store_true', help='torch.profiler\'s table of two more steps')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of the report')
    args = p.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        p.error('--steps and --threads must be at least 1')
    import torch  # only here: the parser answers without PyTorch
    torch.set_num_threads(args.threads)
    names = list(CONFIGS) if args.config == 'all' else [args.config]
    peak = peak_gflops(torch)
    results = [measure(torch, name, args.steps, args.profile) for name in names]
    if args.json:
        print(json.dumps({'torch': torch.__version__, 'isa': torch.backends.cpu.get_cpu_capability(),
                          'threads': torch.get_num_threads(), 'peak_gflops': peak, 'configs': results}, indent=2))
        return
    print('PyTorch {} (CPU capability {}), {} thread(s); peak {:.1f} GFLOP/s (float32 {}^3 torch.mm, best of {})'
          .format(torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), peak,
                  PEAK_SIZE, PEAK_REPEATS))
    print('\n{:<10} {:>8} {:>8} {:>6} {:>10} {:>9} {:>15} {:>7} {:>10} {:>8} {:>6}'.format(
        'config', 'fidelity', 'rule', 'batch', 'params', 'step s', 'min-max s', 'CPU s', 'images/s', 'GFLOP/s', 'peak'))
    for r in results:
        print_result(r, peak)
    print('(step s: median of {} steps after {} warm-up steps, min-max over them; CPU s: the median CPU '
          'time of the process\'s threads per step; the bare network step: '
          'forward, mean(z^2), backward, step rule)'.format(args.steps, WARM_UP))


if __name__ == '__main__':
    main()
