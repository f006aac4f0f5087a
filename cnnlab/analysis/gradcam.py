"""Grad-CAM (Selvaraju et al., 2017): where in the image a layer's features drove one class's score.

cam = ReLU(sum_c alpha_c A_c), alpha_c = the spatial mean of d score / d A_c; upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.analysis.figures import new_figure, show_image


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int | None = None) -> dict:
    """x: one normalised (1, C, H, W) image. Returns {"cam": (H, W) in [0, 1] on the CPU, "target" (the
    predicted class unless given), "probs" (1-D), "map": [h, w] of the layer's output}."""
    was_training = model.training
    model.eval()
    kept = {}

    def hook(_module, _inputs, out):
        kept["act"] = out[0] if isinstance(out, (tuple, list)) else out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # so that the activations are in the graph
            logits = model(x).float()
            act = kept.get("act")
            if act is None or act.dim() != 4:
                raise ValueError("grad_cam needs a layer whose output is an (N, C, H, W) feature map")
            target = int(logits[0].argmax()) if target is None else target
            (grad,) = torch.autograd.grad(logits[0, target], act)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad[0].mean(dim=(1, 2))  # alpha_c
    cam = F.relu((weights[:, None, None] * act[0].detach()).sum(0))
    cam = F.interpolate(cam[None, None], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    return {
        "cam": cam.float().cpu(),
        "target": target,
        "probs": logits[0].detach().softmax(0).cpu(),
        "map": list(act.shape[2:]),
    }


def overlay_figure(image: torch.Tensor, cam: torch.Tensor, title: str):
    """Three panels: the input (uint8 (C, H, W)), the Grad-CAM heat map, and the two overlaid."""
    fig = new_figure(9.6, 3.9)
    axes = fig.subplots(1, 3)
    show_image(axes[0], image)
    axes[0].set_title("input", fontsize=10)
    heat = axes[1].imshow(cam.numpy(), cmap="jet", vmin=0, vmax=1)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title("Grad-CAM (1: most important)", fontsize=10)
    grey = image.float().mean(0)
    axes[2].imshow(grey.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[2].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title("overlay", fontsize=10)
    fig.colorbar(heat, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=11)
    return fig
