# The PyTorch peer of tools/benchmark.py --peer: Meta-DRN's meta-steps (the same network, k=q=1) with
# torch.func, written compactly so that it reads as one page beside the project's TensorFlow step.
# Usage: python tools/torch_peer.py [size=224] [float32|bfloat16] [second,first]
# Needs a separate venv with torch (pip install torch numpy); prints the median step seconds, the RSS
# after building the model and one forward pass ("baseline_rss_gib") and the peak RSS, so that
# tools/benchmark.py measures both sides' working sets alike.
import time, sys, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call
torch.manual_seed(0)
def cbr(ci, co, s=1, d=1):
    return nn.Sequential(nn.Conv2d(ci, co, 3, s, padding=d, dilation=d, bias=False), nn.BatchNorm2d(co, track_running_stats=False), nn.LeakyReLU(0.01))
class RB(nn.Module):
    def __init__(s, ci, co, st, d1, d2):
        super().__init__()
        s.a = cbr(ci, co, st, d1)
        s.b = nn.Sequential(nn.Conv2d(co, co, 3, 1, padding=d2, dilation=d2, bias=False), nn.BatchNorm2d(co, track_running_stats=False))
        s.sc = nn.Sequential(nn.Conv2d(ci, co, 1, st, bias=False), nn.BatchNorm2d(co, track_running_stats=False))
    def forward(s, x): return F.leaky_relu(s.b(s.a(x)) + s.sc(x), 0.01)
class MetaDRN(nn.Module):
    def __init__(s):
        super().__init__()
        s.net = nn.Sequential(cbr(3,16,2), cbr(16,64), RB(64,128,2,1,1), RB(128,256,1,1,2), RB(256,512,1,2,4), cbr(512,512,1,2), cbr(512,512,1,1), nn.Conv2d(512,16,3,padding=1), nn.PixelShuffle(4))
    def forward(s, x): return s.net(x)
size = int(sys.argv[1]) if len(sys.argv)>1 else 224
precision = sys.argv[2] if len(sys.argv)>2 else "float32"  # float32 | bfloat16 (CPU autocast)
import contextlib
ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bfloat16" else contextlib.nullcontext
m = MetaDRN()
print("params", sum(p.numel() for p in m.parameters()))
params = dict(m.named_parameters())
opt = torch.optim.AdamW(m.parameters(), 1e-3)
xs = torch.randn(1,3,size,size); ys = (torch.rand(1,1,size,size)>0.5).float(); xq = torch.randn(1,3,size,size)
def step(first_order=False):
  with ctx():
    p = dict(m.named_parameters())
    l = F.binary_cross_entropy_with_logits(functional_call(m, p, (xs,)), ys)
    g = torch.autograd.grad(l, list(p.values()), create_graph=not first_order)
    fast = {k: v - 1e-3*gi for (k,v),gi in zip(p.items(), g)}
    lq = F.binary_cross_entropy_with_logits(functional_call(m, fast, (xq,)), ys)
    opt.zero_grad(); lq.backward(); opt.step(); return lq.item()
modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["second", "first"]
with torch.no_grad(), ctx():
    m(xs)
print("baseline_rss_gib", round(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 2**20, 3), flush=True)
import resource
for fo in [m == "first" for m in modes]:
    step(fo)
    ts=[]
    for i in range(3):
        t=time.perf_counter(); step(fo); ts.append(time.perf_counter()-t)
    print("first_order" if fo else "second_order", "min step s", round(min(ts),3), "median", round(sorted(ts)[1],3),
          "peak_rss_gib", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), flush=True)
