"""The uniform mean of two Fashion-MNIST runs' final weights (the same architecture), BN
statistics recomputed over the training set without augmentation, then one test evaluation.

For the recipe's two cosine cycles (a14-60-b256 and the 20-epoch a14-ft20 started from its
weights) this measured 95.15% test top-1, below both (benchmarks/results/fashion_mnist_recipe.md).

    .venv/bin/python benchmarks/fmnist_average.py RUN_A/last.safetensors RUN_B/last.safetensors
"""

import argparse
import time

import torch
from torch.optim.swa_utils import update_bn

from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform
from mobilenets.engine.checkpoint import load_checkpoint
from mobilenets.engine.evaluate import evaluate
from mobilenets.engine.loop import ordered_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="a checkpoint (.safetensors) or run folder")
    parser.add_argument("second", help="a checkpoint of the same model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    first, second = load_checkpoint(args.first), load_checkpoint(args.second)
    model, theirs = first.model, second.model.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_((value + theirs[key]) / 2)
    splits = load_splits("fashion-mnist", first.preprocessing.resolution)
    splits.train.transform = splits.val.transform = eval_transform(first.preprocessing)
    started = time.time()
    update_bn(ordered_loader(splits.train, 256), model)  # it reads each batch's first item
    print(f"BN statistics recomputed in {time.time() - started:.0f} s", flush=True)
    evaluation = evaluate(model, ordered_loader(splits.val, 256), len(first.classes))
    print(f"average of the two: test top-1 {100 * evaluation.top1:.2f}%")


if __name__ == "__main__":
    main()
