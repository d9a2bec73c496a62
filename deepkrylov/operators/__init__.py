"""deepkrylov.operators"""

# MgNO, FNO and the NNs-to-NOs converter (the module ``deepkrylov.operators.convert``; ``convert.convert(model, res)``)
from . import convert  # noqa: E402
from .convert import UNet, converted_unet  # noqa: E402
from .fno import FNO, SpectralConv  # noqa: E402
from .mgno import MgConv, MgNO  # noqa: E402
