"""PyTorch CPU peer for `npm run bench:train`: ViT-B/16 training steps, LoRA or full fine-tuning.

One step is what a PyTorch user runs: zero the grads, forward, cross-entropy, backward, then AdamW's
optimizer.step(). The first part and the optimiser are timed separately so that they can be compared with
melo's ORT forward+backward and its JS AdamW one to one.

The model is plain torch in the layout MeLo trains (Hugging Face's ViT: separate query/key/value linears,
pre-norm blocks, exact-erf GELU, CLS pooling), random weights of the real shapes with the same spread as
bench/lib/random-vit.ts, and a fresh task head of `--classes` outputs.
  --method lora  every weight frozen except LoRA A/B on query and value and the task head; the low-rank
                 branch is PEFT's (base(x) + lora_B(lora_A(x)) * alpha/rank; A Kaiming-uniform, B zeros;
                 dropout 0 is an identity, as in PEFT)
  --method full  every weight trained
AdamW skips weight decay on biases, LayerNorm weights, cls_token and pos_embed, as melo's does.

With --serve (how the bench runs it) it answers timing requests line by line; see serve(). Peak memory is
reported twice: the process's peak (getrusage) and the peak during the steps alone (Linux: VmHWM after
resetting it through /proc/self/clear_refs once the model is built).
"""

import argparse
import json
import math
import platform
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from vit_infer import VisionTransformer, init_like_melo, median


class LoraLinear(nn.Module):
    """PEFT's LoRA Linear forward: the frozen base layer plus a scaled low-rank branch beside it."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        def heads(y):
            return y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = (q * self.scale) @ k.transpose(-2, -1)
        context = scores.softmax(dim=-1) @ v
        return self.proj(context.transpose(1, 2).reshape(b, t, d))


def add_lora(model, rank, alpha):
    """Freezes the model, wraps query and value of every block, and trains the adapters and the head."""
    for param in model.parameters():
        param.requires_grad_(False)
    for block in model.blocks:
        block.attn.query = LoraLinear(block.attn.query, rank, alpha)
        block.attn.value = LoraLinear(block.attn.value, rank, alpha)
    for param in model.head.parameters():
        param.requires_grad_(True)


def no_decay(name):
    """melo's defaultNoDecay (src/train/optimizer.ts), on torch parameter names."""
    last = name.rsplit('.', 1)[-1]
    return name.endswith('.bias') or name.endswith(('norm.weight', 'norm1.weight', 'norm2.weight')) \
        or last in ('cls_token', 'pos_embed')


def make_optimizer(model, lr, weight_decay):
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {'params': [p for n, p in trained if not no_decay(n)], 'weight_decay': weight_decay},
        {'params': [p for n, p in trained if no_decay(n)], 'weight_decay': 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g['params']], lr=lr), sum(p.numel() for _, p in trained)


def count_forward_flops(model, image):
    """2*M*N*K for every product of the base model in one single-image forward, from the shapes seen
    (the LoRA branch's rank-r products are left out, as the bench's formula leaves them out)."""
    flops = [0]
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and 'lora_' not in name:
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: flops.__setitem__(0, flops[0] + 2 * inputs[0].numel() * m.out_features)))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: flops.__setitem__(0, flops[0] + 2 * out.numel() * m.in_channels
                                                         * m.kernel_size[0] * m.kernel_size[1])))
        elif isinstance(module, Attention):
            # Per head [t, d/h] x [d/h, t] and [t, t] x [t, d/h], from the input's shape.
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: flops.__setitem__(0, flops[0] + 4 * inputs[0].shape[0]
                                                         * inputs[0].shape[1] ** 2 * inputs[0].shape[2])))
    with torch.no_grad():
        model(torch.zeros(1, 3, image, image))
    for hook in hooks:
        hook.remove()
    return flops[0]


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def proc_status_bytes(field):
    """A Vm... line of /proc/self/status in bytes (VmHWM: peak since the last reset, VmRSS: now)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Stepper:
    def __init__(self, model, optimizer, batch, classes, image, seed):
        self.model = model
        self.optimizer = optimizer
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.rand(batch, 3, image, image, generator=generator) * 4 - 2
        self.labels = torch.arange(batch) % classes

    def run(self, warmup, runs):
        """Per timed step: wall ms of zero_grad+forward+loss+backward, of optimizer.step(), their sum, and
        the process CPU ms of the whole step (all threads)."""
        out = {'forwardBackwardMs': [], 'optimizerMs': [], 'stepMs': [], 'cpuMs': []}
        loss = None
        for i in range(warmup + runs):
            cpu_start = time.process_time()
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.pixels), self.labels)
            loss.backward()
            middle = time.perf_counter()
            self.optimizer.step()
            end = time.perf_counter()
            if i >= warmup:
                out['forwardBackwardMs'].append((middle - start) * 1e3)
                out['optimizerMs'].append((end - middle) * 1e3)
                out['stepMs'].append((end - start) * 1e3)
                out['cpuMs'].append((time.process_time() - cpu_start) * 1e3)
        if loss is not None and not math.isfinite(loss.item()):
            sys.exit('PyTorch peer produced a non-finite loss')
        out['loss'] = None if loss is None else loss.item()
        return out


def build(args):
    torch.manual_seed(args.seed)
    model = VisionTransformer(image=args.image, classes=args.classes, attention=Attention)
    init_like_melo(model)
    if args.method == 'lora':
        add_lora(model, args.rank, args.alpha)
    model.train()
    optimizer, trainable = make_optimizer(model, args.lr, args.weight_decay)
    return model, optimizer, trainable


def serve(stepper, hello):
    """Line protocol for interleaved runs: request {"warmup": w, "runs": r} answers the samples of r timed
    steps after w untimed ones; end of input answers the peak memory and exits."""
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        print(json.dumps(stepper.run(int(request.get('warmup', 0)), int(request.get('runs', 0)))), flush=True)
    steps_peak = proc_status_bytes('VmHWM') if hello['peakReset'] else None
    print(json.dumps({'peakRssBytes': peak_rss_bytes(), 'peakRssStepsBytes': steps_peak}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--method', choices=['lora', 'full'], required=True)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--classes', type=int, default=2)
    parser.add_argument('--rank', type=int, default=4)
    parser.add_argument('--alpha', type=float, default=4)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--weight-decay', type=float, default=0.01)
    parser.add_argument('--image', type=int, default=224)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--serve', action='store_true', help='answer timing requests on stdin (used by the bench)')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, optimizer, trainable = build(args)
    flops = count_forward_flops(model, args.image)
    stepper = Stepper(model, optimizer, args.batch, args.classes, args.image, args.seed + 1)
    hello = {
        'torch': torch.__version__,
        'python': platform.python_version(),
        'threads': torch.get_num_threads(),
        'method': args.method,
        'batch': args.batch,
        'trainableParameters': trainable,
        'forwardFlopsPerImage': flops,
        'buildMs': (time.perf_counter() - start) * 1e3,
        'peakRssBuildBytes': peak_rss_bytes(),
        'peakReset': reset_peak_rss(),
        'rssAfterBuildBytes': proc_status_bytes('VmRSS'),
    }
    if args.serve:
        serve(stepper, hello)
        return
    taken = stepper.run(args.warmup, args.runs)
    step = median(taken['stepMs'])
    print(f'pytorch {args.method} batch {args.batch}: median step {step:.0f} ms '
          f'(forward+backward {median(taken["forwardBackwardMs"]):.0f} ms, AdamW {median(taken["optimizerMs"]):.0f} ms), '
          f'{args.batch / step * 1e3:.2f} images/s', file=sys.stderr)
    print(json.dumps({**hello, **taken, 'peakRssBytes': peak_rss_bytes(),
                      'peakRssStepsBytes': proc_status_bytes('VmHWM') if hello['peakReset'] else None}))


if __name__ == '__main__':
    main()
