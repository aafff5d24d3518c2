"""PyTorch's usual community recipe: ``F.unfold`` windows + ``einsum`` (no built-in layer)."""

from __future__ import annotations

import functools

import numpy as np

from bench.candidate import Built, Candidate, Problem, Skip
from bench.peers import Options, require
from jlocalconv.geometry import Geometry


def candidates(options: Options, device: str = "cpu") -> list[Candidate]:
    """The recipe on torch ``device`` (``"cuda"`` for the accelerator check)."""
    torch = require("torch")
    torch.set_num_threads(options.threads)
    build = functools.partial(_build, torch, device=torch.device(device))
    return [Candidate("torch.unfold", "torch", build)]


def unfold_local_conv(torch, x, weight, geom: Geometry):
    """``x`` ``(B, C, *spatial)``, ``weight`` ``(P, C * prod(k), F)`` -> ``(B, F, *out)``.

    1-D runs as 2-D with a height of 1 (``F.unfold`` needs 4-D inputs).
    """
    functional = torch.nn.functional
    kernel_size, strides, dilation = geom.kernel_size, geom.strides, geom.dilation
    if geom.ndim == 1:
        x = x.unsqueeze(2)
        kernel_size, strides, dilation = ((1, *t) for t in (kernel_size, strides, dilation))
    pads = [p for pair in reversed(geom.padding) for p in pair]  # F.pad: last dim first
    if any(pads):
        x = functional.pad(x, pads)
    cols = functional.unfold(x, kernel_size, dilation=dilation, stride=strides)
    out = torch.einsum("bdp,pdf->bfp", cols, weight)
    return out.reshape(out.shape[0], out.shape[1], *geom.output_shape)


def _build(torch, problem: Problem, device) -> Built:
    geom = problem.geom
    if geom.ndim == 3:
        raise Skip("F.unfold takes 2-D spatial inputs only")
    dtype = getattr(torch, problem.shape.dtype)
    # NCHW is torch's native layout; converting once, outside timing, is what a model does.
    x = torch.from_numpy(np.moveaxis(problem.inputs, -1, 1).copy()).to(device, dtype)
    w = torch.from_numpy(problem.kernel_channels_major()).to(device, dtype)
    g = torch.from_numpy(np.moveaxis(problem.cotangent, -1, 1).copy()).to(device)
    x_grad, w_grad = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    fn = functools.partial(unfold_local_conv, torch, geom=geom)
    # CUDA calls return before the kernels finish: a timed call must wait for them.
    wait = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def forward():
        with torch.inference_mode():
            y = fn(x, w)
        wait()
        return y

    def forward_backward():
        loss = (fn(x_grad, w_grad).float() * g).sum()
        grads = torch.autograd.grad(loss, (x_grad, w_grad))
        wait()
        return loss, grads

    result = np.moveaxis(forward().float().cpu().numpy(), 1, -1)
    forward_backward()
    return Built(forward=forward, forward_backward=forward_backward, result=result)
