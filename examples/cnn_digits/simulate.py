"""The CNN app in this process: the Actor-Critic against FedAvg on the same split.

    python -m examples.cnn_digits.simulate --rounds 20

prints one line per policy (final and best test accuracy, the flippers' mean weight).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from accord.simulation import run_app
from examples.cnn_digits.app import NODES, node_app, server_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default="fedavg,actor-critic")
    args = parser.parse_args(argv)
    # One thread, as accord's own commands run: small models gain nothing from more, and on
    # a busy machine torch's spinning worker threads slow a round down many times over.
    torch.set_num_threads(1)
    config = {"seed": args.seed, "nodes": NODES, "flippers": ["node-0", "node-1"]}
    for policy in args.policies.split(","):
        started = time.perf_counter()
        nodes = {f"node-{i}": node_app(f"node-{i}", config) for i in range(NODES)}
        result = run_app(server_app(config), nodes, policy, rounds=args.rounds, config=config)
        accuracies = [t.record.test_accuracy or 0.0 for t in result.rounds]
        last = result.rounds[-1].record
        flippers = sum(last.probabilities[n] for n in config["flippers"])
        print(
            json.dumps(
                {
                    "policy": policy,
                    "rounds": len(result.rounds),
                    "final_test_accuracy": round(accuracies[-1], 4),
                    "best_test_accuracy": round(max(accuracies), 4),
                    "flippers_weight_last_round": round(flippers, 4),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
