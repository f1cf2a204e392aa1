# Character-level vanilla RNN from raw tensors (quiz P4, P8, P10): vocab, leaf params, grads, training.
"""A hand-written character RNN, as in the quiz, with its bugs fixed.

``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_xh + b_hh)``, ``logits_t = W_hy h_t + b_y``,
loss = mean over steps of ``nll_loss(log_softmax(logits_t), target_t)``.

Quiz bugs fixed here:

* P8: ``torch.randn(H, V, requires_grad=True) * 0.01`` is the *product* of a leaf and a
  constant, a non-leaf tensor whose ``.grad`` stays ``None`` and which an optimizer
  cannot update. :func:`init_params` scales first, then calls ``requires_grad_()``.
* P4 / P10: calling ``torch.autograd.grad(loss, p)`` once per parameter frees the graph
  after the first call (the second raises ``RuntimeError``) and returns a *tuple*, not
  a tensor (``grad.shape`` raises ``AttributeError``). :func:`compute_gradients`
  takes every gradient in one call and returns one tensor per parameter.
* P10: the initial hidden state needs no ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "QUIZ_TEXT",
    "CharRNNParams",
    "CharRNNResult",
    "build_vocab",
    "char_to_onehot",
    "compute_gradients",
    "generate",
    "init_params",
    "make_sequences",
    "next_char_accuracy",
    "rnn_forward",
    "sequence_loss",
    "train_charrnn",
]

#: The quiz's training text.
QUIZ_TEXT = "Deep_Learning"


class CharRNNParams(NamedTuple):
    """The six parameters, all leaf tensors with ``requires_grad=True``.

    Shapes (``H`` hidden size, ``V`` vocabulary size): ``W_xh [H, V]``, ``W_hh [H, H]``,
    ``b_xh [H]``, ``b_hh [H]``, ``W_hy [V, H]``, ``b_y [V]``. Being a tuple it unpacks
    into :func:`rnn_forward`: ``rnn_forward(inputs, *params, hidden_size)``.

    Example::

        >>> params = init_params(vocab_size=5, hidden_size=3)
        >>> [tuple(t.shape) for t in params]
        [(3, 5), (3, 3), (3,), (3,), (5, 3), (5,)]
        >>> all(t.is_leaf and t.requires_grad for t in params)
        True
    """

    W_xh: Tensor
    W_hh: Tensor
    b_xh: Tensor
    b_hh: Tensor
    W_hy: Tensor
    b_y: Tensor


def build_vocab(text: str) -> tuple[list[str], dict[str, int], dict[int, str]]:
    """``(chars, char2idx, idx2char)``: sorted distinct characters and both index maps.

    Example::

        >>> chars, char2idx, idx2char = build_vocab("hello")
        >>> chars, char2idx["l"], idx2char[3]
        (['e', 'h', 'l', 'o'], 2, 'o')
    """
    if not text:
        raise ValueError("text must not be empty")
    chars = sorted(set(text))
    char2idx = {ch: i for i, ch in enumerate(chars)}
    idx2char = {i: ch for i, ch in enumerate(chars)}
    return chars, char2idx, idx2char


def char_to_onehot(char: str, char2idx: dict[str, int], vocab_size: int | None = None) -> Tensor:
    """``Tensor[V]`` float32 with a 1 at ``char2idx[char]`` (``V = len(char2idx)`` by default).

    Raises:
        KeyError: ``char`` is not in the vocabulary (the message lists it).

    Example::

        >>> _, char2idx, _ = build_vocab("hello")
        >>> char_to_onehot("l", char2idx)
        tensor([0., 0., 1., 0.])
    """
    if char not in char2idx:
        raise KeyError(f"character {char!r} is not in the vocabulary {sorted(char2idx)}")
    vec = torch.zeros(vocab_size if vocab_size is not None else len(char2idx))
    vec[char2idx[char]] = 1.0
    return vec


def make_sequences(text: str, char2idx: dict[str, int]) -> tuple[list[Tensor], Tensor]:
    """Next-character pairs: inputs ``text[:-1]`` as one-hot ``Tensor[V]`` each, targets
    ``text[1:]`` as ``Tensor[T-1]`` int64 indices.

    Example::

        >>> _, char2idx, _ = build_vocab("hello")
        >>> inputs, targets = make_sequences("hello", char2idx)
        >>> len(inputs), inputs[0].shape, targets
        (4, torch.Size([4]), tensor([0, 2, 2, 3]))
    """
    if len(text) < 2:
        raise ValueError("text needs at least 2 characters to have a next character")
    inputs = [char_to_onehot(ch, char2idx) for ch in text[:-1]]
    targets = torch.tensor([char2idx[ch] for ch in text[1:]], dtype=torch.long)
    return inputs, targets


def init_params(
    vocab_size: int, hidden_size: int = 16, seed: int = 0, scale: float = 0.01
) -> CharRNNParams:
    """Small random weights and zero biases as **leaf** float32 tensors (quiz P8 fixed).

    Weights are ``N(0, 1) * scale`` drawn from a private ``torch.Generator(seed)``; the
    scaling happens *before* ``requires_grad_()``, so every tensor is a leaf whose
    ``.grad`` is populated by ``backward()``.

    Example::

        >>> params = init_params(vocab_size=4, hidden_size=8, seed=0)
        >>> params.W_xh.shape, params.W_xh.is_leaf, params.W_xh.requires_grad
        (torch.Size([8, 4]), True, True)
        >>> bool(params.W_xh.abs().max() < 0.1), params.b_y.abs().sum().item()
        (True, 0.0)
    """
    g = torch.Generator().manual_seed(int(seed))
    H, V = hidden_size, vocab_size

    def weight(*shape: int) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return CharRNNParams(
        W_xh=weight(H, V),
        W_hh=weight(H, H),
        b_xh=torch.zeros(H, requires_grad=True),
        b_hh=torch.zeros(H, requires_grad=True),
        W_hy=weight(V, H),
        b_y=torch.zeros(V, requires_grad=True),
    )


def rnn_forward(
    inputs: Sequence[Tensor] | Tensor,
    W_xh: Tensor,
    W_hh: Tensor,
    b_xh: Tensor,
    b_hh: Tensor,
    W_hy: Tensor,
    b_y: Tensor,
    hidden_size: int,
    h0: Tensor | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Unroll the RNN over ``inputs`` (quiz P4).

    Args:
        inputs: ``T`` one-hot vectors ``Tensor[V]`` (a list, or ``Tensor[T, V]``).
        W_xh ... b_y: see :class:`CharRNNParams`.
        hidden_size: ``H``.
        h0: initial hidden state ``Tensor[H]``; zeros (no grad needed) by default.

    Returns:
        ``(outputs, h)``: ``T`` logits ``Tensor[V]`` and the last hidden state ``Tensor[H]``,
        in the parameters' dtype.

    Example::

        >>> _, char2idx, _ = build_vocab("hello")
        >>> inputs, _ = make_sequences("hello", char2idx)
        >>> params = init_params(len(char2idx), hidden_size=8)
        >>> outputs, h = rnn_forward(inputs, *params, hidden_size=8)
        >>> len(outputs), outputs[0].shape, h.shape
        (4, torch.Size([4]), torch.Size([8]))
    """
    h = torch.zeros(hidden_size, dtype=W_xh.dtype, device=W_xh.device) if h0 is None else h0
    outputs: list[Tensor] = []
    for x_t in inputs:
        h = torch.tanh(W_xh @ x_t + W_hh @ h + b_xh + b_hh)
        outputs.append(W_hy @ h + b_y)
    return outputs, h


def sequence_loss(outputs: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Mean next-character NLL: ``nll_loss(log_softmax(stack(outputs), dim=1), targets)``.

    ``outputs``: ``T`` logits ``Tensor[V]``; ``targets``: ``Tensor[T]`` int64. Scalar result.

    Example::

        >>> import math
        >>> loss = sequence_loss([torch.zeros(4)] * 3, torch.tensor([0, 2, 3]))
        >>> round(loss.item(), 4), round(math.log(4), 4)  # uniform logits: log(V)
        (1.3863, 1.3863)
    """
    log_probs = F.log_softmax(torch.stack(list(outputs)), dim=1)  # [T, V]
    return F.nll_loss(log_probs, targets)


def compute_gradients(
    loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False
) -> tuple[Tensor, ...]:
    """d(loss)/d(param) for every parameter in **one** ``torch.autograd.grad`` call.

    Returns one gradient tensor per parameter, each shaped like it (a
    :class:`CharRNNParams` of gradients when ``params`` is one). Set ``retain_graph``
    only if the graph is needed again afterwards.

    Example::

        >>> _, char2idx, _ = build_vocab("hello")
        >>> inputs, targets = make_sequences("hello", char2idx)
        >>> params = init_params(len(char2idx), hidden_size=8)
        >>> loss = sequence_loss(rnn_forward(inputs, *params, hidden_size=8)[0], targets)
        >>> grads = compute_gradients(loss, params)
        >>> type(grads).__name__, grads.W_hy.shape == params.W_hy.shape
        ('CharRNNParams', True)
    """
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph)
    if isinstance(params, CharRNNParams):
        return CharRNNParams(*grads)
    return tuple(grads)


def next_char_accuracy(params: CharRNNParams, inputs: Sequence[Tensor], targets: Tensor) -> float:
    """Percent of positions where the arg-max prediction is the next character.

    Example::

        >>> _, char2idx, _ = build_vocab("hello")
        >>> inputs, targets = make_sequences("hello", char2idx)
        >>> params = init_params(len(char2idx), hidden_size=8, scale=0.0)  # every logit 0: predicts 'e'
        >>> next_char_accuracy(params, inputs, targets)  # 'e' is right for one of "ello"
        25.0
    """
    with torch.no_grad():
        outputs, _ = rnn_forward(inputs, *params, params.W_hh.shape[0])
        preds = torch.stack(outputs).argmax(dim=1)
    return 100.0 * (preds == targets).float().mean().item()


def generate(
    params: CharRNNParams,
    char2idx: dict[str, int],
    idx2char: dict[int, str],
    seed_char: str,
    length: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """Generate ``length`` characters after ``seed_char`` (the result starts with it).

    ``temperature == 0`` picks the arg-max (deterministic); otherwise samples from
    ``softmax(logits / temperature)`` with ``generator``.

    Example::

        >>> chars, char2idx, idx2char = build_vocab("hello")
        >>> params = init_params(len(chars), hidden_size=8, scale=0.0)  # every logit 0: arg-max 'e'
        >>> generate(params, char2idx, idx2char, "h", length=3)
        'heee'
    """
    hidden = params.W_hh.shape[0]
    out = [seed_char]
    x = char_to_onehot(seed_char, char2idx)
    h = None
    with torch.no_grad():
        for _ in range(length):
            logits, h = rnn_forward([x], *params, hidden, h0=h)
            if temperature > 0:
                probs = F.softmax(logits[0] / temperature, dim=0)
                idx = int(torch.multinomial(probs, 1, generator=generator).item())
            else:
                idx = int(logits[0].argmax().item())
            out.append(idx2char[idx])
            x = char_to_onehot(idx2char[idx], char2idx)
    return "".join(out)


@dataclass
class CharRNNResult:
    """Outcome of :func:`train_charrnn`; ``history`` holds floats per step.

    Example::

        >>> result = train_charrnn("hello", hidden_size=8, steps=2)
        >>> result.chars, result.steps, len(result.history["loss"])
        (['e', 'h', 'l', 'o'], 2, 2)
    """

    params: CharRNNParams
    chars: list[str]
    char2idx: dict[str, int]
    idx2char: dict[int, str]
    accuracy: float
    loss: float
    steps: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_charrnn(
    text: str = QUIZ_TEXT,
    hidden_size: int = 16,
    steps: int = 300,
    lr: float = 0.02,
    seed: int = 0,
    optimizer: str = "adam",
    clip: float = 5.0,
    stop_at_accuracy: float | None = None,
    callback: Callable[[int, float, float], None] | None = None,
) -> CharRNNResult:
    """Learn next-character prediction on ``text`` with full-sequence BPTT.

    Each step: forward over ``text[:-1]``, :func:`sequence_loss` against ``text[1:]``,
    :func:`compute_gradients` (one ``autograd.grad`` call), gradient-norm clipping to
    ``clip``, then an ``adam`` or plain ``sgd`` update of the leaf parameters.

    Args:
        stop_at_accuracy: stop early once next-character accuracy reaches this percent.
        callback: ``callback(step, loss, accuracy)`` after each step.

    Returns:
        :class:`CharRNNResult` (final accuracy in percent, history of ``step``,
        ``loss``, ``accuracy`` as floats).

    Example::

        >>> result = train_charrnn("hello", hidden_size=8, steps=3)
        >>> result.steps, result.history["step"]
        (3, [1.0, 2.0, 3.0])
        >>> result.history["loss"][-1] < result.history["loss"][0]
        True
    """
    chars, char2idx, idx2char = build_vocab(text)
    inputs, targets = make_sequences(text, char2idx)
    params = init_params(len(chars), hidden_size, seed)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose 'adam' or 'sgd'")
    history: dict[str, list[float]] = {"step": [], "loss": [], "accuracy": []}
    loss_value, acc = float("nan"), 0.0
    step = 0
    for step in range(1, steps + 1):
        outputs, _ = rnn_forward(inputs, *params, hidden_size)
        loss = sequence_loss(outputs, targets)
        grads = compute_gradients(loss, params)
        if clip:
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            factor = min(1.0, clip / (float(norm) + 1e-12))
            grads = tuple(g * factor for g in grads)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        loss_value = loss.item()
        with torch.no_grad():
            acc = 100.0 * (torch.stack(outputs).argmax(dim=1) == targets).float().mean().item()
        history["step"].append(float(step))
        history["loss"].append(loss_value)
        history["accuracy"].append(acc)
        if callback is not None:
            callback(step, loss_value, acc)
        if stop_at_accuracy is not None and acc >= stop_at_accuracy:
            break
    final_acc = next_char_accuracy(params, inputs, targets)
    for p in params:
        p.grad = None
    return CharRNNResult(params, chars, char2idx, idx2char, final_acc, loss_value, step, history)
