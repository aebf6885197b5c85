"""The method registry: one record per explanation method, and the one request flow.

Every method, built in or added by a user, is a function

    ``fn(model, x, target, **options) -> Tensor``

registered with :func:`register` (as zennit registers composites). ``explain``, the command
line, the evaluation runner, the report and the web page read everything they need to know
about a method from its :class:`Method` record: its label, what it returns, which options it
takes and how many forward passes it costs.

:func:`call` is the one request flow. It validates the model, the input and the options
once, hands the method a private copy of ``x`` (the caller's tensor is never seen by the
model, so in-place operations in the model's forward cannot change it) and a
:class:`~sglrp.targets.Target` that the method resolves on the logits of its own forward
pass, and runs the method inside :func:`sglrp._guard.preserved` with parameter gradients off,
so the model, the input and the global grad mode are as before, also after an exception.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._guard import frozen
from ..targets import Target, TargetSpec
from ..validation import check_input, check_model

__all__ = ["Method", "available", "call", "get", "methods", "register", "unregister"]

MethodFn = Callable[..., Tensor]
Returns = Literal["input", "map"]
LayerRule = Callable[[nn.Module, Tensor], str]


@dataclass(frozen=True)
class Method:
    """What the application needs to know about an explanation method.

    Attributes
    ----------
    name
        The name ``explain(method=...)`` and ``--method`` accept.
    fn
        ``fn(model, x, target, **options) -> Tensor``; ``target`` is a
        :class:`~sglrp.targets.Target` to resolve on the logits of the method's own forward
        pass. With an (N, K) target the method returns a K axis after N.
    label
        Name in pictures and reports ("SGLRP", "Guided Grad-CAM").
    returns
        ``"input"``: relevance shaped like ``x`` (N, C, H, W); ``"map"``: one map per image
        (N, 1, H, W).
    options
        Keyword options ``fn`` accepts (``rules``, ``bounds``, ``layer``, ``seed``, ...).
    family
        ``"lrp"``, ``"gradient"``, ``"cam"``, ``"baseline"``, ``"attention"`` or ``"custom"``.
    forward_passes
        Forward passes of the model per call, whatever the number of targets.
    summary, reference
        One line on what it computes, and where it comes from.
    needs_layers
        False if the method needs nothing but the input gradient, so it also runs on a
        compiled TorchScript model.
    layer_rule
        For a method that works at one layer of the model: ``rule(model, x) -> name``, the
        layer it uses when no ``layer`` is given (reports name it); None otherwise.
    """

    name: str
    fn: MethodFn
    label: str
    returns: Returns = "input"
    options: tuple[str, ...] = ()
    family: str = "custom"
    forward_passes: int = 1
    summary: str = ""
    reference: str = ""
    needs_layers: bool = True
    layer_rule: LayerRule | None = None

    @property
    def takes_rules(self) -> bool:
        """True if the method propagates with LRP rules (takes ``rules`` and ``bounds``)."""
        return "rules" in self.options

    @property
    def takes_layer(self) -> bool:
        """True if the method works at a chosen layer (takes ``layer``)."""
        return "layer" in self.options


_METHODS: dict[str, Method] = {}


def _option_names(fn: MethodFn) -> tuple[str, ...]:
    """Keyword options of ``fn``: its parameters after ``(model, x, target)``."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 3 or any(
        p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params[:3]
    ):
        raise TypeError(
            f"a method is fn(model, x, target, **options); {fn.__name__} takes "
            f"({', '.join(p.name for p in params)})"
        )
    return tuple(p.name for p in params[3:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def register(
    name: str,
    fn: MethodFn | None = None,
    *,
    label: str | None = None,
    returns: Returns = "input",
    family: str = "custom",
    forward_passes: int = 1,
    summary: str = "",
    reference: str = "",
    needs_layers: bool = True,
    layer_rule: LayerRule | None = None,
    replace: bool = False,
) -> Any:
    """Register an explanation method under ``name``; usable as a decorator.

    ``fn(model, x, target, **options)`` gets the model in eval mode with parameter gradients
    off, a private copy of ``x`` and a :class:`~sglrp.targets.Target`; its keyword parameters
    are the options it accepts. Returns ``fn`` wrapped so that calling it directly goes
    through :func:`call` (validation, target resolution, the model guard), with the record in
    its ``method`` attribute.

    Examples
    --------
    >>> @register("saliency", label="Saliency", summary="|gradient|, max over channels")
    ... def saliency(model, x, target):
    ...     ...
    """
    if fn is None:
        return functools.partial(
            register,
            name,
            label=label,
            returns=returns,
            family=family,
            forward_passes=forward_passes,
            summary=summary,
            reference=reference,
            needs_layers=needs_layers,
            layer_rule=layer_rule,
            replace=replace,
        )
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a method name is a lower-case identifier, got {name!r}")
    if name in _METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
    if returns not in ("input", "map"):
        raise ValueError(f"returns must be 'input' or 'map', got {returns!r}")
    record = Method(
        name=name,
        fn=fn,
        label=label or name,
        returns=returns,
        options=_option_names(fn),
        family=family,
        forward_passes=forward_passes,
        summary=summary or (inspect.getdoc(fn) or "").split("\n")[0],
        reference=reference,
        needs_layers=needs_layers,
        layer_rule=layer_rule,
    )
    _METHODS[name] = record

    @functools.wraps(fn)
    def public(model: nn.Module, x: Tensor, target: TargetSpec = "predicted", **options: Any):
        return call(record, model, x, target, **options)

    public.method = record  # type: ignore[attr-defined]
    return public


def unregister(name: str) -> None:
    """Remove a registered method (for tests and interactive sessions)."""
    _METHODS.pop(get(name).name)


def available(family: str | None = None) -> list[str]:
    """Names of the registered methods (of one ``family`` if given), in registration order."""
    return [m.name for m in _METHODS.values() if family is None or m.family == family]


def methods() -> list[Method]:
    """The registered :class:`Method` records, in registration order."""
    return list(_METHODS.values())


def get(name: str | Method) -> Method:
    """The record of method ``name`` (case-insensitive; ``-`` and ``_`` alike)."""
    if isinstance(name, Method):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key in _METHODS:
        return _METHODS[key]
    close = difflib.get_close_matches(key, list(_METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown method {name!r}{hint}; available: {', '.join(_METHODS)}")


def _check_options(record: Method, options: dict[str, Any]) -> None:
    unknown = [k for k in options if k not in record.options]
    if unknown:
        takes = ", ".join(record.options) if record.options else "no options"
        raise TypeError(
            f"method {record.name!r} does not take {', '.join(map(repr, unknown))}; it takes "
            f"{takes}"
        )


def _check_dtype(model: nn.Module, x: Tensor) -> None:
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point() and param.dtype != x.dtype:
        raise TypeError(
            f"x is {x.dtype} but the model's parameters are {param.dtype}; convert one of them "
            f"(x.to({param.dtype}) or model.to({x.dtype}))"
        )
    if param is not None and param.device != x.device:
        raise ValueError(
            f"x is on {x.device} but the model is on {param.device}; move one of them "
            f"(x.to('{param.device}'))"
        )


_ZERO_REASONS = {
    "lrp": "no relevance reached the input (a target logit of 0, all relevance absorbed by "
    "biases, or units without positive contributions under z+)",
    "gradient": "the gradient is zero at the input (every path through inactive ReLUs)",
    "cam": "no feature map has a positive weighted sum (the CAM's ReLU removed everything) "
    "or the layer's output is zero",
    "attention": "the attention map is zero",
}


def _check_result(record: Method, x: Tensor, result: object, multi: bool) -> Tensor:
    if not isinstance(result, Tensor):
        raise TypeError(f"method {record.name!r} returned {type(result).__name__}, not a tensor")
    lead = 2 if multi else 1
    if result.ndim != x.ndim + lead - 1 or result.shape[0] != x.shape[0]:
        raise ValueError(
            f"method {record.name!r} returned shape {tuple(result.shape)} for input "
            f"{tuple(x.shape)}; expected (N{', K' if multi else ''}, C, H, W)"
        )
    if not torch.isfinite(result).all():
        raise ValueError(
            f"method {record.name!r} gave NaN or Inf relevance; check the bounds, the rules' "
            "epsilon and the model's output"
        )
    zero = ~result.flatten(lead).ne(0).any(dim=-1)
    if bool(zero.any()) and record.family != "baseline":
        where = zero.nonzero().tolist()
        warnings.warn(
            f"method {record.name!r} gave an all-zero map for (image{', target' if multi else ''}"
            f") {', '.join(map(str, where[:5]))}{' ...' if len(where) > 5 else ''}: "
            f"{_ZERO_REASONS.get(record.family, _ZERO_REASONS['lrp'])}",
            RuntimeWarning,
            stacklevel=4,
        )
    if result.is_floating_point():
        peak = result.detach().flatten(lead).abs().amax(dim=-1)
        tiny = torch.finfo(result.dtype).tiny
        underflow = (peak > 0) & (peak < tiny)
        if bool(underflow.any()):
            warnings.warn(
                f"method {record.name!r} gave relevance below {result.dtype}'s normal range "
                f"(largest |value| {float(peak[underflow].max()):.3g} < {tiny:.3g}) for "
                f"{int(underflow.sum())} map(s): it underflowed, so the map is mostly rounding "
                "and was slow to compute; the model's activations vanish (random weights, or "
                "batch-norm statistics never set?) — check the model, or explain in float64",
                RuntimeWarning,
                stacklevel=4,
            )
    return result


def call(
    method: str | Method,
    model: nn.Module,
    x: Tensor,
    target: TargetSpec | Target = "predicted",
    **options: Any,
) -> Tensor:
    """Run one method: validate once, guard the model once, resolve the target in the method.

    Parameters
    ----------
    method
        A registered name or record.
    model, x, target, **options
        As for :func:`sglrp.explain`.

    Returns
    -------
    Tensor
        The method's result: (N, C, H, W) or (N, 1, H, W), with a K axis after N for an
        (N, K) target.
    """
    record = get(method)
    check_model(model)
    check_input(x)
    _check_options(record, options)
    if record.forward_passes:
        _check_dtype(model, x)
    target = Target.of(target)
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        private = x.detach().clone()
        try:
            result = record.fn(model, private, target, **options)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "Inference tensors" in first:
                raise RuntimeError(
                    "the model's parameters were created under torch.inference_mode() and "
                    "cannot be used with autograd; create or load the model outside it"
                ) from err
            raise RuntimeError(
                f"method {record.name!r} failed on x of shape {tuple(x.shape)} ({x.dtype}): {first}"
            ) from err
    return _check_result(record, x, result, target.is_multi)
