# Tests of deformconv.train.charrnn: the quiz's hand-written char-RNN (P4, P8, P10) on "Deep_Learning".
import pytest
import torch
import torch.nn.functional as F

from deformconv.train.charrnn import (
    QUIZ_TEXT,
    CharRNNParams,
    build_vocab,
    char_to_onehot,
    compute_gradients,
    generate,
    init_params,
    make_sequences,
    rnn_forward,
    sequence_loss,
    train_charrnn,
)


def test_vocab_and_onehot():
    chars, char2idx, idx2char = build_vocab(QUIZ_TEXT)
    assert chars == sorted(set("Deep_Learning")) and len(chars) == 10
    assert all(idx2char[char2idx[c]] == c for c in chars)
    v = char_to_onehot("e", char2idx)
    assert v.shape == (10,) and v.sum() == 1 and v[char2idx["e"]] == 1
    inputs, targets = make_sequences(QUIZ_TEXT, char2idx)
    assert len(inputs) == len(targets) == 12
    assert "".join(idx2char[int(t)] for t in targets) == QUIZ_TEXT[1:]
    with pytest.raises(KeyError, match="not in the vocabulary"):
        char_to_onehot("z", char2idx)


def test_params_are_leaves_with_quiz_shapes():
    """Quiz P8: randn(..., requires_grad=True) * 0.01 is a non-leaf; its .grad stays None."""
    H, V = 16, 10
    p = init_params(V, H, seed=0)
    assert isinstance(p, CharRNNParams)
    shapes = [(H, V), (H, H), (H,), (H,), (V, H), (V,)]
    assert [tuple(t.shape) for t in p] == shapes
    assert all(t.is_leaf and t.requires_grad for t in p)
    assert p.W_xh.abs().max() < 0.1  # scaled by 0.01
    _, char2idx, _ = build_vocab(QUIZ_TEXT)
    inputs, targets = make_sequences(QUIZ_TEXT, char2idx)
    outputs, _ = rnn_forward(inputs, *p, H)
    sequence_loss(outputs, targets).backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in p)
    assert torch.equal(init_params(V, H, seed=0).W_hh, p.W_hh)


def test_rnn_forward_matches_formula():
    torch.manual_seed(0)
    H, V = 5, 4
    p = init_params(V, H, seed=1, scale=0.5)
    xs = [torch.eye(V)[i] for i in (0, 3, 1)]
    outputs, h_last = rnn_forward(xs, *p, H)
    h = torch.zeros(H)
    for x, out in zip(xs, outputs):
        h = torch.tanh(p.W_xh @ x + p.W_hh @ h + p.b_xh + p.b_hh)
        assert torch.allclose(out, p.W_hy @ h + p.b_y)
    assert torch.allclose(h_last, h) and len(outputs) == 3


def test_loss_is_log_softmax_nll():
    logits = [torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, -1.0, 3.0])]
    targets = torch.tensor([1, 2])
    assert torch.allclose(
        sequence_loss(logits, targets), F.cross_entropy(torch.stack(logits), targets)
    )


def test_compute_gradients_one_call_matches_backward():
    """Quiz P4/P10: per-parameter autograd.grad calls fail on the 2nd call and return tuples."""
    _, char2idx, _ = build_vocab(QUIZ_TEXT)
    inputs, targets = make_sequences(QUIZ_TEXT, char2idx)
    p = init_params(10, 16, seed=0, scale=0.3)
    loss = sequence_loss(rnn_forward(inputs, *p, 16)[0], targets)
    grads = compute_gradients(loss, p)
    assert isinstance(grads, CharRNNParams)
    assert [g.shape for g in grads] == [t.shape for t in p]  # tensors, not tuples
    sequence_loss(rnn_forward(inputs, *p, 16)[0], targets).backward()
    for g, t in zip(grads, p):
        assert torch.allclose(g, t.grad, atol=1e-7)
    # plain list input -> tuple of tensors
    loss = sequence_loss(rnn_forward(inputs, *p, 16)[0], targets)
    assert isinstance(compute_gradients(loss, list(p)), tuple)


def test_learns_deep_learning_and_generates_it():
    result = train_charrnn(
        QUIZ_TEXT, hidden_size=16, steps=200, lr=0.02, seed=0, stop_at_accuracy=100.0
    )
    assert result.accuracy == 100.0 and result.steps < 200
    assert all(type(v) is float for v in result.history["loss"])
    assert result.history["loss"][-1] < result.history["loss"][0]
    text = generate(result.params, result.char2idx, result.idx2char, "D", len(QUIZ_TEXT) - 1)
    assert text == QUIZ_TEXT
    sampled = generate(
        result.params,
        result.char2idx,
        result.idx2char,
        "D",
        5,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(sampled) == 6 and sampled[0] == "D"


def test_train_charrnn_errors():
    with pytest.raises(ValueError, match="optimizer"):
        train_charrnn(steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError):
        build_vocab("")
