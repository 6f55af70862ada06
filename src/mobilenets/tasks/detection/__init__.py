"""SSDLite object detection (Sandler et al. 2018, section 6.2): training, COCO evaluation,
prediction, export (ONNX and ExecuTorch) and int8.

Every task package has the same modules for the same roles: ``train.py`` (``TrainConfig``,
``fit``), ``evaluate.py`` (``evaluate``), ``inference.py`` (``predict``, reading a checkpoint),
``export.py``, ``quantize.py`` and ``validation.py``.
"""

from mobilenets.tasks.detection.inference import predict
from mobilenets.tasks.detection.train import TrainConfig, fit

# evaluate, export and quantize are every task's public names too, but each is also the name
# of a module here: bound in this file, the function would hide the module (callers import
# ``from mobilenets.tasks.detection import export`` as the module, and griffe, which builds the
# API pages, warns of such shadowing). They are imported from their modules:
# ``from mobilenets.tasks.detection.evaluate import evaluate``.

__all__ = ["TrainConfig", "fit", "predict"]
