"""The PyTorch twin of litetorch's GPT lives in the package (the training benchmark needs it after
`pip install`); tests and notebook 17 import it from here as before."""
from litetorch.bench.torch_gpt import TorchGPT, param_groups  # noqa: F401
