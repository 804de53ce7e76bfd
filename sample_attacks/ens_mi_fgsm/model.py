"""Model B: an all-convolutional Fashion-MNIST CNN in the spirit of MNIST model B of Tramèr et al. (2018).

The paper's model B is dropout 0.2 -> conv 64 8x8 /2 -> conv 128 6x6 /2 -> conv 128 5x5 -> dropout 0.5 -> fc 10.
Here the convolutions have 32, 64 and 64 filters (the first two padded), which keeps the weights under 1 MB.
No pooling and large strided filters: a different architecture from model A, so that attacks computed on it are
black-box (transfer) attacks against the A-based defenses. Input: float [N, 1, 28, 28] in [0, 1]; output: logits.
"""

import torch
from torch import nn

NUM_CLASSES = 10


class ModelB(nn.Module):
    """dropout -> conv 32 8x8 /2 -> conv 64 6x6 /2 -> conv 64 5x5 -> dropout -> fc 10, ReLU activations."""

    def __init__(self, input_dropout: float = 0.2, fc_dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Conv2d(1, 32, kernel_size=8, stride=2, padding=3),  # 28 -> 14
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=6, stride=2, padding=2),  # 14 -> 7
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=5),  # 7 -> 3
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Dropout(fc_dropout), nn.Flatten(), nn.Linear(64 * 3 * 3, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model() -> ModelB:
    return ModelB()


def load_model(weights_path: str) -> ModelB:
    """Builds the model from a state_dict file and puts it in eval mode (dropout off)."""
    model = build_model()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()
