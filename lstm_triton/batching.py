"""vmap (batching) rules for the custom ops in ops.py.

Autograd runs a layer's backward under `vmap` whenever it differentiates a batch of
cotangents at once: `torch.autograd.grad(..., is_grads_batched=True)`,
`torch.autograd.functional.jacobian / hessian(..., vectorize=True)`, and `gradcheck`'s
batched-gradient check (on by default in torch's own module tests). The ops are opaque to
functorch, so without a rule every such call failed with "Batching rule not implemented
for lstm_triton::rnn_layer_backward".

The rule is the definition of vmap: run the op once per member of the vmapped dimension,
through the kernels, and stack the results. The kernels already batch over the sequences
of a call; a vmapped dimension on top is a different thing (for the backward it is
usually many cotangents of one forward), so one call per member is the honest mapping.
It is written over the op's arguments generically (whatever tensors are batched, at any
position), so adding arguments to the ops needs no change here.
"""
import torch


def _member(arg, dim, index):
    """Member `index` of a batched tensor argument (contiguous: the kernels index rows
    densely), or the argument itself when it is not batched at this level."""
    return arg if dim is None else arg.select(dim, index).contiguous()


def _loop_rule(op):
    def rule(info, in_dims, *args, **kwargs):
        results = [op(*[_member(a, d, b) for a, d in zip(args, in_dims)], **kwargs)
                   for b in range(info.batch_size)]
        # Every output slot is stacked, the empty placeholders too: their (batch, 0) stack
        # keeps each member's logical shape (0,).
        stacked = [torch.stack(list(slot)) for slot in zip(*results)]
        container = type(results[0])  # the op's own output structure: tuple or list
        return container(stacked), container([0] * len(stacked))
    return rule


def register(*ops):
    """Give each custom op the per-member loop as its batching rule."""
    for op in ops:
        torch.library.register_vmap(op, _loop_rule(op))
