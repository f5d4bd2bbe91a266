"""clip-m2df: CLIP-M2DF few-shot action recognition on Hugging Face Transformers.

Importing the package registers the model with the Auto classes, so that `AutoConfig` / `AutoModel`
`.from_pretrained(folder)` work for pip users without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel

from configuration_m2df import M2DFConfig
from modeling_m2df import M2DFModel, M2DFOutput

__version__ = "0.1.0"

AutoConfig.register(M2DFConfig.model_type, M2DFConfig, exist_ok=True)
AutoModel.register(M2DFConfig, M2DFModel, exist_ok=True)

__all__ = ["M2DFConfig", "M2DFModel", "M2DFOutput", "__version__"]
