"""Explanations: Grad-CAM heatmaps and their overlays."""

from torchgraft.explain.explainer import Explanation, Explanations, explain_images
from torchgraft.explain.gradcam import GradCam, grad_cam, overlay, side_by_side

__all__ = [
    "Explanation",
    "Explanations",
    "GradCam",
    "explain_images",
    "grad_cam",
    "overlay",
    "side_by_side",
]
