"""`optimizer=muon`: torch.optim.Muon on the hidden >= 2-D weights, SGD or AdamW on everything else.

airbench94_muon.py (KellerJordan/cifar10-airbench) trains its conv filters with Muon and the norm biases,
the whitening bias and the classifier head with SGD. Here that is one optimizer object for the trainer,
`MuonWithOther`: its `param_groups` are the two optimizers' own group dicts (so any scheduler drives
both learning rates), its `state_dict` holds both states, and `step`/`zero_grad` do both.

torch's Muon takes 2-D parameters only; `FilterMuon` hands it each conv filter bank (out, in, kh, kw) as
its (out, in*kh*kw) matrix, a view of the same memory (also in channels_last), as airbench does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.errors import CnnlabError

TARGET = "cnnlab.optim_muon.muon_with_other"  # optimizer._target_: its keywords are optimizer=muon's keys
MUON_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "ns_steps", "adjust_lr_fn")


def _layout(p: torch.Tensor) -> torch.memory_format:
    if p.ndim < 4 or p.is_contiguous():
        return torch.contiguous_format
    if p.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    raise RuntimeError(f"FilterMuon: a parameter of shape {tuple(p.shape)} is neither contiguous nor channels_last")


def _matrix(t: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """t as (out, rest), columns in memory order: a view when t is laid out as `layout` (a copy otherwise)."""
    if t.ndim == 2:
        return t
    return (t.permute(0, 2, 3, 1) if layout == torch.channels_last else t).reshape(len(t), -1)


class FilterMuon(torch.optim.Muon):
    """torch.optim.Muon for any >= 2-D weight, updated as its (out, rest) matrix.

    Orthogonalisation does not depend on the order of a matrix's columns, so a channels_last filter bank
    is viewed in its memory order. `normalize_weights`: before each step, every weight is rescaled to norm
    sqrt(out) (airbench's Muon: with BatchNorm after each conv the scale is free, and fixing it keeps the
    effective step size constant).
    """

    def __init__(self, params, normalize_weights: bool = False, **kwargs):
        # torch's Muon checks for 2-D parameters in __init__ (and nowhere else): let torch validate the
        # arguments on a stand-in matrix, then register the real parameters as a plain Optimizer would.
        probe = torch.optim.Muon([torch.zeros(1, 1, requires_grad=True)], **kwargs)
        torch.optim.Optimizer.__init__(self, params, probe.defaults)
        self.normalize_weights = normalize_weights

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs):
        for p in group["params"]:  # momentum buffers laid out like their weights, so both have matrix views
            if p.grad is not None:
                buf = self.state[p].get("momentum_buffer")
                layout = _layout(p)
                self.state[p]["momentum_buffer"] = (
                    torch.zeros_like(p) if buf is None else buf.contiguous(memory_format=layout)
                )
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        for i, p in enumerate(params_with_grad):
            layout = _layout(p)
            params_with_grad[i] = _matrix(p, layout)  # views: torch updates them in place
            muon_momentum_bufs[i] = _matrix(muon_momentum_bufs[i], layout)
            grads[i] = _matrix(grads[i], layout)  # read only: a copy is fine
        return has_complex

    @torch.no_grad()
    def step(self, closure=None):
        if self.normalize_weights:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(math.sqrt(len(p)) / p.norm().clamp_min(1e-12))
        return super().step(closure)


class MuonWithOther(torch.optim.Optimizer):
    """Two optimizers as one: `muon` (FilterMuon) and `other` (SGD/AdamW), each over its own parameters."""

    def __init__(self, muon: torch.optim.Optimizer, other: torch.optim.Optimizer):
        self.muon, self.other = muon, other
        # The children's own group dicts: an lr a scheduler writes here is the lr the child steps with.
        super().__init__(muon.param_groups + other.param_groups, {})

    @property
    def state(self) -> dict:
        """Both children's per-parameter state (read-only: each child owns its own)."""
        return {**self.muon.state, **self.other.state}

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ assigns an empty state; the children hold the real one
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.other.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "other": self.other.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "other"}:
            raise KeyError("not a Muon + other optimizer state (expected the keys 'muon' and 'other')")
        self.muon.load_state_dict(state_dict["muon"])
        self.other.load_state_dict(state_dict["other"])
        # load_state_dict replaces the children's group dicts: share the new ones again
        self.param_groups[:] = self.muon.param_groups + self.other.param_groups


def _check(cfg: dict) -> None:
    def num(key, low, high=None, low_open=False):
        v = cfg.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (v <= low if low_open else v < low) or (high is not None and v > high):
            bound = (f"> {low}" if low_open else f">= {low}") + (f" and <= {high}" if high is not None else "")
            raise CnnlabError(f"optimizer.{key} must be a number {bound}, got {v!r}")

    if cfg.get("other") not in ("sgd", "adamw"):
        raise CnnlabError(f"optimizer.other must be one of sgd, adamw; got {cfg.get('other')!r}")
    num("lr", 0, low_open=True)
    num("other_lr", 0, low_open=True)
    num("other_weight_decay", 0)
    num("other_momentum", 0, 1)
    steps = cfg.get("ns_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
        raise CnnlabError(f"optimizer.ns_steps must be an integer in [1, 99], got {steps!r}")
    if cfg.get("adjust_lr_fn") not in (None, "original", "match_rms_adamw", "spectral_unclamped"):
        raise CnnlabError(
            "optimizer.adjust_lr_fn must be null, original, match_rms_adamw or spectral_unclamped; "
            f"got {cfg.get('adjust_lr_fn')!r}"
        )
    for key in ("nesterov", "other_nesterov", "normalize_weights", "other_constant_decay"):
        if not isinstance(cfg.get(key), bool):
            raise CnnlabError(f"optimizer.{key} must be true or false, got {cfg.get(key)!r}")


def muon_with_other(
    model: nn.Module,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    ns_steps: int,
    adjust_lr_fn: str | None,
    normalize_weights: bool,
    other: str,
    other_lr: float,
    other_momentum: float,
    other_nesterov: bool,
    other_betas: list[float],
    other_weight_decay: float,
    other_constant_decay: bool,
    decay_norm_bias: bool = True,
    head_lr_mult: float = 1.0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
) -> MuonWithOther:
    """optimizer=muon (configs/optimizer/muon.yaml lists and explains the keys); optim.build_optimizer calls it."""
    cfg = {k: v for k, v in locals().items() if k != "model"}  # the config keys, for the checks below
    own = {k: cfg.pop(k) for k in ("decay_norm_bias", "head_lr_mult", "backbone_lr_mult", "layer_decay")}
    from cnnlab.optim import model_stages, param_groups

    _check(cfg)
    head = {id(p) for p in model_stages(model)[-1]}
    filters = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in head]
    if not filters:
        raise CnnlabError("optimizer=muon: the model has no >= 2-D weights outside its head for Muon to train")
    taken = {id(p) for p in filters}
    groups = []
    for g in param_groups(model, cfg["other_lr"], cfg["other_weight_decay"], **own):
        rest = [p for p in g["params"] if id(p) not in taken]
        if rest:
            if cfg["other_constant_decay"]:  # airbench: lr x weight decay (the shrink per step) alike in every group
                g["weight_decay"] *= cfg["other_lr"] / g["lr"]
            groups.append({**g, "params": rest})
    try:
        muon = FilterMuon(
            [{"params": filters, "name": "muon"}],
            normalize_weights=cfg["normalize_weights"],
            **{k: cfg[k] for k in MUON_KEYS},
        )
        if cfg["other"] == "sgd":
            rest_opt = torch.optim.SGD(groups, momentum=cfg["other_momentum"], nesterov=cfg["other_nesterov"])
        else:
            rest_opt = torch.optim.AdamW(groups, betas=tuple(cfg["other_betas"]))
    except (TypeError, ValueError) as ex:  # torch's own argument checks (e.g. nesterov without momentum)
        raise CnnlabError(f"cannot build optimizer=muon: {ex}") from None
    return MuonWithOther(muon, rest_opt)
