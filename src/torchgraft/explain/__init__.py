"""Explanations: Grad-CAM heatmaps and their overlays."""

from torchgraft.explain.explainer import Explanation, Explanations, explain_images
from torchgraft.explain.gradcam import (
    GradCam,
    enlarge,
    grad_cam,
    overlay,
    png_bytes,
    side_by_side,
)

__all__ = [
    "Explanation",
    "Explanations",
    "GradCam",
    "enlarge",
    "explain_images",
    "grad_cam",
    "overlay",
    "png_bytes",
    "side_by_side",
]
