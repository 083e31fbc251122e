"""MLflow pyfunc for a bpho super-resolution model (MLflow models-from-code: this file is
logged as the model's code, nothing is pickled; the weights are safetensors).

``mlflow.pyfunc.load_model("models:/NAME/latest").predict(lr)`` takes a (Y, X) LR image, or
a (T, Y, X) stack (every frame; multi-frame models see t-2..t+2), uint16 or float, and
returns the HR array (`scale` times larger, float32, in the input's intensity units),
tiled with overlap and blended inside, so large images fit in memory.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class BphoSuperResolution(PythonModel):
    """The MLflow pyfunc of a bpho model: images in, super-resolved images out."""

    def load_context(self, context):
        """Load the bpho model folder logged as the ``model_dir`` artifact."""
        from bpho.inference import load_model

        self.model = load_model(context.artifacts["model_dir"], device="auto")

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """Super-resolve a (Y, X) image or a (T, Y, X) stack (any dtype)."""
        data = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        return self.model.predict(data)


mlflow.models.set_model(BphoSuperResolution())
