"""The README's residual network as a user module: `PYTHONPATH=examples python -m study train --plugins
my_module --arch my_resnet --channels 8` (tests/test_readme.py keeps this file and the README block equal)."""

import math

import torch.nn.functional as F
from torch import nn

from study.training.archs import register_architecture


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def my_resnet(config, n_features, n_classes):  # config: the trial's TrialConfig; inputs come flat
    side, c = math.isqrt(n_features), config.channels[0]
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        Block(c),
        Block(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, n_classes),
    )


register_architecture("my_resnet", my_resnet)
