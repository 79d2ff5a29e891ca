"""The tiny teacher of the training tests, shared with the evaluation tests."""

from train.conftest import teacher_dir  # noqa: F401
