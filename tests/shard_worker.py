"""Run by test_sharding under torchrun: certify the toy data set into argv[1]."""

import sys

import torch

from dp_autoencoder.certify import CertifySettings, certify_dataset
from dp_autoencoder.distributed import process_group
from toy import CLASSES, toy_data, toy_model

if __name__ == "__main__":
    torch.set_num_threads(1)
    settings = CertifySettings(n0=20, n=60, alpha=0.01, eta=0.95, batch_size=int(sys.argv[2]), images_per_step=2)
    with process_group(torch.device("cpu")):
        certify_dataset(toy_model(), toy_data(9), settings, sys.argv[1], CLASSES, progress=False)
