"""The item forms attribute_dataset reads, as torch.utils.data users write them.

``x``, ``(x,)`` (``TensorDataset(images)``, the most common unlabeled data set), ``(x, label)``
and dict items read with ``key=`` / ``label_key=``: the same examples in every form must give the
same maps, and the labels where the form has them. The reference is the ``(x, label)`` run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from torch import nn

from hope_attr.audit import attribute_dataset

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.rand(10, 1, 3, 4, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (10,), generator=generator)


class Dicts(torch.utils.data.Dataset):
    """Items like Hugging Face data sets': ``{"pixel_values": x, "label": y, "id": ...}``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.inputs[index], "label": int(self.labels[index]), "id": "x"}


def audit(dataset, out: Path, **options):
    return attribute_dataset(
        InputXGradient(model().eval()),
        dataset,
        out=out,
        baselines=None,
        batch_size=4,
        show_progress=False,
        **options,
    )


def test_every_item_form_gives_the_same_maps(tmp_path: Path) -> None:
    inputs, labels = images()
    reference = audit(torch.utils.data.TensorDataset(inputs, labels), tmp_path / "pairs")
    forms = {
        "1-tuples": (torch.utils.data.TensorDataset(inputs), {}),  # TensorDataset(images)
        "tensors": (list(inputs), {}),
        "dicts": (Dicts(inputs, labels), {"key": "pixel_values", "label_key": "label"}),
        "dicts without labels": (Dicts(inputs, labels), {"key": "pixel_values"}),
    }
    for name, (dataset, options) in forms.items():
        store = audit(dataset, tmp_path / name, **options)
        assert store.complete, name
        np.testing.assert_array_equal(store.numpy(), reference.numpy(), err_msg=name)
        np.testing.assert_array_equal(store.numpy("predictions"), reference.numpy("predictions"))
        expected = labels.numpy() if "label_key" in options else np.full(10, -1)
        np.testing.assert_array_equal(store.numpy("labels"), expected, err_msg=name)


def test_dict_items_explain_their_label(tmp_path: Path) -> None:
    inputs, labels = images()
    store = audit(
        Dicts(inputs, labels), tmp_path, key="pixel_values", label_key="label", target="label"
    )
    np.testing.assert_array_equal(store.numpy("targets"), labels.numpy())
    assert store.settings["items"] == {"key": "pixel_values", "label_key": "label"}


def test_target_label_on_unlabeled_items_names_the_example(tmp_path: Path) -> None:
    inputs, _ = images()
    with pytest.raises(RuntimeError, match=r"target='label' but example 0 has no label"):
        audit(torch.utils.data.TensorDataset(inputs), tmp_path, target="label")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {},
            TypeError,
            r"dataset\[0\] is a dict with keys 'pixel_values', 'label', 'id': pass key= \(the "
            r"input's key, e.g. key='image'\) and, for target='label', label_key=",
        ),
        (
            {"key": "image"},
            TypeError,
            r"dataset\[0\] has no key 'image' \(its keys: 'pixel_values', 'label', 'id'\)",
        ),
        (
            {"key": "pixel_values", "label_key": "id"},
            TypeError,
            r"dataset\[0\]\['id'\] is str, not an integer label",
        ),
        (
            {"key": "label"},
            TypeError,
            r"dataset\[0\]\['label'\] is int, not a tensor",
        ),
        (
            {"label_key": "label"},
            ValueError,
            r"label_key reads dict items: pass key= \(the input's key\) too",
        ),
    ],
)
def test_dict_items_without_the_right_keys_are_refused_with_the_fix(
    tmp_path: Path, options: dict, error: type[Exception], message: str
) -> None:
    inputs, labels = images()
    with pytest.raises(error, match=message):
        audit(Dicts(inputs, labels), tmp_path, **options)
    assert not any(tmp_path.iterdir())


def test_key_on_items_that_are_not_dicts_is_refused(tmp_path: Path) -> None:
    inputs, _ = images()
    with pytest.raises(
        TypeError, match=r"dataset\[0\] is tuple, but key='pixel_values' reads dicts"
    ):
        audit(torch.utils.data.TensorDataset(inputs), tmp_path, key="pixel_values")
