"""Train the scikit-learn digits classifier and save it for serving.

Writes ``$SHOAL_CHECKPOINT_DIR/model.joblib`` (a pipeline: standard scaler +
logistic regression, fixed seed), atomically, and prints
``FINAL accuracy=0.xxxx`` on the held-out quarter of the data.  The
InferenceService in digits.yaml serves that file; a request is one FP32
tensor ``input`` of shape ``[n, 64]`` (8x8 images, pixel values 0-16).

The file is a pickle: only the job that wrote it (and the service of the
same tenant that serves it) should load it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0


def main() -> int:
    folder = Path(os.environ.get("SHOAL_CHECKPOINT_DIR", "."))
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=SEED))
    model.fit(x_train, y_train)
    temporary = folder / f".model.joblib.{os.getpid()}.tmp"
    joblib.dump(model, temporary)
    os.replace(temporary, folder / "model.joblib")
    print(f"FINAL accuracy={model.score(x_test, y_test):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
