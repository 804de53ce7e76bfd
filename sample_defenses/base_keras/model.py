"""Model C in Keras: a small Fashion-MNIST CNN in the spirit of MNIST model C of Tramèr et al. (2018).

The paper's model C is conv 32 3x3 -> conv 64 3x3 -> dropout -> fc 128 -> dropout -> fc 10. Here each convolution
is followed by 2x2 max pooling, which keeps the weights under 1 MB. A different framework and architecture from the
torch models, trained by neither adversarial training run: attacks computed on it are black-box (transfer) attacks
against the torch defenses. Input: float [N, 28, 28, 1] in [0, 1] (channels last); output: logits [N, 10].
"""

import keras
from keras import layers

NUM_CLASSES = 10


def build_model(conv_dropout: float = 0.25, fc_dropout: float = 0.5) -> keras.Model:
    """conv 32 3x3 -> pool -> conv 64 3x3 -> pool -> dropout -> fc 128 -> dropout -> fc 10, ReLU activations."""
    inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu")(inputs)  # 28 -> 26
    x = layers.MaxPooling2D(2)(x)  # 26 -> 13
    x = layers.Conv2D(64, 3, activation="relu")(x)  # 13 -> 11
    x = layers.MaxPooling2D(2)(x)  # 11 -> 5
    x = layers.Dropout(conv_dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(fc_dropout)(x)
    outputs = layers.Dense(NUM_CLASSES)(x)
    return keras.Model(inputs, outputs, name="model_c")


def load_model(weights_path: str) -> keras.Model:
    """Builds the model and reads its weights (a Keras `.weights.h5` file); call it with training=False."""
    model = build_model()
    model.load_weights(weights_path)
    return model
