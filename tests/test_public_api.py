"""`import m2f_lightning` is the public API: every name it lists resolves to the object its
module defines, and the import itself stays cheap (no torch until a name is used)."""

import subprocess
import sys

import pytest

import m2f_lightning


@pytest.mark.parametrize("name", m2f_lightning.__all__)
def test_each_public_name_is_its_modules_object(name: str) -> None:
    from importlib import import_module

    module = import_module(m2f_lightning._PUBLIC[name])
    assert getattr(m2f_lightning, name) is getattr(module, name)


def test_the_api_lists_the_predictor_the_results_and_the_model() -> None:
    assert {"Segmenter", "SegmenterResult", "Mask2Former", "load_model", "save_model"} <= set(
        m2f_lightning.__all__
    )


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, m2f_lightning; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Segmentor'"):
        m2f_lightning.Segmentor  # noqa: B018
