"""PyTorch CPU peer for `npm run bench:infer`: the same ViT-B/16 forward, timed the same way.

Plain torch (no timm or transformers): patch embedding as a stride-16 convolution, pre-norm blocks with a
fused qkv projection, exact-erf GELU, CLS pooling, linear head -- the standard implementation (timm's
VisionTransformer), so PyTorch runs the model the way its users would. Random weights of the real shapes.

Standalone, it prints one JSON object on the last line of stdout:
  {"torch": "...", "threads": 2, "flopsPerImage": ..., "peakRssBytes": ...,
   "results": [{"batch": 8, "samplesMs": [...], "medianMs": ...}, ...]}
With --serve (how the bench runs it) it answers timing requests line by line; see serve().
flopsPerImage is counted from the tensor shapes seen during one forward (2*M*N*K per matrix product), an
independent check of the formula the TypeScript bench uses.
"""

import argparse
import json
import platform
import resource
import sys
import time

import torch
from torch import nn


class FlopCounter:
    def __init__(self):
        self.flops = 0


class Attention(nn.Module):
    def __init__(self, dim, heads, counter):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.counter = counter

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        context = scores.softmax(dim=-1) @ v
        if self.counter is not None:
            # Per head: [t, d/h] x [d/h, t] and [t, t] x [t, d/h].
            self.counter.flops += 2 * b * self.heads * t * t * (d // self.heads) * 2
        return self.proj(context.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block around any attention module (fused qkv here, separate q/k/v in the
    training peer)."""

    def __init__(self, dim, mlp, eps, attn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """`attention(dim, heads)` makes each block's attention; default: this file's fused-qkv Attention."""

    def __init__(self, image=224, patch=16, channels=3, dim=768, depth=12, heads=12, mlp=3072, classes=1000,
                 eps=1e-6, attention=None):
        super().__init__()
        attention = attention or (lambda d, h: Attention(d, h, None))
        tokens = 1 + (image // patch) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, mlp, eps, attention(dim, heads)) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def forward(self, pixels):
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def init_like_melo(model):
    """Same spread as bench/lib/random-vit.ts: matrices ~ N(0, 0.02^2), LayerNorm scale 1, biases 0."""
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        if isinstance(modules.get(name.rsplit('.', 1)[0]), nn.LayerNorm) and name.endswith('weight'):
            nn.init.ones_(param)
        elif name.endswith('bias'):
            nn.init.zeros_(param)
        else:
            nn.init.normal_(param, std=0.02)


def count_flops(model, image):
    """2*M*N*K for every product in one single-image forward, from the shapes actually seen."""
    counter = FlopCounter()
    for block in model.blocks:
        block.attn.counter = counter
    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: setattr(counter, 'flops', counter.flops + 2 * inputs[0].numel() * m.out_features)))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: setattr(counter, 'flops', counter.flops + 2 * out.numel() * m.in_channels
                                               * m.kernel_size[0] * m.kernel_size[1])))
    with torch.inference_mode():
        model(torch.zeros(1, 3, image, image))
    for hook in hooks:
        hook.remove()
    for block in model.blocks:
        block.attn.counter = None
    return counter.flops


def time_runs(model, pixels, warmup, runs):
    """Wall milliseconds per run, and the process CPU milliseconds (all threads) during each."""
    samples, cpu = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            model(pixels)
        for _ in range(runs):
            cpu_start = time.process_time()
            start = time.perf_counter()
            logits = model(pixels)
            samples.append((time.perf_counter() - start) * 1e3)
            cpu.append((time.process_time() - cpu_start) * 1e3)
    if runs > 0 and not torch.isfinite(logits).all():
        sys.exit('PyTorch peer produced non-finite logits')
    return samples, cpu


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def describe(model, flops):
    return {
        'torch': torch.__version__,
        'python': platform.python_version(),
        'threads': torch.get_num_threads(),
        'flopsPerImage': flops,
    }


def serve(model, flops, image):
    """Line protocol for interleaved runs: the bench alternates engines round by round so that load from
    other work on the machine falls on all of them alike. Request {"batch": b, "warmup": w, "runs": r}
    answers {"batch": b, "samplesMs": [...], "cpuMs": [...]}; end of input answers the peak RSS and exits."""
    print(json.dumps(describe(model, flops)), flush=True)
    inputs = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        batch = int(request['batch'])
        if batch not in inputs:
            inputs[batch] = torch.rand(batch, 3, image, image) * 4 - 2
        samples, cpu = time_runs(model, inputs[batch], int(request.get('warmup', 0)), int(request.get('runs', 0)))
        print(json.dumps({'batch': batch, 'samplesMs': samples, 'cpuMs': cpu}), flush=True)
    print(json.dumps({'peakRssBytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batches', default='1,8')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iterations', default='15,7', help='timed runs per batch size, one value or one per batch')
    parser.add_argument('--image', type=int, default=224)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--serve', action='store_true', help='answer timing requests on stdin (used by the bench)')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = VisionTransformer(image=args.image)
    init_like_melo(model)
    model.eval()
    flops = count_flops(model, args.image)
    if args.serve:
        serve(model, flops, args.image)
        return

    batches = [int(b) for b in args.batches.split(',')]
    iterations = [int(i) for i in args.iterations.split(',')]
    if len(iterations) == 1:
        iterations = iterations * len(batches)
    if len(iterations) != len(batches):
        parser.error('--iterations needs one value or one per batch size')
    results = []
    for batch, runs in zip(batches, iterations):
        pixels = torch.rand(batch, 3, args.image, args.image) * 4 - 2
        samples, cpu = time_runs(model, pixels, args.warmup, runs)
        results.append({'batch': batch, 'samplesMs': samples, 'cpuMs': cpu, 'medianMs': median(samples)})
        print(f'pytorch batch {batch}: median {median(samples):.1f} ms', file=sys.stderr)
    print(json.dumps({
        **describe(model, flops),
        'peakRssBytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        'results': results,
    }))


if __name__ == '__main__':
    main()
