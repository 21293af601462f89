import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def have_fashion_mnist() -> bool:
    from dp_autoencoder.data import DataError, find_fashion_mnist

    try:
        find_fashion_mnist()
        return True
    except DataError:
        return False


needs_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST idx files not installed")
