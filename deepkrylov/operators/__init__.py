"""deepkrylov.operators: neural operators (DeepONet, MgNO, FNO, converted ordinary networks), PDE data and one
Trainer for all of them."""

# MgNO, FNO and the NNs-to-NOs converter (the module ``deepkrylov.operators.convert``; ``convert.convert(model, res)``)
from . import convert  # noqa: E402
from .convert import UNet, converted_unet  # noqa: E402
from .fno import FNO, SpectralConv  # noqa: E402
from .mgno import MgConv, MgNO  # noqa: E402
from .normalization import Normalized  # noqa: E402

# DeepONet, losses and the shared Trainer
from .deeponet import MLP, CNNBranch, DeepONet, periodic_features, pod_basis  # noqa: E402
from .losses import H1Loss, LpLoss  # noqa: E402
from .trainer import MODELS, TrainConfig, Trainer, make_loss, register_model  # noqa: E402

register_model("deeponet", DeepONet)
register_model("mgno", MgNO)
register_model("fno", FNO)
register_model("converted-unet", converted_unet)
