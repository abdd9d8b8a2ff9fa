"""A recurrent policy evaluating a batch of rollouts with episode starts, two ways.

    python examples/rl_rollouts.py                    # tiny sizes: CPU interpreter
    python examples/rl_rollouts.py --steps 128 --envs 64 --hidden 256   # on a GPU

PPO-LSTM style training (CleanRL, sb3-contrib's RecurrentPPO) re-evaluates the stored
rollout of T steps x B environments, where some episodes end inside the rollout. Without
resets the only correct way with nn.LSTM is the per-step loop those libraries run: one call
per step, the state multiplied by (1 - done) in between. TritonLSTM takes the episode starts
as `resets` and runs the whole rollout in one call. The script runs both ways on the same
module (so the comparison is of the two ways, not of two libraries), prints the largest
difference of the policy's logits, values and gradients, and the time of each way on the
device it runs on (under the CPU interpreter the times mean nothing).
"""
import argparse
import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before lstm_triton defines its kernels

from torch import nn

from lstm_triton import TritonLSTM


class Policy(nn.Module):
    def __init__(self, obs, hidden, actions, lstm):
        super().__init__()
        self.encoder = nn.Linear(obs, hidden)
        self.lstm = lstm
        self.actor, self.critic = nn.Linear(hidden, actions), nn.Linear(hidden, 1)

    def heads(self, features):
        return self.actor(features), self.critic(features)


def per_step_loop(policy, obs, state, starts):
    """What RL libraries run today: one LSTM call per step, the state masked by 1 - done."""
    features = []
    for t in range(obs.shape[0]):
        keep = (~starts[t]).to(obs.dtype)[None, :, None]
        out, state = policy.lstm(torch.relu(policy.encoder(obs[t:t + 1])),
                                 tuple(s * keep for s in state))
        features.append(out)
    return policy.heads(torch.cat(features)), state


def one_call(policy, obs, state, starts):
    out, state = policy.lstm(torch.relu(policy.encoder(obs)), state, resets=starts)
    return policy.heads(out), state


def evaluate(way, policy, obs, state, starts):
    """Logits, values, and the gradients of a PPO-like loss; with the time it took."""
    policy.zero_grad()
    sync = torch.cuda.synchronize if obs.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    (logits, values), _ = way(policy, obs, state, starts)
    loss = logits.logsumexp(-1).mean() + values.pow(2).mean()
    loss.backward()
    sync()
    grads = [p.grad.clone() for p in policy.parameters()]
    return logits, values, grads, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--obs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--actions", type=int, default=3)
    parser.add_argument("--done", type=float, default=0.1, help="episode end probability")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    lstm = TritonLSTM(args.hidden, args.hidden, device=device, backend="stepwise")
    policy = Policy(args.obs, args.hidden, args.actions, lstm).to(device)
    obs = torch.randn(args.steps, args.envs, args.obs, device=device)
    starts = torch.rand(args.steps, args.envs, device=device) < args.done
    state = tuple(torch.randn(1, args.envs, args.hidden, device=device) for _ in range(2))
    results = {}
    for name, way in [("per-step loop", per_step_loop), ("one call with resets", one_call)]:
        evaluate(way, policy, obs, state, starts)  # warm-up (kernel compilation)
        results[name] = evaluate(way, policy, obs, state, starts)
    (l1, v1, g1, t1), (l2, v2, g2, t2) = results.values()
    diff = max([(l1 - l2).abs().max().item(), (v1 - v2).abs().max().item()]
               + [(a - b).abs().max().item() for a, b in zip(g1, g2)])
    print(f"{args.steps} steps x {args.envs} envs, {int(starts.sum())} episode starts, "
          f"hidden {args.hidden}, on {device}")
    print(f"per-step loop:        {t1 * 1e3:9.1f} ms (forward + backward)")
    print(f"one call with resets: {t2 * 1e3:9.1f} ms ({t1 / t2:.1f}x)")
    print(f"max |difference| of logits, values and gradients: {diff:.2e}")
    return diff


if __name__ == "__main__":
    main()
