"""Grad-CAM (Selvaraju et al., 2017): where in the image the network looked for a class.

Autograd does the work: take the backbone's last spatial feature map A (N, K, h, w), the
gradient of the class score with respect to it, average that gradient over the map to get
one weight per channel, and keep the positive part of the weighted sum of channels. The
result is upsampled to the image and scaled to [0, 1]. No hooks are needed: every torchgraft
network (timm's and the from-scratch `cnn`) exposes `forward_features` and `forward_head`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from torchgraft.errors import UserError
from torchgraft.models import GraftedClassifier


@dataclass
class GradCam:
    heatmaps: torch.Tensor  # (N, H, W) in [0, 1], at the input image size
    class_indices: torch.Tensor  # (N,) the class each heatmap explains
    logits: torch.Tensor  # (N, num_classes) the model's logits for the images


def grad_cam(
    model: GraftedClassifier, images: torch.Tensor, class_indices: torch.Tensor | None = None
) -> GradCam:
    """Heatmaps for uint8 `images` (N, C, H, W): for `class_indices`, else the predicted class."""
    model.eval()
    with torch.enable_grad():
        normalized = model.normalize(images).requires_grad_(True)  # a graph even if frozen
        spatial = model.net.forward_features(normalized)
        if spatial.ndim != 4:
            raise UserError(
                f"Grad-CAM needs a convolutional feature map; {type(model.net).__name__} gives "
                f"features of shape {tuple(spatial.shape)}. Use a CNN backbone (e.g. cnn, "
                "efficientnet_lite0, resnet50)."
            )
        logits = model.net.forward_head(spatial)
        chosen = logits.argmax(1) if class_indices is None else class_indices.to(logits.device)
        # Images are independent in eval mode, so one backward over the summed scores gives
        # every image the gradient of its own class score.
        score = logits.gather(1, chosen[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, spatial)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((channel_weights * spatial).sum(1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)
    return GradCam(cam / peak[:, None, None], chosen.detach(), logits.detach())


def overlay(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """A uint8 (C, H, W) image with its heatmap blended on top in the 'jet' colours."""
    from matplotlib import colormaps

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    base = rgb.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255
    colours = colormaps["jet"](heatmap.cpu().numpy())[..., :3].astype(np.float32)
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def side_by_side(
    image: torch.Tensor, heatmap: torch.Tensor, min_size: int = 224, *,
    caption: str = "", colour_bar: bool = True,
) -> Image.Image:  # fmt: skip
    """The image and its overlay next to each other, enlarged so small images stay visible;
    with `colour_bar`, the heatmap's scale on the right (low to high evidence), and with a
    `caption`, a line of text above (the class explained, by its display name)."""
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    plain = enlarge(Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy()), min_size,
                    Image.Resampling.NEAREST)  # fmt: skip
    blended = enlarge(overlay(image, heatmap), min_size)
    parts = [plain, blended, *([colour_scale(plain.height)] if colour_bar else [])]
    band = CAPTION_HEIGHT if caption else 0
    canvas = Image.new("RGB", (sum(part.width for part in parts), plain.height + band), "white")
    left = 0
    for part in parts:
        canvas.paste(part, (left, band))
        left += part.width
    if caption:
        ImageDraw.Draw(canvas).text((4, 3), caption, fill="black")
    return canvas


CAPTION_HEIGHT = 16  # px of the text band above a captioned side-by-side
SCALE_WIDTH = 44  # px of the colour scale: a 12 px bar and its labels


def colour_scale(height: int) -> Image.Image:
    """The heatmap's colours as a vertical bar, "high" at the top and "low" at the bottom."""
    from matplotlib import colormaps

    values = np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(12, axis=1)
    bar = Image.fromarray((colormaps["jet"](values)[..., :3] * 255).astype(np.uint8))
    scale = Image.new("RGB", (SCALE_WIDTH, height), "white")
    scale.paste(bar, (2, 0))
    draw = ImageDraw.Draw(scale)
    draw.text((16, 0), "high", fill="black")
    draw.text((16, height - 12), "low", fill="black")
    return scale


def enlarge(
    image: Image.Image, min_size: int, resample: Image.Resampling = Image.Resampling.BILINEAR
) -> Image.Image:
    """`image` scaled up by a whole factor to at least `min_size` on its long side, so small
    training sizes (28, 64 px) stay visible; larger images are left as they are."""
    scale = max(1, -(-min_size // max(image.size)))  # ceil
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), resample)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
