"""The treatments of nonlinear operations: activations, products, normalisation, softmax,
attention and pooling (methods of :class:`~sglrp.propagation.interceptor.Interceptor`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..rules import Gate, Gradient, Pass, ProportionalPool, Rule, Uniform
from . import attention
from .layers import LinearOp
from .nodes import MaxPoolIndices, PassNode, Replace
from .operations import (
    ACTIVATIONS,
    GATE_FUNCTIONS,
    T,
    active,
    inplace_flag,
    max_pool_args,
    out_of_place,
)
from .surrogates import constant_std_norm, proportional_pool

MATMUL_2D = (torch.matmul, T.matmul, T.__matmul__)


class NonlinearTreatments:
    """Handlers ``(func, args, kwargs, last) -> result`` for nonlinear operations."""

    # -- elementwise nonlinearities ---------------------------------------------------------

    def _activation(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        x = args[0] if args else kwargs["input"]
        rule = self.rule_of(self.module())
        if isinstance(rule, Gradient) or not active(x):
            self.note(func.__name__, "gradient (rule Gradient)")
            return func(*args, **kwargs)
        if rule is not None and not isinstance(rule, Pass):
            raise ValueError(
                f"{self._where(func.__name__)} got the rule {rule.name}; an elementwise "
                "function takes Pass() (the identity rule, the default) or Gradient()"
            )
        inplace = inplace_flag(args, kwargs, ACTIVATIONS[func])
        with torch.no_grad():
            value = out_of_place(func, args, kwargs)
        eps = (rule if isinstance(rule, Pass) else Pass()).epsilon(x.dtype)
        out = PassNode.apply(x, value, eps)
        self.note(func.__name__, "identity rule")
        if func in GATE_FUNCTIONS:
            self.gates[id(out)] = out
        if inplace:
            x.copy_(out)
            if func in GATE_FUNCTIONS:
                self.gates[id(x)] = x
            return x
        return out

    # -- products ---------------------------------------------------------------------------

    def _product_rule(self) -> Rule:
        rule = self.rule_of(self.module())
        return rule if isinstance(rule, Gate | Uniform | Gradient) else Gate()

    def _gate_operand(self, a: Tensor, b: Tensor, rule: Gate, where: str) -> int | None:
        if rule.operand != "auto":
            return int(rule.operand)
        tagged = [self.gates.get(id(t)) is t for t in (a, b)]
        if tagged[0] != tagged[1]:
            return 1 if tagged[1] else 0
        if a.numel() != b.numel():
            shape = torch.broadcast_shapes(a.shape, b.shape)
            if tuple(b.shape) != tuple(shape) and tuple(a.shape) == tuple(shape):
                return 1
            if tuple(a.shape) != tuple(shape) and tuple(b.shape) == tuple(shape):
                return 0
        return None

    def _product(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        a = args[0] if args else kwargs["input"]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if not (active(a) and active(b)):
            return func(*args, **kwargs)
        rule = self._product_rule()
        where = self._where("mul")
        if isinstance(rule, Gradient):
            self.note("mul", "gradient (rule Gradient)")
            return func(*args, **kwargs)
        with torch.no_grad():
            value = a * b
        if isinstance(rule, Uniform):
            surrogate = 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b)
            self.note("mul", "uniform rule (half to each factor)")
        else:
            gate = self._gate_operand(a, b, rule, where)
            if gate is None:
                self.note("mul", "unsupported: product of two activations, gate unknown")
                return func(*args, **kwargs)
            surrogate = a.detach() * b if gate == 0 else a * b.detach()
            self.note("mul", f"gate (factor {gate} held constant)")
        out = Replace.apply(surrogate, value)
        if func in (T.mul_, T.__imul__):
            a.copy_(out)
            return a
        return out

    def _glu(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        x = args[0] if args else kwargs["input"]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        signal, gate = x.chunk(2, dim=dim)
        rule = self._product_rule()
        with torch.no_grad():
            value = func(*args, **kwargs)
        g = torch.sigmoid(gate)
        if isinstance(rule, Gradient):
            return func(*args, **kwargs)
        if isinstance(rule, Uniform):
            surrogate = 0.5 * (signal * g.detach()) + 0.5 * (signal.detach() * g)
        elif rule.operand in ("auto", 1):
            surrogate = signal * g.detach()
        else:
            surrogate = signal.detach() * g
        self.note("glu", f"{'uniform rule' if isinstance(rule, Uniform) else 'gate'}")
        return Replace.apply(surrogate, value)

    def _matmul(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        a, b = args[0], args[1]
        if active(a) and isinstance(b, nn.Parameter) and b.ndim == 2 and func in MATMUL_2D:
            # ``x @ self.weight``: a linear layer written with a matrix product
            op = LinearOp(b.detach().t(), None, sources=(b,), cache=self.cache)
            return self.linear_node(op, a, func(a, b), nn.Linear, func.__name__)
        if not (active(a) and active(b)):
            return func(*args, **kwargs)
        rule = self._product_rule()
        if isinstance(rule, Gradient):
            return func(*args, **kwargs)
        if self.attention == "attnlrp" or isinstance(rule, Uniform):
            with torch.no_grad():
                value = func(a, b)
            surrogate = 0.5 * func(a, b.detach()) + 0.5 * func(a.detach(), b)
            self.note(func.__name__, "uniform rule (half to each factor)")
            return Replace.apply(surrogate, value)
        self.note(func.__name__, "unsupported under CP: product of two activations")
        return func(*args, **kwargs)

    # -- normalisation, softmax, attention, pooling ------------------------------------------

    def _norm(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        rule = self.rule_of(self.module())
        if isinstance(rule, Gradient):
            return func(*args, **kwargs)
        with torch.no_grad():
            value = func(*args, **kwargs)
        surrogate = constant_std_norm(func, args, kwargs)
        self.note(func.__name__, "normalisation with the standard deviation held constant")
        return Replace.apply(surrogate, value)

    def _softmax(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        result = func(*args, **kwargs)
        if self.attention == "cp" and not isinstance(self.rule_of(self.module()), Gradient):
            self.note("softmax", "attention weights held constant (CP-LRP)")
            return result.detach()
        self.note("softmax", "softmax rule (AttnLRP: its gradient)")
        return result

    def _sdpa(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        self.note("scaled_dot_product_attention", f"attention ({self.attention})")
        return attention.scaled_dot_product(self, *args, **kwargs)

    def _mha(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        self.note("multi_head_attention_forward", f"attention ({self.attention})")
        return attention.multi_head(self, *args, **kwargs)

    def _max_pool(self, func, args, kwargs, last):
        self.consume(args, kwargs)
        pool = max_pool_args(args, kwargs)
        rule = self.rule_of(self.module())
        if pool is None or not active(pool[0]) or isinstance(rule, Gradient):
            return func(*args, **kwargs)
        if isinstance(rule, ProportionalPool):
            self.note("max_pool2d", "proportional to the inputs")
            return proportional_pool(*pool, where=self._where("max_pool2d"))
        self.note("max_pool2d", "winner takes all")
        return MaxPoolIndices.apply(*pool)
