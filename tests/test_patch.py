"""lstm_triton.patch / unpatch: torch's recurrent modules inside a model swapped for Triton ones.

The swap keeps the very Parameter objects (an optimizer built before keeps
working), the state_dict, device, dtype, training mode and every constructor
option, and the patched model computes what the original did.
"""
import pytest
import torch
from rnn_testing import DEVICE, assert_close
from torch import nn

import lstm_triton
from lstm_triton import TritonGRU, TritonGRUCell, TritonLSTM, TritonLSTMCell

DTYPE = torch.float64


class Tagger(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM with projection -> GRU -> cells -> linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.encoder = nn.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=3,
                               batch_first=True, dropout=0.25)
        self.blocks = nn.ModuleList([nn.GRU(6, 4, bias=False, batch_first=True),
                                     nn.Sequential(nn.ReLU(), nn.LSTMCell(4, 3))])
        self.gru_cell = nn.GRUCell(3, 2)
        self.head = nn.Linear(2, 7)

    def forward(self, tokens):
        x, _ = self.encoder(self.embed(tokens))
        x, _ = self.blocks[0](x)
        h, _ = self.blocks[1][1](self.blocks[1][0](x[:, -1]))
        return self.head(self.gru_cell(h))


class MyLSTM(nn.LSTM):
    """A user's subclass: may override forward, so patch leaves it alone."""


OPTIONS = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
           "bidirectional", "proj_size"]


def recurrent(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.RNNBase, nn.RNNCellBase))}


def test_patch_swaps_types_and_keeps_everything():
    model = Tagger().to(DTYPE).eval()
    before = recurrent(model)
    params_before = dict(model.named_parameters())
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    assert lstm_triton.patch(model) is model
    after = recurrent(model)
    assert {n: type(m) for n, m in after.items()} == {
        "encoder": TritonLSTM, "blocks.0": TritonGRU, "blocks.1.1": TritonLSTMCell,
        "gru_cell": TritonGRUCell}
    for name, module in after.items():
        old = before[name]
        assert module is not old and isinstance(module, type(old))
        for option in OPTIONS:
            if hasattr(old, option):
                assert getattr(module, option) == getattr(old, option), (name, option)
        assert module.training is False and module.backend == "auto"
    for name, p in model.named_parameters():
        assert p is params_before[name], f"{name} is the same Parameter object"
        assert p.dtype == DTYPE and p.device.type == DEVICE
    state = model.state_dict()
    assert state.keys() == state_before.keys()
    assert all(torch.equal(state[k], v) for k, v in state_before.items())


def test_patched_model_computes_the_same_and_trains():
    reference = Tagger().to(DTYPE)
    model = Tagger().to(DTYPE)
    model.load_state_dict(reference.state_dict())
    model.encoder.dropout = reference.encoder.dropout = 0.0  # no random masks to compare
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built BEFORE patching
    model = lstm_triton.patch(model, backend="stepwise")
    tokens = torch.randint(0, 11, (2, 5))

    for model_ in (model, reference):
        out = model_(tokens)
        out.square().sum().backward()
    assert_close(model(tokens), reference(tokens), DTYPE, "patched forward")
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, DTYPE, f"grad of {name}")

    weight = model.encoder.weight_hh_l0_reverse
    before = weight.detach().clone()
    optimizer.step()
    assert not torch.equal(weight, before), "the optimizer updates the weights the model uses"
    assert_close(weight, before - 0.1 * weight.grad, DTYPE, "SGD step")


def test_patch_keeps_training_mode_and_hooks():
    model = nn.Sequential(nn.LSTM(3, 4), nn.GRU(4, 2)).train()
    model[1].eval()
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(type(module)))
    lstm_triton.patch(model)
    assert model[0].training and not model[1].training
    model[0](torch.randn(2, 1, 3))
    assert seen == [TritonLSTM]


def test_patch_leaves_subclasses_and_triton_modules_alone_and_shares_shared_modules():
    shared = nn.GRU(3, 3)
    own = MyLSTM(3, 3)
    done = TritonLSTM(3, 3, backend="reference")
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "own": own, "done": done})
    with pytest.warns(UserWarning, match="MyLSTM alone.*subclasses=True"):
        lstm_triton.patch(model)
    assert type(model["a"]) is TritonGRU and model["b"][0] is model["a"]
    assert model["own"] is own and model["done"] is done and done.backend == "reference"


def test_patch_root_module_and_backend_choice():
    lstm = nn.LSTM(3, 4, num_layers=2)
    patched = lstm_triton.patch(lstm, backend="reference")
    assert type(patched) is TritonLSTM and patched.backend == "reference"
    assert patched.weight_ih_l1 is lstm.weight_ih_l1
    with pytest.raises(ValueError, match="backend must be one of"):
        lstm_triton.patch(nn.GRU(2, 2), backend="cudnn")


def test_unpatch_goes_back():
    model = Tagger()
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    original_types = {n: type(m) for n, m in model.named_modules()}

    model = lstm_triton.unpatch(lstm_triton.patch(model))
    assert {n: type(m) for n, m in model.named_modules()} == original_types
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not hasattr(model.encoder, "backend")
    assert type(lstm_triton.unpatch(TritonGRU(2, 2))) is nn.GRU


def test_the_module_that_was_patched_stays_a_torch_module_of_its_own():
    """patch copies the containers of the module it replaces (parameters, buffers, hooks,
    submodules: the same Parameter objects in new dicts), so the original keeps working as
    the plain torch module it was: a hook, buffer or parameter added to the replacement does
    not appear on it, nor the other way round."""
    lstm = nn.LSTM(3, 4).to(DTYPE)
    patched = lstm_triton.patch(lstm, backend="reference")
    assert patched.weight_hh_l0 is lstm.weight_hh_l0  # the same Parameters...
    seen = []
    patched.register_forward_hook(lambda module, args, out: seen.append("patched"))
    patched.register_buffer("extra", torch.zeros(1, dtype=DTYPE))
    lstm.register_parameter("other", nn.Parameter(torch.zeros(1, dtype=DTYPE)))
    lstm(torch.randn(2, 1, 3, dtype=DTYPE))
    assert seen == []  # ...in containers of its own
    assert "extra" not in dict(lstm.named_buffers())
    assert "other" not in dict(patched.named_parameters())
    unpatched = lstm_triton.unpatch(patched)
    unpatched.register_forward_pre_hook(lambda module, args: seen.append("unpatched"))
    patched(torch.randn(2, 1, 3, dtype=DTYPE))
    assert seen == ["patched"]
