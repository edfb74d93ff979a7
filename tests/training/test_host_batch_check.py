"""Issue 24 (GPU branches): a malformed sampler batch was caught on CUDA only by a device-side
assert (``torch._assert_async``), which poisons the CUDA context, and Ray Train replayed the
crash on every retry. Now the batch is checked on the host before it is copied: a ValueError
that names what is wrong, with no device sync."""

from __future__ import annotations

import pytest
import torch

from vireid.training.epoch import device_batches


def _batch(labels: list[int], modalities: list[int]) -> dict[str, torch.Tensor]:
    n = len(labels)
    return {"image": torch.zeros(n, 3, 4, 2), "label": torch.tensor(labels), "modality": torch.tensor(modalities)}


def test_a_good_batch_passes_unchanged() -> None:
    good = _batch([3, 1, 3, 1], [0, 0, 1, 1])
    (x, y, m), = list(device_batches([good], torch.device("cpu"), num_classes=4))
    assert torch.equal(y, good["label"]) and torch.equal(m, good["modality"]) and x.shape == (4, 3, 4, 2)


@pytest.mark.parametrize(("labels", "modalities", "message"), [
    ([3, 1, 1, 3], [0, 0, 1, 1], "same label order"),  # infrared block in another order
    ([3, 1, 3, 1], [0, 1, 0, 1], "visible block"),  # interleaved modalities
    ([3, 5, 3, 5], [0, 0, 1, 1], r"labels must be in 0\.\.3"),  # an identity the classifier lacks
    ([3, 1, 3], [0, 0, 1], r"\[2n\]"),  # odd batch
])
def test_a_bad_batch_is_refused_on_the_host_before_the_copy(labels, modalities, message) -> None:
    moved: list[str] = []

    class Spy(torch.Tensor):  # records a copy to the device
        def to(self, *args, **kwargs):
            moved.append("copied")
            return super().to(*args, **kwargs)

    bad = {k: v.as_subclass(Spy) for k, v in _batch(labels, modalities).items()}
    with pytest.raises(ValueError, match=message):
        list(device_batches([bad], torch.device("cpu"), num_classes=4))
    assert moved == []  # nothing reached the device
