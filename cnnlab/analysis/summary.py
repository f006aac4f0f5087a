"""Per-layer summary of a model on one image: output shape, parameters, MACs, receptive field and jump of
each feature map; totals; the receptive field of the final map.

Leaves are modules without children, or modules marked `atomic = True` (a composite layer shown as one row).
MACs are torch's FlopCounterMode count halved: multiply-accumulates of convolutions, linear layers and matmuls
(attention, blur filters) wherever they run; the usual convention, under which ResNet-50 is 4.1 G at 224x224.
A module with MACs outside its leaf layers (attention's matmuls) gets a row of its own for them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from cnnlab.analysis.receptive_field import ReceptiveFieldTracker, report
from cnnlab.models import count_params


def _traced(model: nn.Module):
    """(name, module, is_leaf) of every module but the root and those inside an atomic one."""
    atomic = [name for name, m in model.named_modules() if getattr(m, "atomic", False)]
    inside = lambda name: any(name.startswith(a + ".") for a in atomic)  # noqa: E731
    for name, m in model.named_modules():
        if name and not inside(name):
            yield name, m, not list(m.children()) or getattr(m, "atomic", False)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if isinstance(t, torch.Tensor)), None)
    return None


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode counts the GPU attention kernels; this is the CPU one (the same two matmuls)."""
    return sdpa_flop_count(query, key, value)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """Trace one (C, H, W) image through the model in eval mode.

    Returns params, trainable_params, macs, activation_bytes (sum of the leaves' outputs for one image),
    receptive_field, layers (rows), and `collapse` (where a spatial size fell below 1) or None.
    """
    model.eval()
    layers, seen, active = [], set(), []
    collapse = {}
    tracker = ReceptiveFieldTracker()
    flops = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    macs = lambda: flops.get_total_flops() // 2  # noqa: E731

    def pre(name):
        def hook(module, inp):
            x = _first_tensor(inp)
            active.append((name, module, tuple(x.shape[1:]) if x is not None else None, macs(), len(layers)))

        return hook

    def post(name, leaf):
        def hook(module, inp, out):
            *_, macs_before, rows_before = active.pop()
            own_macs = macs() - macs_before - sum(row["macs"] for row in layers[rows_before:])
            x = _first_tensor(out)
            if x is None:
                return
            if x.dim() == 4 and min(x.shape[2:]) < 1 and not collapse:
                collapse.update(layer=name, type=type(module).__name__, output=list(x.shape[1:]))
            if not leaf:  # MACs outside the leaves (attention's matmuls): a row of their own
                if not own_macs:
                    return
                layers.append(
                    {
                        "name": name + " (matmuls)",
                        "type": type(module).__name__,
                        "shape": list(x.shape[1:]),
                        "params": 0,
                        "macs": own_macs,
                        "bytes": 0,
                        "rf": None,
                        "jump": None,
                    }
                )
                return
            own = module.parameters(recurse=getattr(module, "atomic", False))
            params = 0 if module in seen else sum(p.numel() for p in own)  # a reused module counts once
            seen.add(module)
            field = tracker.fields.get(id(x)) if x.dim() == 4 else None  # a feature map's units: what they see
            layers.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "shape": list(x.shape[1:]),
                    "params": params,
                    "macs": own_macs,
                    "bytes": x.numel() // x.shape[0] * x.element_size(),
                    "rf": field.size if field else None,
                    "jump": field.jump if field else None,
                }
            )

        return hook

    handles = []
    leaves = set()
    for name, m, leaf in _traced(model):
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post(name, leaf)))
        if leaf:
            leaves.add(name)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad(), tracker, flops:
            model(tracker.track(x))
    except RuntimeError as ex:
        running = [a for a in active if a[0] in leaves]  # the layer that failed
        if not running:
            raise
        name, module, shape, *_ = running[-1]
        collapse = collapse or {
            "layer": name,
            "type": type(module).__name__,
            "input": list(shape or ()),
            "error": str(ex).strip().splitlines()[0],
        }
    finally:
        for h in handles:
            h.remove()
    total = count_params(model)
    listed = sum(row["params"] for row in layers)
    if total != listed:  # parameters used outside leaf layers (class tokens, position embeddings) or never called
        layers.append(
            {
                "name": "(layers not run)" if collapse else "(other parameters)",
                "type": "",
                "shape": [],
                "params": total - listed,
                "macs": 0,
                "bytes": 0,
                "rf": None,
                "jump": None,
            }
        )
    return {
        "input": list(input_shape),
        "params": total,
        "trainable_params": count_params(model, trainable_only=True),
        "macs": sum(row["macs"] for row in layers),
        "activation_bytes": sum(row["bytes"] for row in layers),
        "receptive_field": None if collapse else report(tracker),
        "collapse": collapse or None,
        "layers": layers,
    }
