"""An orthogonal RNN on the copying-memory task, with ``cupyortho.torch``.

The network reads ``S = 5`` symbols (from an alphabet of 4), then ``D = 10`` blanks with a marker
at the end, and must then output the ``S`` symbols in order.  Predicting blanks and a uniform guess
at the end (no memory) costs ``S log(4) / (D + 2S)`` nats per step: the baseline.  The recurrent
matrix is ``W = U(theta)`` in SO(64) from a :class:`cupyortho.torch.Orthogonal` layer: its norm
is exactly 1, so the hidden state neither explodes nor vanishes through ``W`` over the sequence.
``W`` is formed once per batch (``layer.matrix()``, one custom op with cupyortho's VJP) and used
by a plain matmul at every time step.
"""

import math
import time

import torch

import cupyortho.torch as ct
from _common import pyplot, save

torch.manual_seed(0)
torch.set_num_threads(1)
S, D, A, hidden, batch, steps = 5, 10, 4, 64, 128, 1200
L = D + 2 * S                                   # sequence length
baseline = S * math.log(A) / L


def copying_batch(batch):
    """Inputs (L, batch) of tokens: 0 blank, 1..A symbols, A+1 marker; targets (L, batch)."""
    symbols = torch.randint(1, A + 1, (batch, S))
    x = torch.zeros(batch, L, dtype=torch.long)
    y = torch.zeros(batch, L, dtype=torch.long)
    x[:, :S] = symbols
    x[:, S + D - 1] = A + 1
    y[:, -S:] = symbols
    return x.T, y.T


class OrthogonalRNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(A + 2, hidden)
        self.recurrent = ct.Orthogonal(hidden)          # W = U(theta), theta starts at 0 (W = I)
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.readout = torch.nn.Linear(hidden, A + 1)

    def forward(self, x):
        W = self.recurrent.matrix()                     # (hidden, hidden), once per batch
        h = torch.zeros(x.shape[1], hidden)
        logits = []
        for t in range(x.shape[0]):
            h = torch.tanh(h @ W.T + self.embed(x[t]) + self.bias)
            logits.append(self.readout(h))
        return torch.stack(logits)


model = OrthogonalRNN()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
losses = []
t0 = time.perf_counter()
for step in range(steps):
    x, y = copying_batch(batch)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, A + 1), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
elapsed = time.perf_counter() - t0

with torch.no_grad():
    x, y = copying_batch(1000)
    pred = model(x).argmax(-1)
    accuracy = (pred[-S:] == y[-S:]).float().mean().item()
    W = model.recurrent.matrix()
    orth = (W.T @ W - torch.eye(hidden)).abs().max().item()
final = sum(losses[-20:]) / 20
print(f"copying task: S = {S}, delay {D}, length {L}; hidden {hidden}; {steps} Adam steps in {elapsed:.1f} s")
print(f"loss: start {losses[0]:.3f}, end {final:.4f} (no-memory baseline {baseline:.3f})")
print(f"accuracy on the {S} recalled symbols of 1000 fresh sequences: {accuracy:.3f}")
print(f"max |WᵀW - I| = {orth:.1e}")

plt = pyplot()
fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
ax[0].semilogy(losses, lw=0.8)
ax[0].axhline(baseline, color="gray", ls="--", lw=0.8, label="no-memory baseline")
ax[0].set_xlabel("Adam step")
ax[0].set_ylabel("cross-entropy (nats per step)")
ax[0].legend()
ax[1].imshow(torch.cat([x[:, :8], torch.full((L, 1), -1), pred[:, :8]], 1).T, cmap="tab10", vmin=-1, vmax=8)
ax[1].set_title("8 inputs (top) and the network's outputs (bottom)")
ax[1].set_xlabel("time step")
ax[1].set_yticks([])
fig.tight_layout()
save("rnn_copying_torch", fig, {"baseline": baseline, "final_loss": final, "accuracy": accuracy})
