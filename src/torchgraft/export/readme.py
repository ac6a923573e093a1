"""exports/README.md: the input contract and how to call the files, for a deployer."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from torchgraft.artifact import Run, atomic_write_bytes
from torchgraft.export.formats import FORMATS

CLASSES_SHOWN = 20  # classes listed in the README; the file metadata has all of them

RESIZE_STEPS = {
    "crop": "resize the shorter side to $size px, then cut the centre $size x $size square",
    "pad": "resize the longer side to $size px, then pad with black to a $size x $size square",
    "squash": "stretch to $size x $size px, ignoring the aspect ratio",
}
PILLOW_RESIZE = {
    "crop": "ImageOps.fit(image, ($size, $size), $filter)",
    "pad": "ImageOps.pad(image, ($size, $size), $filter, color=0)",
    "squash": "image.resize(($size, $size), $filter)",
}

INTRO = """# Exported model: $model_name

Written by `graft export` from the run in `$run_path`. Every file below was checked against
eager PyTorch on $images real images; `parity.json` holds the numbers.

$files
"""

# Only where a code format (model.pt2, model.ts) was written.
TRUST = """
## Only load exports you trust

`model.pt2` and `model.ts` are **code**: loading a .pt2 runs the native shared library
inside it, and a .ts file is a pickle-based TorchScript archive whose code runs when called.
`model.onnx` and `model.int8.onnx` are data (a graph that onnxruntime interprets), as are
the run's `model.safetensors` and the JSON files.

`graft export` signed each code file in `signatures.json` (an HMAC-SHA256 keyed by a secret of
the user who exported, kept outside the run). torchgraft loads a .pt2 or .ts file only when
that signature checks out on the machine loading it, or when asked by name (`--engine aoti`,
`load_exported(path, allow_code=True)`). `parity.json` is a report, not a proof: anyone can
write one. Load code exports from elsewhere only if you trust whoever made them.
"""

CONTRACT = """
## Input contract (every format)

- Input `images`: **uint8**, shape **(N, $channels, $size, $size)**, channels first, $colour,
  values 0..255. Any batch size N.
- Bring each image to $size x $size with resize mode **$resize_mode**: $resize_steps
  ($interpolation interpolation, antialiased).
- Do **not** normalise: the mean/std normalisation is inside the model.
- Output `probabilities`: float32, shape (N, $num_classes), softmax(logits / $temperature)
  (the calibration temperature is applied inside). Column i is class i:

$classes

The same facts are stored in each exported file's metadata (its `torchgraft.*` keys).
"""

TEST_VECTORS = """
## Test vectors

`test_vectors/` holds a few validation images, each a PNG that is exactly one model input
($size x $size, uint8, lossless), and `vectors.json` with the top-1 class and the
probabilities eager PyTorch gives each. A port of this model to another runtime or language
checks itself by decoding each PNG, adding a batch axis, running the model and comparing:
the same top-1 class, and every probability within `tolerance`.
"""

# Only where model.onnx was written: its second output.
EMBEDDING = """
`model.onnx` has a second output, `embedding` (float32, N x D): what torchgraft's
`graft predict` and `graft serve` score unfamiliar inputs with, against the run's
`familiar.safetensors`. Ask for `probabilities` by name, or take the first output.
"""

PYTHON_ONNX = """
## Python (onnxruntime)

```python
import numpy as np
import onnxruntime
from PIL import Image, ImageOps

session = onnxruntime.InferenceSession("$onnx_file")
image = Image.open("image.jpg").convert("$pil_mode")
image = $pillow_resize
pixels = $pixels  # (1, $channels, $size, $size) uint8
(probabilities,) = session.run(["probabilities"], {"images": pixels})
names = session.get_modelmeta().custom_metadata_map["torchgraft.display_names"].split("\\n")
print(names[int(probabilities[0].argmax())])
```

Pillow's resampling is close to, not bit-identical with, torchvision's; for exactly the
training pixels use `torchgraft.Predictor.from_run(run).preprocess(path)` (a uint8 tensor).
`torchgraft.export.load_exported(path)` loads any of these files behind one call.
"""

CPP_AOTI = """
## C++ (AOTInductor)

`model.pt2` is native code for this machine's CPU family and this torch version
(`torch._inductor.aoti_load_package("model.pt2")` loads it in Python). The example
`examples/cpp` is in the torchgraft source repository, not in the installed package; from a
checkout of it, it builds against the torch wheel's headers and libraries:

```sh
cmake -S examples/cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \\
  -DCMAKE_PREFIX_PATH="$$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake --build build
python -c "from PIL import Image, ImageOps; image = Image.open('image.jpg').convert('$pil_mode'); \\
$pillow_resize.save('image.$netpbm')"
./build/graft_classify model.pt2 image.$netpbm   # prints the top-1 class and its probability
```

Its core:

```cpp
torch::inductor::AOTIModelPackageLoader loader("model.pt2");
at::Tensor images = ...;  // image.$netpbm as uint8 {1, $channels, $size, $size}
at::Tensor probabilities = loader.run({images})[0];
int64_t top1 = probabilities.argmax(1).item<int64_t>();
std::string names = loader.get_metadata()["torchgraft.display_names"];  // one per line
```
"""

TORCHSCRIPT = """
TorchScript (`model.ts`) is a legacy format, deprecated in current PyTorch: prefer model.pt2
or model.onnx.
"""


def write_readme(folder: Path, run: Run, images: int, recorded: dict[str, Any]) -> None:
    """README.md for the formats `recorded` in parity.json (format -> its entry there)."""
    atomic_write_bytes(folder / "README.md", readme_text(folder, run, images, recorded).encode())


def readme_text(folder: Path, run: Run, images: int, recorded: dict[str, Any]) -> str:
    info, prep = run.info, run.info.preprocessing
    size = str(prep.image_size)
    grey = prep.channels == 1
    pil_filter = f"Image.Resampling.{prep.interpolation.upper()}"
    resize = Template(PILLOW_RESIZE[prep.resize_mode]).substitute(size=size, filter=pil_filter)
    written = {name for name, spec in FORMATS.items() if (folder / spec.file_name).exists()}
    onnx_files = [FORMATS[name].file_name for name in ("onnx", "onnx-int8") if name in written]
    sections = [
        INTRO,
        TRUST if any(FORMATS[name].code for name in written) else "",
        CONTRACT,
        TEST_VECTORS,
        EMBEDDING if "onnx" in written else "",
        PYTHON_ONNX if onnx_files else "",
        CPP_AOTI if "aoti" in written else "",
        TORCHSCRIPT if "torchscript" in written else "",
    ]
    return Template("".join(sections)).substitute(
        onnx_file=onnx_files[0] if onnx_files else "",
        model_name=info.model_name,
        run_path=run.path,
        images=images,
        files=_files_list(folder, recorded),
        channels=prep.channels,
        size=size,
        colour="1 grey channel" if grey else "RGB order",
        resize_mode=prep.resize_mode,
        resize_steps=Template(RESIZE_STEPS[prep.resize_mode]).substitute(size=size),
        interpolation=prep.interpolation,
        num_classes=info.num_classes,
        temperature=f"{info.temperature:.4g}",
        classes=_classes_list(info.class_names, info.display_names),
        pil_mode="L" if grey else "RGB",
        pillow_resize=resize,
        pixels="np.asarray(image)[None, None]"
        if grey
        else "np.asarray(image).transpose(2, 0, 1)[None]",
        netpbm="pgm" if grey else "ppm",
    )


def _files_list(folder: Path, recorded: dict[str, Any]) -> str:
    """One line per format in parity.json: only those were checked against this model."""
    rows = []
    for spec in FORMATS.values():
        result = recorded.get(spec.name)
        if result is None:
            continue
        name = spec.file_name + "/" * spec.folder
        if not (folder / spec.file_name).exists():
            rows.append(f"- `{name}`: not written: {result['failure']}")
        elif not result["passed"]:
            rows.append(f"- `{name}`: {spec.description}; **failed the check**, do not "
                        f"deploy it ({result['failure']})")  # fmt: skip
        else:
            rows.append(f"- `{name}`: {spec.description}")
    return "\n".join(rows)


def _classes_list(class_names: list[str], display_names: list[str]) -> str:
    rows = [
        f"- {index}: {display}" + ("" if display == name else f" (`{name}`)")
        for index, (name, display) in enumerate(zip(class_names, display_names, strict=True))
    ]
    if len(rows) > CLASSES_SHOWN:
        rows = [*rows[:CLASSES_SHOWN], f"  ... and {len(rows) - CLASSES_SHOWN} more"]
    return "\n".join(rows)
