"""A distributed 3D convolution: run with ``mpiexec -n 2 python examples/distributed_conv.py``.

Every rank holds one block of a 48^3 field; HaloConv3d exchanges halos and convolves locally. Rank 0 checks the
gathered result against torch.nn.Conv3d applied to the whole field in one process.
"""

import torch

from deepkrylov.distributed import GridTensor, HaloConv3d, ProcessGrid, init

ctx = init()
grid = ProcessGrid(ctx, (48, 48, 48))
torch.manual_seed(0)  # same weights and data on every rank
conv = HaloConv3d(1, 8, kernel_size=3, padding=1, padding_mode="circular").double()
field = torch.randn(1, 1, 48, 48, 48, dtype=torch.float64)

x = GridTensor.from_global(field, grid)  # this rank's block
y = conv(x)  # halo exchange + local convolution
print(f"rank {ctx.rank}/{ctx.size}: block {tuple(x.local.shape)} at {grid.starts}, |y| = {y.norm().item():.6f}")

full = y.gather(root=0)
if ctx.is_root:
    err = (full - conv(field)).abs().max().item()
    print(f"max |distributed - torch.nn.Conv3d| = {err:.2e} on {ctx.size} ranks ({ctx.comm.name} engine)")
    if err > 1e-12:
        raise SystemExit("distributed convolution differs from the serial one")
