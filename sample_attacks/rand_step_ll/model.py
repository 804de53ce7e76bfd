"""Model A: a small Fashion-MNIST CNN in the spirit of MNIST model A of Tramèr et al. (2018).

The paper's model A is conv 64 5x5 -> conv 64 5x5 -> dropout -> fc 128 -> dropout -> fc 10. Here the convolutions
have 32 and 64 filters and each is followed by 2x2 max pooling, which keeps the weights under 1 MB (every white-box
attack ships a copy). base_torch, adv_torch and ens_adv_torch share this file and differ only in their weights.
Input: float [N, 1, 28, 28] in [0, 1]; output: logits [N, 10].
"""

import torch
from torch import nn

NUM_CLASSES = 10


class ModelA(nn.Module):
    """conv 32 5x5 -> pool -> conv 64 5x5 -> pool -> dropout -> fc 128 -> dropout -> fc 10, ReLU activations."""

    def __init__(self, conv_dropout: float = 0.25, fc_dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5),  # 28 -> 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(32, 64, kernel_size=5),  # 12 -> 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Dropout(conv_dropout),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Dropout(fc_dropout),
            nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model() -> ModelA:
    return ModelA()


def load_model(weights_path: str) -> ModelA:
    """Builds the model from a state_dict file and puts it in eval mode (dropout off)."""
    model = build_model()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()
