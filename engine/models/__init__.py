"""The HaineiFRDM networks (paper Sec. 3.1, Fig. 2). Importing this package imports torch and diffusers."""

from .config import FRDMConfig
from .frdm import FRDMOutput, HaineiFRDM
from .fusion import FourierEmbedder, GlobalFrameFusion, GlobalPromptFusion, LocationFusion
from .guidance import RestorationGuidanceNetwork
from .preprocess import PreprocessModule
from .texture import FrequencyReference, TextureReconstruction

__all__ = [
    "FRDMConfig",
    "FRDMOutput",
    "FourierEmbedder",
    "FrequencyReference",
    "GlobalFrameFusion",
    "GlobalPromptFusion",
    "HaineiFRDM",
    "LocationFusion",
    "PreprocessModule",
    "RestorationGuidanceNetwork",
    "TextureReconstruction",
]
