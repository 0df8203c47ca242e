"""A running service from Python with BentoML's own client: every endpoint.

    make serve &                                   # or any URL the service answers on
    .venv/bin/python examples/client.py            # DIGIT_URL=http://host:port to point elsewhere

`bentoml.SyncHTTPClient` reads the API from the service (/schema.json), so each endpoint is a
method taking the request's fields. `digits.Client(url)` wraps the same calls (arrays in, a
`Refused` with the reason out). `/model` is a plain GET.
"""

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import bentoml
import httpx
import numpy as np
from PIL import Image

url = os.environ.get("DIGIT_URL", "http://127.0.0.1:3000")
image = json.loads((Path(__file__).parent / "digit-7.json").read_text())["image"]  # 28×28, 0-255
folder = Path(tempfile.mkdtemp(prefix="digit-client-"))
np.save(folder / "batch.npy", np.array([image, image], np.uint8))  # uint8 (n, 28, 28)
Image.fromarray(255 - np.array(image, np.uint8)).resize((140, 140)).save(folder / "digit.png")
png = base64.b64encode((folder / "digit.png").read_bytes()).decode()

with bentoml.SyncHTTPClient(url) as client:
    one = client.predict(image=image)
    print(
        f"predict: digit {one['digit']}, confidence {one['confidence']:.6f}, version "
        f"{one['model_version']}"
    )
    batch = client.predict_batch(images=[image, image])
    print(f"predict_batch: digits {[p['digit'] for p in batch['predictions']]}")
    npy = client.predict_npy(array=folder / "batch.npy")
    print(f"predict_npy: digits {[p['digit'] for p in npy['predictions']]}")
    picture = client.predict_image(image=folder / "digit.png")
    print(f"predict_image: digit {picture['digit']}, confidence {picture['confidence']:.6f}")
    canvas = client.predict_canvas(data_url=f"data:image/png;base64,{png}")
    print(f"predict_canvas: digit {canvas['digit']}")
    why = client.explain(image=image)
    print(f"explain: digit {why['digit']}, Grad-CAM {len(why['gradcam'])}x{len(why['gradcam'][0])}")
    try:
        client.predict(image=image[:27])  # a refusal: 4xx, with the reason and what to fix
    except bentoml.exceptions.BentoMLException as refused:
        print(f"refused: {refused.error_code.value} {json.loads(refused.message)['reason']}")
shutil.rmtree(folder)

served = httpx.get(f"{url}/model").json()
print(f"model: {served['name']} version {served['version']} ({served['bento_tag']})")
