"""The averaging check of session 17 (benchmarks/results/fashion_mnist_recipe.md, "Next"):
the uniform mean of the two Fashion-MNIST cycles' final weights, BN statistics recomputed over
the training set without augmentation, one test evaluation. Measured 95.15%."""

import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from mobilenets.data import classification as datasets
from mobilenets.tasks.classification.inference import load_checkpoint
from mobilenets.engine.loop import evaluate, ordered_loader

RESULTS = Path(__file__).resolve().parent / "results"
torch.set_num_threads(2)
a = load_checkpoint(RESULTS / "fmnist-a14-60-b256" / "last.safetensors")
b = load_checkpoint(RESULTS / "fmnist-a14-ft20" / "last.safetensors")
model = a.model
sb = b.model.state_dict()
with torch.no_grad():
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v.copy_((v + sb[k]) / 2)
splits = datasets.load_splits("fashion-mnist", a.preprocessing.resolution)
splits.train.transform = a.preprocessing.eval_transform()
splits.val.transform = a.preprocessing.eval_transform()
t = time.time()
train_loader = ordered_loader(splits.train, 256)
update_bn(train_loader, model)  # it reads the images, the first item of each batch
print("bn pass", round(time.time() - t), "s", flush=True)
e = evaluate(model, ordered_loader(splits.val, 256), 10)
print("average test top-1", e.top1)
