"""The router in front of a real replica process (``python -m shoal.serving.replica``),
called with the real ``tritonclient.http`` client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.serving.router import RevisionRoute, Router
from tests.serving.replicas import DEADLINE_S, train_digits, wait_until
from tests.serving.router.test_router import TOKENS

http = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")
pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[3]


def test_tritonclient_through_the_router_to_a_replica_process(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    model = tmp_path / "model.joblib"
    train_digits(model)
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.serving.replica", "--model", str(model),
         "--framework", "sklearn", "--name", "digits", "--version", "2", "--port", "0",
         "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, "the replica")
        line = json.loads(ready.read_text())
        assert line["ready"] is True, process.communicate(timeout=DEADLINE_S)
        data = load_digits()

        def call(url: str) -> None:
            triton = http.InferenceServerClient(url)
            mine = {"Authorization": "Bearer team-a"}
            assert triton.is_server_live()
            assert triton.is_model_ready("digits", "2", headers=mine)
            assert triton.get_model_metadata("digits", headers=mine)["name"] == "digits"
            given = http.InferInput("input", [1, 64], "FP32")
            given.set_data_from_numpy(data.data[:1].astype(np.float32))
            for version in ("", "2"):
                result = triton.infer("digits", [given], model_version=version, headers=mine)
                assert result.as_numpy("label").tolist() == [data.target[0]]
            with pytest.raises(utils.InferenceServerException) as refused:
                triton.infer("digits", [given], headers={"Authorization": "Bearer team-b"})
            assert refused.value.status() == "403"
            with pytest.raises(utils.InferenceServerException) as unknown:
                triton.infer("digits", [given], model_version="7", headers=mine)
            assert unknown.value.status() == "404" and "'7'" in unknown.value.message()
            triton.close()

        async def scenario() -> None:
            router = Router("digits", "team-a", TOKENS.get)
            await router.start()
            router.update([RevisionRoute(name="2", weight=100,
                                         replicas=(f"http://127.0.0.1:{line['port']}",))])
            await asyncio.to_thread(call, f"127.0.0.1:{router.port}")
            # Each answer is counted once sent, which may be just after the caller read it.
            for _ in range(500):
                if router.stats()["2"].completed == 4:
                    break
                await asyncio.sleep(0.01)
            assert router.stats()["2"].completed == 4  # ready, metadata, two inferences
            await router.stop()

        asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))
    finally:
        process.kill()
        process.communicate(timeout=DEADLINE_S)
