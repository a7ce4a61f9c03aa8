"""Concurrent requests share a model call (mnist_serving.batching): with the real ONNX graph of a
published version, answers scored together equal the answers scored alone; groups keep the
image limit and the order; a failed call fails only its own requests; a cancelled request does
not disturb the others. Over real HTTP, tests/test_serving.py sends concurrent requests to the
running server. Not covered: the speed-up, which benchmarks/serving.py measures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mnist_ml.model_contract import MODEL_NAME
from mnist_serving.batching import Batcher
from mnist_serving.grouping import consecutive_groups
from mnist_serving.predictor import CALL_IMAGES, MnistPredictor


@pytest.fixture(scope="module")
def model(tiny_versions) -> MnistPredictor:
    _, versions = tiny_versions
    predictor = MnistPredictor(MODEL_NAME, versions[0].path)
    predictor.load()
    return predictor


class CountingScore:
    """The model's scoring, recording the batch size of each call."""

    def __init__(self, model: MnistPredictor, fail: bool = False) -> None:
        self.model, self.fail, self.calls = model, fail, []

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(len(images))
        if self.fail:
            raise RuntimeError("the model call failed")
        return self.model.score(images, count=False)


def _requests(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((n, 28, 28), dtype=np.float32) for n in sizes]


async def _score_all(batcher: Batcher, requests: list[np.ndarray]) -> list:
    return await asyncio.gather(*(batcher.score(images) for images in requests), return_exceptions=True)


def test_requests_waiting_together_share_one_call_and_get_their_own_answers(model):
    requests = _requests([1] * 20 + [3])
    score = CountingScore(model)
    answers = asyncio.run(_score_all(Batcher(score), requests))
    assert score.calls == [23]
    for images, answer in zip(requests, answers, strict=True):
        alone = model.score(images, count=False)
        assert answer.keys() == alone.keys()
        np.testing.assert_array_equal(answer["class_ids"], alone["class_ids"])
        np.testing.assert_array_equal(answer["is_ood"], alone["is_ood"])
        np.testing.assert_allclose(answer["probabilities"], alone["probabilities"], atol=1e-6)
        np.testing.assert_allclose(answer["concept_score"], alone["concept_score"], atol=1e-6)


def test_a_lone_request_is_scored_alone_and_groups_keep_the_limit(model):
    score = CountingScore(model)
    batcher = Batcher(score, max_images=32)
    asyncio.run(_score_all(batcher, _requests([2])))
    assert score.calls == [2]
    answers = asyncio.run(_score_all(batcher, _requests([10, 30, 5, 40, 1, 1])))
    assert score.calls[1:] == [10, 30, 5, 40, 2]  # in order; a request over the limit alone
    assert [len(a["class_ids"]) for a in answers] == [10, 30, 5, 40, 1, 1]


def test_a_failed_call_fails_its_requests_only_and_the_next_call_works(model):
    failing = CountingScore(model, fail=True)
    batcher = Batcher(failing, max_images=4)
    answers = asyncio.run(_score_all(batcher, _requests([3, 3])))
    assert [str(a) for a in answers] == ["the model call failed"] * 2
    failing.fail = False
    answers = asyncio.run(_score_all(batcher, _requests([1, 1])))
    assert [len(a["class_ids"]) for a in answers] == [1, 1]


def test_a_cancelled_request_does_not_disturb_the_others(model):
    score = CountingScore(model)
    batcher = Batcher(score)

    async def main() -> list:
        tasks = [asyncio.ensure_future(batcher.score(images)) for images in _requests([1, 1, 1])]
        await asyncio.sleep(0)  # all three wait for the call now
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(main())
    assert isinstance(answers[1], asyncio.CancelledError)
    assert [len(answers[i]["class_ids"]) for i in (0, 2)] == [1, 1]
    assert score.calls == [3]


def test_a_large_request_is_scored_in_bounded_calls_with_the_same_answers(model):
    """More than CALL_IMAGES images go to the model in several calls (bounded memory); the
    answers are those of the images scored a few at a time."""
    images = _requests([CALL_IMAGES * 2 + 17])[0]
    whole = model.score(images, count=False)
    parts = [model.score(images[at : at + 50], count=False) for at in range(0, len(images), 50)]
    assert len(whole["class_ids"]) == len(images)
    for name, values in whole.items():
        np.testing.assert_allclose(values, np.concatenate([part[name] for part in parts]), atol=1e-6)


def test_consecutive_groups_keep_every_item_in_order():
    sizes = [5, 1, 31, 32, 33, 0, 7, 7, 7, 7, 7]
    groups = list(consecutive_groups(sizes, int, 32))
    assert [n for group in groups for n in group] == sizes
    assert all(sum(group) <= 32 or len(group) == 1 for group in groups)
    assert groups == [[5, 1], [31], [32], [33], [0, 7, 7, 7, 7], [7]]
    assert list(consecutive_groups([], int, 32)) == []
