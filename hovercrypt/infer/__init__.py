"""Inference: predictors, overlap-tile inference, whole-slide engine, exports."""

from hovercrypt.infer.predictor import NetworkPredictor, Predictor, predict_tta, unflip
from hovercrypt.infer.tile import predict_image, segment_image

__all__ = ["NetworkPredictor", "Predictor", "predict_image", "predict_tta", "segment_image", "unflip"]
