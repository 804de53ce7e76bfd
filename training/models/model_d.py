"""Model D: a fully connected Fashion-MNIST network in the spirit of MNIST model D of Tramèr et al. (2018).

The paper's model D is [fc 300 -> dropout 0.5] x 4 -> fc 10; here two hidden layers of 300, which keeps the weights
near 1 MB. With no convolution at all it is the most different of the models from model A, which is why ensemble
adversarial training uses it as a static source of adversarial examples. Input: float [N, 1, 28, 28] in [0, 1].
"""

import torch
from torch import nn

NUM_CLASSES = 10


class ModelD(nn.Module):
    """[fc 300 -> ReLU -> dropout] x 2 -> fc 10."""

    def __init__(self, hidden: int = 300, layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_model() -> ModelD:
    return ModelD()


def load_model(weights_path: str) -> ModelD:
    """Builds the model from a state_dict file and puts it in eval mode (dropout off)."""
    model = build_model()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()
